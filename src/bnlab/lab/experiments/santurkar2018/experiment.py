"""`bnlab santurkar2018` as the driver runs it: its Experiment and run().

What it measures: the package docstring, :mod:`bnlab.lab.experiments.santurkar2018`.
"""

from __future__ import annotations

from bnlab.lab.experiments.driver import RunResult, run_experiment
from bnlab.lab.experiments.protocol import Experiment, Log
from bnlab.lab.experiments.santurkar2018.config import Config
from bnlab.lab.experiments.santurkar2018.report import REPORT
from bnlab.lab.experiments.santurkar2018.train import Data, RunJob, load, plan, train

__all__ = ["EXPERIMENT", "Config", "Data", "RunJob", "run"]

EXPERIMENT: Experiment[Config] = Experiment(
    reading=REPORT,
    summary="Santurkar et al. 2018: noisy BN, ICS (Def. 2.1), landscape, lr range; claim C5b",
    load=load,
    plan=plan,
    train=train,
    quick={
        "seeds": (0, 1),
        "steps": 40,
        "measures": 3,
        "subset": 2000,
        "eval_size": 200,
        "test_size": 500,
        "dln_depth": 6,
        "sweep_lrs": (0.05, 1.0),
        "sweep_seeds": (0, 1),
        "sweep_steps": 20,
        "widths": (4, 8),
        "hidden": (32, 32),
        "checkpoint_every": 20,
    },
    chunk_size=lambda cfg: cfg.checkpoint_every,
)


def run(cfg: Config, log: Log = print) -> RunResult:
    """Train every job, write the run directory; see :func:`run_experiment`."""
    return run_experiment(EXPERIMENT, cfg, log)
