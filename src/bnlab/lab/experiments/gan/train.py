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
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlab.nn as bnn
from bnlab.lab.data import batch_indices, load_dataset, to_unit_range
from bnlab.lab.data.fingerprint import not_data
from bnlab.lab.experiments.common import data_dir_arg, resolve_device
from bnlab.lab.experiments.gan.config import DdpBn, GanConfig, GanTraining
from bnlab.lab.experiments.protocol import Loaded, Log
from bnlab.lab.images import grid_png
from bnlab.lab.jobs import ChunkResult, emit
from bnlab.lab.models.gan import (
    VBN_REFERENCE,
    Variant,
    build_discriminator,
    build_generator,
)
from bnlab.lab.optim import ExactAdam
from bnlab.lab.runners import ddp
from bnlab.lab.seeding import derived_generator

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
        world_size: ranks that train this (seed, variant) together (torchrun); 1 = one process.
        ddp_bn: with several ranks, SyncBatchNorm ("sync") or per-rank BN ("local").
    """

    def __init__(
        self,
        variant: Variant,
        cfg: GanTraining,
        seed: int,
        images: Tensor,
        device: torch.device,
        world_size: int = 1,
        ddp_bn: DdpBn = "sync",
    ) -> None:
        self.variant, self.cfg, self.seed = variant, cfg, seed
        self.images = images
        self.device = device
        torch.manual_seed(seed)  # init: same Linear weights for variants with the same init
        norm = _norm_layer(cfg.bn)
        size, fused = images.shape[1], cfg.fused
        reference = None
        if variant.g_kind == "vbn":  # Virtual BN's reference z: fixed per seed, drawn once
            gen = derived_generator(seed, "vbn-reference")
            reference = torch.randn(VBN_REFERENCE, cfg.latent, generator=gen)
        self.G = build_generator(variant, cfg.latent, cfg.hidden, size, norm, fused, reference).to(
            device
        )
        self.D = build_discriminator(variant, cfg.hidden, size, norm, fused).to(device)
        self.g_params = list(self.G.parameters())
        self.d_params = list(self.D.parameters())
        # The notebooks' Adam (default betas), bit for bit; see bnlab.lab.optim for why not torch's.
        self.g_opt = ExactAdam(self.g_params, lr=cfg.lr)
        self.d_opt = ExactAdam(self.d_params, lr=cfg.lr)
        b = cfg.batch_size
        self.ones = torch.ones(b, 1, device=device)
        self.zeros = torch.zeros(b, 1, device=device)
        self.last_fake: Tensor | None = None
        # How this process takes part in a step: the whole batch, or its rank's slice of it.
        self.dp = DataParallel(self, world_size, ddp_bn) if world_size > 1 else None
        self.part: OneProcess | DataParallel = self.dp or OneProcess(self)

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

    def begin_epoch(self, epoch: int) -> tuple[Tensor, Tensor]:
        """The notebooks' mode calls at an epoch's start, and the epoch's inputs (see
        :meth:`epoch_inputs`); then :meth:`step` on each batch is the epoch."""
        if self.variant.modes in ("notebook3", "none"):  # both nets train() at epoch start
            self.G.train()
            self.D.train()
        return self.epoch_inputs(epoch)

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
        """One D step and one G step, in the variant's modes: the notebooks' training step, the
        one step of every path (one process, or each rank's part of a data-parallel step).
        Returns detached statistics of the whole batch (D loss, G loss, D(x), D(G(z)), G's
        accuracy at fooling D)."""
        part, modes = self.part, self.variant.modes
        real, z_d, z_g = part.batch(real), part.batch(z_d), part.batch(z_g)
        # --- D step: maximize log D(x) + log(1 - D(G(z)))
        if modes == "notebook3":
            self.G.eval()
        elif modes == "tidy":
            self.D.train()
            self.G.eval()
        with torch.no_grad():
            fake = self.G(z_d)
        d_real, d_fake = part.d_forward(real, fake)
        d_loss = F.binary_cross_entropy(d_real, part.ones) + F.binary_cross_entropy(
            d_fake, part.zeros
        )
        self.d_opt.step(part.d_grads(d_loss))
        # --- G step: maximize log D(G(z)) (non-saturating loss, as in the notebooks)
        if modes != "none":
            self.D.eval()
            self.G.train()
        fake = part.generate(z_g)
        g_out = self.D(fake)
        g_loss = F.binary_cross_entropy(g_out, part.ones)
        self.g_opt.step(part.g_grads(g_loss, fake))
        self.last_fake = fake.detach()
        return part.stats(d_loss, g_loss, d_real, d_fake, g_out)

    def train_epoch(
        self, epoch: int, on_step: Callable[[int, float, float], None] | None = None
    ) -> dict[str, Any]:
        """Train epoch ``epoch`` (0-based); returns the epoch's means and timings."""
        start = time.perf_counter()
        order, z = self.begin_epoch(epoch)
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
        if self.dp is not None:  # on this rank alone: no collectives
            g = bnn.SyncBatchNorm.revert_sync_batchnorm(g)
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


class DataParallel:
    """A step's plumbing on all ranks of a torchrun launch (see :meth:`GanTrainer.step`, the
    same step as in one process): each rank takes its slice of the global
    batch (the same rows and z as the single-process run) and DistributedDataParallel averages
    the gradients; with ``ddp_bn="sync"`` every BN layer is a SyncBatchNorm, so the step
    equals the single-process one up to float32 reduction order; with ``"local"`` each rank
    normalizes its own slice ("ghost" batches of B/N).

    Two DDP pitfalls of BN GANs, and what happens here instead:

    - ``broadcast_buffers=True`` (DDP's default) copies rank 0's buffers to every rank at each
      forward: with two D forwards per step it overwrites the running statistics the first
      forward updated, and with per-rank BN it silently replaces each rank's statistics by
      rank 0's. Here: ``broadcast_buffers=False``; SyncBN keeps the statistics identical on
      every rank by construction, and the checkpoint holds rank 0's.
    - D's BN layers also update their running statistics in the G step, on fake batches, as in
      the notebooks. D's real and fake forwards of the D step go through ONE DDP forward (a
      pair module), and the G step calls the plain D module, so DDP never sees a second
      forward before a backward, and D's weight gradients are never formed in the G step.
    """

    def __init__(self, trainer: GanTrainer, world_size: int, ddp_bn: DdpBn) -> None:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.t = trainer
        self.world, self.rank = dist.get_world_size(), dist.get_rank()
        if world_size != self.world:
            raise ValueError(
                f"the job expects {world_size} ranks, torch.distributed has {self.world}"
            )
        if ddp_bn == "sync":
            trainer.G = bnn.SyncBatchNorm.convert_sync_batchnorm(trainer.G)
            trainer.D = bnn.SyncBatchNorm.convert_sync_batchnorm(trainer.D)
        b = trainer.cfg.batch_size
        sizes = [b // self.world + (1 if r < b % self.world else 0) for r in range(self.world)]
        self.lo = sum(sizes[: self.rank])
        self.hi = self.lo + sizes[self.rank]
        # DDP averages gradients over ranks; scaling each rank's mean loss by its share of the
        # global batch times the world size makes that average the global mean's gradient.
        self.scale = sizes[self.rank] * self.world / b
        self.ones, self.zeros = trainer.ones[self.lo : self.hi], trainer.zeros[self.lo : self.hi]
        ids = None if trainer.device.type == "cpu" else [trainer.device.index or 0]
        with warnings.catch_warnings():
            # torch 2.13 deprecates broadcast_buffers for forward_sync_buffers, whose False
            # still syncs buffers at construction; rank-local ("ghost") BN statistics need
            # exactly what broadcast_buffers=False does.
            warnings.simplefilter("ignore", FutureWarning)
            self.G = DDP(trainer.G, device_ids=ids, broadcast_buffers=False)
            self.D_pair = DDP(_RealFake(trainer), device_ids=ids, broadcast_buffers=False)

    def batch(self, t: Tensor) -> Tensor:
        """This rank's rows of a global batch."""
        return t[self.lo : self.hi]

    def d_forward(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        return self.D_pair(real, fake)

    def d_grads(self, d_loss: Tensor) -> list[Tensor]:
        (d_loss * self.scale).backward()  # through DDP: averaged over ranks
        return _take_grads(self.t.d_params)

    def generate(self, z: Tensor) -> Tensor:
        return self.G(z)

    def g_grads(self, g_loss: Tensor, fake: Tensor) -> list[Tensor]:
        (grad_fake,) = torch.autograd.grad(g_loss * self.scale, fake)  # no D weight gradients
        fake.backward(grad_fake)  # through DDP(G): the gradients are averaged over ranks
        return _take_grads(self.t.g_params)

    def stats(
        self, d_loss: Tensor, g_loss: Tensor, d_real: Tensor, d_fake: Tensor, g_out: Tensor
    ) -> tuple[Tensor, ...]:
        """The step's statistics over the global batch (sums of each rank's slice)."""
        import torch.distributed as dist

        n = self.hi - self.lo
        local = torch.stack(
            [
                d_loss.detach() * n,
                g_loss.detach() * n,
                d_real.detach().sum(),
                d_fake.detach().sum(),
                (g_out.detach() >= 0.5).float().sum(),
            ]
        )
        dist.all_reduce(local)
        return tuple(local / self.t.cfg.batch_size)


class OneProcess:
    """A step's plumbing in one process (see :meth:`GanTrainer.step`): the whole batch; the D
    step asks autograd for D's gradients only (no G backward), the G step for G's only (D's
    weight gradients are never formed)."""

    def __init__(self, trainer: GanTrainer) -> None:
        self.t = trainer
        self.ones, self.zeros = trainer.ones, trainer.zeros

    def batch(self, t: Tensor) -> Tensor:
        return t

    def d_forward(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        return self.t._d_forward(real, fake)

    def d_grads(self, d_loss: Tensor) -> list[Tensor]:
        return list(torch.autograd.grad(d_loss, self.t.d_params))

    def generate(self, z: Tensor) -> Tensor:
        return self.t.G(z)

    def g_grads(self, g_loss: Tensor, fake: Tensor) -> list[Tensor]:
        return list(torch.autograd.grad(g_loss, self.t.g_params))

    def stats(
        self, d_loss: Tensor, g_loss: Tensor, d_real: Tensor, d_fake: Tensor, g_out: Tensor
    ) -> tuple[Tensor, ...]:
        return (
            d_loss.detach(),
            g_loss.detach(),
            d_real.detach().mean(),
            d_fake.detach().mean(),
            (g_out.detach() >= 0.5).float().mean(),
        )


class _RealFake(nn.Module):
    """D on a real and a fake batch in one forward call (one DDP forward per D step)."""

    def __init__(self, trainer: GanTrainer) -> None:
        super().__init__()
        self.trainer = [trainer]  # a list: not a registered submodule (D is, below)
        self.D = trainer.D

    def forward(self, real: Tensor, fake: Tensor) -> tuple[Tensor, Tensor]:
        return self.trainer[0]._d_forward(real, fake)


def _take_grads(params: list[nn.Parameter]) -> list[Tensor]:
    grads = []
    for p in params:
        assert p.grad is not None
        grads.append(p.grad)
        p.grad = None
    return grads


# ---- jobs and data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class GanJob:
    """One (seed, variant) of a GAN run: trained for ``training.epochs`` epochs."""

    variant: Variant
    seed: int
    training: GanTraining
    device: str  # where to train, resolved from --device (with N ranks on CUDA: this rank's GPU)
    primary: bool  # the run's first seed: its sample files carry no -s<seed> suffix
    steps_per_epoch: int
    world_size: int = 1  # --nproc: ranks that train the job together (torchrun)
    ddp_bn: DdpBn = "sync"  # --ddp-bn: what BN normalizes over with several ranks

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
    evaluator: Any  # bnlab.lab.metrics.GanEvaluator, or None without metrics
    description: str = not_data()  # where the images came from


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
        from bnlab.lab.metrics import ClassifierConfig, GanEvaluator

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
    tr = cfg.training
    data = load_gan_data(
        cfg.dataset,
        cfg.data,
        cfg.split,
        cfg.subset,
        tr.batch_size,
        tr.metrics,
        cfg.classifier_steps,
        device,
        log,
    )
    log(
        f"training {len(cfg.variants)} variant(s) x {len(cfg.seed_list)} seed(s) on "
        f"{data.description}; {tr.epochs} epochs of {data.images.shape[0] // tr.batch_size} "
        "steps"
    )
    for v in cfg.variants:
        log("  " + v.describe())
    real = grid_png(to_unit_range(data.images[:100]))
    meta: dict[str, Any] = {"data": data.description}
    if cfg.nproc > 1:
        meta["data_parallel"] = data_parallel_note(cfg.nproc, tr.batch_size, cfg.ddp_bn)
        log(meta["data_parallel"])
    return Loaded(data, meta, files={"real.png": real})


def data_parallel_note(nproc: int, batch_size: int, ddp_bn: str) -> str:
    """What a data-parallel run's BN layers normalize over, as config.json records it."""
    per_rank = f"{batch_size // nproc}" + (
        "" if batch_size % nproc == 0 else "-" + str(batch_size // nproc + 1)
    )
    if ddp_bn == "sync":
        return (
            f"{nproc} ranks x {per_rank} rows; SyncBatchNorm: statistics over the global batch "
            f"of {batch_size}, as the one-process run (equal up to float32 reduction order)"
        )
    return (
        f"{nproc} ranks x {per_rank} rows; per-rank BN: statistics over each rank's {per_rank} "
        f"rows ('ghost' batches), not the global {batch_size}: results differ from the "
        "one-process run"
    )


def plan(cfg: GanConfig, data: GanData) -> list[GanJob]:
    device = resolve_device(cfg.device)
    if device.type == "cuda" and ddp.world_size() > 1:
        device = torch.device("cuda", torch.cuda.current_device())  # this rank's GPU
    steps = data.images.shape[0] // cfg.training.batch_size
    seeds = cfg.seed_list
    return [
        GanJob(v, seed, cfg.training, str(device), seed == seeds[0], steps, cfg.nproc, cfg.ddp_bn)
        for seed in seeds
        for v in cfg.variants
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
    device = torch.device(job.device)
    trainer = GanTrainer(
        variant, t, seed, data.images.to(device), device, job.world_size, job.ddp_bn
    )
    if state is not None:
        trainer.load_state_dict(state)
    z_fixed = torch.randn(100, t.latent, generator=derived_generator(seed, "sample-z"))
    records: list[dict[str, Any]] = []
    files: dict[str, bytes] = {}
    failed = None
    done = start
    driver = ddp.rank() == 0  # only one rank draws and scores samples (all hold the same G)
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
        if driver and is_sample_epoch(epoch + 1, t.sample_every, t.epochs):
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
                try:
                    record.update(score_samples(trainer, data.evaluator, seed))
                except Exception as exc:  # keep the trained epoch: it is checkpointed anyway
                    failed = f"scoring epoch {epoch + 1} failed: {type(exc).__name__}: {exc}"
        records.append(record)
        done = epoch + 1
        if failed:
            break
    return ChunkResult(done, trainer.state_dict(), records, files, failed)
