"""`bnlab activations`' report: the CS231n figure per net, the C5 numbers with depth, the
training curves. Renders :func:`~bnlab.lab.experiments.activations.analysis.analyse`'s numbers;
figures are drawn from the run's records (those that are missing); never trains, never writes
summary.json.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.activations.analysis import (
    ActivationsAnalysis,
    analyse,
    layer_rows,
    ordered_records,
    result_line,
    settings,
)
from bnlab.lab.experiments.activations.config import LOSS_EVERY, ActivationsConfig, setting_name
from bnlab.lab.experiments.protocol import ExperimentReport
from bnlab.lab.report.html import Section, Table, file_figure
from bnlab.lab.results import Run

__all__ = ["SUMMARY_FIGURES", "draw_figures", "hist_figure_name", "report"]

INIT_TEXT = {
    "small": "N(0, 0.01²)",
    "unit": "N(0, 1)",
    "xavier": "Xavier (Glorot normal)",
    "he": "He (Kaiming normal, fan_in)",
}
STAGES = ("init", "trained")

# ---- figures (from records only) ---------------------------------------------------------------

INIT_COLORS = {"small": "tab:blue", "unit": "tab:red", "xavier": "tab:green", "he": "tab:purple"}
NORM_STYLES = {"plain": "-", "bn": "--"}
ROW_LABELS = {
    ("init", "pre"): "pre-act.\nat init",
    ("init", "post"): "activation\nat init",
    ("trained", "pre"): "pre-act.\ntrained",
    ("trained", "post"): "activation\ntrained",
}


def hist_figure_name(setting: str) -> str:
    return f"hist-{setting}.png"


def plot_setting(records: list[dict[str, Any]], setting: str, depth: int, steps: int) -> Any:
    """The CS231n layout for one net: a row of per-layer histograms per (stage, kind).

    Rows: pre-activations and activations at init, then after training. Pre-activation
    panels carry the Gaussian with the layer's own mean and std (dotted) to judge shape;
    each panel's title gives the layer and its std (its scale).
    """
    from bnlab.lab.report.plots import pyplot

    plt = pyplot()

    rows = {
        (r["stage"], r["kind"], r["layer"]): r
        for r in layer_rows(records)
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
        for r in layer_rows(records)
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
    from bnlab.lab.report.plots import pyplot

    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    layers = layer_rows(records)
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
            for setting in settings(records):
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
    from bnlab.lab.report.plots import pyplot

    plt = pyplot()

    losses = [r for r in records if r.get("type") == "loss" and r.get("loss") is not None]
    activations = list(dict.fromkeys(r["activation"] for r in layer_rows(records)))
    fig, axes = plt.subplots(
        1, len(activations), figsize=(5.5 * len(activations), 3.6), squeeze=False
    )
    for ax, activation in zip(axes[0], activations, strict=True):
        for setting in settings(records):
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


def draw_figures(
    run_dir: Path, records: list[dict[str, Any]], depth: int, steps: int, redraw: bool = False
) -> None:
    """Every PNG of the run from its records: the missing ones, or all with ``redraw``. (A
    figure depends on the records alone, and a finished run's records never change; drawing
    the 16 histogram figures is a good share of a short run's time.)"""
    from bnlab.lab.report.plots import save_figure

    if not layer_rows(records):  # every job failed before its first measurement
        return

    def want(name: str) -> bool:
        return redraw or not (run_dir / name).exists()

    for name, (key, ylabel, log_y, title) in SUMMARY_FIGURES.items():
        if want(name):
            save_figure(plot_depth(records, key, ylabel, log_y, title), run_dir / name)
    if want("training-loss.png"):
        save_figure(plot_losses(records), run_dir / "training-loss.png")
    for setting in settings(records):
        name = hist_figure_name(setting)
        if want(name):
            save_figure(plot_setting(records, setting, depth, steps), run_dir / name, dpi=90)


# ---- the report ---------------------------------------------------------------------------------


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}g}"


