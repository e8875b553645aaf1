"""`bnlab santurkar2018`'s jobs: one (net, variant, seed, lr) trained by plain SGD, measured as
it goes.

A main job measures, at evenly spaced steps t and before step t's update, on step t's batch:
internal covariate shift by Definition 2.1, the landscape along the gradient (Fig. 4), the
activation distributions of every layer on a fixed probe batch (Fig. 2) and held-out accuracy.
A sweep job (part 4) only trains and scores its final weights. Every variant of a seed sees the
same batches and starts from the same weights; the noisy BN's noise comes from its own seeded
stream per step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from bnlab.lab.data import load_dataset, to_unit_range
from bnlab.lab.data.fingerprint import not_data
from bnlab.lab.experiments.common import batch_order, data_dir_arg
from bnlab.lab.experiments.protocol import Loaded, Log
from bnlab.lab.experiments.santurkar2018.config import Config, Training
from bnlab.lab.experiments.santurkar2018.measure import (
    activation_summary,
    internal_covariate_shift,
    landscape,
    sgd_step,
)
from bnlab.lab.experiments.santurkar2018.nets import build, layer_names, reseed_noise
from bnlab.lab.jobs import ChunkResult, emit
from bnlab.lab.seeding import derived_generator, derived_seed

__all__ = ["Data", "RunJob", "load", "measure_steps", "plan", "train"]

DIVERGED = 1e6  # a training loss above this (or not finite) stops the job: it diverged
SWEEP_CURVE = 10  # training-loss points of a sweep job
DLN_TRAIN, DLN_TEST = 4096, 1024  # synthetic samples of the deep linear network's task
IN_SIZE = 14  # the image nets' input: 28x28 images average-pooled 2x2 (_pool)
PROBE_SIZE = 256  # the fixed batch whose activations are recorded (Fig. 2)


@dataclass(frozen=True)
class RunJob:
    """One training run: main (measured) or sweep (final score only)."""

    part: Literal["main", "sweep"]
    net: str
    variant: str
    seed: int
    lr: float
    steps: int
    training: Training

    @property
    def key(self) -> str:
        if self.part == "main":
            return f"main/{self.net}/{self.variant}/s{self.seed}"
        return f"sweep/{self.net}/{self.variant}/lr{self.lr:g}/s{self.seed}"

    @property
    def total(self) -> int:
        return self.steps


@dataclass(eq=False)
class Data:
    """What every worker needs, shipped once: images (average-pooled to 14x14, in [-1, 1])
    and the deep linear network's synthetic task."""

    x_train: Tensor  # (N, 1, 14, 14) float32
    y_train: Tensor  # (N,) int64
    x_test: Tensor  # (M, 1, 14, 14)
    y_test: Tensor  # (M,)
    dln: tuple[Tensor, Tensor, Tensor, Tensor] | None  # x_train, y_train, x_test, y_test
    eval_size: int  # test images scored at each measured step
    description: str = not_data()  # where the data came from


def _pool(images_uint8: Tensor) -> Tensor:
    """(N, 28, 28) uint8 -> (N, 1, 14, 14) float32 in [-1, 1] (2x2 average pooling)."""
    return F.avg_pool2d(to_unit_range(images_uint8).unsqueeze(1), 2)


