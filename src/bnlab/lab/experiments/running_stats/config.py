"""`bnlab running-stats`' configuration: the command-line flags, what a job trains, and the
names of the estimators."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from bnlab.lab.experiments.protocol import RunOptions
from bnlab.lab.flags import FloatList, IntList

__all__ = [
    "CUMULATIVE",
    "POPULATION",
    "PRECISE",
    "TRACE_CHANNEL",
    "Config",
    "Training",
    "ema_name",
    "estimator_names",
]

CUMULATIVE = "cumulative"
PRECISE = "precise"
POPULATION = "population"
# The traced channel: index 0 of every BN layer (channels are exchangeable at init, so the
# first one is as typical as any).
TRACE_CHANNEL = 0
Activation = Literal["relu", "sigmoid"]


def ema_name(momentum: float) -> str:
    return f"ema-{momentum:g}"


@dataclass(frozen=True)
class Training:
    """What a job needs to train one seed's network and form its estimates (flags:
    --train-size, --epochs, --batch-size, --lr, --hidden, --activation, --momentum,
    --shadow-momenta, --precise-batch-size)."""

    train_size: int = 0
    """training digits drawn from the pool; 0 = the whole pool (population = all of them)"""
    epochs: int = 10
    """passes over the training set (1,600 steps on 8,000 digits): about where held-out
    accuracy levels off; the epoch curves show every shorter run too"""
    batch_size: int = 50
    """mini-batch size: sets the noise of each batch statistic (~1/sqrt(B))"""
    lr: float = 1e-3
    """Adam learning rate (default betas)"""
    hidden: IntList = (100, 100, 100)
    """hidden widths, BN after each hidden Linear: the MLP of Ioffe & Szegedy 2015, 4.1"""
    activation: Activation = "relu"
    """hidden unit"""
    momentum: float = 0.1
    """momentum of the model's own BN layers (the EMA estimator): PyTorch's default"""
    shadow_momenta: FloatList = (0.01, 0.5)
    """further EMAs tracked alongside (same batches): 0.01 averages ~200 batches (less noise,
    staler), 0.5 ~3 (fresh, noisy); the cumulative average is always tracked"""
    precise_batch_size: int = 0
    """batch size of the precise recomputation pass; 0 = --batch-size (as in training)"""

    def validate(self) -> None:
        """Raise ValueError for a bad training value, named by its flag."""
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2 or self.precise_batch_size == 1 or self.precise_batch_size < 0:
            raise ValueError(
                "--batch-size and --precise-batch-size must be at least 2 (BN needs 2 "
                "values per channel); --precise-batch-size 0 = --batch-size"
            )
        if self.train_size < 0:
            raise ValueError(
                f"--train-size must be >= 0 (0 = the whole pool), got {self.train_size}"
            )
        if 0 < self.train_size < max(self.batch_size, self.precise_batch_size):
            raise ValueError(
                f"--train-size {self.train_size} is smaller than one batch "
                f"({max(self.batch_size, self.precise_batch_size)})"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"--hidden needs at least one positive width, got {self.hidden}")
        for m in (self.momentum, *self.shadow_momenta):
            if not 0 < m <= 1:
                raise ValueError(f"--momentum and --shadow-momenta must be in (0, 1], got {m}")
        names = [ema_name(m) for m in self.shadow_momenta]
        if len(set(names)) != len(names):
            raise ValueError(f"--shadow-momenta must not repeat a value, got {self.shadow_momenta}")
        if ema_name(self.momentum) in names:
            raise ValueError(f"--shadow-momenta repeats the model's --momentum {self.momentum:g}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")


def estimator_names(training: Training) -> list[str]:
    """Table order: the model's EMA, the shadow EMAs, cumulative, precise, population."""
    shadow = [ema_name(m) for m in training.shadow_momenta]
    return [ema_name(training.momentum), *shadow, CUMULATIVE, PRECISE, POPULATION]


@dataclass(frozen=True)
class Config(RunOptions):
    """Eval-mode statistics of BN: EMA vs cumulative average vs precise recomputation.

    Defaults: 5 seeds x 10 epochs of a BN MLP on the MNIST training pool (8,000 digits when
    only the 10k test split is present), estimators compared after every epoch; about a
    minute on a 2-core CPU (one process per core); --quick runs a 15-second taste.
    """

    seeds: IntList = (0, 1, 2, 3, 4)
    """one training run per seed (init, batch order); 5 give a paired t-interval on accuracies"""
    holdout: int = 2000
    """held-out digits for eval accuracy (the rest of a single split is the training pool)"""
    training: Annotated[Training, tyro.conf.OmitArgPrefixes] = Training()
    """training settings (every job's)"""
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    """which dataset"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, ~/.cache/bnlab, system dirs, download)"""
    checkpoint_every: int = 5
    """epochs between checkpoints of a seed's run; a resumed run redoes at most this many"""

    def validate(self) -> None:
        """Every value that could otherwise only fail mid-run, named by its flag. (Sizes that
        depend on the data, --train-size against the training pool, are checked when the data
        is loaded, still before any training.)"""
        super().validate()
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds: give at least one seed, none repeated (got {self.seeds})")
        if min(self.seeds) < 0:
            raise ValueError(f"--seeds must be >= 0, got {self.seeds}")
        if self.holdout < 1:
            raise ValueError(f"--holdout must be at least 1, got {self.holdout}")
        self.training.validate()
        if self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")
