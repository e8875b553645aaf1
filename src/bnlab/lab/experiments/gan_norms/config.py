"""`bnlab gan-norms`' configuration: ``bnlab gan``'s flags with this experiment's variants,
seeds and scoring as defaults."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Annotated

import tyro

from bnlab.lab.experiments.gan.config import GanConfig, GanTraining, variants_flag
from bnlab.lab.flags import IntList
from bnlab.lab.models.gan import BLOG_VARIANTS, Variant

__all__ = ["NORMS_TRAINING", "NORM_VARIANTS", "NormsConfig"]

# BN with the DCGAN placement (no BN on G's output, D's input or logit), no mode switching: the
# ablation's best cell (f0000-none); the other normalizations take the same placement.
_DCGAN = Variant("bn-dcgan", g_norm=(True, True, False), d_norm=(False, True, False))
NORM_VARIANTS: tuple[Variant, ...] = (
    Variant("none"),  # the blog's He/Xavier model (gan's init)
    Variant(  # notebook 3 as run (gan's init-bn)
        "bn-nb3", g_norm=(True, True, False), d_norm=(False, True, True), modes="notebook3"
    ),
    _DCGAN,
    replace(_DCGAN, name="renorm", g_kind="renorm", d_kind="renorm"),
    replace(_DCGAN, name="vbn", g_kind="vbn"),  # VBN in G; D keeps BN (only G's norm changes)
    replace(_DCGAN, name="ln", g_kind="ln", d_kind="ln"),
    replace(_DCGAN, name="gn", g_kind="gn", d_kind="gn"),
    Variant("sn-d", d_sn=True),  # spectral norm in D, G unnormalized
    Variant("sn-d+bn-g", g_norm=(True, True, False), d_sn=True),  # spectral norm in D, BN in G
)


# --variants takes these names (alone or as a BASE) beside the blog's:
# --variants none,renorm,renorm-g=bn-dcgan:g_kind=renorm
NormVariantList = Annotated[
    tuple[Variant, ...],
    variants_flag({**BLOG_VARIANTS, **{v.name: v for v in NORM_VARIANTS}}),
]


# bnlab gan's training, every variant scored with G in eval and in train mode (the gap).
NORMS_TRAINING = GanTraining(sample_mode="both")


@dataclass(frozen=True)
class NormsConfig(GanConfig):
    """Compare normalizations in the blog's GAN: no normalization, BN (notebook 3; DCGAN
    placement), Batch Renorm, Virtual BN in G, LayerNorm, GroupNorm, spectral norm in D.

    Defaults (issue 20): MNIST, 5 seeds, the blog's 200 epochs, every variant scored in both
    G modes. That is many CPU-hours here (9 variants x 5 seeds x 200 epochs); --quick runs a
    one-minute taste, --epochs and --seeds shorten it, --dataset fashion-mnist switches data.
    """

    variants: NormVariantList = NORM_VARIANTS
    """variants to train (default: the nine of issue 20: none, bn-nb3, bn-dcgan, renorm, vbn,
    ln, gn, sn-d, sn-d+bn-g); as bnlab gan's --variants, these names and the blog's known as
    names and bases, with the keys g_kind / d_kind (bn | renorm | vbn | ln | gn; vbn in G
    only) and d_sn (0/1): e.g. none,renorm,renorm-g=bn-dcgan:g_kind=renorm"""
    seeds: IntList = (0, 1, 2, 3, 4)
    """seeds, each a full run of every variant (paired across variants)"""
    training: Annotated[GanTraining, tyro.conf.OmitArgPrefixes] = NORMS_TRAINING
    """training settings (every job's); scored with G in eval and in train mode"""

    def validate(self) -> None:
        super().validate()
        if self.training.sample_mode != "both":
            raise ValueError(
                "--sample-mode must be both: gan-norms measures the train/eval gap (FD with G "
                f"in eval mode minus in train mode), got {self.training.sample_mode}"
            )
