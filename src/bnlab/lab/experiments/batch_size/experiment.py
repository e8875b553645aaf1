"""`bnlab batch-size` as the driver runs it: its Experiment and run().

What it measures: the package docstring, :mod:`bnlab.lab.experiments.batch_size`.
"""

from __future__ import annotations

from bnlab.lab.experiments.batch_size.analysis import BatchSizeAnalysis, analyse
from bnlab.lab.experiments.batch_size.config import Config, Training
from bnlab.lab.experiments.batch_size.report import REPORT, report
from bnlab.lab.experiments.batch_size.train import BatchSizeJob, build, load, plan, train_chunk
from bnlab.lab.experiments.driver import RunResult, run_experiment
from bnlab.lab.experiments.protocol import Experiment, Log

__all__ = [
    "EXPERIMENT",
    "BatchSizeAnalysis",
    "BatchSizeJob",
    "Config",
    "Training",
    "analyse",
    "build",
    "report",
    "run",
]

EXPERIMENT: Experiment[Config] = Experiment(
    reading=REPORT,
    summary="test error vs the normalization batch: BN, Batch Renorm, GN, LN (Wu & He 2018)",
    load=load,
    plan=plan,
    train=train_chunk,
    quick={
        "seeds": (0,),
        "norm_batches": (2, 16),
        "sgd_batch": 16,
        "small_sgd_batches": (2,),
        "epochs": 1,
        "train_size": 2048,
        "holdout": 1000,
    },
    chunk_size=lambda cfg: 1,  # a checkpoint after every epoch
)


def run(cfg: Config, log: Log = print) -> RunResult:
    """Train every (norm, batch, seed), write the run directory; see :func:`run_experiment`."""
    return run_experiment(EXPERIMENT, cfg, log)
