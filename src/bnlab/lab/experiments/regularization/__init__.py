"""`bnlab regularization`: does batch norm regularize (the blog's claim C6)?

The blog says BN regularizes because "an example's output depends on the other examples in
its batch". This experiment measures both halves of that sentence:

1. **The effect.** The same MLP classifier is trained with and without BN on a small
   training subset (1,000 digits by default, so that every network can fit it perfectly)
   and evaluated on held-out digits. The quantity is the generalization gap, train accuracy
   minus held-out accuracy (both in eval mode), over epochs and seeds. A third variant,
   ``bn-full``, normalizes every step with statistics over the whole training subset instead
   of the mini-batch: BN's normalization without its batch noise. See :mod:`.analysis` for
   how the gap is read apart from BN's faster fitting.

2. **The mechanism.** One fixed held-out digit is put into many random batches drawn from
   the training pool; the spread of its outputs is measured in train and eval mode for batch
   sizes 2 ... 256 (:mod:`.probe`).

The model is the MLP of Ioffe & Szegedy (2015), section 4.1: three hidden layers of 100
units, BN after each hidden Linear, before the activation (the blog's placement). ReLU units
and Adam by default; the paper's sigmoid units with ``--activation sigmoid``.

config.py (flags), train.py (jobs, data, the training of one chunk), probe.py (the batch
dependence), analysis.py (records -> claims), report.py (run directory -> sections).

References:
    S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015 (arXiv:1502.03167), sections 3.4 and 4.1.
    P. Luo et al., "Towards Understanding Regularization in Batch Normalization", ICLR 2019.
"""
