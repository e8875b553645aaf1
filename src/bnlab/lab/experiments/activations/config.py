"""`bnlab activations`' configuration: the command-line flags, and the training settings of a
job."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from bnlab.lab.experiments.protocol import RunOptions, validate_training
from bnlab.lab.flags import choice_list
from bnlab.lab.models.mlp import INITS, Init

__all__ = [
    "ACTIVATIONS",
    "LOSS_EVERY",
    "NORMS",
    "Activation",
    "ActivationsConfig",
    "NetTraining",
    "Norm",
    "setting_name",
]

Activation = Literal["tanh", "relu"]
Norm = Literal["plain", "bn"]
ACTIVATIONS: tuple[Activation, ...] = typing.get_args(Activation)
NORMS: tuple[Norm, ...] = typing.get_args(Norm)
LOSS_EVERY = 10  # training steps per point of the loss curve (the mean of those steps' losses)


@dataclass(frozen=True)
class NetTraining:
    """What a job needs to build, train and measure one net (flags: --depth, --width, --steps,
    --batch-size, --lr, --seed)."""

    depth: int = 10
    """hidden layers (the CS231n figure: 10)"""
    width: int = 500
    """units per hidden layer (the CS231n figure: 500)"""
    steps: int = 200
    """training steps before the second measurement: a few hundred moves the weights far
    enough to change the distributions and keeps 16 nets within a 10-minute budget"""
    batch_size: int = 100
    """training batch (the blog's GAN batch)"""
    lr: float = 1e-3
    """Adam learning rate (default betas). Adam's step does not scale with the gradient, so
    the nets whose gradients vanish (small init) or explode (N(0, 1) init) still take
    comparable steps instead of stalling or diverging as SGD would"""
    seed: int = 0
    """fixes the held-out split, batch order and the weights (the same Linear weights with and
    without BN for one init, so differences come from BN)"""

    def validate(self) -> None:
        """Every value that could otherwise only fail mid-run, named by its flag."""
        validate_training(self, at_least_one=("depth", "width", "steps"))
        if self.seed < 0:
            raise ValueError(f"--seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class ActivationsConfig(RunOptions):
    """Per-layer activation histograms of a deep MLP on MNIST, per init, with and without BN.

    Defaults: 10 hidden layers of 500 units (the CS231n figure's net), tanh and ReLU, four
    inits, each with and without BN: 16 nets, each measured at init and after 200 Adam steps,
    one process per core. --quick runs a smaller taste in under a minute.
    """

    training: Annotated[NetTraining, tyro.conf.OmitArgPrefixes] = NetTraining()
    """the net and its training (every job's)"""
    activations: Annotated[tuple[Activation, ...], choice_list(Activation)] = ACTIVATIONS
    """nonlinearities to compare: tanh saturates, ReLU dies; both are in the figure"""
    inits: Annotated[tuple[Init, ...], choice_list(Init)] = INITS
    """weight inits: small = N(0, 0.01²), unit = N(0, 1), xavier, he; biases 0 throughout"""
    norms: Annotated[tuple[Norm, ...], choice_list(Norm)] = NORMS
    """plain = no normalization; bn = bnlab.nn.BatchNorm1d after every hidden Linear, before
    the nonlinearity (the blog's placement)"""
    eval_size: int = 1000
    """held-out digits in the fixed evaluation batch: activations are recorded on it (500k
    values per layer) and accuracy is measured on it"""
    data: Path | None = None
    """directory with the MNIST IDX files (else $BNLAB_DATA, ~/.cache/bnlab, download)"""

    def validate(self) -> None:
        super().validate()
        self.training.validate()
        if self.eval_size < 2:
            raise ValueError(
                f"--eval-size must be at least 2 (BN needs a batch), got {self.eval_size}"
            )
        for name, allowed in (("activations", ACTIVATIONS), ("inits", INITS), ("norms", NORMS)):
            given: tuple[str, ...] = getattr(self, name)
            bad = [v for v in given if v not in allowed]
            if bad or not given:
                raise ValueError(
                    f"--{name}: {', '.join(bad) or 'nothing given'} not among {', '.join(allowed)}"
                )
            if len(set(given)) != len(given):
                raise ValueError(f"--{name} must not repeat a value, got {','.join(given)}")


def setting_name(activation: str, init: str, norm: str) -> str:
    """A net's name in records, job keys and figure names: tanh-he-bn."""
    return f"{activation}-{init}-{norm}"
