"""`bnlab santurkar2018`'s report: one section per part of the paper (figure with 95% CIs over
seeds, the numbers, the verdict and its rule), C5b, and the deviations from the paper. Renders
the analysis (:func:`~bnlab.lab.experiments.santurkar2018.analysis.analyse`) and draws its
figures from the run's records; never trains.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.protocol import ExperimentReport
from bnlab.lab.experiments.santurkar2018.analysis import (
    CHANCE,
    LANDSCAPE,
    LR_TOLERANCE,
    NOISY_MARGIN,
    Diff,
    IcsNet,
    LandscapeNet,
    LogDiff,
    LrNet,
    MeanCI,
    NoisyNet,
    Part,
    Santurkar2018Analysis,
    analyse,
    result_line,
)
from bnlab.lab.experiments.santurkar2018.config import QUANTILES, Config
from bnlab.lab.report.html import Figure, Section, Table
from bnlab.lab.report.plots import pyplot, save_figure
from bnlab.lab.results import Claim, Run
from bnlab.lab.stats import mean_ci

__all__ = ["REPORT", "report"]

COLORS = {"standard": "#1f77b4", "bn": "#d62728", "noisy-bn": "#2ca02c"}
LABELS = {"standard": "standard", "bn": "BN", "noisy-bn": "noisy BN"}
NET_NAMES = {"cnn": "VGG-style CNN", "mlp": "MLP", "dln": "deep linear net"}


def _series(
    records: list[dict[str, Any]], kind: str, net: str, variant: str, value: Any, part: str = "main"
) -> tuple[np.ndarray, np.ndarray]:
    """(steps every seed has, values (seeds, steps)) of ``value(record)``."""
    by_seed: dict[int, dict[int, float]] = defaultdict(dict)
    for r in records:
        if r.get("kind") == kind and r.get("net") == net and r.get("variant") == variant:
            if kind in ("curve", "final") and r.get("part") != part:
                continue
            v = value(r)
            if v is not None:
                by_seed[int(r["seed"])][int(r["step"])] = float(v)
    if not by_seed:
        return np.array([]), np.empty((0, 0))
    steps = sorted(set.intersection(*(set(d) for d in by_seed.values())))
    return np.array(steps), np.array([[d[s] for s in steps] for _, d in sorted(by_seed.items())])


def _band(
    ax: Any,
    x: np.ndarray,
    values: np.ndarray,
    variant: str,
    log: bool = False,
    clip: tuple[float, float] | None = None,
) -> None:
    """Mean over seeds with the 95% t-interval at each x (no band with one seed). With
    ``log``: the geometric mean and the interval of the log values (a log axis)."""
    if values.size == 0:
        return
    data = np.log(np.maximum(values, 1e-300)) if log else values
    est = [mean_ci(list(col)) for col in data.T]
    mean, lo, hi = (np.array([getattr(e, a) for e in est]) for a in ("mean", "lo", "hi"))
    if log:
        mean, lo, hi = np.exp(mean), np.exp(lo), np.exp(hi)
    if clip is not None:
        lo, hi = np.clip(lo, *clip), np.clip(hi, *clip)
    ax.plot(x, mean, color=COLORS[variant], label=LABELS[variant], lw=1.5)
    if values.shape[0] > 1:
        ax.fill_between(x, lo, hi, color=COLORS[variant], alpha=0.2, lw=0)


def _n_seeds(records: list[dict[str, Any]], part: str = "main") -> int:
    return len({r["seed"] for r in records if r.get("kind") == "final" and r.get("part") == part})


def _fmt(e: MeanCI, pct: bool = False, digits: int = 3) -> str:
    m, (lo, hi) = e.mean, e.ci95
    if not math.isfinite(m):
        return "-"
    if pct:
        body = f"{m * 100:.1f}"
        return body + (f" [{lo * 100:.1f}, {hi * 100:.1f}]" if math.isfinite(lo) else "")
    body = f"{m:.{digits}g}"
    return body + (f" [{lo:.{digits}g}, {hi:.{digits}g}]" if math.isfinite(lo) else "")


def _ratio(pair: LogDiff) -> str:
    r = pair.ratio
    if not math.isfinite(r.mean):
        return "-"
    lo, hi = r.ci95
    return f"x{r.mean:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if math.isfinite(lo) else "")


def _pp(pair: Diff) -> str:
    d = pair.diff
    if not math.isfinite(d.mean):
        return "-"
    lo, hi = d.ci95
    body = f"{d.mean * 100:+.1f} pp"
    return body + (f" [{lo * 100:+.1f}, {hi * 100:+.1f}]" if math.isfinite(lo) else "")


# ---- part 1 --------------------------------------------------------------------------------------


def _curves_figure(records: list[dict[str, Any]], nets: list[str], path: Path) -> bytes | None:
    if not nets:
        return None
    fig, axes = pyplot().subplots(
        len(nets), 2, figsize=(11, 3.3 * len(nets)), squeeze=False, layout="constrained"
    )
    for row, net in zip(axes, nets, strict=True):
        for variant in ("standard", "bn", "noisy-bn"):
            x, v = _series(records, "curve", net, variant, lambda r: r.get("test_acc"))
            _band(row[0], x, v, variant)
            x, v = _series(records, "curve", net, variant, lambda r: r.get("train_loss"))
            _band(row[1], x, v, variant)
        row[0].set_title(f"{NET_NAMES[net]}: held-out accuracy (eval mode)")
        row[1].set_title(f"{NET_NAMES[net]}: training loss (mean since last point)")
        for ax in row:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(
        f"Training with standard, BN and noisy BN (mean, 95% CI over {_n_seeds(records)} seeds)"
    )
    return save_figure(fig, path)


def _acts_figure(records: list[dict[str, Any]], net: str, path: Path) -> bytes | None:
    """Figure 2's histograms over time, as quantile bands of one unit on the probe batch."""
    first: dict[str, list[dict[str, Any]]] = {}
    for variant in ("standard", "bn", "noisy-bn"):
        rows = [
            r
            for r in records
            if r.get("kind") == "acts" and r["net"] == net and r["variant"] == variant
        ]
        if rows:
            seed = min(r["seed"] for r in rows)
            first[variant] = sorted((r for r in rows if r["seed"] == seed), key=lambda r: r["step"])
    if not first:
        return None
    n_layers = max(len(rows[0]["layers"]) for rows in first.values())
    fig, axes = pyplot().subplots(
        n_layers,
        len(first),
        figsize=(3.6 * len(first), 2.2 * n_layers + 0.6),
        squeeze=False,
        sharex=True,
        sharey="row",
        layout="constrained",
    )
    lo_i, q1_i, med_i, q3_i, hi_i = range(len(QUANTILES))
    for col, (variant, rows) in enumerate(first.items()):
        steps = np.array([r["step"] for r in rows])
        for layer in range(n_layers):
            ax = axes[layer][col]
            q = np.array([r["layers"][layer]["q"] for r in rows if layer < len(r["layers"])])
            if q.size == 0:
                continue
            c = COLORS[variant]
            ax.fill_between(steps, q[:, lo_i], q[:, hi_i], color=c, alpha=0.2, lw=0)
            ax.fill_between(steps, q[:, q1_i], q[:, q3_i], color=c, alpha=0.4, lw=0)
            ax.plot(steps, q[:, med_i], color=c, lw=1.2)
            ax.grid(alpha=0.3)
            if layer == 0:
                ax.set_title(LABELS[variant])
            if col == 0:
                ax.set_ylabel(f"layer {layer + 1}")
        axes[-1][col].set_xlabel("step")
    fig.suptitle(
        f"{NET_NAMES[net]}: distribution of unit 0's pre-activation (after BN and noise) on a "
        "fixed batch over training\n(first seed; median, 25-75% and 5-95% bands; y shared per row)"
    )
    return save_figure(fig, path)