def _layer_value(
    records: list[dict[str, Any]], setting: str, stage: str, layer: int, key: str
) -> float | None:
    for r in layer_rows(records):
        if (r["setting"], r["stage"], r["kind"], r["layer"]) == (setting, stage, "pre", layer):
            v = r.get(key)
            return None if v is None else float(v)
    return None


def _accuracy(analysis: ActivationsAnalysis, activation: str, init: str, norm: str) -> str:
    net = analysis.nets.get(setting_name(activation, init, norm))
    return _fmt(None if net is None else net.accuracy_trained)


def _tables(
    analysis: ActivationsAnalysis, records: list[dict[str, Any]], depth: int
) -> list[Table]:
    k = analysis.last_layers
    rows = [
        [
            p.activation,
            INIT_TEXT.get(p.init, p.init),
            _fmt(p.ks_plain_init),
            _fmt(p.ks_bn_init),
            _fmt(p.ks_plain_trained),
            _fmt(p.ks_bn_trained),
            _fmt(p.ks_shape_plain_trained),
            _fmt(p.ks_shape_bn_trained),
            _accuracy(analysis, p.activation, p.init, "plain"),
            _accuracy(analysis, p.activation, p.init, "bn"),
        ]
        for p in analysis.pairs
    ]
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
    for s in settings(records):
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


def report(run: Run[ActivationsConfig], analysis: ActivationsAnalysis) -> list[Section]:
    """The report's sections: the analysis rendered, figures from the records (draws the
    missing ones into the run directory)."""
    records = ordered_records(run)
    run_dir, cfg, tr = run.dir, run.config, run.config.training
    depth, steps = tr.depth, tr.steps
    draw_figures(run_dir, records, depth, steps)
    k = analysis.last_layers
    intro = (
        f"Setup: MLP 784 -> {depth} x {tr.width} -> 10 on {run.meta.get('data', 'MNIST')}; "
        f"digits in [-1, 1], flattened. Inits: "
        + "; ".join(f"{i} = {INIT_TEXT.get(i, i)}" for i in cfg.inits)
        + ", biases 0. BN = bnlab.nn.BatchNorm1d after every hidden Linear, before the "
        f"nonlinearity. Each net is measured at init and after {steps} steps of Adam "
        f"(lr {tr.lr}, batch {tr.batch_size}, softmax cross-entropy on the labels); "
        f"the plain and BN nets of one init start from the same weights and see the same "
        f"batches.\n\n"
        f"Measured on a fixed batch of {cfg.eval_size} held-out digits through forward "
        f"hooks, BN in train mode (batch statistics of that batch; at init the running "
        f"statistics are still 0 and 1, so eval mode would show an un-normalized net). 'pre' "
        f"is the input of the nonlinearity (the BN output in BN nets). The KS distance to "
        f"N(0,1) of the raw values measures scale and shape at once: the blog's 'every layer "
        f"has a similar, Gaussian-like distribution' is 'every layer is close to one fixed "
        f"N(0,1)'. The shape-only row standardizes each layer first. The claim averages the "
        f"last {k} layers, where the distortion is largest."
    )
    summary = Section(
        "C5a: BN keeps per-layer activations near N(0,1)",
        intro,
        claims=list(analysis.claims),
        tables=_tables(analysis, records, depth),
        anchor="c5",
    )
    for name, (_, _, _, title) in SUMMARY_FIGURES.items():
        summary.figures += file_figure(
            run_dir / name,
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
    for s in settings(records):
        hists.figures += file_figure(run_dir / hist_figure_name(s), s)
    training = Section(
        "Training",
        "Did each net learn? Loss curves of all nets; held-out accuracy is in the table above.",
        anchor="training",
    )
    training.figures += file_figure(run_dir / "training-loss.png", "Training loss")
    return [summary, hists, training]


REPORT: ExperimentReport[ActivationsConfig, ActivationsAnalysis] = ExperimentReport(
    name="activations",
    title="bnlab activations: seeing covariate shift",
    config=ActivationsConfig,
    analyse=analyse,
    report=report,
    result_line=result_line,
)
