"""`bnlab batch-size`' report: test error vs the normalization batch beside Wu & He's Figure 1,
the train/eval gap vs b, a table and the claims; drawn from the run (its analysis), never
trains."""

from __future__ import annotations

import math

from bnlab.lab.experiments.batch_size.analysis import (
    PAPER,
    SMALL,
    BatchSizeAnalysis,
    Point,
    analyse,
    result_line,
)
from bnlab.lab.experiments.batch_size.config import BATCH_FREE, PRECISE, Config
from bnlab.lab.experiments.protocol import ExperimentReport
from bnlab.lab.report.html import Figure, Section, Table
from bnlab.lab.results import Run
from bnlab.lab.stats import Estimate, format_ci

__all__ = ["REPORT", "make_figures", "report"]

LABELS = {
    "bn": "BN (ghost batches of b)",
    "renorm": "Batch Renorm (ghost batches of b)",
    "gn": "GroupNorm",
    "ln": "LayerNorm (GroupNorm, 1 group)",
    PRECISE: "BN, precise statistics",
    "bn" + SMALL: "BN, SGD batch b",
    "gn" + SMALL: "GN, SGD batch b",
}
STYLE = {  # color, line style, marker
    "bn": ("C0", "-", "o"),
    "renorm": ("C2", "-", "s"),
    "gn": ("C3", "-", ""),
    "ln": ("C4", "-", ""),
    PRECISE: ("C0", "--", "x"),
    "bn" + SMALL: ("C0", "", "^"),
    "gn" + SMALL: ("C3", "", "^"),
}


def _series(a: BatchSizeAnalysis) -> dict[str, list[Point]]:
    out: dict[str, list[Point]] = {}
    for p in a.points:
        out.setdefault(p.series, []).append(p)
    return {k: sorted(v, key=lambda p: p.b) for k, v in out.items()}


def _ci(e: Estimate) -> tuple[float, float]:
    ok = math.isfinite(e.lo) and math.isfinite(e.hi)
    return (e.lo, e.hi) if ok else (e.mean, e.mean)


