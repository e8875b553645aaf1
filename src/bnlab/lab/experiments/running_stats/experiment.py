"""`bnlab running-stats` as the driver runs it: its Experiment and run().

What it measures: the package docstring, :mod:`bnlab.lab.experiments.running_stats`.
"""

from __future__ import annotations

from bnlab.lab.experiments.driver import RunResult, run_experiment
from bnlab.lab.experiments.protocol import Experiment, Log
from bnlab.lab.experiments.running_stats.analysis import RunningStatsAnalysis, analyse
from bnlab.lab.experiments.running_stats.config import Config, Training, estimator_names
from bnlab.lab.experiments.running_stats.estimators import (
    ShadowStats,
    bn_stats,
    load_bn_stats,
    population_stats,
    stat_errors,
)
from bnlab.lab.experiments.running_stats.report import REPORT, report
from bnlab.lab.experiments.running_stats.train import (
    RunningStatsJob,
    StatsData,
    load,
    plan,
    train_chunk,
)

__all__ = [
    "EXPERIMENT",
    "Config",
    "RunningStatsAnalysis",
    "RunningStatsJob",
    "ShadowStats",
    "StatsData",
    "Training",
    "analyse",
    "bn_stats",
    "estimator_names",
    "load_bn_stats",
    "population_stats",
    "report",
    "run",
    "stat_errors",
]

EXPERIMENT: Experiment[Config] = Experiment(
    reading=REPORT,
    summary="eval-mode BN statistics: EMA vs cumulative average vs precise recomputation",
    load=load,
    plan=plan,
    train=train_chunk,
    quick={
        "seeds": (0, 1),
        "holdout": 1000,
        "train_size": 1000,
        "epochs": 3,
        "hidden": (32, 32),
        "checkpoint_every": 2,
    },
    chunk_size=lambda cfg: cfg.checkpoint_every,
)


def run(cfg: Config, log: Log = print) -> RunResult:
    """Train a BN MLP per seed, compare the estimators every epoch, write the run directory;
    see :func:`~bnlab.lab.experiments.protocol.run_experiment`."""
    return run_experiment(EXPERIMENT, cfg, log)
