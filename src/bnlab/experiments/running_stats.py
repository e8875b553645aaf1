"""`bnlab running-stats`: which statistics should BN use in eval mode?

In training, BN normalizes with the statistics of the current batch; in evaluation it needs
fixed ones. The blog says eval uses "the average of the batch statistics seen during
training". There are several ways to form that average, and they differ:

- **EMA** (PyTorch's default, ``momentum=0.1``): running = 0.9 * running + 0.1 * batch. It
  forgets old batches within ~10 steps, so it follows the weights, but it is an average of
  only ~20 effective batches: noisy.
- **Cumulative average** (``momentum=None``, the blog's plain average): every batch since the
  start counts equally, including those computed with early, long-gone weights: stale.
- **Precise** (fvcore's precise BN, ``torch.optim.swa_utils.update_bn``): after training,
  reset the statistics and recompute them with the final weights in one pass over the
  training data (train mode, ``no_grad``, ``momentum=None``). :func:`recompute_bn_stats`.

All come from one training run per seed. The model's own BN layers (momentum 0.1) hold the
EMA; *shadow* BN layers (bnlab ``BatchNorm1d``, ``affine=False``) with ``momentum=None`` and
with other momenta are fed the detached input of each BN layer at every step, so they see
exactly the batches the model's layers see and update by the library's own rule. After every
epoch, each estimate is compared with the **population statistics**: the per-channel mean and
variance of each BN layer's input over the whole training pool with the current weights, every
BN layer normalizing with the population statistics of its own input (one train-mode forward
of the whole pool as one batch). Reported per estimator: the error of the mean (in units of
the population standard deviation) and the relative error of the variance, per layer, and the
held-out accuracy in eval mode with that estimate loaded.

References:
    S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015 (arXiv:1502.03167), Algorithm 2 (inference
    statistics as averages over training mini-batches).
    Y. Wu, J. Johnson, "Rethinking 'Batch' in BatchNorm", arXiv:2105.07576, section 3
    (EMA vs precise BN); fvcore ``fvcore/nn/precise_bn.py`` (``update_bn_stats``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import bnlab.nn as bnn
from bnlab import functional as bnf
from bnlab.config import FloatList, IntList
from bnlab.data import batch_indices
from bnlab.experiments import common
from bnlab.experiments.common import derived_generator, derived_seed
from bnlab.experiments.regularization import SPLIT_SEED
from bnlab.models.mlp import forward_with_bn, mlp
from bnlab.report.html import Figure, Section, Table
from bnlab.runs import append_jsonl
from bnlab.stats import format_ci, mean_ci, paired

__all__ = [
    "Config",
    "Result",
    "ShadowStats",
    "load_bn_stats",
    "population_stats",
    "recompute_bn_stats",
    "report",
    "run",
    "stat_errors",
    "summarize",
]

EXPERIMENT = "running-stats"
CUMULATIVE = "cumulative"
PRECISE = "precise"
POPULATION = "population"
# The variance floor BN itself adds (its eps): relative errors divide by var + eps, so a
# channel with (near) zero variance cannot blow them up.
STAT_EPS = 1e-5
# The traced channel: index 0 of every BN layer (channels are exchangeable at init, so the
# first one is as typical as any).
TRACE_CHANNEL = 0

Stats = list[tuple[Tensor, Tensor]]  # per BN layer: (mean (C,), var (C,))
Log = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    """Eval-mode statistics of BN: EMA vs cumulative average vs precise recomputation.

    Defaults: 5 seeds x 10 epochs of a BN MLP on the MNIST training pool (8,000 digits when
    only the 10k test split is present), estimators compared after every epoch; about 1-2
    minutes on a 2-core CPU.
    """

    seeds: IntList = (0, 1, 2, 3, 4)
    """one training run per seed (init, batch order); 5 give a paired t-interval on accuracies"""
    holdout: int = 2000
    """held-out digits for eval accuracy (the rest of a single split is the training pool)"""
    train_size: int = 0
    """training digits drawn from the pool; 0 = the whole pool (population = all of them)"""
    epochs: int = 10
    """passes over the training set (1,600 steps on 8,000 digits): about where held-out
    accuracy levels off; the epoch curves show every shorter run too"""
    batch_size: int = 50
    """mini-batch size: sets the noise of each batch statistic (~1/sqrt(B))"""
    lr: float = 1e-3
    """Adam learning rate (default betas)"""
    hidden: IntList = (100, 100, 100)
    """hidden widths, BN after each hidden Linear: the MLP of Ioffe & Szegedy 2015, 4.1"""
    activation: Literal["relu", "sigmoid"] = "relu"
    """hidden unit"""
    momentum: float = 0.1
    """momentum of the model's own BN layers (the EMA estimator): PyTorch's default"""
    shadow_momenta: FloatList = (0.01, 0.5)
    """further EMAs tracked alongside (same batches): 0.01 averages ~200 batches (less noise,
    staler), 0.5 ~3 (fresh, noisy); the cumulative average is always tracked"""
    precise_batch_size: int = 0
    """batch size of the precise recomputation pass; 0 = --batch-size (as in training)"""
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    """which dataset"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, ~/.cache/bnlab, system dirs, download)"""
    out: Path | None = None
    """run directory (default: runs/running-stats-<date>-<time>)"""


