"""`bnlab gan-ablation`: which of notebook 2's differences made its BN GAN fail?

Notebook 2 ("Init&BN, fail") differs from notebook 3 ("Init&BN") in several ways at once: BN
on G's output layer, BN on D's first layer, no mode switching, an unshuffled loader. Both keep
BN on D's single-unit logit. This experiment trains a full factorial design over

    logit_bn  BN on D's logit (BatchNorm1d(1) before the Sigmoid)        off / on
    g_out_bn  BN on G's output layer (before the Tanh)                   off / on
    d_in_bn   BN on D's first layer                                      off / on
    joint     D scores real and fake as one concatenated batch           off / on
    modes     none (always train, nb 2) / notebook3 (its exact calls) / tidy

(2 x 2 x 2 x 2 x 3 = 48 cells; every cell keeps BN after G's Linear 1-2 and D's Linear 2, as
both notebooks do), plus notebook 2 and notebook 3 exactly as run (unshuffled / shuffled) to
measure shuffling. Every cell is a GAN variant trained by ``bnlab gan``'s machinery (same
batches and z per seed, processes, resume per cell), and scored after its last epoch with the
metric classifier, with G in eval and in train mode (the evaluation factor costs no training).

Analysis: log Frechet distance (FD is multiplicative: a broken GAN is 10x worse, not +x) is
fitted with main effects and all two-way interactions by least squares; higher-order
interactions pool into the error, whose residual variance gives t confidence intervals.
Effects are reported as FD ratios. The cell means also give a plain path from notebook 2 to
notebook 3: which single change repairs the broken run, and which single change breaks the
working one.
"""

from __future__ import annotations

import dataclasses
import itertools
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bnlab.lab.experiments.gan.config import GanTraining, validate_run_shape
from bnlab.lab.experiments.protocol import RunOptions
from bnlab.lab.flags import IntList
from bnlab.lab.models.gan import Modes, Variant

__all__ = ["CELL_TRAINING", "AblationConfig", "Cell", "design"]

TWO_LEVEL = ("logit_bn", "g_out_bn", "d_in_bn", "joint")
MODES: tuple[Modes, ...] = typing.get_args(Modes)
# Every cell trains like bnlab gan's defaults (batch 100, Adam 2e-4, BN from bnlab), sample
# grids at epoch 1 and the last only, scored once after its last epoch in both G modes (the
# evaluation factor). --epochs and --metric-samples are the ablation's own flags.
CELL_TRAINING = GanTraining(sample_every=0, metrics=True, metrics_at="last", sample_mode="both")
FACTOR_TEXT = {
    "logit_bn": "BN on D's logit",
    "g_out_bn": "BN on G's output",
    "d_in_bn": "BN on D's first layer",
    "joint": "real+fake in one D batch",
    "modes": "mode switching",
}


@dataclass(frozen=True)
class AblationConfig(RunOptions):
    """Isolate the cause of notebook 2's failure: full factorial over BN placement, mode
    switching and real/fake batching, several seeds, scored with the GAN metrics.

    Default budget: 50 cells x 2 seeds x 20 epochs on the 10k MNIST split, about 30 minutes on
    a 2-core CPU. The full-scale version (60k train split, 200 epochs, 5 seeds) costs about
    50 x 5 x 200 x 600 steps: ~100 CPU-hours here, or a few GPU-hours.
    """

    seeds: IntList = (0, 1)
    """seeds: each a full replicate of the design (paired across cells)"""
    epochs: int = 20
    """epochs per cell: long enough for a working GAN to draw digits and a broken one to show"""
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    """which dataset"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, cache, system dirs, download)"""
    subset: int = 0
    """train on the first N images only (0 = the whole split); for quick checks"""
    metric_samples: int = 5_000
    """samples scored per cell and G mode (5,000 keeps scoring a small share of the budget)"""
    cells: Literal["all", "factorial", "notebooks"] = "all"
    """which cells: the 48-cell factorial plus the two notebooks (all), or one part"""
    classifier_steps: int = 1000
    """training steps of the metric classifier (cached per setting; as bnlab gan's)"""
    checkpoint_every: int = 5
    """epochs between checkpoints of a cell"""

    def cell_training(self) -> GanTraining:
        """What every cell trains with: :data:`CELL_TRAINING` for --epochs epochs, scored on
        --metric-samples samples."""
        return dataclasses.replace(
            CELL_TRAINING, epochs=self.epochs, metric_samples=self.metric_samples
        )

    def validate(self) -> None:
        super().validate()
        self.cell_training().validate()
        validate_run_shape(self.subset, self.checkpoint_every)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds: give distinct seeds, got {self.seeds}")


@dataclass(frozen=True)
class Cell:
    """One cell of the design: factor levels -> a GAN variant."""

    logit_bn: bool
    g_out_bn: bool
    d_in_bn: bool
    joint: bool
    modes: Modes
    shuffle: bool = True
    label: str = ""  # set for the notebooks' own configurations

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        bits = "".join("1" if getattr(self, f) else "0" for f in TWO_LEVEL)
        return f"f{bits}-{self.modes}"

    def variant(self) -> Variant:
        return Variant(
            self.name,
            init="he-xavier",
            g_norm=(True, True, self.g_out_bn),
            d_norm=(self.d_in_bn, True, self.logit_bn),
            modes=self.modes,
            joint_real_fake=self.joint,
            shuffle=self.shuffle,
        )


NOTEBOOK2 = Cell(True, True, True, False, "none", shuffle=False, label="notebook2")
NOTEBOOK3 = Cell(True, False, False, False, "notebook3", shuffle=True, label="notebook3")
NOTEBOOK3_UNSHUFFLED = dataclasses.replace(NOTEBOOK3, shuffle=False, label="notebook3-unshuffled")
NOTEBOOK2_SHUFFLED = dataclasses.replace(NOTEBOOK2, shuffle=True, label="notebook2-shuffled")


def design(which: str = "all") -> list[Cell]:
    cells = []
    if which in ("all", "factorial"):
        for logit, g_out, d_in, joint in itertools.product([False, True], repeat=4):
            for modes in MODES:
                cells.append(Cell(logit, g_out, d_in, joint, modes))
    if which in ("all", "notebooks"):
        cells += [NOTEBOOK2, NOTEBOOK2_SHUFFLED, NOTEBOOK3, NOTEBOOK3_UNSHUFFLED]
    return cells