def _part1(part: Part[NoisyNet], records: list[dict[str, Any]], run_dir: Path) -> Section:
    nets = list(part.nets)
    figs = []
    png = _curves_figure(records, nets, run_dir / "part1_curves.png")
    if png:
        figs.append(Figure("Training curves", png, width=900))
    for net in nets:
        png = _acts_figure(records, net, run_dir / f"part1_acts_{net}.png")
        if png:
            figs.append(
                Figure(
                    f"{NET_NAMES[net]}: activation distributions over training",
                    png,
                    "Noisy BN's distributions jump from step to step (the injected shift); "
                    "BN's stay put; the standard net's drift slowly.",
                    width=900,
                )
            )
    rows = []
    for net, e in part.nets.items():
        rows.append(
            [
                NET_NAMES[net],
                *(_fmt(e.test_acc[v], pct=True) for v in ("standard", "bn", "noisy-bn")),
                _pp(e.bn_minus_noisy),
                _pp(e.noisy_minus_standard),
                *(_fmt(e.drift[v]) for v in ("standard", "bn", "noisy-bn")),
                e.verdict,
            ]
        )
    table = Table(
        "Final held-out accuracy (%) and distributional instability, mean [95% CI] over seeds",
        [
            "net",
            "standard",
            "BN",
            "noisy BN",
            "BN - noisy",
            "noisy - standard",
            "drift standard",
            "drift BN",
            "drift noisy",
            "verdict",
        ],
        rows,
        "Accuracy on the whole test split after the last step, eval mode (noisy BN applies its "
        "noise's mean, E[scale] * y). Drift: mean over layers, units and measured steps of "
        "|change of a unit's mean| since the previous measured step, on a fixed probe batch "
        "(what the next layer sees moving).",
    )
    claim = Claim(
        "S1",
        "Noisy BN (time-varying shift of every BN output) still trains about as well as BN",
        "final held-out accuracy, BN - noisy BN, paired over seeds",
        "; ".join(f"{NET_NAMES[n]}: {_pp(e.bn_minus_noisy)}" for n, e in part.nets.items()),
        part.verdict,
        part.rule,
    )
    return Section(
        "Part 1: noisy BN (paper Fig. 2)",
        "After every BN layer of the BN net a noise layer multiplies each activation (channel) "
        "by a factor log-uniform on [1/s, s] and adds N(m, sd^2) noise i.i.d. per sample, with "
        "m ~ U(-a, a) and sd ~ U(0, b) per activation, all redrawn every step: the distribution "
        "each next layer sees moves at every step (the 'covariate shift' BN is said to remove). "
        f"The question is whether training survives it: noisy BN within {NOISY_MARGIN * 100:.0f} "
        "pp of BN counts as 'about as well'.",
        claims=[claim],
        figures=figs,
        tables=[table],
        anchor="noisy",
    )


