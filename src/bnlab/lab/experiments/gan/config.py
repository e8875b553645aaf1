"""`bnlab gan`'s configuration: the command-line flags, the training settings of a job among
them (:class:`GanTraining`, nested: its flags keep their flat names)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tyro

from bnlab.lab.experiments.protocol import RunOptions, check_counts, validate_training
from bnlab.lab.flags import IntList
from bnlab.lab.models.gan import BLOG_VARIANTS, Variant, parse_variant

__all__ = [
    "DEFAULT_VARIANTS",
    "DdpBn",
    "GanConfig",
    "GanTraining",
    "VariantList",
    "validate_run_shape",
    "variants_flag",
]

DEFAULT_VARIANTS: tuple[Variant, ...] = tuple(BLOG_VARIANTS.values())


def variants_flag(known: Mapping[str, Variant]) -> tyro.constructors.PrimitiveConstructorSpec:
    """How ``--variants`` reads ``plain,mine=init-bn:modes=tidy``: parsed once, here at the
    command-line edge, into Variant values (names and bases from ``known``); everything after
    this passes the typed values."""
    return tyro.constructors.PrimitiveConstructorSpec(
        nargs=1,
        metavar="NAME[=BASE:key=value...],...",
        instance_from_str=lambda args: tuple(
            parse_variant(t, known) for t in args[0].split(",") if t.strip()
        ),
        is_instance=lambda x: isinstance(x, tuple),
        str_from_instance=lambda x: [",".join(v.spec() for v in x)],
    )


VariantList = Annotated[tuple[Variant, ...], variants_flag(BLOG_VARIANTS)]


DdpBn = Literal["sync", "local"]


@dataclass(frozen=True)
class GanTraining:
    """What a GAN job needs to train and score one (seed, variant) (flags of ``bnlab gan``:
    --epochs, --bn, --fused, --batch-size, --lr, --latent, --hidden, --sample-every,
    --metrics, --metrics-at, --metric-samples, --sample-mode). ``bnlab gan-ablation`` trains
    its cells with these settings too (see its ``AblationConfig.cell_training``)."""

    epochs: int = 200
    """passes over the training split (the blog: 200; at most 2147483647, as every count
    flag: --batch-size, --latent, --hidden, --metric-samples, ...)"""
    bn: Literal["bnlab", "torch"] = "bnlab"
    """whose BatchNorm1d the BN variants use (torch's for comparison)"""
    fused: bool = False
    """a hidden layer's BN and LeakyReLU as one fused bnlab.nn.BatchNormAct1d (one kernel each
    way; the same numbers up to float32 rounding)"""
    batch_size: int = 100
    """the notebooks' batch size (drop_last)"""
    lr: float = 2e-4
    """Adam learning rate, default betas, as in the notebooks"""
    latent: int = 64
    """size of z"""
    hidden: int = 256
    """width of the hidden layers of G and D"""
    sample_every: int = 25
    """save sample grids (and score samples) at epoch 1, every N epochs and the last (the
    blog: 1 and every 25)"""
    metrics: bool = True
    """score samples (Frechet distance, class coverage, stray dots) on a classifier trained
    and cached by bnlab (first use: about 20 s)"""
    metrics_at: Literal["sample-epochs", "last"] = "sample-epochs"
    """when to score: at every sample epoch (curves), or only after the last epoch (cheaper)"""
    metric_samples: int = 10_000
    """samples from a fixed z per scoring (10,000 as usual for FID-style metrics)"""
    sample_mode: Literal["eval", "train", "both"] = "eval"
    """G's mode when scoring: eval (running statistics, what a user deploys), train (batch
    statistics over batches of --batch-size, what the blog's images showed), or both"""

    def validate(self) -> None:
        """Every value that could otherwise only fail mid-run, named by its flag."""
        validate_training(self, at_least_one=("epochs", "latent", "hidden"))
        check_counts(self, ("sample_every", "metric_samples"))
        if self.sample_every < 0:
            raise ValueError(
                f"--sample-every must be >= 0 (0: first and last epoch), got {self.sample_every}"
            )
        if self.metrics and self.metric_samples < 2:
            raise ValueError(
                f"--metric-samples must be at least 2 (a covariance), got {self.metric_samples}"
            )
        if self.fused and self.bn != "bnlab":
            raise ValueError("--fused uses bnlab's BatchNormAct1d: it needs --bn bnlab")


@dataclass(frozen=True)
class GanConfig(RunOptions):
    """Reproduce the blog's MNIST GAN notebooks side by side: all variants, same batches and z.

    Defaults are the blog's: five variants, seed 777, 200 epochs over whatever MNIST split is
    present. On a 2-core CPU that takes 10-20 minutes on the 10k test split and one to two
    hours on the full 60k train split; --epochs shortens it, --quick runs a 30-second taste.
    """

    variants: VariantList = DEFAULT_VARIANTS
    """variants to train: blog names (plain, init, init-bn, init-bn-tidy, init-bn-nomode) or
    new ones as NAME=BASE:key=value:... (keys init, g_norm, d_norm, modes, joint_real_fake,
    shuffle; e.g. mine=init-bn:modes=tidy:d_norm=010)"""
    training: Annotated[GanTraining, tyro.conf.OmitArgPrefixes] = GanTraining()
    """training settings (every job's)"""
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    """which dataset"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, ~/.cache/bnlab, system dirs, download)"""
    split: Literal["any", "train", "test"] = "any"
    """split to train on; any = train if present, else test (said at start)"""
    seed: int = 777
    """the notebooks' seed: fixes init, data order and z"""
    seeds: IntList = ()
    """several seeds, each a full run of every variant (overrides --seed)"""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """where to train; auto = cuda if available"""
    subset: int = 0
    """train on the first N images only (0 = the whole split); for quick checks"""
    classifier_steps: int = 1000
    """training steps of the metric classifier (cached per setting; 1000: 99.2% on MNIST)"""
    checkpoint_every: int = 5
    """epochs between checkpoints; a resumed run redoes at most this many"""
    nproc: int = 1
    """train each (seed, variant) data-parallel on N processes (torchrun, DistributedDataParallel;
    global batch --batch-size split over them); same as torchrun --nproc-per-node N -m bnlab gan"""
    ddp_bn: DdpBn = "sync"
    """with --nproc > 1: sync = SyncBatchNorm (statistics over the global batch: the
    single-process numbers), local = each rank normalizes its own B/N rows ("ghost" batches)"""
    tensorboard: bool = False
    """also log losses, metrics and sample grids to RUN_DIR/tensorboard (needs the tensorboard
    package: pip install 'bnlab[tensorboard]')"""

    @property
    def seed_list(self) -> tuple[int, ...]:
        return self.seeds or (self.seed,)

    def validate(self) -> None:
        super().validate()
        names = [v.name for v in self.variants]
        if not names:
            raise ValueError("--variants: give at least one variant")
        if len(set(names)) != len(names):
            raise ValueError(f"variant names must be unique, got {', '.join(names)}")
        self.training.validate()
        self._validate_data_parallel()
        validate_run_shape(self.subset, self.checkpoint_every)
        check_counts(self, ("subset", "checkpoint_every", "classifier_steps", "nproc"))
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"--seeds must not repeat a seed, got {self.seeds}")
        if any(s < 0 for s in self.seed_list):
            raise ValueError(f"seeds must be >= 0, got {self.seed_list}")
        if self.nproc > 1 and self.runner != "local":
            raise ValueError("--nproc trains data-parallel with torchrun: use --runner local")
        if self.classifier_steps < 1:
            raise ValueError(f"--classifier-steps must be at least 1, got {self.classifier_steps}")
        if self.tensorboard:
            try:
                import torch.utils.tensorboard  # noqa: F401
            except ImportError:
                raise ValueError(
                    "--tensorboard needs the tensorboard package: pip install 'bnlab[tensorboard]'"
                ) from None

    def _validate_data_parallel(self) -> None:
        """--nproc and --ddp-bn against the training settings: every rank needs rows."""
        tr = self.training
        if tr.fused and self.nproc > 1:
            # convert_sync_batchnorm makes a SyncBatchNorm of every BN layer, activation lost
            raise ValueError("--fused has no data-parallel (SyncBatchNorm) form: drop --nproc")
        if self.nproc < 1:
            raise ValueError(f"--nproc must be at least 1, got {self.nproc}")
        other = [v.name for v in self.variants if not v.norms_are_bn]
        if self.nproc > 1 and other:
            # convert_sync_batchnorm would turn Batch Renorm and Virtual BN into plain SyncBN
            raise ValueError(
                f"--nproc {self.nproc}: variants {', '.join(other)} use a normalization other "
                "than BN (g_kind/d_kind/d_sn), which has no data-parallel form here: drop --nproc"
            )
        per_rank = tr.batch_size // self.nproc
        if self.nproc > 1 and (per_rank < 1 or (self.ddp_bn == "local" and per_rank < 2)):
            need = "2 values per rank (--ddp-bn local)" if self.ddp_bn == "local" else "1 per rank"
            raise ValueError(
                f"--batch-size {tr.batch_size} over --nproc {self.nproc} ranks leaves "
                f"{per_rank} per rank; need {need}"
            )


def validate_run_shape(subset: int, checkpoint_every: int) -> None:
    """The data and checkpoint flags shared with the ablation."""
    if subset < 0:
        raise ValueError(f"--subset must be >= 0 (0: the whole split), got {subset}")
    if checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be at least 1, got {checkpoint_every}")