def synthetic_linear_task(width: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gaussian inputs x ~ N(0, I) and targets y = A x, A ~ N(0, 1/width) fixed by ``seed``:
    a realizable regression task for the deep linear network (the paper's "synthetic data").
    Returns (x_train, y_train, x_test, y_test)."""
    g = derived_generator(seed, "dln-task")
    a = torch.randn(width, width, generator=g) / math.sqrt(width)
    x = torch.randn(DLN_TRAIN + DLN_TEST, width, generator=g)
    y = x @ a.T
    return x[:DLN_TRAIN], y[:DLN_TRAIN], x[DLN_TRAIN:], y[DLN_TRAIN:]


def load(cfg: Config, log: Log) -> Loaded:
    nets = set(cfg.nets) | set(cfg.sweep_nets)
    images = nets & {"cnn", "mlp"}
    empty = torch.empty(0, 1, 14, 14)
    x_train, y_train, x_test, y_test = empty, torch.empty(0, dtype=torch.long), empty, empty
    what = []
    if images:
        data_dir = data_dir_arg(cfg.data)
        train = load_dataset(cfg.dataset, split="train", data_dir=data_dir, log=log)
        test = load_dataset(cfg.dataset, split="test", data_dir=data_dir, log=log)
        n = cfg.subset or len(train)
        x_train, y_train = _pool(train.images[:n]), train.labels[:n].clone()
        m = cfg.test_size or len(test)
        x_test, y_test = _pool(test.images[:m]), test.labels[:m].clone()
        what.append(
            f"{cfg.dataset}: {n:,} training and {m:,} test images from {train.source}, "
            "average-pooled to 14x14"
        )
    dln = None
    if "dln" in nets:
        width = cfg.training.dln_width
        dln = synthetic_linear_task(width)
        what.append(
            f"deep linear network: {DLN_TRAIN:,} + {DLN_TEST:,} samples x ~ N(0, I_{width}), "
            f"y = A x with A ~ N(0, 1/{width})"
        )
    description = "; ".join(what)
    data = Data(x_train, y_train, x_test, y_test, dln, cfg.eval_size, description)
    log(f"santurkar2018: {description}")
    return Loaded(data, {"data": description})


def plan(cfg: Config, data: Data) -> list[RunJob]:
    t = cfg.training
    jobs = []
    for net in cfg.nets:
        variants = ("standard", "bn") if net == "dln" else ("standard", "bn", "noisy-bn")
        lr = cfg.dln_lr if net == "dln" else cfg.lr
        for seed in cfg.seeds:
            jobs += [RunJob("main", net, v, seed, lr, cfg.steps, t) for v in variants]
    for net in cfg.sweep_nets:
        for lr in cfg.sweep_lrs:
            for seed in cfg.sweep_seeds:
                jobs += [
                    RunJob("sweep", net, v, seed, lr, cfg.sweep_steps, t)
                    for v in ("standard", "bn")
                ]
    return jobs


def measure_steps(steps: int, measures: int) -> list[int]:
    """``measures`` steps evenly spaced over [0, steps - 1], both ends included."""
    if measures <= 1:
        return [0]
    return sorted({round(k * (steps - 1) / (measures - 1)) for k in range(measures)})


class _Task:
    """A job's data and loss: images with cross-entropy, or the linear task with MSE."""

    def __init__(self, job: RunJob, data: Data) -> None:
        self.regression = job.net == "dln"
        if self.regression:
            assert data.dln is not None, "load() builds the linear task when dln is run"
            self.x, self.y, self.x_test, self.y_test = data.dln
        else:
            self.x, self.y, self.x_test, self.y_test = (
                data.x_train,
                data.y_train,
                data.x_test,
                data.y_test,
            )

    def loss(self, out: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(out, y) if self.regression else F.cross_entropy(out, y)

    def correct(self, out: Tensor, y: Tensor) -> float:
        return math.nan if self.regression else float((out.argmax(1) == y).float().sum())

    @torch.no_grad()
    def evaluate(self, model: nn.Module, n: int | None) -> dict[str, float]:
        """Loss (and accuracy) of the model in eval mode on the first n test samples (all with
        None); the mode is restored."""
        was = model.training
        model.eval()
        x, y = (self.x_test, self.y_test) if n is None else (self.x_test[:n], self.y_test[:n])
        loss, correct = 0.0, 0.0
        for xb, yb in zip(x.split(1000), y.split(1000), strict=True):
            out = model(xb)
            loss += float(self.loss(out, yb)) * len(yb)
            correct += self.correct(out, yb)
        model.train(was)
        out_d = {"test_loss": loss / len(y)}
        if not self.regression:
            out_d["test_acc"] = correct / len(y)
        return out_d


def _loss_on(model: nn.Module, task: _Task, x: Tensor, y: Tensor) -> Any:
    """The loss on (x, y) as a function of the parameters, in train mode (batch statistics),
    on copies of the buffers: measuring never moves BN's running statistics."""
    buffers = dict(model.named_buffers())

    def loss(params: dict[str, Tensor]) -> Tensor:
        state = {**params, **{k: b.clone() for k, b in buffers.items()}}
        return task.loss(functional_call(model, state, (x,)), y)

    return loss


def _activations(model: nn.Sequential, x: Tensor) -> list[Tensor]:
    """The inputs of every ReLU (pre-activations after BN and noise) on x, in train mode,
    without touching BN's running statistics."""
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    seen: list[Tensor] = []
    hooks = [
        m.register_forward_hook(lambda _m, inp, _out: seen.append(inp[0].detach()))
        for m in model
        if isinstance(m, nn.ReLU)
    ]
    try:
        with torch.no_grad():
            functional_call(model, {**dict(model.named_parameters()), **buffers}, (x,))
    finally:
        for h in hooks:
            h.remove()
    return seen


def _drift(now: dict[str, list[float]], before: dict[str, list[float]] | None) -> dict[str, float]:
    """How far the per-unit distribution moved since the previous measured step: mean |change
    of the unit means| and mean |log ratio of the unit stds|; and how far it is from N(0, 1):
    mean |unit mean| and mean unit std."""
    means, stds = torch.tensor(now["means"]), torch.tensor(now["stds"]).clamp_min(1e-12)
    out = {"abs_mean": float(means.abs().mean()), "std": float(stds.mean())}
    if before is not None:
        b_means, b_stds = torch.tensor(before["means"]), torch.tensor(before["stds"])
        out["drift_mean"] = float((means - b_means).abs().mean())
        out["drift_log_std"] = float((stds.log() - b_stds.clamp_min(1e-12).log()).abs().mean())
    return out


def _measure(
    job: RunJob,
    model: nn.Sequential,
    task: _Task,
    x: Tensor,
    y: Tensor,
    step: int,
    probe: Tensor,
    previous: list[dict[str, list[float]]] | None,
) -> tuple[list[dict[str, Any]], list[dict[str, list[float]]] | None]:
    """The records of one measured step (before its update): ICS, landscape, activations."""
    base = {"key": job.key, "net": job.net, "variant": job.variant, "seed": job.seed, "step": step}
    records: list[dict[str, Any]] = []
    if job.variant != "noisy-bn":  # Fig. 3 and 4 compare standard and BN nets
        params = dict(model.named_parameters())
        loss = _loss_on(model, task, x, y)
        ics = internal_covariate_shift(
            loss, params, layer_names(model), lambda g: sgd_step(g, job.lr)
        )
        records.append(
            {
                **base,
                "kind": "ics",
                "l2": [v.l2 for v in ics],
                "cos": [v.cos for v in ics],
                "grad_norm": [v.grad_norm for v in ics],
            }
        )
        along = landscape(loss, params, [e * job.lr for e in job.training.etas])
        records.append(
            {
                **base,
                "kind": "landscape",
                "etas": list(along.etas),
                "loss0": along.loss0,
                "grad_norm": along.grad_norm,
                "losses": list(along.losses),
                "grad_diffs": list(along.grad_diffs),
                "betas": list(along.betas),
                "loss_range": along.loss_range,
                "grad_diff_max": max(along.grad_diffs),
                "beta": along.beta,
            }
        )
    current = None
    if job.net != "dln":
        reseed_noise(model, partial(derived_seed, job.seed, "probe-noise", step))
        acts = _activations(model, probe)
        current = [activation_summary(a) for a in acts]
        layers = []
        for k, summ in enumerate(current):
            before = previous[k] if previous is not None else None
            layers.append({"q": summ["q"], **_drift(summ, before)})
        records.append({**base, "kind": "acts", "layers": layers})
    return records, current


def train(job: RunJob, state: Any, start: int, end: int, data: Data) -> ChunkResult:
    """Train steps [start, end) of one job from ``state``; write nothing."""
    t = job.training
    if state is not None and state.get("diverged"):
        return ChunkResult(job.total, state)
    task = _Task(job, data)
    model = build(
        job.net,  # type: ignore[arg-type]
        job.variant,  # type: ignore[arg-type]
        derived_generator(job.seed, "init"),
        noise=(t.noise_mean, t.noise_std, t.noise_scale),
        widths=t.widths,
        in_size=IN_SIZE,
        hidden=t.hidden,
        dln=(t.dln_depth, t.dln_width, t.dln_width),  # depth, width, in = out features
    )
    sums = {"loss": 0.0, "correct": 0.0, "n": 0}
    previous = None
    if state is not None:
        model.load_state_dict(state["model"])
        sums, previous = state["sums"], state["previous"]
    model.train()
    order = batch_order(len(task.x), t.batch_size, job.steps, derived_seed(job.seed, "order"))
    measured = set(measure_steps(job.steps, t.measures)) if job.part == "main" else set()
    curve_only = set() if job.part == "main" else set(measure_steps(job.steps, SWEEP_CURVE)) - {0}
    probe = task.x[:PROBE_SIZE]
    params = list(model.parameters())
    records: list[dict[str, Any]] = []
    base = {"net": job.net, "variant": job.variant, "seed": job.seed, "lr": job.lr}

    def curve_record(step: int, n_eval: int | None, score: bool = True) -> dict[str, Any]:
        r: dict[str, Any] = {**base, "key": job.key, "part": job.part, "kind": "curve"}
        r["step"] = step
        if sums["n"]:
            r["train_loss"] = sums["loss"] / sums["n"]
            if not task.regression:
                r["train_acc"] = sums["correct"] / sums["n"]
        if score:
            r.update(task.evaluate(model, n_eval))
        sums.update(loss=0.0, correct=0.0, n=0)
        return r

    for step in range(start, end):
        idx = order[step]
        x, y = task.x[idx], task.y[idx]
        if step in measured:
            recs, previous = _measure(job, model, task, x, y, step, probe, previous)
            records += recs
            records.append(curve_record(step, data.eval_size))
        elif step in curve_only:  # the training loss so far, unscored
            records.append(curve_record(step, None, score=False))
        reseed_noise(model, partial(derived_seed, job.seed, "noise", step))
        out = model(x)
        loss = task.loss(out, y)
        value = float(loss.detach())
        if not math.isfinite(value) or value > DIVERGED:
            records.append(
                {
                    **base,
                    "key": job.key,
                    "part": job.part,
                    "kind": "final",
                    "step": step,
                    "diverged": True,
                    "train_loss": value,
                }
            )
            emit(job.key, job.total, f"diverged at step {step}")
            return ChunkResult(job.total, {"diverged": True}, records)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(job.lr * g)  # plain SGD: the update Definition 2.1 assumes
        sums["loss"] += value * len(y)
        sums["correct"] += task.correct(out.detach(), y)
        sums["n"] += len(y)
        if (step + 1) % 25 == 0:
            emit(job.key, step + 1, f"loss {value:.3f}")
    if end == job.steps:
        final = curve_record(job.steps, None)
        final.update(kind="final", diverged=False)
        records.append(final)
    state = {"model": model.state_dict(), "sums": sums, "previous": previous}
    return ChunkResult(end, state, records)
