"""`bnlab santurkar2018`'s configuration: the command-line flags; the training settings every
job carries are their own dataclass (:class:`Training`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from bnlab.lab.experiments.protocol import RunOptions
from bnlab.lab.flags import FloatList, IntList, StrList

__all__ = ["NETS", "QUANTILES", "VARIANTS", "Config", "Net", "Training", "Variant"]

Net = Literal["cnn", "mlp", "dln"]
Variant = Literal["standard", "bn", "noisy-bn"]
NETS: tuple[Net, ...] = ("cnn", "mlp", "dln")
VARIANTS: tuple[Variant, ...] = ("standard", "bn", "noisy-bn")
IMAGE_NETS = ("cnn", "mlp")
# Percentiles of a unit's activations recorded over training (the paper's Fig. 2 right).
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class Training:
    """What every job of a run trains with besides its (net, variant, seed, lr, steps) (flags:
    --batch-size, --measures, --etas, --noise-mean, --noise-std, --noise-scale, --widths,
    --hidden, --dln-depth, --dln-width)."""

    batch_size: int = 64
    """minibatch size of every run"""
    measures: int = 25
    """measured steps per main run (evenly spaced from step 0 to the end): ICS (one extra
    forward-backward per layer), landscape (one per step size), activations and held-out
    accuracy. 25 keeps the measurements near 30% of a run's time"""
    etas: FloatList = (0.5, 1.0, 2.0, 4.0)
    """step sizes of the landscape measurement, as multiples of the run's lr: the loss and
    gradient are measured at w - eta * lr * grad (the paper moves 0.5x to 4x its lr)"""
    noise_mean: float = 0.5
    """noisy BN: each step, each activation's noise mean ~ U(-noise_mean, noise_mean)"""
    noise_std: float = 0.5
    """noisy BN: each step, each activation's noise std ~ U(0, noise_std), i.i.d. per sample"""
    noise_scale: float = 2.0
    """noisy BN: each step, each activation is also scaled by a factor log-uniform on
    [1/noise_scale, noise_scale] (the variance moves 4x either way)"""
    widths: IntList = (16, 16, 32, 32)
    """the CNN's convolution widths (pairs, each closed by 2x2 max pooling)"""
    hidden: IntList = (256, 256, 256)
    """the MLP's hidden widths"""
    dln_depth: int = 25
    """layers of the deep linear network (the paper's 25)"""
    dln_width: int = 20
    """width (and input/output size) of the deep linear network"""

    def validate(self) -> None:
        """Raise ValueError for a bad value, naming its flag."""
        for name in ("measures", "batch_size", "dln_depth", "dln_width"):
            if getattr(self, name) < (2 if name == "batch_size" else 1):
                raise ValueError(f"--{name.replace('_', '-')} is too small: {getattr(self, name)}")
        if not self.etas or any(e <= 0 for e in self.etas):
            raise ValueError(f"--etas must be positive multiples of the lr, got {self.etas}")
        if self.noise_mean < 0 or self.noise_std < 0 or self.noise_scale < 1:
            raise ValueError(
                "--noise-mean and --noise-std must be >= 0 and --noise-scale >= 1 (a factor "
                "drawn from [1/s, s])"
            )
        if not self.widths or len(self.widths) > 6 or any(w < 1 for w in self.widths):
            raise ValueError(
                f"--widths: 1 to 6 positive conv widths (14x14 input, one 2x2 pool per pair), "
                f"got {self.widths}"
            )
        if any(w < 1 for w in self.hidden):
            raise ValueError(f"--hidden widths must be positive, got {self.hidden}")