Result = common.RunResult  # run_dir, records, summary (see summarize()), seconds


# ---- the estimators ---------------------------------------------------------------------------


@torch.no_grad()
def recompute_bn_stats(model: nn.Module, batches: Iterable[Tensor]) -> int:
    """Precise BN: set every BN layer's running statistics from the model's current weights.

    Each BN layer's running mean (variance) becomes the plain average of the batch means
    (unbiased batch variances) of ``batches``, as fvcore's ``update_bn_stats`` and
    ``torch.optim.swa_utils.update_bn`` do: reset the running statistics, set
    ``momentum=None`` (cumulative average), forward every batch in train mode under
    ``no_grad``, then restore each layer's momentum and every module's train/eval flag.
    Parameters are untouched.

    Written here rather than calling ``update_bn`` because that function restores only the
    root module's train/eval flag; this one restores every module's (tests check it against
    ``update_bn``).

    Args:
        model: modified in place.
        batches: model inputs, e.g. (B, 784) tensors; each counts once, whatever its size.

    Returns:
        The number of batches forwarded (0 when the model has no BN layer: nothing to do).
    """
    layers = [m for _, m in bnn.batch_norm_layers(model)]
    if not layers:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    for m in layers:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    count = 0
    try:
        for x in batches:
            model(x)
            count += 1
    finally:
        for m, momentum in zip(layers, momenta, strict=True):
            m.momentum = momentum
        for module, flag in modes.items():
            module.train(flag)
    return count


@torch.no_grad()
def population_stats(model: nn.Sequential, x: Tensor) -> Stats:
    """Per-channel mean and (unbiased) variance of each BN layer's input over all of ``x``.

    Each BN layer normalizes with the population statistics of its own input, so the input of
    layer l + 1 is what eval mode with these statistics feeds it: one train-mode forward of
    ``x`` as a single batch, on a copy (train mode would move the running statistics). (Train
    mode normalizes with the biased variance, eval mode with the stored unbiased one: they
    differ by a factor N / (N - 1), 1.0001 for 8,000 digits.)

    Args:
        x: (N, 784) the whole training set.
    """
    net = copy.deepcopy(model).train()
    _, io = forward_with_bn(net, x)
    return [_mean_unbiased_var(inp) for inp, _ in io]  # (C,), (C,)