# ---- part 2 --------------------------------------------------------------------------------------


def _ics_rel(r: dict[str, Any]) -> float:
    vals = [a / g for a, g in zip(r["l2"][1:], r["grad_norm"][1:], strict=True) if g > 0]
    return float(np.mean(vals)) if vals else math.nan


def _ics_cos(r: dict[str, Any]) -> float:
    vals = [c for c in r["cos"][1:] if math.isfinite(c)]
    return float(np.mean(vals)) if vals else math.nan


def _ics_figure(records: list[dict[str, Any]], nets: list[str], path: Path) -> bytes | None:
    if not nets:
        return None
    fig, axes = pyplot().subplots(
        3, len(nets), figsize=(4.6 * len(nets), 10), squeeze=False, layout="constrained"
    )
    for col, net in enumerate(nets):
        for variant in ("standard", "bn"):
            x, v = _series(records, "ics", net, variant, _ics_rel)
            _band(axes[0][col], x, v, variant, log=True)
            x, v = _series(records, "ics", net, variant, _ics_cos)
            _band(axes[1][col], x, v, variant, clip=(-1.0, 1.0))
            per_layer = defaultdict(list)  # layer -> per-seed means
            by_seed: dict[int, list[list[float]]] = defaultdict(list)
            for r in records:
                if r.get("kind") == "ics" and r["net"] == net and r["variant"] == variant:
                    by_seed[r["seed"]].append(
                        [
                            a / g if g > 0 else math.nan
                            for a, g in zip(r["l2"], r["grad_norm"], strict=True)
                        ]
                    )
            for rows in by_seed.values():
                arr = np.array(rows)
                for k in range(1, arr.shape[1]):
                    per_layer[k + 1].append(float(np.nanmean(arr[:, k])))
            if per_layer:
                layers = np.array(sorted(per_layer))
                _band(
                    axes[2][col],
                    layers,
                    np.array([per_layer[k] for k in layers]).T,
                    variant,
                    log=True,
                )
        axes[0][col].set_title(f"{NET_NAMES[net]}\n||G - G'|| / ||G|| (mean over layers 2..k)")
        axes[0][col].set_yscale("log")
        axes[1][col].set_title("cos(G, G') (mean over layers 2..k)")
        axes[2][col].set_title("||G - G'|| / ||G|| by layer (mean over steps)")
        axes[2][col].set_yscale("log")
        axes[2][col].set_xlabel("layer")
        axes[2][col].xaxis.get_major_locator().set_params(integer=True)
        for ax in axes[:2, col]:
            ax.set_xlabel("step")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(
        f"Internal covariate shift, Definition 2.1 (mean, 95% CI over {_n_seeds(records)} seeds)"
    )
    return save_figure(fig, path)


