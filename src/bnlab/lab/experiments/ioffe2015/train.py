"""`bnlab ioffe2015`'s jobs: one net (baseline or BN) of one seed each, trained with plain SGD
and evaluated every ``eval_every`` steps.

Both nets of a seed start from the same Linear weights and see the same batches, so their
difference is BN. Accuracy is measured in eval mode (BN with running statistics). The
percentiles are taken over the held-out digits on a copy of the net in train mode (BN with
the batch statistics of those digits): the distribution the sigmoid sees while training, which
is what internal covariate shift is about, and the copy keeps the running statistics
untouched.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab.experiments.common import (
    CLASSES,
    PIXELS,
    Digits,
    Split,
    accuracy_and_loss,
    batch_order,
    load_digits,
)
from bnlab.lab.experiments.ioffe2015.config import (
    NETS,
    PAPER_STEPS,
    Ioffe2015Config,
    Net,
    Training,
)
from bnlab.lab.experiments.protocol import Loaded, Log
from bnlab.lab.jobs import ChunkResult, emit
from bnlab.lab.models.mlp import mlp
from bnlab.lab.seeding import derived_generator, derived_seed

__all__ = [
    "CHUNK_STEPS",
    "QUANTILES",
    "IoffeData",
    "NetJob",
    "NetState",
    "build_net",
    "eval_steps",
    "evaluate",
    "last_sigmoid_input",
    "load",
    "plan",
    "train_net",
]

QUANTILES = (0.15, 0.50, 0.85)  # the percentiles of Figure 1 (b, c)
CHUNK_STEPS = 5000  # steps between checkpoints of a net: a resumed run redoes at most this many


def build_net(bn: bool, seed: int, hidden: int, layers: int, init_std: float) -> nn.Sequential:
    """784 -> layers x [Linear(hidden) (-> BN) -> sigmoid] -> Linear(10) (softmax in the loss).

    Linear weights ~ N(0, init_std²), biases 0, drawn from one seeded stream: the BN net and the
    baseline of a seed start from identical Linear weights.
    """
    sizes = (PIXELS, *[hidden] * layers, CLASSES)
    return mlp(sizes, "sigmoid", bn, init_std, derived_generator(seed, "init"))


def last_sigmoid_input(model: nn.Sequential) -> nn.Sequential:
    """The part of ``model`` that computes the last hidden layer's sigmoid input (B, hidden)."""
    return nn.Sequential(*list(model)[:-2])  # drop the last sigmoid and the logits layer


@torch.no_grad()
def evaluate(model: nn.Sequential, x: Tensor, y: Tensor, unit: int) -> dict[str, Any]:
    """Test accuracy (eval mode) and the last hidden layer's sigmoid input percentiles.

    The percentiles are over the held-out digits, on a copy in train mode (BN with those
    digits' batch statistics; the original's running statistics are untouched).
    """
    acc, _ = accuracy_and_loss(model, x, y)
    twin = copy.deepcopy(model).train()
    pre = last_sigmoid_input(twin)(x).double()  # (N, hidden)
    q = torch.tensor(QUANTILES, dtype=torch.float64)
    p = torch.quantile(pre[:, unit], q)  # (3,)
    medians = torch.quantile(pre, 0.5, dim=0)  # (hidden,), the same definition as p50
    return {
        "accuracy": acc,
        **{f"p{round(qq * 100)}": float(v) for qq, v in zip(QUANTILES, p, strict=True)},
        "unit_medians": [round(float(m), 6) for m in medians],
    }


def eval_steps(steps: int, every: int) -> list[int]:
    """0, every, 2 * every, ..., and the last step."""
    out = list(range(0, steps + 1, every))
    return out if out[-1] == steps else [*out, steps]


@dataclass(frozen=True)
class NetJob:
    """One net of one seed: ``training.steps`` SGD steps, evaluated at :func:`eval_steps`."""

    seed: int
    net: Net
    training: Training
    unit: int  # the sigmoid of the last hidden layer whose percentiles are recorded

    @property
    def key(self) -> str:
        return f"s{self.seed}/{self.net}"

    @property
    def total(self) -> int:
        return self.training.steps