def _mean_unbiased_var(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased variance of (N, C): what running_var estimates."""
    mean, m2 = bnf.batch_norm_stats(x)
    return mean, m2 / (x.shape[0] - 1)


def bn_stats(model: nn.Module) -> Stats:
    """Copies of the running (mean, var) of every BN layer."""
    out = []
    for _, m in bnn.batch_norm_layers(model):
        assert isinstance(m.running_mean, Tensor) and isinstance(m.running_var, Tensor)
        out.append((m.running_mean.clone(), m.running_var.clone()))
    return out


@torch.no_grad()
def load_bn_stats(model: nn.Module, stats: Stats) -> nn.Module:
    """An eval-mode copy of ``model`` whose BN layers hold ``stats`` as running statistics."""
    net = copy.deepcopy(model).eval()
    layers = [m for _, m in bnn.batch_norm_layers(net)]
    if len(layers) != len(stats):
        raise ValueError(f"{len(stats)} statistics for {len(layers)} BN layers")
    for m, (mean, var) in zip(layers, stats, strict=True):
        assert isinstance(m.running_mean, Tensor) and isinstance(m.running_var, Tensor)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    return net


def stat_errors(est: Stats, truth: Stats) -> tuple[list[float], list[float]]:
    """Per layer: mean over channels of |mean - mean*| / std* and of |var - var*| / var*.

    The mean's error is in units of the population standard deviation: that is the shift it
    causes in the normalized value x_hat. Both divide by var* + STAT_EPS.
    """
    mean_err, var_err = [], []
    for (m, v), (mt, vt) in zip(est, truth, strict=True):
        scale = vt + STAT_EPS
        mean_err.append(((m - mt).abs() / scale.sqrt()).mean().item())
        var_err.append(((v - vt).abs() / scale).mean().item())
    return mean_err, var_err


class ShadowStats:
    """Running statistics of every BN layer's input, kept with their own momentum.

    One bnlab ``BatchNorm1d(C, momentum, affine=False)`` per BN layer, always in train mode
    and fed the detached inputs of the model's BN layers: the statistics a BN layer with this
    momentum would hold after the same batches (``None`` = cumulative average), by the
    library's own update rule. The normalized outputs are thrown away.
    """

    def __init__(self, widths: list[int], momentum: float | None) -> None:
        self.layers = [bnn.BatchNorm1d(w, momentum=momentum, affine=False) for w in widths]

    @torch.no_grad()
    def update(self, inputs: list[Tensor]) -> None:
        """inputs: each BN layer's input of this step, (B, C) each."""
        for bn, x in zip(self.layers, inputs, strict=True):
            bn(x)

    def stats(self) -> Stats:
        return [bn_stats(bn)[0] for bn in self.layers]


def _ema_name(momentum: float) -> str:
    return f"ema-{momentum:g}"


def estimator_names(config: dict[str, Any]) -> list[str]:
    """Table order: the model's EMA, the shadow EMAs, cumulative, precise, population."""
    shadow = [_ema_name(m) for m in config["shadow_momenta"]]
    return [_ema_name(config["momentum"]), *shadow, CUMULATIVE, PRECISE, POPULATION]


# ---- training ---------------------------------------------------------------------------------


@torch.no_grad()
def _evaluate_estimators(
    model: nn.Sequential,
    shadows: dict[str, ShadowStats],
    cfg: Config,
    seed: int,
    epoch: int,
    step: int,
    x_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
) -> list[dict[str, Any]]:
    """One record per estimator: held-out accuracy and loss, statistic errors per layer."""
    truth = population_stats(model, x_train)
    precise = copy.deepcopy(model)
    pb = cfg.precise_batch_size or cfg.batch_size
    order = batch_indices(x_train.shape[0], pb, derived_generator(seed, "precise", epoch))
    recompute_bn_stats(precise, (x_train[idx] for idx in order))
    estimates: dict[str, Stats] = {
        _ema_name(cfg.momentum): bn_stats(model),
        **{name: sh.stats() for name, sh in shadows.items()},
        PRECISE: bn_stats(precise),
        POPULATION: truth,
    }
    records = []
    for name, est in estimates.items():
        net = load_bn_stats(model, est)
        logits = net(x_test)  # (N, 10), eval mode: one forward for the whole set
        mean_err, var_err = stat_errors(est, truth)
        records.append(
            {
                "kind": "epoch",
                "seed": seed,
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


def train_seed(
    seed: int,
    cfg: Config,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    emit: Callable[[list[dict[str, Any]]], None],
    trace: bool = False,
    on_step: Callable[[], None] = lambda: None,
) -> nn.Sequential:
    """Train one BN MLP, tracking every estimator; ``emit`` gets the records as they come.

    With ``trace``, one record per step holds the batch statistics and every running estimate
    of channel TRACE_CHANNEL of each BN layer.

    Args:
        x_train: (n, 784) float in [-1, 1], y_train (n,); x_test, y_test the held-out set.
    """
    torch.manual_seed(derived_seed(seed, "init"))
    model = mlp(
        (common.PIXELS, *cfg.hidden, common.CLASSES), cfg.activation, bn=True, momentum=cfg.momentum
    )
    widths = list(cfg.hidden)
    shadows = {_ema_name(m): ShadowStats(widths, m) for m in cfg.shadow_momenta}
    shadows[CUMULATIVE] = ShadowStats(widths, None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = x_train.shape[0]
    step = 0
    ema = _ema_name(cfg.momentum)
    for epoch in range(cfg.epochs):
        model.train()
        order = batch_indices(n, cfg.batch_size, derived_generator(seed, "order", epoch))
        trace_records = []
        for idx in order:  # (B,) rows of the training set
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
                raise ValueError(
                    f"seed {seed}: the loss became non-finite in epoch {epoch + 1}; use a "
                    f"smaller --lr than {cfg.lr}"
                )
            if trace:
                c = TRACE_CHANNEL
                running = {ema: bn_stats(model), **{k: sh.stats() for k, sh in shadows.items()}}
                trace_records.append(
                    {
                        "kind": "trace",
                        "seed": seed,
                        "step": step,
                        "batch_mean": [x[:, c].mean().item() for x in inputs],
                        "batch_var": [x[:, c].var().item() for x in inputs],
                        "mean": {k: [m[c].item() for m, _ in s] for k, s in running.items()},
                        "var": {k: [v[c].item() for _, v in s] for k, s in running.items()},
                    }
                )
            on_step()
        emit(trace_records)
        emit(_evaluate_estimators(model, shadows, cfg, seed, epoch, step, x_train, x_test, y_test))
    return model


# ---- summary and figures ----------------------------------------------------------------------


def summarize(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Last-epoch numbers per estimator over seeds.

    Returns ``{"estimators": {name: {...}}, "seeds": [...], "epoch": last}`` where each
    estimator has ``test_acc`` (an :class:`~bnlab.stats.Estimate`, percent),
    ``acc_vs_population`` (a :class:`~bnlab.stats.Paired` difference in percentage points),
    ``mean_err`` and ``var_err`` (per layer, mean over seeds).
    """
    seeds = list(config["seeds"])
    epochs = [r for r in records if r.get("kind") == "epoch"]
    last = max((r["epoch"] for r in epochs), default=0)
    final = {(r["seed"], r["estimator"]): r for r in epochs if r["epoch"] == last}
    out: dict[str, Any] = {}
    names = estimator_names(config)
    pop = [100 * final[(s, POPULATION)]["test_acc"] for s in seeds if (s, POPULATION) in final]
    for name in names:
        rows = [final[(s, name)] for s in seeds if (s, name) in final]
        if not rows:
            continue
        acc = [100 * r["test_acc"] for r in rows]
        out[name] = {
            "test_acc": mean_ci(acc),
            "acc_vs_population": paired(acc, pop) if len(pop) == len(acc) else None,
            "mean_err": np.mean([r["mean_err"] for r in rows], axis=0).tolist(),
            "var_err": np.mean([r["var_err"] for r in rows], axis=0).tolist(),
        }
    return {"estimators": out, "seeds": seeds, "epoch": last}


def _curves(
    records: list[dict[str, Any]], key: str, reduce: Callable[[Any], float]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """estimator -> (epochs, mean over seeds of reduce(record[key])) for every epoch."""
    table: dict[str, dict[int, list[float]]] = {}
    for r in records:
        if r.get("kind") == "epoch":
            table.setdefault(r["estimator"], {}).setdefault(r["epoch"], []).append(reduce(r[key]))
    return {
        name: (np.array(sorted(by)), np.array([np.mean(by[e]) for e in sorted(by)]))
        for name, by in table.items()
    }


def make_figures(run_dir: Path, records: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """stat_errors.png, accuracy.png and trace.png from the run's records."""
    import matplotlib.pyplot as plt

    from bnlab.report.plots import save_figure

    names = [n for n in estimator_names(config) if n != POPULATION]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, label in (
        (axes[0], "mean_err", "|mean - population mean| / population std"),
        (axes[1], "var_err", "|var - population var| / population var"),
    ):
        curves = _curves(records, key, lambda v: float(np.mean(v)))
        for name in names:
            if name in curves:
                ep, val = curves[name]
                ax.plot(ep, val, marker="o", ms=3, lw=1.4, label=name)
        ax.set_yscale("log")
        ax.set_xlabel("epoch (estimate after it)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
    axes[0].set_title("Error of the mean (avg over layers, channels, seeds)")
    axes[1].set_title("Error of the variance")
    axes[1].legend(fontsize=8)
    save_figure(fig, run_dir / "stat_errors.png")

    fig, ax = plt.subplots(figsize=(7, 4))
    curves = _curves(records, "test_acc", lambda v: 100 * float(v))
    for name in [*names, POPULATION]:
        if name in curves:
            ep, val = curves[name]
            ax.plot(
                ep,
                val,
                marker="o",
                ms=3,
                lw=1.4,
                label=name,
                ls="--" if name == POPULATION else "-",
            )
    ax.set_xlabel("epoch")
    ax.set_ylabel("held-out accuracy (%), eval mode")
    ax.set_title("Accuracy with each estimate loaded (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, run_dir / "accuracy.png")

    traces = [r for r in records if r.get("kind") == "trace"]
    if not traces:
        return
    seed = traces[0]["seed"]
    traces = [r for r in traces if r["seed"] == seed]
    layer = len(traces[0]["batch_mean"]) - 1  # the deepest BN layer: the most drift
    ends = [r for r in records if r.get("kind") == "epoch" and r["seed"] == seed]
    fig, axes = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True)
    steps = np.array([r["step"] for r in traces])
    for ax, what, label in ((axes[0], "mean", "mean"), (axes[1], "var", "variance")):
        ax.plot(
            steps,
            [r[f"batch_{what}"][layer] for r in traces],
            ".",
            ms=1.5,
            color="0.7",
            label="batch statistic",
        )
        for k, name in enumerate(traces[0][what]):
            ax.plot(
                steps, [r[what][name][layer] for r in traces], lw=1.2, color=f"C{k}", label=name
            )
        pop = [r for r in ends if r["estimator"] == POPULATION]
        ax.plot(
            [r["step"] for r in pop],
            [r[f"channel_{what}"][layer] for r in pop],
            "kx",
            ms=7,
            mew=1.8,
            label="population (weights at epoch end)",
        )
        ax.set_ylabel(f"channel {TRACE_CHANNEL} {label}")
        ax.grid(alpha=0.3)
    axes[0].set_title(
        f"BN layer {layer + 1}, channel {TRACE_CHANNEL}, seed {seed}: running "
        "estimates over training"
    )
    axes[1].set_xlabel("training step")
    axes[0].legend(fontsize=8, ncol=3)
    save_figure(fig, run_dir / "trace.png")


# ---- report -----------------------------------------------------------------------------------


def _layers(values: list[float], pct: bool = False) -> str:
    return " / ".join(f"{100 * v:.2f}%" if pct else f"{v:.4f}" for v in values)


def report(run_dir: str | Path) -> list[Section]:
    """The report's sections, from the run directory's files only (never trains).

    Figures missing from the run directory are drawn again from metrics.jsonl.
    """
    run_dir, meta, records = common.read_run(run_dir)
    config = meta["config"]
    if any(not (run_dir / n).exists() for n in ("stat_errors.png", "accuracy.png")):
        make_figures(run_dir, records, config)
    s = summarize(records, config)
    est = s["estimators"]
    rows = []
    for name in estimator_names(config):
        if name not in est:
            continue
        e = est[name]
        d = e["acc_vs_population"]
        delta = "-" if name == POPULATION or d is None else format_ci(d.diff, "{:+.2f}")
        rows.append(
            [
                name,
                format_ci(e["test_acc"], "{:.2f}", "%"),
                delta,
                _layers(e["mean_err"]),
                _layers(e["var_err"], True),
            ]
        )
    n_layers = len(config["hidden"])
    table = Table(
        f"Estimators after {s['epoch']} epochs (mean over {len(s['seeds'])} seeds)",
        [
            "estimator",
            "held-out acc [95% CI]",
            "minus population (pp) [95% CI]",
            f"mean error, layers 1..{n_layers}",
            f"variance error, layers 1..{n_layers}",
        ],
        rows,
        "mean error = |mean - population mean| / population std, variance error = |var - "
        "population var| / population var, each averaged over a layer's channels; population "
        "= statistics of each BN layer's input over the whole training set with the final "
        "weights (by definition error 0). Accuracy differences paired over seeds (Student t).",
    )
    ema = _ema_name(config["momentum"])
    finding = ""
    if all(k in est for k in (ema, CUMULATIVE, PRECISE)):
        finding = (
            "\n\nAfter the last epoch, averaged over layers: variance error "
            f"{100 * np.mean(est[ema]['var_err']):.2f}% ({ema}), "
            f"{100 * np.mean(est[CUMULATIVE]['var_err']):.2f}% (cumulative), "
            f"{100 * np.mean(est[PRECISE]['var_err']):.2f}% (precise); held-out accuracy "
            f"{est[ema]['test_acc'].mean:.2f}%, {est[CUMULATIVE]['test_acc'].mean:.2f}%, "
            f"{est[PRECISE]['test_acc'].mean:.2f}% "
            f"(population {est[POPULATION]['test_acc'].mean:.2f}%)."
        )
    trend = ""
    var_curves = _curves(records, "var_err", lambda v: float(np.mean(v)))
    if CUMULATIVE in var_curves and len(var_curves[CUMULATIVE][0]) > 1:
        ep, val = var_curves[CUMULATIVE]
        trend = (
            f" The cumulative average's variance error was {100 * val[0]:.1f}% after epoch "
            f"{ep[0]} and {100 * val[-1]:.1f}% after epoch {ep[-1]}."
        )
    pb = config["precise_batch_size"] or config["batch_size"]
    digits = meta.get("train_digits")
    intro = (
        f"Setup: {meta.get('data', '')}; "
        f"{f'{digits:,}' if isinstance(digits, int) else '?'} training digits. MLP "
        f"784-{'-'.join(map(str, config['hidden']))}-10, {config['activation']} units, BN "
        f"(momentum {config['momentum']:g}) after each hidden Linear; Adam lr {config['lr']:g}, "
        f"batch {config['batch_size']}, {config['epochs']} epochs, seeds "
        f"{', '.join(map(str, s['seeds']))}.\n\n"
        f"Estimators, all from the same training run: {ema} = the model's own running "
        "statistics; other ema-m = shadow BN layers with momentum m fed the same BN inputs; "
        "cumulative = shadow layers with momentum=None (the plain average of every batch "
        "statistic since the start, which the blog describes); precise = recomputed after "
        f"training with the final weights, one pass over the training set in batches of {pb} "
        "(fvcore precise BN / torch.optim.swa_utils.update_bn). Each epoch's numbers are what "
        "one would get had training stopped there, so the curves also show how each "
        "estimator depends on the training length.\n\n"
        "What to look for: the cumulative average keeps statistics of early weights, so its "
        "error is a bias that shrinks only as the early batches' share falls and the weights "
        "settle; the EMA follows the weights but averages few batches, so its error is noise "
        "that a smaller momentum trades for staleness (and, early on, for its initial values "
        "0 and 1). Precise is exact in the first BN layer up to averaging per-batch "
        "variances; deeper layers keep a small error because during its pass the earlier BN "
        "layers normalize with batch statistics, not population ones." + finding + trend
    )
    figures: list[Figure] = []
    for name, title, caption in (
        (
            "stat_errors.png",
            "Statistic errors over training",
            "each estimator against the population statistics of the weights at that epoch end.",
        ),
        ("accuracy.png", "Held-out accuracy per estimator", "eval mode, mean over seeds."),
        (
            "trace.png",
            "Running estimates of one channel",
            "grey: each batch's statistic; lines: running estimates after each step; x: the "
            "population statistic at each epoch end. The cumulative line lags behind, "
            "weighted towards early weights.",
        ),
    ):
        figures += common.figure(run_dir, name, title, caption)
    return [
        Section(
            "Eval-mode statistics: EMA, cumulative average, precise",
            intro,
            tables=[table],
            figures=figures,
            anchor="running-stats",
        )
    ]


# ---- run --------------------------------------------------------------------------------------


def _check(cfg: Config) -> None:
    if not cfg.seeds or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"--seeds: give at least one seed, none repeated (got {cfg.seeds})")
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 2 or cfg.precise_batch_size == 1 or cfg.precise_batch_size < 0:
        raise ValueError(
            "--batch-size and --precise-batch-size must be at least 2 (BN needs 2 "
            "values per channel); --precise-batch-size 0 = --batch-size"
        )
    if not cfg.hidden or min(cfg.hidden) < 1:
        raise ValueError(f"--hidden needs at least one positive width, got {cfg.hidden}")
    for m in (cfg.momentum, *cfg.shadow_momenta):
        if not 0 < m <= 1:
            raise ValueError(f"momenta must be in (0, 1], got {m}")
    if _ema_name(cfg.momentum) in {_ema_name(m) for m in cfg.shadow_momenta}:
        raise ValueError(f"--shadow-momenta repeats the model's --momentum {cfg.momentum:g}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be positive, got {cfg.lr}")
    if cfg.train_size < 0:
        raise ValueError(f"--train-size must be >= 0 (0 = the whole pool), got {cfg.train_size}")


@common.torch_threads(1)
def run(cfg: Config, log: Log = print) -> Result:
    """Train a BN MLP per seed, compare the estimators every epoch, write the run directory."""
    started = time.perf_counter()
    _check(cfg)
    # the pool: (P, 784) in [-1, 1]; the same held-out digits as the regularization experiment
    x_pool, y_pool, x_test, y_test, what = common.train_test(
        cfg.dataset, cfg.data, cfg.holdout, SPLIT_SEED, log
    )
    pool_n = x_pool.shape[0]
    n = cfg.train_size or pool_n
    if n > pool_n:
        raise ValueError(f"--train-size {n} exceeds the training pool ({pool_n:,})")
    if n < max(cfg.batch_size, cfg.precise_batch_size):
        raise ValueError(f"{n} training digits are fewer than one batch")
    run_dir, metrics = common.start_run(cfg.out, EXPERIMENT, cfg, data=what, train_digits=n)
    log(what)
    log(
        f"training a BN MLP on {n:,} digits, {cfg.epochs} epochs x {len(cfg.seeds)} seed(s); "
        f"run dir {run_dir}"
    )
    steps = cfg.epochs * (n // cfg.batch_size)
    bar = common.progress(steps * len(cfg.seeds))
    try:
        for k, seed in enumerate(cfg.seeds):
            bar.set_description(f"seed {seed}")
            rows = torch.randperm(pool_n, generator=derived_generator(seed, "subset"))[:n]
            if n == pool_n:
                rows = torch.arange(pool_n)  # the whole pool, in its own order
            x_train = x_pool[rows]  # (n, 784)

            def emit(records: list[dict[str, Any]]) -> None:
                append_jsonl(metrics, records)

            train_seed(
                seed,
                cfg,
                x_train,
                y_pool[rows],
                x_test,
                y_test,
                emit,
                trace=k == 0,
                on_step=lambda: bar.update(1),
            )
    finally:
        bar.close()
    return common.finish_run(
        run_dir,
        cfg,
        "bnlab running-stats: which statistics should eval mode use?",
        started,
        log,
        make_figures,
        summarize,
        report,
        result_line,
    )


def result_line(summary: dict[str, Any], seconds: float, run_dir: Path) -> str:
    """The one line printed at the end of a run."""
    est = summary["estimators"]
    accs = ", ".join(f"{k} {v['test_acc'].mean:.2f}%" for k, v in est.items())
    errs = ", ".join(
        f"{k} {100 * np.mean(v['var_err']):.1f}%" for k, v in est.items() if k != POPULATION
    )
    return (
        f"held-out accuracy: {accs}; variance error vs population: {errs} "
        f"({seconds / 60:.1f} min, {run_dir / 'report.html'})"
    )
