"""`bnlab running-stats`: which statistics should BN use in eval mode?

In training, BN normalizes with the statistics of the current batch; in evaluation it needs
fixed ones. The blog says eval uses "the average of the batch statistics seen during
training". There are several ways to form that average, and they differ:

- **EMA** (PyTorch's default, ``momentum=0.1``): running = 0.9 * running + 0.1 * batch. It
  forgets old batches within ~10 steps, so it follows the weights, but it is an average of
  only ~20 effective batches: noisy.
- **Cumulative average** (``momentum=None``, the blog's plain average): every batch since the
  start counts equally, including those computed with early, long-gone weights: stale.
- **Precise** (fvcore's precise BN, ``torch.optim.swa_utils.update_bn``): after training,
  reset the statistics and recompute them with the final weights in one pass over the
  training data (train mode, ``no_grad``, ``momentum=None``).

All come from one training run per seed (:mod:`.train`). After every epoch, each estimate is
compared with the **population statistics**: the per-channel mean and variance of each BN
layer's input over the whole training pool with the current weights, every BN layer
normalizing with the population statistics of its own input (:mod:`.estimators`). Reported
per estimator: the error of the mean (in units of the population standard deviation) and the
relative error of the variance, per layer, and the held-out accuracy in eval mode with that
estimate loaded.

config.py (flags, estimator names), estimators.py (the statistics and the one place that
finds BN layers), train.py (jobs, data, the training of one chunk), analysis.py (records ->
numbers), report.py (run directory -> sections).

References:
    S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015 (arXiv:1502.03167), Algorithm 2 (inference
    statistics as averages over training mini-batches).
    Y. Wu, J. Johnson, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, section 3
    (EMA vs precise BN); fvcore ``fvcore/nn/precise_bn.py`` (``update_bn_stats``).
"""
