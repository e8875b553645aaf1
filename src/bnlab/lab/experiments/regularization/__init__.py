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

from __future__ import annotations

from bnlab.lab.experiments.protocol import Experiment, Log, RunResult, run_experiment
from bnlab.lab.experiments.regularization.analysis import analyse, result_line, summarize
from bnlab.lab.experiments.regularization.config import SPLIT_SEED, VARIANTS, Config, Training
from bnlab.lab.experiments.regularization.probe import probe_batch_dependence
from bnlab.lab.experiments.regularization.report import report
from bnlab.lab.experiments.regularization.train import (
    Probe,
    RegData,
    RegJob,
    load,
    plan,
    train_chunk,
)

__all__ = [
    "EXPERIMENT",
    "SPLIT_SEED",
    "VARIANTS",
    "Config",
    "Probe",
    "RegData",
    "RegJob",
    "Training",
    "analyse",
    "probe_batch_dependence",
    "report",
    "run",
    "summarize",
]

EXPERIMENT: Experiment[Config] = Experiment(
    name="regularization",
    summary="claim C6: train-test gap with/without BN over seeds, and one digit's batch dependence",
    title="bnlab regularization: does BN regularize? (claim C6)",
    config=Config,
    load=load,
    plan=plan,
    train=train_chunk,
    analyse=analyse,
    report=report,
    result_line=result_line,
    quick={
        "seeds": (0, 1),
        "train_size": 200,
        "holdout": 1000,
        "epochs": 6,
        "batch_size": 20,
        "hidden": (32, 32),
        "probe_batch_sizes": (2, 4, 8, 16, 32),
        "probe_batches": 20,
        "checkpoint_every": 3,
    },
    chunk_size=lambda cfg: cfg.checkpoint_every,
    threads=1,  # small GEMMs: one single-threaded process per core is fastest
)


def run(cfg: Config, log: Log = print) -> RunResult:
    """Train every (seed, variant), probe the batch dependence, write the run directory; see
    :func:`~bnlab.lab.experiments.protocol.run_experiment`."""
    return run_experiment(EXPERIMENT, cfg, log)
