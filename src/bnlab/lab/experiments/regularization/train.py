"""`bnlab regularization`'s jobs: one (seed, variant) classifier, trained chunk by chunk.

All variants of one seed share the training subset, the initial Linear weights and the order
of the batches, so paired differences across seeds isolate the variant. The first seed's bn
network also runs the batch-dependence probe (:mod:`.probe`) after its last epoch: part of
that job, so the probe sees exactly the network whose gap the report shows, trained once.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab.data import batch_indices
from bnlab.lab.experiments import common
from bnlab.lab.experiments.common import SPLIT_SEED
from bnlab.lab.experiments.protocol import Loaded, Log
from bnlab.lab.experiments.regularization.config import Config, Training, VariantName
from bnlab.lab.experiments.regularization.probe import probe_batch_dependence
from bnlab.lab.jobs import ChunkResult, emit
from bnlab.lab.models.mlp import mlp
from bnlab.lab.seeding import derived_generator, derived_seed

__all__ = ["Probe", "RegData", "RegJob", "load", "plan", "train_chunk", "train_epoch"]


@dataclass(frozen=True)
class Probe:
    """The batch-dependence probe a job runs after training: its batch sizes, its number of
    batches per size, and the seed of the batches it draws."""

    batch_sizes: tuple[int, ...]
    batches: int
    seed: int


@dataclass(frozen=True)
class RegJob:
    """One (seed, variant) network of a regularization run, trained for ``training.epochs``."""

    seed: int
    variant: VariantName
    training: Training
    probe: Probe | None = None  # set for the first seed's bn network

    @property
    def key(self) -> str:
        return f"s{self.seed}/{self.variant}"

    @property
    def total(self) -> int:
        return self.training.epochs

    @property
    def unit_steps(self) -> int:
        return self.training.steps_per_epoch


RegData = common.TrainTest  # the pool and the held-out digits


def load(cfg: Config, log: Log) -> Loaded:
    """The pool and the held-out digits (the same for every seed: SPLIT_SEED), checked
    against the sizes the config asks for."""
    x_pool, y_pool, x_test, y_test, what = common.train_test(
        cfg.dataset, cfg.data, cfg.holdout, SPLIT_SEED, log
    )
    pool_n = x_pool.shape[0]
    t = cfg.training
    if t.train_size > pool_n:
        raise ValueError(f"--train-size {t.train_size} exceeds the training pool ({pool_n:,})")
    if cfg.probe_batch_sizes and max(cfg.probe_batch_sizes) > pool_n + 1:
        raise ValueError(f"--probe-batch-sizes: at most {pool_n + 1} (the pool and the digit)")
    log(what)
    log(
        f"training {', '.join(cfg.variants)} x {len(cfg.seeds)} seed(s) on {t.train_size:,} "
        f"digits for {t.epochs} epochs"
        + (
            f"; then the probe: {len(cfg.probe_batch_sizes)} batch sizes x "
            f"{cfg.probe_batches} batches"
            if cfg.probe_batch_sizes
            else ""
        )
    )
    return Loaded(RegData(x_pool, y_pool, x_test, y_test), {"data": what})


def plan(cfg: Config, data: RegData) -> list[RegJob]:
    """One job per (seed, variant), seed by seed; the first seed's bn job also probes."""
    training, first = cfg.training, cfg.seeds[0]
    probe = (
        Probe(cfg.probe_batch_sizes, cfg.probe_batches, first) if cfg.probe_batch_sizes else None
    )
    return [
        RegJob(seed, cast(VariantName, v), training, probe if (seed, v) == (first, "bn") else None)
        for seed in cfg.seeds
        for v in cfg.variants  # validate() checked each is a VariantName
    ]


def train_epoch(
    model: nn.Sequential,
    opt: torch.optim.Optimizer,
    job: RegJob,
    epoch: int,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
) -> dict[str, Any]:
    """Train epoch ``epoch`` (0-based) of one network; its record (accuracies and losses in
    eval mode after the epoch, the mean train-mode batch loss during it).

    Args:
        x_train: (n, 784) float in [-1, 1]; y_train: (n,). x_test, y_test: the held-out set.
    """
    t = job.training
    model.train()
    order = batch_indices(
        x_train.shape[0], t.batch_size, derived_generator(job.seed, "order", epoch)
    )
    batch_loss = torch.zeros(())
    for idx in order:  # idx: (B,) rows of the training subset
        # bn-full: statistics over all n digits, loss on the batch's rows (no batch noise)
        logits = model(x_train)[idx] if job.variant == "bn-full" else model(x_train[idx])  # (B, 10)
        loss = F.cross_entropy(logits, y_train[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        batch_loss += loss.detach()
    train_acc, train_loss = common.accuracy_and_loss(model, x_train, y_train)
    test_acc, test_loss = common.accuracy_and_loss(model, x_test, y_test)
    return {
        "kind": "epoch",
        "seed": job.seed,
        "variant": job.variant,
        "epoch": epoch + 1,
        "batch_loss": batch_loss.item() / len(order),  # train mode, during the epoch
        "train_acc": train_acc,
        "test_acc": test_acc,
        "train_loss": train_loss,
        "test_loss": test_loss,
        "acc_gap_pp": 100 * (train_acc - test_acc),
        "loss_gap": test_loss - train_loss,
    }


def train_chunk(job: RegJob, state: Any, start: int, end: int, data: RegData) -> ChunkResult:
    """Train epochs [start, end) of one (seed, variant) from ``state``; after the last epoch,
    the job's probe. Writes nothing and leaves ``state`` untouched."""
    t = job.training
    pool_n = data.x_pool.shape[0]
    subset = torch.randperm(pool_n, generator=derived_generator(job.seed, "subset"))
    subset = subset[: t.train_size]
    x_train, y_train = data.x_pool[subset], data.y_pool[subset]  # (n, 784), (n,)
    torch.manual_seed(derived_seed(job.seed, "init"))  # same Linear weights for every variant
    model = mlp((common.PIXELS, *t.hidden, common.CLASSES), t.activation, bn=job.variant != "plain")
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(copy.deepcopy(state["opt"]))  # the optimizer would alias it
    records: list[dict[str, Any]] = []
    for epoch in range(start, end):
        record = train_epoch(model, opt, job, epoch, x_train, y_train, data.x_test, data.y_test)
        if not math.isfinite(record["train_loss"]):
            failed = (
                f"{job.variant} (seed {job.seed}): the loss became non-finite in epoch "
                f"{epoch + 1}; use a smaller --lr than {t.lr}"
            )
            return ChunkResult(epoch, _state(model, opt), records, failed=failed)
        records.append(record)
        emit(job.key, (epoch + 1) * t.steps_per_epoch, f"gap {record['acc_gap_pp']:.1f} pp")
    if job.probe is not None and end == job.total:
        p = job.probe
        emit(job.key, end * t.steps_per_epoch, "probing batch dependence")
        records += probe_batch_dependence(
            model,
            data.x_test[0],
            data.x_pool,
            p.batch_sizes,
            p.batches,
            derived_generator(p.seed, "probe"),
        )
    return ChunkResult(end, _state(model, opt), records)


def _state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {"model": model.state_dict(), "opt": opt.state_dict()}
