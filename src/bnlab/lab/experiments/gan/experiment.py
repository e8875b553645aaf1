"""`bnlab gan` as the driver runs it: its Experiment and run().

What it measures: the package docstring, :mod:`bnlab.lab.experiments.gan`.
"""

from __future__ import annotations

from bnlab.lab.experiments.driver import RunResult, run_experiment
from bnlab.lab.experiments.gan.analysis import claims
from bnlab.lab.experiments.gan.config import DEFAULT_VARIANTS, GanConfig, GanTraining
from bnlab.lab.experiments.gan.observers import tensorboard_observer
from bnlab.lab.experiments.gan.report import REPORT
from bnlab.lab.experiments.gan.train import GanData, GanJob, GanTrainer, load, plan, train_chunk
from bnlab.lab.experiments.protocol import Experiment, Log

__all__ = [
    "DEFAULT_VARIANTS",
    "EXPERIMENT",
    "GanConfig",
    "GanData",
    "GanJob",
    "GanTrainer",
    "GanTraining",
    "claims",
    "run",
]

EXPERIMENT: Experiment[GanConfig] = Experiment(
    reading=REPORT,
    summary="the blog's MNIST GAN notebooks side by side (the main job)",
    load=load,
    plan=plan,
    train=train_chunk,
    quick={
        "epochs": 2,
        "subset": 2000,
        "sample_every": 1,
        "metric_samples": 1000,
        "classifier_steps": 150,
    },
    chunk_size=lambda cfg: cfg.checkpoint_every,
    growable=frozenset({"epochs", "seeds"}),  # more seeds: appended to the run's
    observer=tensorboard_observer,
    data_parallel=True,
)


def run(cfg: GanConfig, log: Log = print) -> RunResult:
    """Train every (seed, variant), write the run directory; see :func:`run_experiment`."""
    return run_experiment(EXPERIMENT, cfg, log)