@dataclass(frozen=True)
class Config(RunOptions):
    """Santurkar et al. 2018, "How Does Batch Normalization Help Optimization?", at CPU scale:
    noisy BN (Fig. 2), internal covariate shift by Definition 2.1 (Fig. 3), the loss landscape
    along the gradient (Fig. 4) and the learning-rate range, with and without BN, over seeds.

    The paper trains VGG on CIFAR-10 for thousands of steps on a GPU; here a VGG-style CNN and
    an MLP learn Fashion-MNIST (images average-pooled to 14x14) and a 25-layer deep linear
    network learns a random linear map on Gaussian data, as the paper's. The defaults fit
    about 15 minutes on a 2-core CPU (two single-threaded jobs at a time); --quick runs a
    taste of every part in under a minute.
    """

    nets: StrList = NETS
    """networks: cnn (VGG-style, 4 conv layers), mlp (3 x 256 ReLU), dln (deep linear, 25 layers)"""
    seeds: IntList = (0, 1, 2, 3, 4)
    """seeds of the main runs (noisy BN, ICS, landscape): each fixes init, batch order and
    noise; every variant of a seed sees the same batches and starts from the same weights.
    Five: the issue's standard for a verdict, and still inside the budget"""
    steps: int = 1500
    """SGD steps of each main run (batch 64: 1.6 epochs of Fashion-MNIST): what five seeds of
    every net fit in the budget (the paper trains VGG for many epochs)"""
    lr: float = 0.05
    """SGD learning rate of the image nets' main runs (plain SGD, no momentum or weight decay,
    so an update is exactly -lr * gradient, as Definition 2.1's "take their step" reads).
    0.05 trains both standard and BN nets; the sweep (part 4) covers the range"""
    dln_lr: float = 0.03
    """SGD learning rate of the deep linear network (mean squared error): both variants train
    stably from 0.003 to 0.1 (600 steps); 0.03 is mid-range"""
    training: Annotated[Training, tyro.conf.OmitArgPrefixes] = Training()
    """training settings (every job's)"""
    sweep_lrs: FloatList = (0.01, 0.03, 0.1, 0.3, 1.0)
    """learning rates of the sweep (part 4), for the image nets with and without BN"""
    sweep_seeds: IntList = (0, 1, 2)
    """seeds of each sweep point: three give a CI at a third of the main runs' cost"""
    sweep_steps: int = 600
    """SGD steps of each sweep run (a third of an epoch; divergence shows in the first
    hundred)"""
    sweep_nets: StrList = IMAGE_NETS
    """nets in the sweep (cnn, mlp)"""
    dataset: Literal["fashion-mnist", "mnist"] = "fashion-mnist"
    """image dataset (Fashion-MNIST: apt-get install dataset-fashion-mnist)"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, ~/.cache/bnlab, system dirs, download)"""
    subset: int = 0
    """train on the first N training images only (0 = all); for quick checks"""
    eval_size: int = 2000
    """held-out test images scored at each measured step (a CNN forward of 10,000 images
    costs ~40 training steps; 2,000 puts a curve point within +-1 pp)"""
    test_size: int = 0
    """test images scored after the last step (0 = the whole test split)"""
    checkpoint_every: int = 500
    """steps between checkpoints; a resumed run redoes at most this many per job"""

    def validate(self) -> None:
        super().validate()
        for name, values, known in (
            ("--nets", self.nets, NETS),
            ("--sweep-nets", self.sweep_nets, IMAGE_NETS),
        ):
            bad = [v for v in values if v not in known]
            if bad:
                raise ValueError(
                    f"{name}: unknown {', '.join(bad)}; choose from {', '.join(known)}"
                )
            if len(set(values)) != len(values):
                raise ValueError(f"{name} must not repeat a net, got {','.join(values)}")
        if not self.nets and not self.sweep_nets:
            raise ValueError("nothing to run: give --nets or --sweep-nets")
        for name, seeds in (("--seeds", self.seeds), ("--sweep-seeds", self.sweep_seeds)):
            if len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
                raise ValueError(f"{name} must be distinct seeds >= 0, got {seeds}")
        if self.nets and not self.seeds:
            raise ValueError("--seeds: give at least one seed for the main runs")
        if self.sweep_nets and (not self.sweep_seeds or not self.sweep_lrs):
            raise ValueError("--sweep-nets needs --sweep-seeds and --sweep-lrs")
        if self.test_size < 0:
            raise ValueError(f"--test-size must be >= 0 (0: the whole split), got {self.test_size}")
        for name in ("steps", "eval_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} is too small: {getattr(self, name)}")
        self.training.validate()
        if self.sweep_nets and self.sweep_steps < 1:
            raise ValueError(f"--sweep-steps must be at least 1, got {self.sweep_steps}")
        if self.training.measures > self.steps:
            raise ValueError(
                f"--measures ({self.training.measures}) cannot exceed --steps ({self.steps})"
            )
        for name in ("lr", "dln_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if any(lr <= 0 for lr in self.sweep_lrs) or len(set(self.sweep_lrs)) != len(self.sweep_lrs):
            raise ValueError(f"--sweep-lrs must be distinct positive rates, got {self.sweep_lrs}")
        if self.subset < 0:
            raise ValueError(f"--subset must be >= 0 (0: all), got {self.subset}")
        if self.subset and self.subset < self.training.batch_size:
            raise ValueError(f"--subset {self.subset} is smaller than one batch")
        if self.checkpoint_every < 1:
            raise ValueError(f"--checkpoint-every must be at least 1, got {self.checkpoint_every}")
