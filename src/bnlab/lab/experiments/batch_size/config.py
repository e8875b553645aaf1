"""`bnlab batch-size`' configuration: the command-line flags and what a job trains."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from bnlab.lab.experiments.protocol import RunOptions, check_counts
from bnlab.lab.flags import IntList, choice_list

__all__ = ["BATCH_FREE", "NORMS", "PRECISE", "Config", "Norm", "Training"]

Norm = Literal["bn", "renorm", "gn", "ln"]
NORMS: tuple[Norm, ...] = ("bn", "renorm", "gn", "ln")
# Norms whose output does not depend on the normalization batch: with the SGD batch fixed they
# train once per seed and are drawn flat across b.
BATCH_FREE: frozenset[str] = frozenset({"gn", "ln"})
# Not a training: the BN models re-evaluated with statistics recomputed over the training set.
PRECISE = "bn-precise"


@dataclass(frozen=True)
class Training:
    """What every job trains with (flags: --epochs, --lr, --momentum, --weight-decay,
    --widths, --groups, --train-size)."""

    epochs: int = 2
    """passes over the training set (the same for every SGD batch: small batches take more
    steps); 2 reach ~87% test accuracy at b=64 on Fashion-MNIST"""
    lr: float = 0.05
    """SGD learning rate at --sgd-batch; true small SGD batches scale it linearly
    (lr * batch / sgd-batch, as Wu & He 2018 did)"""
    momentum: float = 0.9
    """SGD momentum"""
    weight_decay: float = 5e-4
    """L2 weight decay (every parameter)"""
    widths: IntList = (16, 32, 64)
    """channels of the three 3x3 convolutions, each followed by the norm and ReLU"""
    groups: int = 8
    """GroupNorm's groups (each width must be a multiple; Wu & He's default 32 is for wider
    nets)"""
    train_size: int = 0
    """training images drawn from the training split; 0 = all of it"""
    image_size: Literal[14, 28] = 14
    """input height = width: 14 = the 28x28 images average-pooled 2x2 (a quarter of the
    compute: the full dataset fits the CPU budget), 28 = as stored"""

    def validate(self) -> None:
        """Raise ValueError for a bad training value, named by its flag."""
        if self.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {self.epochs}")
        check_counts(self, ("epochs", "train_size"))
        if not 0 < self.lr < 10:
            raise ValueError(f"--lr must be in (0, 10), got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise ValueError(f"--momentum must be in [0, 1), got {self.momentum}")
        if self.weight_decay < 0:
            raise ValueError(f"--weight-decay must be >= 0, got {self.weight_decay}")
        if len(self.widths) != 3 or min(self.widths) < 1:
            raise ValueError(f"--widths takes three positive channel counts, got {self.widths}")
        if self.groups < 1 or any(w % self.groups for w in self.widths):
            raise ValueError(
                f"--groups {self.groups} must divide every --widths value {self.widths}: "
                "pick a common divisor (e.g. --groups 8 for 16 32 64)"
            )
        if self.train_size < 0:
            raise ValueError(f"--train-size must be >= 0 (0 = all), got {self.train_size}")


@dataclass(frozen=True)
class Config(RunOptions):
    """Test error vs the normalization batch b: BN, Batch Renorm, GroupNorm, LayerNorm and BN
    with precisely recomputed statistics, the SGD batch fixed (Wu & He 2018, Figure 1).

    Each b is Ghost BN (or Ghost Batch Renorm) with ghost batches of b inside SGD batches of
    --sgd-batch, as the GN paper's per-GPU BN; GN and LN do not depend on b and train once per
    seed. --small-sgd-batches adds true small SGD batches for BN and GN (linear lr scaling)
    to tell the normalization-batch effect from the SGD-batch effect. Defaults: a 3-layer
    conv net on full Fashion-MNIST (14x14), 2 epochs, 3 seeds: 54 trainings, about 20-25
    minutes on an idle 2-core CPU with --jobs 2 (the true small SGD batches take two thirds of
    it); --quick runs a taste in under a minute.
    """

    norms: Annotated[tuple[Norm, ...], choice_list(Norm)] = NORMS
    """normalizations trained (bn-precise comes with bn: no training of its own)"""
    norm_batches: IntList = (2, 4, 8, 16, 32, 64)
    """normalization batches b (ghost batch sizes); each must divide --sgd-batch"""
    sgd_batch: int = 64
    """the SGD batch of every ghost run"""
    small_sgd_batches: IntList = (2, 4)
    """true SGD batches for bn and gn (normalization batch = SGD batch; empty: none)"""
    seeds: IntList = (0, 1, 2)
    """one training per seed (init, batch order); 3 give a t-interval"""
    training: Annotated[Training, tyro.conf.OmitArgPrefixes] = Training()
    """training settings (every job's)"""
    dataset: Literal["fashion-mnist", "mnist"] = "fashion-mnist"
    """which dataset (mnist: also runs with only its 10k test split present)"""
    holdout: int = 0
    """test images evaluated; 0 = the whole test split (with only one split present: 2,000
    of it, the rest for training)"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, ~/.cache/bnlab, system dirs, download)"""

    def validate(self) -> None:
        """Every value that could otherwise only fail mid-run, named by its flag."""
        super().validate()
        if not self.norms or len(set(self.norms)) != len(self.norms):
            raise ValueError(f"--norms: give at least one, none repeated (got {self.norms})")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds) or min(self.seeds) < 0:
            raise ValueError(f"--seeds: give at least one seed >= 0, none repeated ({self.seeds})")
        check_counts(self, ("sgd_batch",))
        if self.sgd_batch < 2:
            raise ValueError(f"--sgd-batch must be at least 2, got {self.sgd_batch}")
        if not self.norm_batches or len(set(self.norm_batches)) != len(self.norm_batches):
            raise ValueError(
                f"--norm-batches: give at least one, none repeated (got {self.norm_batches})"
            )
        for b in self.norm_batches:
            if b < 2 or self.sgd_batch % b:
                raise ValueError(
                    f"--norm-batches {b}: each b must be at least 2 and divide --sgd-batch "
                    f"{self.sgd_batch} (ghost batches of b fill an SGD batch), e.g. "
                    f"--norm-batches 2,4,8,16,32,64 with --sgd-batch 64"
                )
        for s in self.small_sgd_batches:
            if not 2 <= s < self.sgd_batch:
                raise ValueError(
                    f"--small-sgd-batches {s}: each must be in 2..{self.sgd_batch - 1} (an SGD "
                    f"batch of --sgd-batch {self.sgd_batch} is the ghost runs' b = "
                    f"{self.sgd_batch}); empty for none"
                )
        if len(set(self.small_sgd_batches)) != len(self.small_sgd_batches):
            raise ValueError(f"--small-sgd-batches repeats a value: {self.small_sgd_batches}")
        if self.holdout < 0:
            raise ValueError(
                f"--holdout must be >= 0 (0 = the whole test split), got {self.holdout}"
            )
        self.training.validate()
        if 0 < self.training.train_size < self.sgd_batch:
            raise ValueError(
                f"--train-size {self.training.train_size} is smaller than one SGD batch "
                f"(--sgd-batch {self.sgd_batch})"
            )
