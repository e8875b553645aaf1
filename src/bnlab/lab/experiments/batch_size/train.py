"""`bnlab batch-size`' jobs: one small conv net per (norm, batch, seed), trained epoch by
epoch, measured after each epoch in eval mode and, after the last, in train mode and (BN) with
precisely recomputed statistics.

A ghost job trains with SGD batches of ``--sgd-batch`` and normalizes each chunk of b rows
alone (:class:`bnlab.nn.GhostBatchNorm2d`, :class:`bnlab.nn.GhostBatchRenorm2d`): the GN
paper's "images per GPU" with the SGD batch fixed. A small-SGD job trains with SGD batches of
b itself (plain BN or GN), the learning rate scaled by b / --sgd-batch, the same epochs (so
--sgd-batch / b times the steps).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlab.nn as bnn
from bnlab.lab.data import batch_indices, to_unit_range
from bnlab.lab.experiments import common
from bnlab.lab.experiments.batch_size.config import BATCH_FREE, Config, Training
from bnlab.lab.experiments.protocol import Loaded, Log
from bnlab.lab.jobs import ChunkResult, emit
from bnlab.lab.seeding import derived_generator, derived_seed

__all__ = [
    "PRECISE_IMAGES",
    "BatchSizeData",
    "BatchSizeJob",
    "build",
    "load",
    "plan",
    "train_chunk",
    "train_mode_error",
]

# Training images of the precise recomputation pass (fvcore's precise BN uses ~200 batches).
PRECISE_IMAGES = 10_000
EVAL_BATCH = 1000  # eval-mode forwards: no example depends on another, chunked for memory
Regime = Literal["ghost", "small-sgd"]


@dataclass(frozen=True)
class BatchSizeJob:
    """One training: ``norm`` with normalization batch ``b`` and SGD batch ``batch``."""

    norm: str
    b: int  # normalization batch (ghost size; = batch for small-SGD, GN and LN runs)
    batch: int  # SGD batch
    regime: Regime
    seed: int
    lr: float  # the learning rate at this SGD batch (linearly scaled for small-SGD runs)
    training: Training
    train_size: int  # training images actually used

    @property
    def key(self) -> str:
        return f"{self.norm}-b{self.b}-sgd{self.batch}-s{self.seed}"

    @property
    def total(self) -> int:
        return self.training.epochs

    @property
    def unit_steps(self) -> int:
        return self.train_size // self.batch  # drop_last


@dataclass(eq=False)
class BatchSizeData:
    """What every worker needs, shipped once: the images as uint8 (a quarter of float32's
    bytes) and the split's indices."""

    digits: common.Digits
    split: common.Split


def load(cfg: Config, log: Log) -> Loaded:
    """The training split and the test images (see ``--holdout``)."""
    digits = common.load_digits(cfg.dataset, cfg.data, log)
    holdout = cfg.holdout or (len(digits.held_labels) if digits.two_splits else 2000)
    split = digits.split(holdout, common.SPLIT_SEED)
    n_pool = len(split.train)
    n = cfg.training.train_size or n_pool
    if n > n_pool:
        raise ValueError(f"--train-size {n} exceeds the training images ({n_pool:,})")
    log(split.description)
    log(f"{len(plan(cfg, None, n))} trainings of a conv net on {n:,} images")
    return Loaded(BatchSizeData(digits, split), {"data": split.description, "train_images": n})


def plan(cfg: Config, data: BatchSizeData | None, n: int | None = None) -> list[BatchSizeJob]:
    """Small-SGD jobs (bn and gn x --small-sgd-batches x seed: the longest, so they start
    first and the workers finish together), then ghost jobs (norm x b x seed; GN and LN once
    per seed)."""
    if n is None:
        assert data is not None
        n = cfg.training.train_size or len(data.split.train)
    t, sgd = cfg.training, cfg.sgd_batch
    jobs: list[BatchSizeJob] = []
    for s in sorted(cfg.small_sgd_batches):
        for seed in cfg.seeds:
            jobs += [
                BatchSizeJob(norm, s, s, "small-sgd", seed, t.lr * s / sgd, t, n)
                for norm in ("bn", "gn")
                if norm in cfg.norms
            ]
    for seed in cfg.seeds:
        for norm in cfg.norms:
            bs = (sgd,) if norm in BATCH_FREE else sorted(cfg.norm_batches)
            jobs += [BatchSizeJob(norm, b, sgd, "ghost", seed, t.lr, t, n) for b in bs]
    return jobs


def _norm_layer(job: BatchSizeJob, channels: int) -> nn.Module:
    t = job.training
    if job.norm == "gn":
        return nn.GroupNorm(t.groups, channels)
    if job.norm == "ln":
        return nn.GroupNorm(1, channels)  # LayerNorm over (C, H, W) with per-channel affine
    ghost = job.b < job.batch
    if job.norm == "renorm":
        # r_max 3 and d_max 5 as Ioffe 2017, relaxed linearly over the first epoch from BN
        kw: dict[str, Any] = {"warmup_steps": job.unit_steps}
        if ghost:
            return bnn.GhostBatchRenorm2d(channels, job.b, **kw)
        return bnn.BatchRenorm2d(channels, **kw)
    return bnn.GhostBatchNorm2d(channels, job.b) if ghost else bnn.BatchNorm2d(channels)


