"""`bnlab running-stats`' jobs: one BN MLP per seed, trained chunk by chunk, every estimator
tracked at every step and held against the population statistics after every epoch.

The model's own BN layers (momentum ``--momentum``) hold the EMA; shadow BN layers
(:class:`~.estimators.ShadowStats`) with ``momentum=None`` and with other momenta are fed the
detached input of each BN layer at every step, so they see exactly the batches the model's
layers see. After every epoch each estimate is loaded into an eval-mode copy of the model and
compared with the population statistics of the weights at that moment (see
:func:`_evaluate_estimators`). The first seed also records a trace: every running estimate of
one channel after every step.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlab.nn as bnn
from bnlab.lab.data import batch_indices
from bnlab.lab.experiments import common
from bnlab.lab.experiments.protocol import Loaded, Log
from bnlab.lab.experiments.running_stats.config import (
    CUMULATIVE,
    POPULATION,
    PRECISE,
    TRACE_CHANNEL,
    Config,
    Training,
    ema_name,
)
from bnlab.lab.experiments.running_stats.estimators import (
    ShadowStats,
    Stats,
    bn_stats,
    load_bn_stats,
    population_stats,
    stat_errors,
)
from bnlab.lab.jobs import ChunkResult, emit
from bnlab.lab.models.mlp import forward_with_bn, mlp
from bnlab.lab.seeding import derived_generator, derived_seed

__all__ = ["RunningStatsJob", "StatsData", "load", "plan", "train_chunk"]


@dataclass(frozen=True)
class RunningStatsJob:
    """One seed of a running-stats run: a BN MLP trained for ``training.epochs`` epochs."""

    seed: int
    training: Training
    train_size: int  # digits actually trained on (the whole pool for --train-size 0)
    trace: bool  # record every step's running estimates of channel TRACE_CHANNEL

    @property
    def key(self) -> str:
        return f"s{self.seed}"

    @property
    def total(self) -> int:
        return self.training.epochs

    @property
    def unit_steps(self) -> int:
        return self.train_size // self.training.batch_size  # drop_last


StatsData = common.TrainTest  # the pool and the held-out digits


def load(cfg: Config, log: Log) -> Loaded:
    """The pool and the held-out digits: the same split as ``bnlab regularization``'s."""
    x_pool, y_pool, x_test, y_test, what = common.train_test(
        cfg.dataset, cfg.data, cfg.holdout, common.SPLIT_SEED, log
    )
    pool_n = x_pool.shape[0]
    t = cfg.training
    n = t.train_size or pool_n
    if n > pool_n:
        raise ValueError(f"--train-size {n} exceeds the training pool ({pool_n:,})")
    if n < max(t.batch_size, t.precise_batch_size):
        raise ValueError(f"{n} training digits are fewer than one batch")
    log(what)
    log(f"training a BN MLP on {n:,} digits, {t.epochs} epochs x {len(cfg.seeds)} seed(s)")
    return Loaded(StatsData(x_pool, y_pool, x_test, y_test), {"data": what, "train_digits": n})


def plan(cfg: Config, data: StatsData) -> list[RunningStatsJob]:
    n = cfg.training.train_size or data.x_pool.shape[0]
    return [RunningStatsJob(s, cfg.training, n, trace=k == 0) for k, s in enumerate(cfg.seeds)]


@torch.no_grad()
def _evaluate_estimators(
    model: nn.Sequential,
    estimates: dict[str, Stats],
    job: RunningStatsJob,
    epoch: int,
    step: int,
    x_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
) -> list[dict[str, Any]]:
    """One record per estimator (the running ones given, precise and population added):
    held-out accuracy and loss with the estimate loaded, statistic errors per layer."""
    t = job.training
    truth = population_stats(model, x_train)
    precise = copy.deepcopy(model)
    pb = t.precise_batch_size or t.batch_size
    order = batch_indices(x_train.shape[0], pb, derived_generator(job.seed, "precise", epoch))
    bnn.recompute_stats(precise, (x_train[idx] for idx in order))
    estimates = {**estimates, PRECISE: bn_stats(precise), POPULATION: truth}
    records = []
    for name, est in estimates.items():
        net = load_bn_stats(model, est)
        logits = net(x_test)  # (N, 10), eval mode: one forward for the whole set
        mean_err, var_err = stat_errors(est, truth)
        records.append(
            {
                "kind": "epoch",
                "seed": job.seed,
                "epoch": epoch + 1,
                "step": step,
                "estimator": name,
                "test_acc": (logits.argmax(1) == y_test).float().mean().item(),
                "test_loss": F.cross_entropy(logits, y_test).item(),
                "mean_err": mean_err,
                "var_err": var_err,
                "channel_mean": [m[TRACE_CHANNEL].item() for m, _ in est],
                "channel_var": [v[TRACE_CHANNEL].item() for _, v in est],
            }
        )
    return records