@dataclass(eq=False)
class IoffeData:
    """What every worker needs, shipped once: the digits and each seed's cut of them."""

    digits: Digits
    splits: dict[int, Split]  # seed -> its training and held-out digits


@dataclass
class NetState:
    """A net between chunks: its weights and the loss since its last evaluation."""

    model: dict[str, Tensor]
    opt: dict[str, Any]
    loss_sum: Tensor  # () float32: sum of the losses since step ``last_eval``
    last_eval: int


def load(cfg: Ioffe2015Config, log: Log) -> Loaded:
    """The digits, cut once per seed (each seed holds out its own digits)."""
    digits = load_digits("mnist", cfg.data, log)
    splits = {
        seed: digits.split(cfg.test_size, derived_seed(seed, "holdout"), "--test-size")
        for seed in cfg.seed_list
    }
    first = splits[cfg.seed_list[0]]
    n_train = len(first.train)
    tr = cfg.training
    if n_train < tr.batch_size:
        raise ValueError(f"{n_train} training digits is less than one batch of {tr.batch_size}")
    log(
        f"{len(cfg.seed_list)} seed(s) x 2 nets ({tr.layers} x {tr.hidden} sigmoid), "
        f"{tr.steps:,} SGD steps (the paper: {PAPER_STEPS:,}), on {first.description}"
    )
    meta = {"data": first.description, "train_size": n_train, "paper_steps": PAPER_STEPS}
    return Loaded(IoffeData(digits, splits), meta)


def plan(cfg: Ioffe2015Config, data: Any) -> list[NetJob]:
    """One job per (seed, net)."""
    return [NetJob(seed, net, cfg.training, cfg.unit) for seed in cfg.seed_list for net in NETS]


def train_net(
    job: NetJob, state: NetState | None, start: int, end: int, data: IoffeData
) -> ChunkResult:
    """Steps [start, end) of one net from ``state`` (None: a fresh net), with a record at every
    evaluation step in the chunk (step 0 included when the chunk starts there). Writes nothing."""
    split = data.splits[job.seed]
    x_tr, y_tr = data.digits.training(split)
    x_te, y_te = data.digits.held_out(split)
    tr = job.training
    model = build_net(job.net == "bn", job.seed, tr.hidden, tr.layers, tr.init_std)
    opt = torch.optim.SGD(model.parameters(), lr=tr.lr)
    if state is None:
        loss_sum, last_eval = torch.zeros(()), 0
    else:
        model.load_state_dict(state.model)
        opt.load_state_dict(state.opt)
        loss_sum, last_eval = state.loss_sum.clone(), state.last_eval
    order = batch_order(len(y_tr), tr.batch_size, end, job.seed)  # (end, B): the seed's batches

    def sgd_steps(first: int, stop: int) -> None:
        for step in range(first, stop):
            idx = order[step]  # (B,)
            loss = F.cross_entropy(model(x_tr[idx]), y_tr[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum.add_(loss.detach())

    records = []
    done = start
    for target in eval_steps(tr.steps, tr.eval_every):
        if not (start < target <= end or target == start == 0):
            continue
        sgd_steps(done, target)
        n = target - last_eval
        mean_loss = float(loss_sum) / n if n else None
        loss_sum.zero_()
        row = evaluate(model, x_te, y_te, job.unit)
        records.append({"seed": job.seed, "net": job.net, "step": target, "loss": mean_loss, **row})
        emit(job.key, target, f"accuracy {row['accuracy']:.3f}")
        done, last_eval = target, target
    sgd_steps(done, end)
    if end == tr.steps:
        return ChunkResult(end, None, records)  # a finished net needs no state
    return ChunkResult(
        end, NetState(model.state_dict(), opt.state_dict(), loss_sum, last_eval), records
    )
