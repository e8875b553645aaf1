"""`bnlab regularization`'s configuration: the command-line flags, and what a job trains."""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from bnlab.lab.experiments.protocol import RunOptions
from bnlab.lab.flags import IntList, StrList

__all__ = ["CI_LEVEL", "VARIANTS", "Config", "Training", "VariantName"]

VariantName = Literal["plain", "bn", "bn-full"]
VARIANTS: tuple[VariantName, ...] = typing.get_args(VariantName)
Activation = Literal["relu", "sigmoid"]
CI_LEVEL = 0.95  # of every confidence interval the experiment reports


@dataclass(frozen=True)
class Training:
    """What a job needs to train one (seed, variant) network (flags: --train-size, --epochs,
    --batch-size, --lr, --hidden, --activation)."""

    train_size: int = 1000
    """training digits per seed (drawn from the training pool): small, so every network can fit
    it perfectly and overfit"""
    epochs: int = 40
    """passes over the training subset: enough for plain and BN networks alike to settle at
    (near) 100% training accuracy, so the final gap compares equal fits"""
    batch_size: int = 50
    """mini-batch size of training; BN's batch statistics come from this many digits"""
    lr: float = 1e-3
    """Adam learning rate (default betas): the common default, the same for every variant"""
    hidden: IntList = (100, 100, 100)
    """hidden layer widths: the MLP of Ioffe & Szegedy 2015, section 4.1"""
    activation: Activation = "relu"
    """hidden unit; sigmoid is the paper's choice (the sign of C6 depends on the setup: see
    the README)"""

    @property
    def steps_per_epoch(self) -> int:
        return self.train_size // self.batch_size  # drop_last

    def validate(self) -> None:
        """Raise ValueError for a bad training value, named by its flag."""
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(
                f"--batch-size must be at least 2 (BN needs 2 values), got {self.batch_size}"
            )
        if self.train_size < self.batch_size:
            raise ValueError(
                f"--train-size {self.train_size} is smaller than one batch ({self.batch_size})"
            )
        if not self.hidden or min(self.hidden) < 1:
            raise ValueError(f"--hidden needs at least one positive width, got {self.hidden}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")


@dataclass(frozen=True)
class Config(RunOptions):
    """Does BN regularize (blog claim C6)? Train-test gap with/without BN, and batch noise.

    Defaults: 10 seeds x (plain, bn, bn-full) on 1,000 MNIST digits for 40 epochs, plus the
    batch-dependence probe; about 1.5-3 minutes on a 2-core CPU (one process per core);
    --quick runs a 15-second taste.
    """

    variants: StrList = VARIANTS
    """networks to train: plain (no BN), bn (BN with mini-batch statistics), bn-full (BN with
    statistics of the whole training subset at every step: normalization without batch noise).
    plain and bn are required (claim C6 compares them)"""
    seeds: IntList = tuple(range(10))
    """one run of every variant per seed (subset, init, batch order); 10 give a paired-t 95%
    CI about 1/3 as wide as 3 seeds do"""
    training: Annotated[Training, tyro.conf.OmitArgPrefixes] = Training()
    """training settings (every job's)"""
    holdout: int = 5000
    """held-out digits (the same for every seed): enough that one digit is 0.02 pp"""
    match_train_acc: float = 0.99
    """training accuracy at which the gaps are also compared (equal fit, not equal epochs)"""
    probe_batch_sizes: IntList = (2, 4, 8, 16, 32, 64, 128, 256)
    """batch sizes of the batch-dependence probe (empty: no probe): powers of two for the
    log-log slope"""
    probe_batches: int = 200
    """random batches per batch size around the fixed digit; 200 give the spread to ~5%"""
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    """which dataset"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, ~/.cache/bnlab, system dirs, download)"""
    checkpoint_every: int = 10
    """epochs between checkpoints of a network; a resumed run redoes at most this many"""

    def validate(self) -> None:
        """Every value that could otherwise only fail mid-run, named by its flag. (Sizes that
        depend on the data, --train-size and --probe-batch-sizes against the training pool,
        are checked when the data is loaded, still before any training.)"""
        super().validate()
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown:
            raise ValueError(
                f"unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
            )
        if "plain" not in self.variants or "bn" not in self.variants:
            raise ValueError("--variants must include plain and bn (the comparison of claim C6)")
        if len(set(self.variants)) != len(self.variants):
            raise ValueError(f"--variants must not repeat a value, got {','.join(self.variants)}")
        if not self.seeds:
            raise ValueError("--seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must not repeat a seed, got {self.seeds}")
        if min(self.seeds) < 0:
            raise ValueError(f"--seeds must be >= 0, got {self.seeds}")
        self.training.validate()
        if self.holdout < 1:
            raise ValueError(f"--holdout must be at least 1, got {self.holdout}")
        if not 0 < self.match_train_acc <= 1:
            raise ValueError(f"--match-train-acc must be in (0, 1], got {self.match_train_acc}")
        if self.probe_batch_sizes and min(self.probe_batch_sizes) < 2:
            raise ValueError("--probe-batch-sizes must be at least 2 (BN needs 2 values per batch)")
        if len(set(self.probe_batch_sizes)) != len(self.probe_batch_sizes):
            raise ValueError(
                f"--probe-batch-sizes must not repeat a size, got {self.probe_batch_sizes}"
            )
        if self.probe_batches < 2:
            raise ValueError(
                f"--probe-batches must be at least 2 (a spread), got {self.probe_batches}"
            )
        if self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")