def build(job: BatchSizeJob) -> nn.Sequential:
    """Three [3x3 conv -> norm -> ReLU] blocks (2x2 max pooling after the first two), global
    average pooling, a linear head: (N, 1, S, S) -> (N, 10). The convolutions have no bias
    (every norm subtracts a mean) and the same initial weights for every norm of a seed."""
    torch.manual_seed(derived_seed(job.seed, "init"))
    layers: list[nn.Module] = []
    c = 1
    for k, w in enumerate(job.training.widths):
        layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), _norm_layer(job, w), nn.ReLU()]
        if k < 2:
            layers.append(nn.MaxPool2d(2))
        c = w
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, common.CLASSES)]
    return nn.Sequential(*layers)


def _images(
    data: BatchSizeData, rows: Tensor, size: int, held: bool = False
) -> tuple[Tensor, Tensor]:
    """(x (N, 1, size, size) float in [-1, 1], y (N,)) of the training (or test) rows; 14 =
    the 28x28 images average-pooled 2x2."""
    d = data.digits
    images, labels = (d.held_images, d.held_labels) if held else (d.train_images, d.train_labels)
    x = to_unit_range(images[rows]).view(-1, 1, 28, 28)
    return (x if size == 28 else F.avg_pool2d(x, 28 // size)), labels[rows]


def _batches(x: Tensor, size: int) -> Iterator[Tensor]:
    return (x[i : i + size] for i in range(0, x.shape[0], size))


def eval_error(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Test error in eval mode (running statistics), the model's mode restored."""
    return 1.0 - common.accuracy_and_loss(model, x, y, chunk=EVAL_BATCH)[0]


@torch.no_grad()
def train_mode_error(model: nn.Module, x: Tensor, y: Tensor, batch: int) -> float:
    """Test error in train mode, the test images in consecutive batches of ``batch`` (each
    normalized as in training: its own statistics, per ghost chunk). Runs on a copy whose
    norm layers' running statistics are frozen (momentum 0), so ``model`` is untouched."""
    net = copy.deepcopy(model).train()
    for _, m in bnn.batch_norm_layers(net):
        m.momentum = 0.0
    n = x.shape[0] - x.shape[0] % batch  # whole batches (a last batch of 1 has no statistics)
    wrong = sum(int((net(xb).argmax(1) != yb).sum()) for xb, yb in
                zip(_batches(x[:n], batch), _batches(y[:n], batch), strict=True))  # fmt: skip
    return wrong / n


def _lr(job: BatchSizeJob, step: int, total: int) -> float:
    """Cosine decay from the job's lr to 0 over its steps (a function of the step: resumes
    need no scheduler state)."""
    return job.lr * 0.5 * (1.0 + math.cos(math.pi * step / total))


def train_chunk(
    job: BatchSizeJob, state: Any, start: int, end: int, data: BatchSizeData
) -> ChunkResult:
    """Train epochs [start, end) of one job from ``state``; one record per epoch (eval-mode
    test error, seconds per step), the last one with the train-mode and precise errors too.
    Writes nothing and leaves ``state`` untouched."""
    t = job.training
    pool = data.split.train
    rows = pool[torch.randperm(len(pool), generator=derived_generator(job.seed, "subset"))]
    x_train, y_train = _images(data, rows[: job.train_size], t.image_size)
    x_test, y_test = _images(data, data.split.held, t.image_size, held=True)
    model = build(job)
    opt = torch.optim.SGD(
        model.parameters(), lr=job.lr, momentum=t.momentum, weight_decay=t.weight_decay
    )
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(copy.deepcopy(state["opt"]))

    def current() -> dict[str, Any]:
        return {"model": model.state_dict(), "opt": opt.state_dict()}

    steps = job.unit_steps
    total = steps * t.epochs
    report_every = max(1, steps // 10)
    records: list[dict[str, Any]] = []
    common_fields = {"norm": job.norm, "b": job.b, "batch": job.batch, "regime": job.regime}
    for epoch in range(start, end):
        model.train()
        order = batch_indices(
            job.train_size, job.batch, derived_generator(job.seed, "order", epoch)
        )
        tic = time.perf_counter()
        loss_sum = 0.0
        for i, idx in enumerate(order):
            step = epoch * steps + i
            for group in opt.param_groups:
                group["lr"] = _lr(job, step, total)
            loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            value = loss.item()  # one host sync per step
            loss_sum += value
            if not math.isfinite(value):
                failed = (
                    f"{job.key}: the loss became non-finite in epoch {epoch + 1}; use a smaller "
                    f"--lr than {t.lr}"
                )
                return ChunkResult(epoch, current(), records, failed=failed)
            if (i + 1) % report_every == 0:
                emit(job.key, step + 1, f"loss {value:.3f}")
        seconds = time.perf_counter() - tic
        record: dict[str, Any] = {
            "kind": "epoch",
            **common_fields,
            "seed": job.seed,
            "epoch": epoch + 1,
            "train_loss": loss_sum / max(steps, 1),
            "test_err": eval_error(model, x_test, y_test),
            "sec_per_step": seconds / max(steps, 1),
        }
        if epoch + 1 == t.epochs:
            # train mode as in training: batches of the SGD batch, each ghost chunk alone
            record["train_mode_err"] = train_mode_error(model, x_test, y_test, job.batch)
            if job.norm == "bn":  # (Renorm's r and d would read the reset statistics)
                precise = copy.deepcopy(model)
                m = min(PRECISE_IMAGES, job.train_size)
                pick = torch.randperm(
                    job.train_size, generator=derived_generator(job.seed, "precise")
                )
                # batches of the SGD batch: train mode normalizes them as training did
                bnn.recompute_stats(precise, _batches(x_train[pick[:m]], job.batch))
                record["precise_err"] = eval_error(precise, x_test, y_test)
        records.append(record)
    return ChunkResult(end, current(), records)
