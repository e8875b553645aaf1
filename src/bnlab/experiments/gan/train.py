"""`bnlab gan`'s jobs: one (seed, variant) of the blog's MNIST GAN, trained chunk by chunk.

Every variant of a seed sees the same batches and the same z at every step, so differences
between variants come from the variant. The training step computes exactly the notebooks'
numbers with less work:

- the D step draws G(z) under ``no_grad`` (the notebook backpropagates into G and then throws
  those gradients away);
- the G step asks autograd for G's gradients only, so D's weight gradients are never formed;
- the dataset sits in memory as uint8 and batches come from indexing a seeded permutation.

See bench/bench_gan.py for the speed against a faithful copy of the notebook loop.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlab.nn as bnn
from bnlab.data import batch_indices, load_dataset, to_unit_range
from bnlab.experiments.common import data_dir_arg, derived_generator, resolve_device
from bnlab.experiments.gan.config import GanConfig, GanTraining
from bnlab.experiments.protocol import ChunkResult, Loaded, Log, emit
from bnlab.images import grid_png
from bnlab.models.gan import Variant, build_discriminator, build_generator
from bnlab.optim import ExactAdam

__all__ = [
    "GanData",
    "GanJob",
    "GanTrainer",
    "is_sample_epoch",
    "load",
    "load_gan_data",
    "plan",
    "sample_path",
    "train_chunk",
]


class NonFiniteLoss(RuntimeError):
    pass


def _norm_layer(kind: str) -> Callable[[int], nn.Module]:
    return bnn.BatchNorm1d if kind == "bnlab" else nn.BatchNorm1d


def cell_key(seed: int, variant: str) -> str:
    return f"s{seed}/{variant}"


def sample_path(variant: str, epoch: int, seed: int, primary: bool, view: str) -> str:
    """samples/<variant>/epoch-NNN.png (eval mode, fixed z) and epoch-NNN-train.png (the
    notebook's view: the last training batch, G in train mode), relative to the run
    directory. Seeds after the first add -s<seed>."""
    suffix = ("" if view == "eval" else f"-{view}") + ("" if primary else f"-s{seed}")
    return f"samples/{variant}/epoch-{epoch:03d}{suffix}.png"


def is_sample_epoch(epoch: int, every: int, last: int) -> bool:
    return epoch == 1 or epoch == last or (every > 0 and epoch % every == 0)


class GanTrainer:
    """G, D and their optimizers for one variant and seed; trains one epoch at a time.

    Args:
        images: (N, 784) uint8, the whole training split (on the training device).
    """

    def __init__(
        self, variant: Variant, cfg: GanTraining, seed: int, images: Tensor, device: torch.device
    ) -> None:
        self.variant, self.cfg, self.seed = variant, cfg, seed
        self.images = images
        self.device = device
        torch.manual_seed(seed)  # init: same Linear weights for variants with the same init
        norm = _norm_layer(cfg.bn)
        self.G = build_generator(variant, cfg.latent, cfg.hidden, images.shape[1], norm).to(device)
        self.D = build_discriminator(variant, cfg.hidden, images.shape[1], norm).to(device)
        self.g_params = list(self.G.parameters())
        self.d_params = list(self.D.parameters())
        # The notebooks' Adam (default betas), bit for bit; see bnlab.optim for why not torch's.
        self.g_opt = ExactAdam(self.g_params, lr=cfg.lr)
        self.d_opt = ExactAdam(self.d_params, lr=cfg.lr)
        b = cfg.batch_size
        self.ones = torch.ones(b, 1, device=device)
        self.zeros = torch.zeros(b, 1, device=device)
        self.last_fake: Tensor | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.images.shape[0] // self.cfg.batch_size  # drop_last

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "g_opt": self.g_opt.state_dict(),
            "d_opt": self.d_opt.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.g_opt.load_state_dict(state["g_opt"])
        self.d_opt.load_state_dict(state["d_opt"])

    def epoch_inputs(self, epoch: int) -> tuple[Tensor, Tensor]:
        """(steps, B) batch indices and (steps, 2, B, latent) z of an epoch (0-based)."""
        cfg = self.cfg
        order = batch_indices(
            self.images.shape[0],
            cfg.batch_size,
            derived_generator(self.seed, "order", epoch),
            shuffle=self.variant.shuffle,
        )
        z = torch.randn(
            self.steps_per_epoch,
            2,
            cfg.batch_size,
            cfg.latent,
            generator=derived_generator(self.seed, "z", epoch),
        )
        return order.to(self.device), z.to(self.device)

    def _d_forward(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        if self.variant.joint_real_fake:
            out = self.D(torch.cat([real, fake]))
            b = real.shape[0]
            return out[:b], out[b:]
        return self.D(real), self.D(fake)

    def step(self, real: Tensor, z_d: Tensor, z_g: Tensor) -> tuple[Tensor, ...]:
        """One D step and one G step, in the variant's modes; returns detached statistics."""
        modes = self.variant.modes
        # --- D step: maximize log D(x) + log(1 - D(G(z)))
        if modes == "notebook3":
            self.G.eval()
        elif modes == "tidy":
            self.D.train()
            self.G.eval()
        with torch.no_grad():
            fake = self.G(z_d)
        d_real, d_fake = self._d_forward(real, fake)
        d_loss = F.binary_cross_entropy(d_real, self.ones) + F.binary_cross_entropy(
            d_fake, self.zeros
        )
        self.d_opt.step(torch.autograd.grad(d_loss, self.d_params))
        # --- G step: maximize log D(G(z)) (non-saturating loss, as in the notebooks)
        if modes != "none":
            self.D.eval()
            self.G.train()
        fake = self.G(z_g)
        g_out = self.D(fake)
        g_loss = F.binary_cross_entropy(g_out, self.ones)
        self.g_opt.step(torch.autograd.grad(g_loss, self.g_params))
        self.last_fake = fake
        return (
            d_loss.detach(),
            g_loss.detach(),
            d_real.detach().mean(),
            d_fake.detach().mean(),
            (g_out.detach() >= 0.5).float().mean(),
        )

    def train_epoch(
        self, epoch: int, on_step: Callable[[int, float, float], None] | None = None
    ) -> dict[str, Any]:
        """Train epoch ``epoch`` (0-based); returns the epoch's means and timings."""
        start = time.perf_counter()
        if self.variant.modes in ("notebook3", "none"):  # both nets train() at epoch start
            self.G.train()
            self.D.train()
        order, z = self.epoch_inputs(epoch)
        stats = torch.zeros(5, device=self.device)
        steps = self.steps_per_epoch
        report_every = max(1, steps // 20)
        for i in range(steps):
            real = to_unit_range(self.images[order[i]])
            try:
                out = self.step(real, z[i, 0], z[i, 1])
            except RuntimeError as exc:  # e.g. BCE refusing a NaN probability
                if self._all_finite():
                    raise
                raise NonFiniteLoss(
                    f"weights became non-finite in epoch {epoch + 1}, step {i + 1} ({exc})"
                ) from exc
            stats += torch.stack(out)
            if on_step is not None and (i + 1) % report_every == 0:
                on_step(i + 1, float(out[0]), float(out[1]))
        means = (stats / steps).tolist()
        seconds = time.perf_counter() - start
        record: dict[str, Any] = dict(
            zip(("d_loss", "g_loss", "d_x", "d_g_z", "g_acc"), means, strict=True)
        )
        if not all(math.isfinite(v) for v in means[:2]):
            raise NonFiniteLoss(
                f"losses became non-finite in epoch {epoch + 1} (D {means[0]}, G {means[1]})"
            )
        record["seconds"] = seconds
        record["images_per_s"] = steps * self.cfg.batch_size / seconds
        return record

    @torch.no_grad()
    def samples_train_mode(self, z: Tensor) -> Tensor:
        """G(z) in train mode, batch by batch of the training batch size, as the notebooks'
        images were made; on a copy, so G's running statistics stay untouched."""
        g = copy.deepcopy(self.G).train()
        z = z.to(self.device)
        b = self.cfg.batch_size
        return torch.cat([g(z[k : k + b]) for k in range(0, z.shape[0] - b + 1, b)])

    def _all_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in (*self.g_params, *self.d_params))

    @torch.no_grad()
    def samples(self, z: Tensor) -> Tensor:
        """G(z) in eval mode (running statistics), restoring G's mode afterwards."""
        was_training = self.G.training
        self.G.eval()
        out = self.G(z.to(self.device))
        self.G.train(was_training)
        return out


# ---- jobs and data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GanJob:
    """One (seed, variant) of a GAN run: trained for ``training.epochs`` epochs."""

    variant: Variant
    seed: int
    training: GanTraining
    primary: bool  # the run's first seed: its sample files carry no -s<seed> suffix
    steps_per_epoch: int

    @property
    def key(self) -> str:
        return cell_key(self.seed, self.variant.name)

    @property
    def total(self) -> int:
        return self.training.epochs

    @property
    def unit_steps(self) -> int:
        return self.steps_per_epoch


@dataclass(eq=False)
class GanData:
    """What every GAN worker needs, shipped once: the images and the metric evaluator."""

    images: Tensor  # (N, 784) uint8, the whole training split
    evaluator: Any  # bnlab.metrics.GanEvaluator, or None without metrics
    description: str  # where the images came from


def load_gan_data(
    dataset: str,
    data: Any,
    split: str,
    subset: int,
    batch_size: int,
    metrics: bool,
    classifier_steps: int,
    device: torch.device,
    log: Log,
) -> GanData:
    """The training images (and the metric classifier, trained once and cached), checked to
    hold at least one batch."""
    ds = load_dataset(dataset, split=split, data_dir=data_dir_arg(data), log=log)
    images = ds.images.reshape(len(ds), -1)
    if subset:
        images = images[:subset]
    images = images.contiguous()
    what = f"{dataset} {ds.split} split, {images.shape[0]:,} images from {ds.source}"
    if images.shape[0] < batch_size:
        raise ValueError(
            f"{what}: fewer images than one batch of {batch_size}; use more data (--subset) "
            "or a smaller --batch-size"
        )
    evaluator = None
    if metrics:
        from bnlab.metrics import ClassifierConfig, GanEvaluator

        evaluator = GanEvaluator.load(
            dataset,
            data_dir=data_dir_arg(data),
            device=device,
            config=ClassifierConfig(steps=classifier_steps),
            log=log,
        )
    return GanData(images, evaluator, what)


def load(cfg: GanConfig, log: Log) -> Loaded:
    device = resolve_device(cfg.device)
    data = load_gan_data(
        cfg.dataset,
        cfg.data,
        cfg.split,
        cfg.subset,
        cfg.batch_size,
        cfg.metrics,
        cfg.classifier_steps,
        device,
        log,
    )
    log(
        f"training {len(cfg.variants)} variant(s) x {len(cfg.seed_list)} seed(s) on "
        f"{data.description}; {cfg.epochs} epochs of {data.images.shape[0] // cfg.batch_size} "
        "steps"
    )
    for v in cfg.variants:
        log("  " + v.describe())
    real = grid_png(to_unit_range(data.images[:100]))
    return Loaded(data, {"data": data.description}, files={"real.png": real})


def plan(cfg: GanConfig, data: GanData) -> list[GanJob]:
    training = cfg.training(str(resolve_device(cfg.device)))
    steps = data.images.shape[0] // cfg.batch_size
    seeds = cfg.seed_list
    return [
        GanJob(v, seed, training, seed == seeds[0], steps) for seed in seeds for v in cfg.variants
    ]


def score_samples(trainer: GanTrainer, evaluator: Any, seed: int) -> dict[str, float]:
    """Image metrics of samples from a fixed z, in the configured G mode(s)."""
    t = trainer.cfg
    z = torch.randn(t.metric_samples, t.latent, generator=derived_generator(seed, "metric-z"))
    out: dict[str, float] = {}
    if t.sample_mode in ("eval", "both"):
        out.update(evaluator.score(trainer.samples(z)))
    if t.sample_mode in ("train", "both"):
        out.update(
            {f"{k}_train": v for k, v in evaluator.score(trainer.samples_train_mode(z)).items()}
        )
    return out


def train_chunk(job: GanJob, state: Any, start: int, end: int, data: GanData) -> ChunkResult:
    """Train epochs [start, end) of one (seed, variant) from ``state``; write nothing."""
    t, variant, seed = job.training, job.variant, job.seed
    device = torch.device(t.device)
    trainer = GanTrainer(variant, t, seed, data.images.to(device), device)
    if state is not None:
        trainer.load_state_dict(state)
    z_fixed = torch.randn(100, t.latent, generator=derived_generator(seed, "sample-z"))
    records: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    failed = None
    done = start
    for epoch in range(start, end):

        def on_step(step: int, d: float, g: float, epoch: int = epoch) -> None:
            emit(job.key, epoch * job.steps_per_epoch + step, f"D {d:.3f} G {g:.3f}")

        try:
            stats = trainer.train_epoch(epoch, on_step)
        except NonFiniteLoss as exc:
            failed = f"{variant.name} (seed {seed}) stopped: {exc}"
            break
        record: dict[str, Any] = {"seed": seed, "variant": variant.name, "epoch": epoch + 1}
        record.update(stats)
        if is_sample_epoch(epoch + 1, t.sample_every, t.epochs):
            for view, images in (
                ("eval", trainer.samples(z_fixed)),
                ("train", trainer.last_fake[:100] if trainer.last_fake is not None else None),
            ):
                if images is not None:
                    path = sample_path(variant.name, epoch + 1, seed, job.primary, view)
                    files[path] = grid_png(images)
            if data.evaluator is not None and (
                t.metrics_at == "sample-epochs" or epoch + 1 == t.epochs
            ):
                record.update(score_samples(trainer, data.evaluator, seed))
        records.append(record)
        done = epoch + 1
    return ChunkResult(done, trainer.state_dict(), records, files, failed)
