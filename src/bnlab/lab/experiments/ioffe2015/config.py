"""`bnlab ioffe2015`'s configuration: the command-line flags."""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from bnlab.lab.experiments.protocol import RunOptions
from bnlab.lab.flags import IntList

__all__ = ["NETS", "PAPER_STEPS", "Ioffe2015Config", "Net", "Training"]

Net = Literal["baseline", "bn"]
NETS: tuple[Net, ...] = typing.get_args(Net)
PAPER_STEPS = 50_000  # Figure 1's x axis


@dataclass(frozen=True)
class Training:
    """What a job needs to train one net (flags: --steps, --eval-every, --batch-size, --hidden,
    --layers, --init-std, --lr)."""

    steps: int = 20_000
    """training steps (the paper: 50,000); 20,000 keeps a run within a 10-minute budget"""
    eval_every: int = 250
    """steps between evaluations (accuracy and percentiles): 80 points per curve"""
    batch_size: int = 60
    """the paper's batch size"""
    hidden: int = 100
    """sigmoid units per hidden layer (the paper: 100)"""
    layers: int = 3
    """fully connected hidden layers (the paper: 3)"""
    init_std: float = 0.01
    """std of the Gaussian weight init, biases 0. The paper says only 'small random Gaussian
    values'; 0.01 is the conventional small value (CS231n's 0.01 * randn). The gap in (a)
    depends on this choice: a larger std lets the baseline train faster"""
    lr: float = 0.5
    """SGD learning rate, no momentum, no weight decay (the paper gives no optimizer; plain SGD
    is closest to it). 0.5: sigmoid nets need a large step"""

    def validate(self) -> None:
        """Raise ValueError for a bad value, naming its flag."""
        for name in ("steps", "eval_every", "hidden", "layers"):
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be at least 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(
                f"--batch-size must be at least 2 (BN needs a batch), got {self.batch_size}"
            )
        for name in ("lr", "init_std"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                flag = "--" + name.replace("_", "-")
                raise ValueError(f"{flag} must be a positive number, got {value}")


@dataclass(frozen=True)
class Ioffe2015Config(RunOptions):
    """Ioffe & Szegedy 2015, Figure 1: a sigmoid MLP on MNIST with and without BN.

    The paper trains 50,000 steps; the default here is 20,000 so the run fits a 10-minute
    budget on a 2-core CPU; --steps 50000 runs the paper's length. Each (seed, net) is a job:
    one process per core. --quick runs a taste in under a minute.
    """

    training: Annotated[Training, tyro.conf.OmitArgPrefixes] = Training()
    """training settings (every job's)"""
    test_size: int = 2000
    """held-out digits for test accuracy and the percentiles (with only MNIST's test split
    present it is cut in 8,000 training and 2,000 held-out digits by a seeded permutation)"""
    unit: int = 0
    """which sigmoid of the last hidden layer (b, c) plot; the paper shows 'a typical' one.
    The verdict also uses the mean over all units of the layer"""
    data: Path | None = None
    """directory with the MNIST IDX files (else $BNLAB_DATA, ~/.cache/bnlab, download)"""
    seed: int = 0
    """fixes the held-out split, batch order and init (the same for both nets)"""
    seeds: IntList = ()
    """several seeds, each a full run of both nets (overrides --seed); the figure's (b, c) show
    the first, (a) the mean with a min..max band"""

    @property
    def seed_list(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)

    def validate(self) -> None:
        super().validate()
        self.training.validate()
        hidden = self.training.hidden
        if not 0 <= self.unit < hidden:
            raise ValueError(f"--unit must be in 0..{hidden - 1}, got {self.unit}")
        if self.test_size < 2:
            raise ValueError(f"--test-size must be at least 2, got {self.test_size}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must not repeat a seed, got {self.seeds}")
        if any(s < 0 for s in self.seed_list):
            raise ValueError(f"seeds must be >= 0, got {self.seed_list}")