def _trace_record(
    seed: int, step: int, inputs: list[Tensor], running: dict[str, Stats]
) -> dict[str, Any]:
    """The batch statistics and every running estimate of channel TRACE_CHANNEL, per layer."""
    c = TRACE_CHANNEL
    return {
        "kind": "trace",
        "seed": seed,
        "step": step,
        "batch_mean": [x[:, c].mean().item() for x in inputs],
        "batch_var": [x[:, c].var().item() for x in inputs],
        "mean": {k: [m[c].item() for m, _ in s] for k, s in running.items()},
        "var": {k: [v[c].item() for _, v in s] for k, s in running.items()},
    }


def train_chunk(
    job: RunningStatsJob, state: Any, start: int, end: int, data: StatsData
) -> ChunkResult:
    """Train epochs [start, end) of one seed from ``state``, tracking every estimator; the
    estimators' records after each epoch (and the trace for the first seed). Writes nothing
    and leaves ``state`` untouched."""
    t = job.training
    pool_n = data.x_pool.shape[0]
    rows = torch.randperm(pool_n, generator=derived_generator(job.seed, "subset"))[: job.train_size]
    if job.train_size == pool_n:
        rows = torch.arange(pool_n)  # the whole pool, in its own order
    x_train, y_train = data.x_pool[rows], data.y_pool[rows]  # (n, 784), (n,)
    torch.manual_seed(derived_seed(job.seed, "init"))
    model = mlp(
        (common.PIXELS, *t.hidden, common.CLASSES), t.activation, bn=True, momentum=t.momentum
    )
    widths = list(t.hidden)
    shadows = {ema_name(m): ShadowStats(widths, m) for m in t.shadow_momenta}
    shadows[CUMULATIVE] = ShadowStats(widths, None)
    opt = torch.optim.Adam(model.parameters(), lr=t.lr)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(copy.deepcopy(state["opt"]))  # the optimizer would alias it
        for name, sh in shadows.items():
            sh.load_state_dict(state["shadows"][name])

    def current() -> dict[str, Any]:
        return {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "shadows": {name: sh.state_dict() for name, sh in shadows.items()},
        }

    ema = ema_name(t.momentum)
    steps = job.unit_steps
    report_every = max(1, steps // 10)
    records: list[dict[str, Any]] = []
    for epoch in range(start, end):
        model.train()
        order = batch_indices(
            job.train_size, t.batch_size, derived_generator(job.seed, "order", epoch)
        )
        step = epoch * steps
        for i, idx in enumerate(order):  # (B,) rows of the training set
            logits, io = forward_with_bn(model, x_train[idx])  # model's EMA updated here
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            inputs = [x.detach() for x, _ in io]  # (B, C) per BN layer
            for sh in shadows.values():
                sh.update(inputs)
            step += 1
            if not math.isfinite(loss.item()):
                failed = (
                    f"seed {job.seed}: the loss became non-finite in epoch {epoch + 1}; use a "
                    f"smaller --lr than {t.lr}"
                )
                return ChunkResult(epoch, current(), records, failed=failed)
            if job.trace:
                running = {ema: bn_stats(model), **{k: sh.stats() for k, sh in shadows.items()}}
                records.append(_trace_record(job.seed, step, inputs, running))
            if (i + 1) % report_every == 0:
                emit(job.key, step, f"loss {loss.item():.3f}")
        running = {ema: bn_stats(model), **{k: sh.stats() for k, sh in shadows.items()}}
        records += _evaluate_estimators(
            model, running, job, epoch, step, x_train, data.x_test, data.y_test
        )
    return ChunkResult(end, current(), records)
