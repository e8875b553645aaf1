"""`bnlab ioffe2015` as the driver runs it: its Experiment and run().

What it measures: the package docstring, :mod:`bnlab.lab.experiments.ioffe2015`.
"""

from __future__ import annotations

from bnlab.lab.experiments.driver import RunResult, run_experiment
from bnlab.lab.experiments.ioffe2015.analysis import claims
from bnlab.lab.experiments.ioffe2015.config import NETS, Ioffe2015Config, Training
from bnlab.lab.experiments.ioffe2015.report import REPORT
from bnlab.lab.experiments.ioffe2015.train import (
    CHUNK_STEPS,
    IoffeData,
    NetJob,
    build_net,
    eval_steps,
    evaluate,
    last_sigmoid_input,
    load,
    plan,
    train_net,
)
from bnlab.lab.experiments.protocol import Experiment, Log

__all__ = [
    "EXPERIMENT",
    "NETS",
    "Ioffe2015Config",
    "IoffeData",
    "NetJob",
    "Training",
    "build_net",
    "claims",
    "eval_steps",
    "evaluate",
    "last_sigmoid_input",
    "run",
]

EXPERIMENT: Experiment[Ioffe2015Config] = Experiment(
    reading=REPORT,
    summary="Ioffe & Szegedy 2015 Figure 1: sigmoid MLP with/without BN, accuracy and percentiles",
    load=load,
    plan=plan,
    train=train_net,
    quick={"steps": 1500, "eval_every": 100, "test_size": 500},
    chunk_size=lambda cfg: CHUNK_STEPS,
)


def run(cfg: Ioffe2015Config, log: Log = print) -> RunResult:
    """Train both nets of every seed, write the run directory; see
    :func:`~bnlab.lab.experiments.protocol.run_experiment`."""
    return run_experiment(EXPERIMENT, cfg, log)
