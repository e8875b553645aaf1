"""`bnlab activations` as the driver runs it: its Experiment and run().

What it measures: the package docstring, :mod:`bnlab.lab.experiments.activations`.
"""

from __future__ import annotations

from bnlab.lab.experiments.activations.analysis import claims
from bnlab.lab.experiments.activations.config import ActivationsConfig
from bnlab.lab.experiments.activations.measure import layer_stats, record_layers
from bnlab.lab.experiments.activations.report import REPORT
from bnlab.lab.experiments.activations.train import (
    ActivationsData,
    NetJob,
    build_net,
    load,
    plan,
    train_net,
)
from bnlab.lab.experiments.driver import RunResult, run_experiment
from bnlab.lab.experiments.protocol import Experiment, Log

__all__ = [
    "EXPERIMENT",
    "ActivationsConfig",
    "ActivationsData",
    "NetJob",
    "build_net",
    "claims",
    "layer_stats",
    "record_layers",
    "run",
]

EXPERIMENT: Experiment[ActivationsConfig] = Experiment(
    reading=REPORT,
    summary="per-layer activation histograms by init, with and without BN (C5a, the CS231n figure)",
    load=load,
    plan=plan,
    train=train_net,
    quick={"depth": 6, "width": 100, "steps": 60, "eval_size": 300, "inits": ("small", "he")},
)


def run(cfg: ActivationsConfig, log: Log = print) -> RunResult:
    """Measure and train every (activation, init, norm) net, write the run directory; see
    :func:`~bnlab.lab.experiments.protocol.run_experiment`."""
    return run_experiment(EXPERIMENT, cfg, log)