def _part2(part: Part[IcsNet], records: list[dict[str, Any]], run_dir: Path) -> Section:
    nets = list(part.nets)
    figs = []
    png = _ics_figure(records, nets, run_dir / "part2_ics.png")
    if png:
        figs.append(Figure("ICS over training and by layer", png, width=900))
    rows = []
    for net, e in part.nets.items():
        rows.append(
            [
                NET_NAMES[net],
                _fmt(e.rel_l2.standard),
                _fmt(e.rel_l2.bn),
                _ratio(e.rel_l2.bn_over_standard),
                _fmt(e.cos.standard),
                _fmt(e.cos.bn),
                _fmt(e.l2.standard),
                _fmt(e.l2.bn),
                e.verdict,
                e.cos.bn_reduces_ics,
            ]
        )
    table = Table(
        "ICS by Definition 2.1, mean [95% CI] over seeds of each run's mean over measured steps "
        "and layers 2..k",
        [
            "net",
            "rel. l2 standard",
            "rel. l2 BN",
            "BN / standard",
            "cos standard",
            "cos BN",
            "l2 standard",
            "l2 BN",
            "BN reduces ICS (rel. l2)",
            "(by cosine)",
        ],
        rows,
        "G = the gradient of layer i's weights that the simultaneous update applies; G' = the "
        "same gradient on the same batch after layers 1..i-1 took their SGD step. rel. l2 = "
        "||G - G'|| / ||G||; layer 1 (nothing before it) is left out.",
    )
    claim = Claim(
        "S2",
        "BN reduces internal covariate shift (Definition 2.1)",
        "||G - G'|| / ||G||, BN - standard, paired over seeds",
        "; ".join(
            f"{NET_NAMES[n]}: {_fmt(e.rel_l2.bn_minus_standard.diff)}" for n, e in part.nets.items()
        ),
        part.verdict,
        part.rule,
    )
    return Section(
        "Part 2: internal covariate shift (paper Definition 2.1, Fig. 3)",
        "ICS measured as the paper defines it: how much the gradient of layer i's weights changes "
        "when the layers before it take their step first, on the same batch. A layer whose input "
        "distribution is kept fixed should see its gradient change little.",
        claims=[claim],
        figures=figs,
        tables=[table],
        anchor="ics",
    )


# ---- part 3 --------------------------------------------------------------------------------------


