"""Every ``bnlab <experiment>``, in one place: the CLI and ``bnlab report`` read this."""

from __future__ import annotations

from typing import Any

from bnlab.lab.experiments import (
    ablation,
    activations,
    gan,
    ioffe2015,
    regularization,
    running_stats,
    santurkar2018,
)
from bnlab.lab.experiments.protocol import Experiment

__all__ = ["EXPERIMENTS"]

EXPERIMENTS: dict[str, Experiment[Any]] = {
    e.name: e
    for e in (
        gan.EXPERIMENT,
        ablation.EXPERIMENT,
        activations.EXPERIMENT,
        ioffe2015.EXPERIMENT,
        santurkar2018.EXPERIMENT,
        regularization.EXPERIMENT,
        running_stats.EXPERIMENT,
    )
}
