"""`bnlab gan-norms` as the driver runs it: its Experiment and run(). Data, jobs and training
are ``bnlab gan``'s (its config is a :class:`~bnlab.lab.experiments.gan.config.GanConfig`
with other defaults); only the reading half is this experiment's.

What it measures: the package docstring, :mod:`bnlab.lab.experiments.gan_norms`.
"""

from __future__ import annotations

from bnlab.lab.experiments.driver import RunResult, run_experiment
from bnlab.lab.experiments.gan.train import load, plan, train_chunk
from bnlab.lab.experiments.gan_norms.config import NORM_VARIANTS, NormsConfig
from bnlab.lab.experiments.gan_norms.report import REPORT
from bnlab.lab.experiments.protocol import Experiment, Log

__all__ = ["EXPERIMENT", "NORM_VARIANTS", "NormsConfig", "run"]

EXPERIMENT: Experiment[NormsConfig] = Experiment(
    reading=REPORT,
    summary="what a GAN should use instead of BN: Renorm, Virtual BN, LN, GN, spectral norm",
    load=load,
    plan=plan,
    train=train_chunk,
    quick={
        "seeds": (0,),
        "epochs": 1,
        "subset": 1000,
        "sample_every": 1,
        "metric_samples": 500,
        "classifier_steps": 150,
    },
    chunk_size=lambda cfg: cfg.checkpoint_every,
    growable=frozenset({"epochs", "seeds"}),  # as gan: a run grows toward the full budget
)


def run(cfg: NormsConfig, log: Log = print) -> RunResult:
    """Train every (seed, variant), write the run directory; see :func:`run_experiment`."""
    return run_experiment(EXPERIMENT, cfg, log)