def _landscape_figure(records: list[dict[str, Any]], nets: list[str], path: Path) -> bytes | None:
    if not nets:
        return None
    fig, axes = pyplot().subplots(
        3, len(nets), figsize=(4.6 * len(nets), 10), squeeze=False, layout="constrained"
    )
    for col, net in enumerate(nets):
        for variant in ("standard", "bn"):
            c = COLORS[variant]
            for row, key in ((0, "losses"), (1, "grad_diffs")):
                x, lo = _series(records, "landscape", net, variant, lambda r, k=key: min(r[k]))
                _, hi = _series(records, "landscape", net, variant, lambda r, k=key: max(r[k]))
                if x.size:
                    axes[row][col].fill_between(
                        x, lo.mean(0), hi.mean(0), color=c, alpha=0.35, lw=0, label=LABELS[variant]
                    )
            x, v = _series(records, "landscape", net, variant, lambda r: r["beta"])
            _band(axes[2][col], x, v, variant, log=True)
        axes[0][col].set_title(f"{NET_NAMES[net]}\n(a) loss along the gradient: min..max")
        axes[1][col].set_title("(b) gradient predictiveness: ||grad change||, min..max")
        axes[2][col].set_title("(c) effective beta-smoothness")
        for row in (1, 2):
            axes[row][col].set_yscale("log")
        for ax in axes[:, col]:
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(
        "Landscape along the gradient at each measured step ((a), (b): band between the smallest "
        f"and largest value over the step sizes, mean over seeds; (c): mean, 95% CI over "
        f"{_n_seeds(records)} seeds)"
    )
    return save_figure(fig, path)


def _part3(
    part: Part[LandscapeNet], records: list[dict[str, Any]], run_dir: Path, cfg: Config
) -> Section:
    nets = list(part.nets)
    figs = []
    png = _landscape_figure(records, nets, run_dir / "part3_landscape.png")
    if png:
        figs.append(Figure("Loss landscape along the gradient", png, width=900))
    rows = []
    for net, e in part.nets.items():
        for key, m in e.measures().items():
            rows.append(
                [
                    NET_NAMES[net],
                    LANDSCAPE[key],
                    _fmt(m.standard),
                    _fmt(m.bn),
                    _ratio(m.bn_over_standard),
                    m.bn_smoother,
                ]
            )
    etas = ", ".join(f"{v:g}" for v in cfg.training.etas)
    table = Table(
        "Landscape measures, mean [95% CI] over seeds of each run's mean over measured steps",
        ["net", "measure", "standard", "BN", "BN / standard", "BN smoother"],
        rows,
        f"At each measured step w moves to w - eta * grad for eta = ({etas}) x the run's "
        "learning rate, on that step's batch, in train mode (batch statistics).",
    )
    claim = Claim(
        "S3",
        "BN makes the loss landscape smoother (loss and gradient change less along the gradient)",
        "loss variation and effective beta-smoothness, BN / standard, paired over seeds",
        "; ".join(
            f"{NET_NAMES[n]}: loss {_ratio(e.loss_range.bn_over_standard)}, beta "
            f"{_ratio(e.beta.bn_over_standard)}"
            for n, e in part.nets.items()
        ),
        part.verdict,
        part.rule,
    )
    return Section(
        "Part 3: smoothness of the landscape (paper Fig. 4)",
        "At each measured step: the range of the loss over the step sizes along the gradient "
        "(Lipschitzness of the loss), the largest l2 change of the gradient (predictiveness) and "
        "the largest gradient change per distance moved (effective beta-smoothness).",
        claims=[claim],
        figures=figs,
        tables=[table],
        anchor="landscape",
    )


# ---- part 4 --------------------------------------------------------------------------------------


