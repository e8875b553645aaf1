"""`bnlab gan`: the blog's three MNIST GAN notebooks side by side, measured.

config.py (flags), train.py (jobs, data, the training of one chunk), analysis.py (records ->
claims), report.py (run directory -> sections), observers.py (TensorBoard).
"""

from __future__ import annotations

from typing import Any

from bnlab.lab.experiments.gan.analysis import analyse, claims, result_line
from bnlab.lab.experiments.gan.config import DEFAULT_VARIANTS, GanConfig, GanTraining
from bnlab.lab.experiments.gan.observers import tensorboard_observer
from bnlab.lab.experiments.gan.report import compare_report, report
from bnlab.lab.experiments.gan.train import GanData, GanJob, GanTrainer, load, plan, train_chunk
from bnlab.lab.experiments.protocol import Experiment, Log, RunResult, run_experiment

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
    name="gan",
    summary="the blog's MNIST GAN notebooks side by side (the main job)",
    title="bnlab gan: the blog's GAN notebooks, measured",
    config=GanConfig,
    load=load,
    plan=plan,
    train=train_chunk,
    analyse=analyse,
    report=report,
    result_line=result_line,
    quick={
        "epochs": 2,
        "subset": 2000,
        "sample_every": 1,
        "metric_samples": 1000,
        "classifier_steps": 150,
    },
    chunk_size=lambda cfg: cfg.checkpoint_every,
    growable=frozenset({"epochs"}),
    threads=None,  # the cores shared among the worker processes
    observer=tensorboard_observer,
    data_parallel=True,
    compare=compare_report,
)


def run(cfg: GanConfig, log: Log = print) -> RunResult:
    """Train every (seed, variant), write the run directory; see :func:`run_experiment`."""
    result: Any = run_experiment(EXPERIMENT, cfg, log)
    return result
