"""`bnlab activations`' jobs: one (activation, init, norm) net each, measured at init, trained
with Adam, measured again.

Every net of a run sees the same held-out digits and the same batches; a BN net and its plain
twin of one (activation, init) start from the same Linear weights, so their difference is BN.
Held-out accuracy is measured in eval mode (running statistics); the layer statistics come
from :mod:`bnlab.lab.experiments.activations.measure`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab.experiments.activations.config import (
    LOSS_EVERY,
    Activation,
    ActivationsConfig,
    NetTraining,
    Norm,
    setting_name,
)
from bnlab.lab.experiments.activations.measure import finite_or_none, record_layers
from bnlab.lab.experiments.common import (
    CLASSES,
    PIXELS,
    Digits,
    Split,
    accuracy_and_loss,
    batch_order,
    load_digits,
)
from bnlab.lab.experiments.protocol import Loaded, Log
from bnlab.lab.jobs import ChunkResult, emit
from bnlab.lab.models.mlp import Init, mlp
from bnlab.lab.seeding import derived_generator, derived_seed

__all__ = [
    "ActivationsData",
    "NetJob",
    "NetState",
    "build_net",
    "load",
    "plan",
    "train_net",
]


def build_net(
    activation: str, init: Init, bn: bool, depth: int, width: int, seed: int
) -> nn.Sequential:
    """784 -> depth x [Linear(width) (-> BN) -> act] -> Linear(10), logits out; biases 0.

    The Linear weights depend on (seed, init, activation) only, not on ``bn``: a BN net and
    its plain twin start from the same weights.
    """
    gen = derived_generator(seed, "init", init, activation)
    return mlp((PIXELS, *[width] * depth, CLASSES), activation, bn, init, gen)


@dataclass(frozen=True)
class NetJob:
    """One net of the run: measured at init, trained ``training.steps`` Adam steps, measured
    again."""

    activation: Activation
    init: Init
    norm: Norm
    training: NetTraining  # the run's: every net the same size, steps and batches

    @property
    def key(self) -> str:
        return setting_name(self.activation, self.init, self.norm)

    @property
    def total(self) -> int:
        return self.training.steps

    def tag(self) -> dict[str, Any]:
        """The fields every record of this net carries."""
        return {
            "setting": self.key,
            "activation": self.activation,
            "init": self.init,
            "norm": self.norm,
        }


@dataclass(eq=False)
class ActivationsData:
    """What every worker needs, shipped once: the digits and the run's cut of them."""

    digits: Digits
    split: Split  # training digits and the fixed evaluation batch

    def training(self) -> tuple[Tensor, Tensor]:
        return self.digits.training(self.split)

    def evaluation(self) -> tuple[Tensor, Tensor]:
        return self.digits.held_out(self.split)


@dataclass
class NetState:
    """A net between chunks: weights, Adam, and what the net's summary record needs."""

    model: dict[str, Tensor]
    opt: dict[str, Any]
    window: Tensor  # () float32: sum of the losses since the last point of the loss curve
    accuracy_init: float
    loss_first: float | None = None  # the loss curve's first and latest points
    loss_last: float | None = None
    seconds: float = 0.0


def load(cfg: ActivationsConfig, log: Log) -> Loaded:
    tr = cfg.training
    digits = load_digits("mnist", cfg.data, log)
    split = digits.split(cfg.eval_size, derived_seed(tr.seed, "holdout"), "--eval-size")
    n_train = len(split.train)
    if n_train < tr.batch_size:
        raise ValueError(f"{n_train} training digits is less than one batch of {tr.batch_size}")
    jobs = plan(cfg, None)
    log(
        f"{len(jobs)} nets ({tr.depth} x {tr.width}), {tr.steps} Adam steps each, "
        f"on {split.description}"
    )
    meta = {"settings": [j.key for j in jobs], "data": split.description, "train_size": n_train}
    return Loaded(ActivationsData(digits, split), meta)


def plan(cfg: ActivationsConfig, data: Any) -> list[NetJob]:
    """One job per (activation, init, norm), in that nesting order."""
    return [
        NetJob(a, i, n, cfg.training) for a in cfg.activations for i in cfg.inits for n in cfg.norms
    ]


def _layer_records(job: NetJob, model: nn.Module, x: Tensor, stage: str) -> list[dict[str, Any]]:
    tag = job.tag()
    return [
        {"type": "layer", **tag, "stage": stage, **row}
        for row in record_layers(model, x, job.activation)
    ]


def train_net(
    job: NetJob, state: NetState | None, start: int, end: int, data: ActivationsData
) -> ChunkResult:
    """Steps [start, end) of one net from ``state`` (None: measure it at init first); after the
    last step, or the first non-finite loss (training stops: ``diverged``), measure it again
    and add the net's summary record. Writes nothing."""
    t0 = time.perf_counter()
    x_tr, y_tr = data.training()
    x_ev, y_ev = data.evaluation()
    tr = job.training
    model = build_net(job.activation, job.init, job.norm == "bn", tr.depth, tr.width, tr.seed)
    opt = torch.optim.Adam(model.parameters(), lr=tr.lr)
    records: list[dict[str, Any]] = []
    if state is None:
        records += _layer_records(job, model, x_ev, "init")
        acc_init, _ = accuracy_and_loss(model, x_ev, y_ev)
        state = NetState({}, {}, torch.zeros(()), acc_init)
    else:
        model.load_state_dict(state.model)
        opt.load_state_dict(state.opt)
    window = state.window.clone()
    loss_first, loss_last = state.loss_first, state.loss_last
    order = batch_order(len(y_tr), tr.batch_size, end, tr.seed)[start:]  # (end - start, B)
    model.train()
    diverged = False
    for step in range(start, end):
        idx = order[step - start]  # (B,)
        loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
        if not torch.isfinite(loss):
            diverged = True  # training stops at the first non-finite loss
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window += loss.detach()
        if (step + 1) % LOSS_EVERY == 0 or step + 1 == tr.steps:
            value = float(window) / (step % LOSS_EVERY + 1)
            window.zero_()
            point = {"type": "loss", **job.tag(), "step": step + 1, "loss": finite_or_none(value)}
            records.append(point)
            if loss_first is None:
                loss_first = value
            loss_last = value
            emit(job.key, step + 1, f"loss {value:.3g}")
    if not diverged and end < tr.steps:
        seconds = state.seconds + time.perf_counter() - t0
        new = NetState(
            model.state_dict(),
            opt.state_dict(),
            window,
            state.accuracy_init,
            loss_first,
            loss_last,
            seconds,
        )
        return ChunkResult(end, new, records)
    records += _layer_records(job, model, x_ev, "trained")
    records.append(
        {
            "type": "net",
            **job.tag(),
            "accuracy_init": state.accuracy_init,
            "accuracy_trained": accuracy_and_loss(model, x_ev, y_ev)[0],
            "loss_first": None if loss_first is None else finite_or_none(loss_first),
            "loss_last": None if loss_last is None else finite_or_none(loss_last),
            "diverged": diverged,
            "seconds": state.seconds + time.perf_counter() - t0,
        }
    )
    return ChunkResult(tr.steps, None, records)  # a finished net needs no state
