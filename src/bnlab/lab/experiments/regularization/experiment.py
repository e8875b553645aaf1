"""`bnlab regularization` as the driver runs it: its Experiment and run().

What it measures: the package docstring, :mod:`bnlab.lab.experiments.regularization`.
"""

from __future__ import annotations

from bnlab.lab.experiments.common import SPLIT_SEED
from bnlab.lab.experiments.driver import RunResult, run_experiment
from bnlab.lab.experiments.protocol import Experiment, Log
from bnlab.lab.experiments.regularization.analysis import RegularizationAnalysis, analyse
from bnlab.lab.experiments.regularization.config import VARIANTS, Config, Training
from bnlab.lab.experiments.regularization.probe import probe_batch_dependence
from bnlab.lab.experiments.regularization.report import REPORT, report
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
    "RegularizationAnalysis",
    "Training",
    "analyse",
    "probe_batch_dependence",
    "report",
    "run",
]

EXPERIMENT: Experiment[Config] = Experiment(
    reading=REPORT,
    summary="claim C6: train-test gap with/without BN over seeds, and one digit's batch dependence",
    load=load,
    plan=plan,
    train=train_chunk,
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
)


def run(cfg: Config, log: Log = print) -> RunResult:
    """Train every (seed, variant), probe the batch dependence, write the run directory; see
    :func:`~bnlab.lab.experiments.protocol.run_experiment`."""
    return run_experiment(EXPERIMENT, cfg, log)