def make_figures(run: Run[Config], a: BatchSizeAnalysis) -> dict[str, bytes]:
    """error_vs_b.png (ours beside the paper's) and gap_vs_b.png, written into the run
    directory; name -> PNG bytes of those drawn."""
    from bnlab.lab.report.plots import pyplot, save_figure

    plt = pyplot()
    series = _series(a)
    if not series:
        return {}
    bs = sorted(run.config.norm_batches)
    drawn: dict[str, bytes] = {}
    fig, (ax, paper) = plt.subplots(1, 2, figsize=(12, 4.3))
    for name, pts in series.items():
        color, ls, marker = STYLE.get(name, ("C7", "-", "o"))
        if name in BATCH_FREE:  # no dependence on b: one training per seed, drawn flat
            e = pts[0].test_err
            ax.plot(bs, [e.mean] * len(bs), color=color, ls=ls, label=LABELS[name] + " (flat)")
            ax.fill_between(bs, *[[v] * len(bs) for v in _ci(e)], color=color, alpha=0.15)
            continue
        x = [p.b for p in pts]
        y = [p.test_err.mean for p in pts]
        ax.plot(x, y, color=color, ls=ls or "none", marker=marker, ms=6, label=LABELS[name])
        lo, hi = zip(*(_ci(p.test_err) for p in pts), strict=True)
        if name not in ("bn" + SMALL, "gn" + SMALL):
            ax.fill_between(x, lo, hi, color=color, alpha=0.15)
        else:
            ax.vlines(x, lo, hi, color=color, lw=1)
    for axis in (ax, paper):
        axis.set_xscale("log", base=2)
        axis.invert_xaxis()  # as Figure 1: the batch shrinks to the right
        axis.set_xlabel("normalization batch b (images per GPU)")
        axis.grid(alpha=0.3, which="both")
    ax.set_xticks(bs, [str(b) for b in bs])
    ax.set_ylabel("test error (%), eval mode")
    ax.set_title(f"This run: {run.config.dataset}, mean over {len(a.seeds)} seed(s), 95% CI")
    ax.legend(fontsize=7)
    for name, color in (("bn", "C0"), ("gn", "C3")):
        pb = sorted(PAPER[name])
        paper.plot(pb, [PAPER[name][b] for b in pb], color=color, marker="o", label=name.upper())
    paper.set_xticks(sorted(PAPER["bn"]), [str(b) for b in sorted(PAPER["bn"])])
    paper.set_ylabel("top-1 error (%)")
    paper.set_title("Wu & He 2018, Figure 1: ResNet-50, ImageNet")
    paper.legend(fontsize=8)
    drawn["error_vs_b.png"] = save_figure(fig, run.dir / "error_vs_b.png")

    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, pts in series.items():
        pts = [p for p in pts if p.gap is not None]
        if not pts or name in BATCH_FREE:
            continue
        color, ls, marker = STYLE.get(name, ("C7", "-", "o"))
        x = [p.b for p in pts]
        ax.plot(x, [p.gap.mean for p in pts if p.gap], color=color, ls=ls or "none",
                marker=marker, label=LABELS[name])  # fmt: skip
    ax.axhline(0, color="0.5", lw=1)
    ax.set_xscale("log", base=2)
    ax.invert_xaxis()
    ax.set_xticks(bs, [str(b) for b in bs])
    ax.set_xlabel("normalization batch b")
    ax.set_ylabel("train-mode minus eval-mode test error (pp)")
    ax.set_title("Train/eval discrepancy (GN, LN: 0 by construction)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    drawn["gap_vs_b.png"] = save_figure(fig, run.dir / "gap_vs_b.png")
    return drawn


def report(run: Run[Config], a: BatchSizeAnalysis) -> list[Section]:
    """The report's section, from the run alone (never trains)."""
    cfg, t = run.config, run.config.training
    pngs = make_figures(run, a)
    rows = []
    for name, pts in _series(a).items():
        for p in pts:
            rows.append(
                [
                    LABELS.get(name, name),
                    "any" if name in BATCH_FREE else str(p.b),
                    str(cfg.sgd_batch if SMALL not in name else p.b),
                    format_ci(p.test_err, "{:.2f}", "%"),
                    "-" if p.train_mode_err is None else format_ci(p.train_mode_err, "{:.2f}", "%"),
                    "-" if p.gap is None else format_ci(p.gap, "{:+.2f}"),
                    "-" if name == PRECISE else f"{1000 * p.sec_per_step:.1f}",
                ]
            )
    table = Table(
        f"Test error after {a.epochs} epochs (mean over {len(a.seeds)} seed(s))",
        [
            "series",
            "norm batch b",
            "SGD batch",
            "eval-mode error [95% CI]",
            "train-mode error",
            "gap (pp)",
            "ms/step",
        ],
        rows,
        "eval mode: running statistics (BN, Renorm) or none needed (GN, LN); train mode: the "
        "test images in batches of the SGD batch, each ghost batch normalized alone, as in "
        "training; gap = train-mode minus eval-mode error, paired per seed.",
    )
    paper_rows = [
        [str(b), f"{PAPER['bn'][b]:.1f}%", f"{PAPER['gn'][b]:.1f}%"]
        for b in sorted(PAPER["bn"], reverse=True)
    ]
    paper_table = Table(
        "Wu & He 2018, Table 2: ResNet-50 ImageNet top-1 error by images per GPU",
        ["images per GPU", "BN", "GN"],
        paper_rows,
        "Each GPU's BN normalizes its own b images. The paper trains on 8 GPUs, so its SGD "
        "batch is 8 x b with the lr scaled linearly: both batches shrink together. Here the "
        "ghost runs shrink only the normalization batch, the small-SGD runs both (SGD batch = "
        "b): the two bracket the paper's setting.",
    )
    small = sorted(cfg.small_sgd_batches)
    digits = run.meta.get("train_images")
    w = "-".join(map(str, t.widths))
    intro = (
        f"Setup: {run.data}; {f'{digits:,}' if isinstance(digits, int) else '?'} training "
        f"images at {t.image_size}x{t.image_size}. Conv net: three 3x3 convolutions ({w} "
        "channels), each followed by the normalization and ReLU, 2x2 max pooling after the "
        f"first two, global average pooling, a linear head. SGD (momentum {t.momentum:g}, "
        f"weight decay {t.weight_decay:g}), lr {t.lr:g} with cosine decay, SGD batch "
        f"{cfg.sgd_batch}, {t.epochs} epochs, seeds {', '.join(map(str, a.seeds))}.\n\n"
        f"The normalization batch b is set with the SGD batch fixed at {cfg.sgd_batch}: BN is "
        "Ghost BN (bnlab.nn.GhostBatchNorm2d) with ghost batches of b, each chunk of b images "
        "normalized with its own statistics, as per-GPU BN in Wu & He's experiment; Batch "
        "Renorm is Ghost Batch Renorm (bnlab.nn.GhostBatchRenorm2d: each chunk's r and d "
        "against the running statistics; r_max 3, d_max 5, relaxed linearly from BN's (1, 0) "
        "over the first epoch). GroupNorm (groups "
        f"{t.groups}) and LayerNorm (torch.nn.GroupNorm(1, C): over C, H, W with a per-channel "
        "affine) do not depend on b: they train once per seed and are drawn flat. "
        f"{LABELS[PRECISE]}: the BN models re-evaluated with running statistics recomputed "
        "after training over 10,000 training images in batches of the SGD batch (train mode, "
        "so each ghost batch normalizes itself as in training; Wu & Johnson's precise BN): no "
        "training of its own."
        + (
            f"\n\nTrue small SGD batches ({', '.join(map(str, small))}) for BN and GN: "
            f"normalization batch = SGD batch, lr scaled linearly (lr x b / {cfg.sgd_batch}, as "
            "Wu & He did), the same epochs and so "
            f"{cfg.sgd_batch} / b times the steps. Where BN with a true SGD batch of b matches "
            "ghost BN at b, the loss is the normalization batch's, not the SGD batch's."
            if small
            else ""
        )
        + (f"\n\n{a.agreement}" if a.agreement else "")
        + (f"\n\nNo answer from this run: {a.no_answer}." if a.no_answer else "")
    )
    figures = []
    if "gap_vs_b.png" in pngs:
        figures.append(
            Figure(
                "Train-mode vs eval-mode error",
                pngs["gap_vs_b.png"],
                "BN evaluated in train mode (batch statistics of each ghost batch) against "
                "eval mode (running statistics).",
            )
        )
    hero = []
    if "error_vs_b.png" in pngs:
        hero.append(
            Figure(
                "Test error vs normalization batch",
                pngs["error_vs_b.png"],
                "left: this run (bands: 95% t CI over seeds; triangles: true SGD batches of "
                "b); right: Wu & He's numbers.",
            )
        )
    return [
        Section(
            "Batch size: BN vs Batch Renorm vs GroupNorm vs LayerNorm",
            intro,
            claims=list(a.claims),
            tables=[table, paper_table],
            figures=figures,
            anchor="batch-size",
            hero=hero,
        )
    ]


REPORT: ExperimentReport[Config, BatchSizeAnalysis] = ExperimentReport(
    name="batch-size",
    title="bnlab batch-size: test error vs the normalization batch",
    config=Config,
    analyse=analyse,
    report=report,
    result_line=result_line,
)