def _lr_figure(part: Part[LrNet], path: Path) -> bytes | None:
    nets = list(part.nets)
    if not nets:
        return None
    fig, axes = pyplot().subplots(
        1, len(nets), figsize=(5.5 * len(nets), 4.2), squeeze=False, layout="constrained"
    )
    for ax, net in zip(axes[0], nets, strict=True):
        e = part.nets[net]
        for k, variant in enumerate(("standard", "bn")):
            rows = e.test_acc[variant]
            lrs = np.array([float(lr) for lr in rows])
            mean = np.array([r.mean for r in rows.values()])
            lo = np.array([r.ci95[0] for r in rows.values()])
            hi = np.array([r.ci95[1] for r in rows.values()])
            x = lrs * (1.04 if k else 0.96)  # side by side
            err = np.vstack([np.nan_to_num(mean - lo), np.nan_to_num(hi - mean)])
            ax.errorbar(
                x,
                mean * 100,
                yerr=err * 100,
                color=COLORS[variant],
                marker="o",
                capsize=3,
                label=LABELS[variant],
            )
            for xi, r in zip(x, rows.values(), strict=True):
                if r.diverged:
                    ax.annotate(
                        f"{len(r.diverged)} diverged",
                        (xi, r.mean * 100),
                        fontsize=7,
                        color=COLORS[variant],
                        xytext=(4, -10),
                        textcoords="offset points",
                    )
        ax.axhline(
            (e.best - LR_TOLERANCE) * 100,
            color="gray",
            ls="--",
            lw=0.8,
            label=f"best - {LR_TOLERANCE * 100:.0f} pp",
        )
        ax.axhline(CHANCE * 100, color="gray", ls=":", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_xlabel("learning rate (plain SGD)")
        ax.set_ylabel("final held-out accuracy (%)")
        ax.set_title(NET_NAMES[net])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Accuracy over a learning-rate sweep (mean, 95% CI over seeds)")
    return save_figure(fig, path)


def _part4(part: Part[LrNet], run_dir: Path, cfg: Config) -> Section:
    figs = []
    png = _lr_figure(part, run_dir / "part4_lr.png")
    if png:
        figs.append(Figure("Learning-rate sweep", png, width=900))
    rows = []
    for net, e in part.nets.items():
        for variant in ("standard", "bn"):
            cells = [
                _fmt(r, pct=True) + (f" ({len(r.diverged)} div.)" if r.diverged else "")
                for r in e.test_acc[variant].values()
            ]
            rows.append(
                [
                    NET_NAMES[net],
                    LABELS[variant],
                    *cells,
                    ", ".join(e.trains_at[variant]) or "none",
                ]
            )
    lrs = [f"lr {v:g}" for v in cfg.sweep_lrs]
    table = Table(
        f"Final held-out accuracy (%) after {cfg.sweep_steps} steps, mean [95% CI] over seeds",
        ["net", "variant", *lrs, "trains at"],
        rows,
        f"A diverged run (loss not finite or above 1e6) scores {CHANCE:.0%}.",
    )
    claim = Claim(
        "S4",
        "BN lets the net train over a wider range of learning rates",
        "learning rates at which each variant trains (within tolerance of the best)",
        "; ".join(
            f"{NET_NAMES[n]}: standard {', '.join(e.trains_at['standard']) or 'none'} vs BN "
            f"{', '.join(e.trains_at['bn']) or 'none'}"
            for n, e in part.nets.items()
        ),
        part.verdict,
        part.rule,
    )
    return Section(
        "Part 4: learning-rate range",
        "Each net trained from the same weights and batches at each learning rate, with and "
        "without BN; final held-out accuracy.",
        claims=[claim],
        figures=figs,
        tables=[table],
        anchor="lr",
    )


# ---- C5b and set-up ------------------------------------------------------------------------------


def _c5b(analysis: Santurkar2018Analysis) -> Section:
    c = analysis.C5b
    value = "; ".join(
        f"{k.replace('_', ' ')}: {v}" for k, v in dataclasses.asdict(c.evidence).items()
    )
    rows = [
        [
            NET_NAMES[n],
            "held-out accuracy" if e.measure == "test_acc" else "held-out MSE",
            _pp(e.bn_minus_standard) if e.measure == "test_acc" else _fmt(e.bn_minus_standard.diff),
            e.verdict,
        ]
        for n, e in analysis.bn_helps.nets.items()
    ]
    return Section(
        "C5b: does BN help because it reduces internal covariate shift?",
        "The post explains BN by internal covariate shift. Santurkar et al. test that explanation "
        "in two ways (parts 1 and 2) and offer another (part 3). The verdict follows from the "
        "parts by the rule below.",
        claims=[
            Claim(
                "C5b",
                c.statement,
                "parts 1-4 of this experiment",
                value,
                c.verdict,
                c.rule,
            )
        ],
        tables=[
            Table(
                "The premise: does BN help here? (main runs, same learning rate; BN - standard, "
                "paired over seeds)",
                ["net", "measure", "BN - standard [95% CI]", "BN better"],
                rows,
            )
        ],
        anchor="c5b",
    )


def _setup(cfg: Config, meta_data: str) -> Section:
    t = cfg.training
    nets = ", ".join(cfg.nets)
    seeds = ", ".join(map(str, cfg.seeds))
    text = (
        f"Data: {meta_data}. Main runs: nets {nets}; seeds {seeds}; "
        f"{cfg.steps} steps of plain SGD (batch {t.batch_size}), lr "
        f"{cfg.lr} for the image nets and {cfg.dln_lr} for the deep linear net; "
        f"{t.measures} measured steps per run. Sweep: lrs "
        f"{', '.join(f'{v:g}' for v in cfg.sweep_lrs)} x seeds "
        f"{', '.join(map(str, cfg.sweep_seeds))}, {cfg.sweep_steps} steps. "
        "Every variant of a seed starts from the same weights and sees the same batches.\n\n"
        "Deviations from the paper (Santurkar et al. 2018): "
        "(1) data: Fashion-MNIST average-pooled to 14x14 instead of CIFAR-10 (CPU budget); "
        f"(2) architecture: a VGG-style CNN with {len(t.widths)} 3x3 convolutions "
        f"(widths {', '.join(map(str, t.widths))}) and one linear layer instead of "
        "VGG's 10 conv + 3 linear layers, plus a 3-layer MLP the paper does not have; the deep "
        f"linear network has the paper's 25 layers but width {t.dln_width} on a "
        "synthetic task y = A x of our choosing; "
        f"(3) length: {cfg.steps} steps instead of the paper's ~15k (its plots span the "
        "first epochs of VGG); "
        "(4) optimizer: plain SGD without momentum or weight decay, at one learning rate for "
        "both variants in the main runs; "
        "(5) noisy BN: our reading of 'non-zero mean, non-unit variance noise, changing every "
        "step' (a per-step random scale and per-sample Gaussian noise with random mean and std "
        "per activation); the paper's exact noise parameters were not used; "
        "(6) ICS and landscape are averaged over layers and measured steps and compared by "
        "paired CIs over seeds (the paper shows curves of single runs); "
        "(7) accuracy is held-out (test split) accuracy in eval mode."
    )
    return Section("Set-up and deviations from the paper", text, anchor="setup")


def report(run: Run[Config], analysis: Santurkar2018Analysis) -> list[Section]:
    parts, records, cfg = analysis.parts, run.records, run.config
    sections = [_c5b(analysis)]
    if parts.noisy_bn.nets:
        sections.append(_part1(parts.noisy_bn, records, run.dir))
    if parts.ics.nets:
        sections.append(_part2(parts.ics, records, run.dir))
    if parts.landscape.nets:
        sections.append(_part3(parts.landscape, records, run.dir, cfg))
    if parts.lr_range.nets:
        sections.append(_part4(parts.lr_range, run.dir, cfg))
    sections.append(_setup(cfg, str(run.meta.get("data", "?"))))
    if analysis.diverged:
        sections[-1].intro += "\n\nDiverged runs: " + ", ".join(analysis.diverged) + "."
    return sections


REPORT: ExperimentReport[Config, Santurkar2018Analysis] = ExperimentReport(
    name="santurkar2018",
    title="bnlab santurkar2018: does BN help by reducing internal covariate shift?",
    config=Config,
    analyse=analyse,
    report=report,
    result_line=result_line,
)
