"""`bnlab activations`: per-layer activation distributions of a deep MLP, by init and with BN.

The blog's explanation of internal covariate shift (claim C5): as inputs pass through layer
after layer, the distribution of activations is distorted more and more; Xavier / He init keep
the per-layer distributions similar and Gaussian-like at the start, and BN forces it during
training. The picture the post cites is the Stanford CS231n lecture figure (Lecture 6,
"Training Neural Networks I", weight initialization): a row of per-layer histograms of a
10-layer, 500-unit tanh net for several inits (Glorot & Bengio 2010, He et al. 2015). This
experiment draws that figure for real MNIST digits, with and without BN (Ioffe & Szegedy 2015)
after every Linear layer, at init and after a few hundred training steps, and puts numbers on
it: per layer mean, std, percentiles, skewness, kurtosis and Kolmogorov-Smirnov distances to
N(0, 1).

What is measured, and why:

- *pre* = the input of the nonlinearity (the BN output in BN nets), *post* = its output. C5 is
  judged on *pre*: that is what BN normalizes and what decides saturation (tanh) or dead units
  (ReLU); *post* of a ReLU is never Gaussian (half of it is exactly 0), whatever the init.
- ``ks`` compares the raw values with N(0, 1): scale *and* shape. A layer whose values have
  collapsed to 1e-7 or exploded to 1e12 is far from N(0, 1) even when its histogram is
  bell-shaped, and "every layer has a similar, Gaussian-like distribution" (the blog) is
  exactly "every layer is close to one fixed N(0, 1)". ``ks_shape`` compares the values
  standardized by their own mean and std: shape only (the CLT makes wide random layers
  bell-shaped whatever their scale, so this one separates the two effects).
- Activations come from one fixed evaluation batch of held-out digits through forward hooks,
  on a copy of the net (so recording never changes running statistics). BN layers are in
  *train* mode for both stages: at init the running statistics are still (0, 1), so eval
  mode would show an un-normalized net; batch statistics over the evaluation batch show what
  BN does while training. Held-out accuracy is measured in eval mode (running statistics).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.config import StrList
from bnlab.experiments import common
from bnlab.experiments.common import derived_generator, derived_seed
from bnlab.models.mlp import ACTIVATIONS as ACTIVATION_TYPES
from bnlab.models.mlp import INITS, mlp
from bnlab.report.html import Claim, Section, Table, Verdict, write_report
from bnlab.runs import append_jsonl

__all__ = [
    "ActivationsConfig",
    "ActivationsResult",
    "Config",
    "Result",
    "build_net",
    "claims",
    "layer_stats",
    "report",
    "run",
]

NAME = "activations"
ACTIVATIONS = ("tanh", "relu")
INIT_TEXT = {
    "small": "N(0, 0.01²)",
    "unit": "N(0, 1)",
    "xavier": "Xavier (Glorot normal)",
    "he": "He (Kaiming normal, fan_in)",
}
QUANTILES = (0.15, 0.50, 0.85)  # the percentiles Ioffe & Szegedy plot in their Figure 1
HIST_BINS = 40  # enough to see shape in a 1-inch panel, few enough to stay smooth at 500k values
HIST_TAIL = 0.005  # pre-activation panels span the 0.5th..99.5th percentile (tails would
# otherwise squeeze the bulk into one bin when values explode)
SATURATED_TANH = 0.99  # |tanh| above this counts as saturated (gradient < 0.02)
CLAIM_MAX_KS = 0.1  # "Gaussian-like": a KS distance below this to N(0,1)
STAGES = ("init", "trained")
KINDS = ("pre", "post")


@dataclass(frozen=True)
class ActivationsConfig:
    """Per-layer activation histograms of a deep MLP on MNIST, per init, with and without BN.

    Defaults: 10 hidden layers of 500 units (the CS231n figure's net), tanh and ReLU, four
    inits, each with and without BN: 16 nets, each measured at init and after 200 Adam steps.
    About 4 minutes on a 2-core CPU (3.7 measured while other processes shared it).
    """

    depth: int = 10
    """hidden layers (the CS231n figure: 10)"""
    width: int = 500
    """units per hidden layer (the CS231n figure: 500)"""
    activations: StrList = ("tanh", "relu")
    """nonlinearities to compare (tanh, relu): tanh saturates, ReLU dies; both are in the figure"""
    inits: StrList = INITS
    """weight inits: small = N(0, 0.01²), unit = N(0, 1), xavier, he; biases 0 throughout"""
    norms: StrList = ("plain", "bn")
    """plain = no normalization; bn = bnlab.nn.BatchNorm1d after every hidden Linear, before
    the nonlinearity (the blog's placement)"""
    steps: int = 200
    """training steps before the second measurement: a few hundred moves the weights far
    enough to change the distributions and keeps 16 nets within the 10-minute budget"""
    batch_size: int = 100
    """training batch (the blog's GAN batch)"""
    lr: float = 1e-3
    """Adam learning rate (default betas). Adam's step does not scale with the gradient, so
    the nets whose gradients vanish (small init) or explode (N(0, 1) init) still take
    comparable steps instead of stalling or diverging as SGD would"""
    eval_size: int = 1000
    """held-out digits in the fixed evaluation batch: activations are recorded on it (500k
    values per layer) and accuracy is measured on it"""
    data: Path | None = None
    """directory with the MNIST IDX files (else $BNLAB_DATA, ~/.cache/bnlab, download)"""
    out: Path | None = None
    """run directory (default: runs/activations-<date>-<time>)"""
    seed: int = 0
    """fixes the held-out split, batch order and the weights (the same Linear weights with and
    without BN for one init, so differences come from BN)"""
    threads: int = 1
    """torch CPU threads; 1 because these matmuls gain little from a second thread and
    oversubscribed threads slow down several times when other processes share the cores"""


Config = ActivationsConfig


@dataclass
class ActivationsResult:
    run_dir: Path
    records: list[dict[str, Any]]  # layer statistics, losses and per-net summaries
    claims: list[Claim]
    seconds: float


Result = ActivationsResult


# ---- the network ------------------------------------------------------------------------------


def build_net(cfg: ActivationsConfig, activation: str, init: str, bn: bool) -> nn.Sequential:
    """784 -> depth x [Linear(width) (-> BN) -> act] -> Linear(10), logits out; biases 0.

    The Linear weights depend on (seed, init, activation) only, not on ``bn``: a BN net and
    its plain twin start from the same weights.
    """
    gen = derived_generator(cfg.seed, "init", init, activation)
    sizes = (common.PIXELS, *[cfg.width] * cfg.depth, common.CLASSES)
    return mlp(sizes, activation, bn, init, gen)


def setting_name(activation: str, init: str, norm: str) -> str:
    return f"{activation}-{init}-{norm}"


# ---- statistics -------------------------------------------------------------------------------


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _ks_to_normal(sorted_z: Tensor) -> float:
    """sup |F_n - Phi| of sorted float64 values against the standard normal CDF."""
    n = sorted_z.numel()
    cdf = torch.special.ndtr(sorted_z)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d_plus = (i / n - cdf).max()
    d_minus = (cdf - (i - 1) / n).max()
    return float(torch.maximum(d_plus, d_minus))


def _quantile(sorted_x: Tensor, q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default method)."""
    pos = q * (sorted_x.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, sorted_x.numel() - 1)
    frac = pos - lo
    return float(sorted_x[lo] * (1 - frac) + sorted_x[hi] * frac)


def layer_stats(
    values: Tensor, hist_range: tuple[float, float] | None = None, bins: int = HIST_BINS
) -> dict[str, Any]:
    """Distribution statistics of all values of one layer (every unit, every example).

    Args:
        values: any shape, e.g. (B, width); non-finite values are counted and left out.
        hist_range: histogram range; None = the HIST_TAIL..1-HIST_TAIL quantiles.

    Returns:
        mean, std (biased), p15, p50, p85, skew, kurtosis (excess: 0 for a Gaussian),
        ks (raw values vs N(0, 1)), ks_shape (standardized values vs N(0, 1)), finite (share
        of finite values) and hist = {lo, hi, counts}. Undefined values are None.
    """
    x = values.detach().reshape(-1).to(torch.float64)
    total = x.numel()
    x = x[torch.isfinite(x)]
    n = x.numel()
    out: dict[str, Any] = {"n": n, "finite": n / total if total else 0.0}
    if n < 2:
        empty = {k: None for k in ("mean", "std", "p15", "p50", "p85", "skew", "kurtosis")}
        return {**out, **empty, "ks": None, "ks_shape": None, "hist": None}
    xs, _ = torch.sort(x)
    mean = float(xs.mean())
    d = xs - mean
    m2 = float(d.square().mean())  # two-pass: deviations from the mean first
    std = math.sqrt(m2)
    out.update(mean=mean, std=std)
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = _quantile(xs, q)
    if m2 > 0:
        out["skew"] = _finite(float(d.pow(3).mean()) / m2**1.5)
        out["kurtosis"] = _finite(float(d.pow(4).mean()) / m2**2 - 3.0)
        out["ks_shape"] = _ks_to_normal(d / std)
    else:
        out.update(skew=None, kurtosis=None, ks_shape=None)
    out["ks"] = _ks_to_normal(xs)
    if hist_range is None:
        lo, hi = _quantile(xs, HIST_TAIL), _quantile(xs, 1 - HIST_TAIL)
    else:
        lo, hi = hist_range
    if not hi > lo:  # a constant layer (all ReLUs dead): one narrow bin around the value
        pad = max(abs(lo) * 1e-6, 1e-12)
        lo, hi = lo - pad, hi + pad
    counts = torch.histc(xs, bins=bins, min=lo, max=hi)
    out["hist"] = {"lo": lo, "hi": hi, "counts": [int(c) for c in counts.tolist()]}
    return out


def _post_range(activation: str) -> tuple[float, float] | None:
    return (-1.0, 1.0) if activation == "tanh" else None  # tanh: the CS231n figure's range


def _saturated(activation: str, post: Tensor) -> float:
    """Share of units in the flat part: |tanh| > SATURATED_TANH, or ReLU output exactly 0."""
    flat = post.abs() > SATURATED_TANH if activation == "tanh" else post == 0
    return float(flat.float().mean())


@torch.no_grad()
def record_layers(model: nn.Module, x: Tensor, activation: str) -> list[dict[str, Any]]:
    """Statistics of every hidden layer's pre- and post-activations on the batch ``x``.

    Runs a copy of ``model`` in train mode (BN normalizes with the statistics of ``x``; the
    original's running statistics are left untouched).
    """
    twin = copy.deepcopy(model).train()
    twin_acts = [m for m in twin.modules() if isinstance(m, ACTIVATION_TYPES[activation])]
    seen: list[tuple[Tensor, Tensor]] = []

    def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen.append((inputs[0], output))  # (B, width) each

    handles = [a.register_forward_hook(hook) for a in twin_acts]
    try:
        twin(x)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for layer, (pre, post) in enumerate(seen, start=1):
        rows.append({"layer": layer, "kind": "pre", **layer_stats(pre)})
        post_stats = layer_stats(post, _post_range(activation))
        rows.append(
            {
                "layer": layer,
                "kind": "post",
                **post_stats,
                "saturated": _saturated(activation, post),
            }
        )
    return rows


# ---- training ---------------------------------------------------------------------------------

LOSS_EVERY = 10  # steps per point of the loss curve (the mean of those steps' losses)


def train(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    order: Tensor,
    lr: float,
    on_step: Callable[[int, float], None] | None = None,
) -> tuple[list[tuple[int, float]], bool]:
    """Adam on softmax cross-entropy over the batches ``order`` (steps, B).

    Returns:
        ([(step, mean loss of the last LOSS_EVERY steps)], diverged): training stops at the
        first non-finite loss.
    """
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    curve: list[tuple[int, float]] = []
    window = torch.zeros(())
    for step in range(order.shape[0]):
        idx = order[step]  # (B,)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if not torch.isfinite(loss):
            return curve, True
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        window += loss.detach()
        if (step + 1) % LOSS_EVERY == 0 or step + 1 == order.shape[0]:
            count = (step % LOSS_EVERY) + 1
            value = float(window) / count
            curve.append((step + 1, value))
            window.zero_()
            if on_step is not None:
                on_step(count, value)
    return curve, False


# ---- the run ----------------------------------------------------------------------------------


def _check(cfg: ActivationsConfig) -> None:
    for name, value in (("depth", cfg.depth), ("width", cfg.width), ("batch-size", cfg.batch_size)):
        if value < 1:
            raise ValueError(f"--{name} must be at least 1, got {value}")
    if cfg.steps < 0:
        raise ValueError(f"--steps must be 0 or more, got {cfg.steps}")
    if cfg.eval_size < 2:
        raise ValueError(f"--eval-size must be at least 2 (BN needs a batch), got {cfg.eval_size}")
    for field, given, allowed in (
        ("activations", cfg.activations, tuple(ACTIVATIONS)),
        ("inits", cfg.inits, INITS),
        ("norms", cfg.norms, ("plain", "bn")),
    ):
        bad = [v for v in given if v not in allowed]
        if bad or not given:
            raise ValueError(
                f"--{field}: {', '.join(bad) or 'nothing given'} not among {', '.join(allowed)}"
            )


def run(cfg: ActivationsConfig, log: Callable[[str], None] = print) -> ActivationsResult:
    """Train and measure every (activation, init, norm) net; write the run directory."""
    started = time.perf_counter()
    _check(cfg)
    with common.torch_threads(cfg.threads):
        x_tr, y_tr, x_ev, y_ev, what = common.train_test(
            "mnist", cfg.data, cfg.eval_size, derived_seed(cfg.seed, "holdout"), log, "--eval-size"
        )
        if x_tr.shape[0] < cfg.batch_size:
            raise ValueError(
                f"{x_tr.shape[0]} training digits is less than one batch of {cfg.batch_size}"
            )
        settings = [(a, i, n) for a in cfg.activations for i in cfg.inits for n in cfg.norms]
        run_dir, metrics = common.start_run(
            cfg.out,
            NAME,
            cfg,
            settings=[setting_name(*s) for s in settings],
            data=what,
            train_size=x_tr.shape[0],
        )
        log(
            f"{len(settings)} nets ({cfg.depth} x {cfg.width}), {cfg.steps} Adam steps each, "
            f"on {what}; run dir {run_dir}"
        )
        # (steps, B): the same batches for every net
        order = common.batch_order(x_tr.shape[0], cfg.batch_size, cfg.steps, cfg.seed)
        records: list[dict[str, Any]] = []
        bar = common.progress(len(settings) * cfg.steps)
        try:
            for activation, init, norm in settings:
                name = setting_name(activation, init, norm)
                bar.set_description_str(name, refresh=False)
                new = _one_setting(cfg, activation, init, norm, x_tr, y_tr, x_ev, y_ev, order, bar)
                append_jsonl(metrics, new)
                records.extend(new)
        finally:
            bar.close()
        _draw_figures(run_dir, records, cfg.depth, cfg.steps, redraw=True)
    found = claims(records, cfg.depth)
    write_report(
        run_dir / "report.html", report(run_dir), "bnlab activations: seeing covariate shift"
    )
    seconds = time.perf_counter() - started
    log(one_line(records, found, cfg.depth, run_dir, seconds))
    return ActivationsResult(run_dir, records, found, seconds)


def _one_setting(
    cfg: ActivationsConfig,
    activation: str,
    init: str,
    norm: str,
    x_tr: Tensor,
    y_tr: Tensor,
    x_ev: Tensor,
    y_ev: Tensor,
    order: Tensor,
    bar: Any,
) -> list[dict[str, Any]]:
    """Measure one net at init, train it, measure again; its metric records."""
    t0 = time.perf_counter()
    tag = {"setting": setting_name(activation, init, norm), "activation": activation}
    tag.update(init=init, norm=norm)
    model = build_net(cfg, activation, init, norm == "bn")
    out: list[dict[str, Any]] = []
    for row in record_layers(model, x_ev, activation):
        out.append({"type": "layer", **tag, "stage": "init", **row})
    acc_init, _ = common.accuracy_and_loss(model, x_ev, y_ev)

    def on_step(count: int, loss: float) -> None:
        bar.set_postfix_str(f"loss {loss:.3g}", refresh=False)
        bar.update(count)

    curve, diverged = train(model, x_tr, y_tr, order, cfg.lr, on_step)
    if diverged:  # count the steps it did not take, so the bar still ends at its total
        bar.update(cfg.steps - (curve[-1][0] if curve else 0))
    for row in record_layers(model, x_ev, activation):
        out.append({"type": "layer", **tag, "stage": "trained", **row})
    out.extend({"type": "loss", **tag, "step": s, "loss": _finite(v)} for s, v in curve)
    out.append(
        {
            "type": "net",
            **tag,
            "accuracy_init": acc_init,
            "accuracy_trained": common.accuracy_and_loss(model, x_ev, y_ev)[0],
            "loss_first": _finite(curve[0][1]) if curve else None,
            "loss_last": _finite(curve[-1][1]) if curve else None,
            "diverged": diverged,
            "seconds": time.perf_counter() - t0,
        }
    )
    return out


# ---- figures (from records only) --------------------------------------------------------------

INIT_COLORS = {"small": "tab:blue", "unit": "tab:red", "xavier": "tab:green", "he": "tab:purple"}
NORM_STYLES = {"plain": "-", "bn": "--"}
ROW_LABELS = {
    ("init", "pre"): "pre-act.\nat init",
    ("init", "post"): "activation\nat init",
    ("trained", "pre"): "pre-act.\ntrained",
    ("trained", "post"): "activation\ntrained",
}


def _layer_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "layer"]


def _settings(records: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["setting"] for r in _layer_rows(records)))


def hist_figure_name(setting: str) -> str:
    return f"hist-{setting}.png"


def plot_setting(records: list[dict[str, Any]], setting: str, depth: int, steps: int) -> Any:
    """The CS231n layout for one net: a row of per-layer histograms per (stage, kind).

    Rows: pre-activations and activations at init, then after training. Pre-activation
    panels carry the Gaussian with the layer's own mean and std (dotted) to judge shape;
    each panel's title gives the layer and its std (its scale).
    """
    import matplotlib.pyplot as plt

    rows = {
        (r["stage"], r["kind"], r["layer"]): r
        for r in _layer_rows(records)
        if r["setting"] == setting
    }
    keys = [
        k for k in ROW_LABELS if any((k[0], k[1], layer) in rows for layer in range(1, depth + 1))
    ]
    fig, axes = plt.subplots(
        len(keys), depth, figsize=(1.25 * depth + 0.6, 1.25 * len(keys) + 0.5), squeeze=False
    )
    for i, (stage, kind) in enumerate(keys):
        for j in range(depth):
            ax = axes[i][j]
            r = rows.get((stage, kind, j + 1))
            ax.set_yticks([])
            ax.tick_params(axis="x", labelsize=6, length=2, pad=1)
            if r is None or r.get("hist") is None:
                ax.set_axis_off()
                continue
            h = r["hist"]
            counts = np.asarray(h["counts"], dtype=float)
            edges = np.linspace(h["lo"], h["hi"], len(counts) + 1)
            ax.stairs(counts, edges, fill=True, color="tab:blue" if kind == "pre" else "tab:orange")
            if kind == "pre" and r.get("std"):
                grid = np.linspace(h["lo"], h["hi"], 200)
                width = edges[1] - edges[0]
                z = (grid - r["mean"]) / r["std"]
                pdf = np.exp(-0.5 * z**2) / (r["std"] * math.sqrt(2 * math.pi))
                ax.plot(grid, pdf * r["n"] * width, ":", color="k", lw=0.8)
            ax.set_xlim(h["lo"], h["hi"])
            ax.set_xticks([h["lo"], h["hi"]])
            left, right = ax.set_xticklabels([f"{h['lo']:.2g}", f"{h['hi']:.2g}"])
            left.set_horizontalalignment("left")  # inside the panel: neighbours never overlap
            right.set_horizontalalignment("right")
            if kind == "post" and r.get("saturated") is not None:
                flat = "off" if r["activation"] == "relu" else "sat."
                ax.text(
                    0.97, 0.95, f"{r['saturated']:.0%} {flat}", transform=ax.transAxes,
                    ha="right", va="top", fontsize=6,
                )  # fmt: skip
            ax.set_title(f"L{j + 1}  σ={r['std']:.2g}", fontsize=7, pad=2)
            if j == 0:
                ax.set_ylabel(ROW_LABELS[(stage, kind)], fontsize=8)
    fig.suptitle(f"{setting}: per-layer histograms at init and after {steps} steps", fontsize=10)
    fig.tight_layout(h_pad=0.6, w_pad=0.3)
    return fig


def _curve(
    records: list[dict[str, Any]], setting: str, stage: str, kind: str, key: str
) -> tuple[list[int], list[float]]:
    pts = sorted(
        (r["layer"], r[key])
        for r in _layer_rows(records)
        if r["setting"] == setting
        and r["stage"] == stage
        and r["kind"] == kind
        and r.get(key) is not None
    )
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_depth(
    records: list[dict[str, Any]], key: str, ylabel: str, log_y: bool, title: str
) -> Any:
    """Per-layer ``key`` of the pre-activations vs depth: one line per net, a panel per
    (activation, stage). Colour = init, solid = plain, dashed = BN."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    layers = _layer_rows(records)
    activations = list(dict.fromkeys(r["activation"] for r in layers))
    fig, axes = plt.subplots(
        len(activations),
        2,
        figsize=(10, 3.2 * len(activations) + 0.4),
        squeeze=False,
        sharex=True,
        sharey=True,  # one scale for all panels: init vs trained and tanh vs ReLU compare
    )
    for i, activation in enumerate(activations):
        for j, stage in enumerate(STAGES):
            ax = axes[i][j]
            for setting in _settings(records):
                r0 = next(r for r in layers if r["setting"] == setting)
                if r0["activation"] != activation:
                    continue
                xs, ys = _curve(records, setting, stage, "pre", key)
                ax.plot(
                    xs,
                    ys,
                    NORM_STYLES.get(r0["norm"], "-"),
                    marker="o",
                    ms=3,
                    lw=1.3,
                    color=INIT_COLORS.get(r0["init"]),
                    label=f"{r0['init']} {r0['norm']}",
                )
            if log_y:
                ax.set_yscale("log")
            ax.set_title(
                f"{activation}, {'at init' if stage == 'init' else 'trained'}", fontsize=10
            )
            if i == len(activations) - 1:
                ax.set_xlabel("hidden layer")
            ax.set_ylabel(ylabel)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=7, ncol=2)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def plot_losses(records: list[dict[str, Any]]) -> Any:
    """Training loss (mean over LOSS_EVERY steps) of every net, a panel per activation."""
    import matplotlib.pyplot as plt

    losses = [r for r in records if r.get("type") == "loss" and r.get("loss") is not None]
    activations = list(dict.fromkeys(r["activation"] for r in _layer_rows(records)))
    fig, axes = plt.subplots(
        1, len(activations), figsize=(5.5 * len(activations), 3.6), squeeze=False
    )
    for ax, activation in zip(axes[0], activations, strict=True):
        for setting in _settings(records):
            pts = [r for r in losses if r["setting"] == setting and r["activation"] == activation]
            if not pts:
                continue
            ax.plot(
                [r["step"] for r in pts],
                [r["loss"] for r in pts],
                NORM_STYLES.get(pts[0]["norm"], "-"),
                color=INIT_COLORS.get(pts[0]["init"]),
                lw=1.2,
                label=f"{pts[0]['init']} {pts[0]['norm']}",
            )
        ax.set_yscale("log")
        ax.set_title(f"{activation}: training loss", fontsize=10)
        ax.set_xlabel("step")
        ax.set_ylabel(f"cross-entropy (mean of {LOSS_EVERY} steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    return fig


SUMMARY_FIGURES = {
    "depth-ks.png": (
        "ks",
        "KS distance to N(0,1)",
        False,
        "Pre-activations vs N(0,1) (scale and shape), per layer",
    ),
    "depth-std.png": ("std", "std (log scale)", True, "Pre-activation std per layer"),
    "depth-ks-shape.png": (
        "ks_shape",
        "KS of standardized values",
        False,
        "Pre-activation shape (standardized) vs N(0,1), per layer",
    ),
}


def _draw_figures(
    run_dir: Path, records: list[dict[str, Any]], depth: int, steps: int, redraw: bool
) -> None:
    """Every PNG of the run from its records (only the missing ones unless ``redraw``)."""
    from bnlab.report.plots import save_figure

    def want(name: str) -> bool:
        return redraw or not (run_dir / name).exists()

    for name, (key, ylabel, log_y, title) in SUMMARY_FIGURES.items():
        if want(name):
            save_figure(plot_depth(records, key, ylabel, log_y, title), run_dir / name)
    if want("training-loss.png"):
        save_figure(plot_losses(records), run_dir / "training-loss.png")
    for setting in _settings(records):
        name = hist_figure_name(setting)
        if want(name):
            save_figure(plot_setting(records, setting, depth, steps), run_dir / name, dpi=90)


# ---- claims and the report --------------------------------------------------------------------


def last_layers(depth: int) -> int:
    """How many of the deepest layers the claim averages over: the last third."""
    return max(1, depth // 3)


def deep_mean(
    records: list[dict[str, Any]], setting: str, stage: str, key: str, depth: int
) -> float | None:
    """Mean of ``key`` of the pre-activations over the last third of the layers."""
    first = depth - last_layers(depth) + 1
    vals = [
        r[key]
        for r in _layer_rows(records)
        if r["setting"] == setting
        and r["stage"] == stage
        and r["kind"] == "pre"
        and r["layer"] >= first
        and r.get(key) is not None
    ]
    return float(np.mean(vals)) if vals else None


def _pairs(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(activation, init) pairs measured both plain and with BN."""
    have = set(_settings(records))
    out = []
    for s in _settings(records):
        a, i, _ = s.split("-", 2)
        if (a, i) not in out and {setting_name(a, i, "plain"), setting_name(a, i, "bn")} <= have:
            out.append((a, i))
    return out


def _bn_vs_plain(
    records: list[dict[str, Any]], key: str, depth: int
) -> list[tuple[str, str, float, float]]:
    out = []
    for a, i in _pairs(records):
        bn = deep_mean(records, setting_name(a, i, "bn"), "trained", key, depth)
        plain = deep_mean(records, setting_name(a, i, "plain"), "trained", key, depth)
        if bn is not None and plain is not None:
            out.append((a, i, bn, plain))
    return out


def claims(records: list[dict[str, Any]], depth: int) -> list[Claim]:
    """C5, judged twice: against N(0,1) itself (scale and shape), and on shape alone."""
    k = last_layers(depth)
    where = f"pre-activations of the last {k} of {depth} layers, after training"
    out = []
    for key, label, thresholded in (("ks", "", True), ("ks_shape", " (shape only)", False)):
        rows = _bn_vs_plain(records, key, depth)
        if not rows:
            continue
        wins = sum(bn < plain for *_, bn, plain in rows)
        worst_bn = max(bn for *_, bn, _ in rows)
        n = len(rows)
        verdict: Verdict
        if wins == n and (not thresholded or worst_bn < CLAIM_MAX_KS):
            verdict = "holds"
        elif wins <= n / 2:
            verdict = "does not hold"
        else:
            verdict = "inconclusive"
        what = "raw values" if key == "ks" else "values standardized by their own mean and std"
        value = (
            f"BN {np.mean([r[2] for r in rows]):.3f} (worst {worst_bn:.3f}) vs plain "
            f"{np.mean([r[3] for r in rows]):.3f} (best {min(r[3] for r in rows):.3f}); "
            f"BN lower in {wins}/{n} (activation, init) pairs"
        )
        rule = (
            "holds if BN is lower in every pair"
            + (f" and below {CLAIM_MAX_KS} in every pair" if thresholded else "")
            + "; does not hold if BN is lower in at most half the pairs; else inconclusive"
        )
        out.append(
            Claim(
                id="C5" + label,
                statement="BN keeps per-layer activations Gaussian-like (removes internal "
                "covariate shift)",
                quantity=f"KS distance to N(0,1) of the {what}; {where}; mean over pairs",
                value=value,
                verdict=verdict,
                rule=rule,
            )
        )
    return out


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _layer_value(
    records: list[dict[str, Any]], setting: str, stage: str, layer: int, key: str
) -> float | None:
    for r in _layer_rows(records):
        if (r["setting"], r["stage"], r["kind"], r["layer"]) == (setting, stage, "pre", layer):
            v = r.get(key)
            return None if v is None else float(v)
    return None


def _tables(records: list[dict[str, Any]], depth: int) -> list[Table]:
    nets = {r["setting"]: r for r in records if r.get("type") == "net"}
    k = last_layers(depth)
    rows = []
    for a, i in _pairs(records):
        p, b = setting_name(a, i, "plain"), setting_name(a, i, "bn")
        rows.append(
            [
                a,
                INIT_TEXT.get(i, i),
                _fmt(deep_mean(records, p, "init", "ks", depth)),
                _fmt(deep_mean(records, b, "init", "ks", depth)),
                _fmt(deep_mean(records, p, "trained", "ks", depth)),
                _fmt(deep_mean(records, b, "trained", "ks", depth)),
                _fmt(deep_mean(records, p, "trained", "ks_shape", depth)),
                _fmt(deep_mean(records, b, "trained", "ks_shape", depth)),
                _fmt(nets.get(p, {}).get("accuracy_trained")),
                _fmt(nets.get(b, {}).get("accuracy_trained")),
            ]
        )
    claim_table = Table(
        f"KS distance to N(0,1), pre-activations, mean over the last {k} layers",
        [
            "activation",
            "init",
            "plain, init",
            "BN, init",
            "plain, trained",
            "BN, trained",
            "shape: plain",
            "shape: BN",
            "accuracy plain",
            "accuracy BN",
        ],
        rows,
        caption="KS = sup |empirical CDF - Phi| over all units x evaluation digits of a layer: "
        "0 is a perfect N(0,1), 1 is no overlap. 'shape' standardizes each layer first. "
        "Accuracy: held-out digits, eval mode, after training.",
    )
    depth_rows = []
    for s in _settings(records):
        if not s.endswith("-plain"):
            continue
        depth_rows.append(
            [s]
            + [
                _fmt(_layer_value(records, s, "init", layer, key))
                for key in ("std", "ks")
                for layer in (1, (depth + 1) // 2, depth)
            ]
        )
    mid = (depth + 1) // 2
    depth_table = Table(
        "Without BN at init: distortion with depth (pre-activations)",
        ["net", "std L1", f"std L{mid}", f"std L{depth}", "KS L1", f"KS L{mid}", f"KS L{depth}"],
        depth_rows,
        caption="Internal covariate shift's starting point: how far each layer's input to the "
        "nonlinearity is from N(0,1) before any training, for growing depth.",
    )
    return [claim_table, depth_table]


def report(run_dir: str | Path) -> list[Section]:
    """The report's sections, from the run directory's files (redraws missing figures)."""
    run_dir, meta, records = common.read_run(run_dir)
    cfg = meta["config"]
    depth, steps = int(cfg["depth"]), int(cfg["steps"])
    _draw_figures(run_dir, records, depth, steps, redraw=False)
    k = last_layers(depth)
    intro = (
        f"Setup: MLP 784 -> {depth} x {cfg['width']} -> 10 on {meta.get('data', 'MNIST')}; "
        f"digits in [-1, 1], flattened. Inits: "
        + "; ".join(f"{i} = {INIT_TEXT.get(i, i)}" for i in cfg["inits"])
        + ", biases 0. BN = bnlab.nn.BatchNorm1d after every hidden Linear, before the "
        f"nonlinearity. Each net is measured at init and after {steps} steps of Adam "
        f"(lr {cfg['lr']}, batch {cfg['batch_size']}, softmax cross-entropy on the labels); "
        f"the plain and BN nets of one init start from the same weights and see the same "
        f"batches.\n\n"
        f"Measured on a fixed batch of {cfg['eval_size']} held-out digits through forward "
        f"hooks, BN in train mode (batch statistics of that batch; at init the running "
        f"statistics are still 0 and 1, so eval mode would show an un-normalized net). 'pre' "
        f"is the input of the nonlinearity (the BN output in BN nets). The KS distance to "
        f"N(0,1) of the raw values measures scale and shape at once: the blog's 'every layer "
        f"has a similar, Gaussian-like distribution' is 'every layer is close to one fixed "
        f"N(0,1)'. The shape-only row standardizes each layer first. The claim averages the "
        f"last {k} layers, where the distortion is largest."
    )
    summary = Section(
        "C5: BN keeps per-layer activations Gaussian-like",
        intro,
        claims=claims(records, depth),
        tables=_tables(records, depth),
        anchor="c5",
    )
    for name, (_, _, _, title) in SUMMARY_FIGURES.items():
        summary.figures += common.figure(
            run_dir,
            name,
            title,
            "Colour = init, solid = plain, dashed = BN. Left: at init; right: after training.",
        )
    hists = Section(
        "Per-layer histograms (the CS231n figure's layout)",
        "One figure per net. Rows: pre-activations and activations at init, then after "
        "training; one panel per hidden layer, its std in the title. Pre-activation panels "
        "span the 0.5th..99.5th percentile of that layer (so an exploding or collapsing "
        "scale shows in the axis, not as one full bin) with the Gaussian of the layer's own "
        "mean and std dotted; tanh activations span [-1, 1].",
        anchor="histograms",
    )
    for s in _settings(records):
        hists.figures += common.figure(run_dir, hist_figure_name(s), s)
    training = Section(
        "Training",
        "Did each net learn? Loss curves of all nets; held-out accuracy is in the table above.",
        anchor="training",
    )
    training.figures += common.figure(run_dir, "training-loss.png", "Training loss")
    return [summary, hists, training]


def one_line(
    records: list[dict[str, Any]],
    found: list[Claim],
    depth: int,
    run_dir: Path,
    seconds: float,
) -> str:
    """The result in one line: the C5 numbers per (activation, init) and the verdict."""
    rows = _bn_vs_plain(records, "ks", depth)
    pairs = ", ".join(f"{a}/{i} {bn:.2f} vs {plain:.2f}" for a, i, bn, plain in rows)
    verdict = next((c.verdict for c in found if c.id == "C5"), "not judged (needs plain and bn)")
    k = last_layers(depth)
    deepest = "last layer's" if k == 1 else f"last {k} layers'"
    return (
        f"activations: KS to N(0,1) of the {deepest} pre-activations after training, "
        f"BN vs plain: {pairs or '-'} -> C5 {verdict}; {run_dir} "
        f"({seconds / 60:.1f} min)"
    )
