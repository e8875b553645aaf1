"""`bnlab regularization`'s report: the claims of :mod:`.analysis`, per-variant and paired
tables, gap curves and the probe's spread, drawn from the run (its analysis and records);
never trains."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.protocol import ExperimentReport
from bnlab.lab.experiments.regularization.analysis import (
    FINAL_WINDOW,
    FIT_ACC,
    FIT_MIN_BATCH,
    RegularizationAnalysis,
    SlopeFit,
    analyse,
    diff_text,
    result_line,
)
from bnlab.lab.experiments.regularization.config import Config
from bnlab.lab.report.html import Figure, Section, Table
from bnlab.lab.results import Run
from bnlab.lab.stats import Estimate, format_ci

__all__ = ["REPORT", "make_figures", "report"]


# ---- figures ------------------------------------------------------------------------------------


def _plot_accuracy(records: list[dict[str, Any]], variants: list[str], path: Path) -> bytes:
    """Train (solid) and held-out (dashed) accuracy per variant, mean over seeds."""
    from bnlab.lab.report.plots import pyplot

    plt = pyplot()

    from bnlab.lab.report.plots import curves_by_variant, save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    train = curves_by_variant(records, "train_acc")
    test = curves_by_variant(records, "test_acc")
    for k, v in enumerate(x for x in variants if x in train):
        color = f"C{k}"
        ep, vals = train[v]
        ax.plot(ep, 100 * vals.mean(0), color=color, lw=1.4, label=f"{v} train")
        ep, vals = test[v]
        ax.plot(ep, 100 * vals.mean(0), color=color, lw=1.4, ls="--", label=f"{v} held-out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%), eval mode")
    ax.set_title("Accuracy on the training subset and held-out digits (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


def _plot_spread(a: RegularizationAnalysis, path: Path) -> bytes | None:
    """Spread of one digit's outputs vs batch size, log-log, with the 1/sqrt(B) guide."""
    from bnlab.lab.report.plots import pyplot

    plt = pyplot()

    from bnlab.lab.report.plots import save_figure

    probe = a.probe
    if not probe:
        return None
    b = np.array([p.batch_size for p in probe], dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    lt = np.array([p.logit_std for p in probe])
    err = np.array(
        [
            [p.logit_std - p.logit_std_lo for p in probe],
            [p.logit_std_hi - p.logit_std for p in probe],
        ]
    )
    slope = a.logit_slope.slope
    ax.errorbar(
        b,
        lt,
        yerr=np.clip(err, 0, None),
        marker="o",
        ms=4,
        lw=1.4,
        capsize=2,
        label=f"logits, train mode (slope {slope:.2f})",
    )
    bn1 = np.array([p.bn1_std for p in probe])
    ax.plot(
        b,
        bn1,
        marker="s",
        ms=4,
        lw=1.4,
        label=f"first BN output, train mode (slope {a.bn1_slope.slope:.2f})",
    )
    ref = b >= FIT_MIN_BATCH
    if ref.any():
        anchor = lt[ref][0] * math.sqrt(b[ref][0])
        ax.plot(b, anchor / np.sqrt(b), color="gray", ls=":", label="∝ 1/sqrt(B)")
    eval_max = max(max(p.logit_std_eval, p.bn1_std_eval) for p in probe)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("std over batches (RMS over units)")
    ax.set_title(f"One digit in {probe[0].batches} random batches per B")
    ax.text(
        0.02,
        0.03,
        f"eval mode: std = {eval_max:.3g} at every B",
        transform=ax.transAxes,
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def make_figures(run: Run[Config], a: RegularizationAnalysis) -> dict[str, bytes]:
    """gap_acc.png, gap_loss.png, accuracy.png (the run's records) and batch_spread.png (the
    analysis's probe, if any), written into the run directory; name -> PNG bytes of those
    drawn."""
    from bnlab.lab.report.plots import plot_metric

    run_dir = run.dir
    variants = list(run.config.variants)
    epochs = [r for r in run.records if r.get("kind") == "epoch"]
    drawn = {
        "gap_acc.png": plot_metric(
            epochs,
            "acc_gap_pp",
            "Train - held-out accuracy",
            "gap (percentage points)",
            run_dir / "gap_acc.png",
            variants,
        ),
        "gap_loss.png": plot_metric(
            epochs,
            "loss_gap",
            "Held-out - train loss",
            "gap (cross-entropy)",
            run_dir / "gap_loss.png",
            variants,
        ),
        "accuracy.png": _plot_accuracy(epochs, variants, run_dir / "accuracy.png")
        if epochs
        else None,
        "batch_spread.png": _plot_spread(a, run_dir / "batch_spread.png"),
    }
    return {name: png for name, png in drawn.items() if png is not None}


# ---- sections -----------------------------------------------------------------------------------


def _pct(e: Estimate) -> Estimate:
    return Estimate(100 * e.mean, 100 * e.lo, 100 * e.hi, e.n)


def _figures(pngs: dict[str, bytes], *wanted: tuple[str, str, str]) -> list[Figure]:
    return [Figure(title, pngs[name], caption) for name, title, caption in wanted if name in pngs]


def report(run: Run[Config], a: RegularizationAnalysis) -> list[Section]:
    """The report's sections, from the run alone (never trains)."""
    pngs = make_figures(run, a)
    sections = [_c6_section(pngs, run, a)]
    if a.probe:
        sections.append(_probe_section(pngs, a))
    return sections


def _c6_section(pngs: dict[str, bytes], run: Run[Config], a: RegularizationAnalysis) -> Section:
    """Claims, per-variant and paired tables, gap figures."""
    cfg, t = run.config, run.config.training
    per = a.variants
    n_seeds = len(a.seeds)
    match_pct = 100 * float(cfg.match_train_acc)

    lowest = {
        v: min((x for x in s.per_seed.train_acc if math.isfinite(x)), default=math.nan)
        for v, s in per.items()
    }
    unfit = ", ".join(f"{v} {100 * x:.1f}%" for v, x in lowest.items() if not x >= FIT_ACC)
    fit_note = (
        f"Every network fits its training subset by the end (lowest final train accuracy "
        f"{100 * a.min_final_train_acc:.1f}%), so the final gap compares generalization at "
        f"equal (perfect) fit, not fitting speed."
        if not unfit
        else f"Not every network fits its training subset by the end in eval mode (lowest "
        f"final train accuracy: {unfit}), so the final gap also holds some of the difference "
        f"in fit; the gap at equal training accuracy does not (or train longer: --epochs). A "
        f"BN network can fit its batches in train mode and still miss a few training digits "
        f"in eval mode, where its running statistics stand in for the batch's."
    )
    rows = []
    for v in cfg.variants:
        p = per[v]
        rows.append(
            [
                v,
                format_ci(_pct(p.train_acc), "{:.1f}", "%"),
                format_ci(_pct(p.test_acc), "{:.2f}", "%"),
                format_ci(p.gap, "{:.2f}", " pp"),
                format_ci(p.loss_gap, "{:.3f}"),
                f"{format_ci(p.matched_epoch, '{:.1f}')} ({p.reached_match}/{n_seeds})",
                format_ci(p.matched_gap, "{:.2f}", " pp"),
            ]
        )
    per_variant = Table(
        "Per variant (mean [95% CI] over seeds)",
        [
            "variant",
            "final train acc",
            "final held-out acc",
            "final acc gap",
            "final loss gap",
            f"epoch reaching {match_pct:g}% train acc (seeds)",
            "acc gap there",
        ],
        rows,
        f"final = mean over the last {min(FINAL_WINDOW, t.epochs)} of "
        f"{t.epochs} epochs; gap = train "
        f"- held-out accuracy (percentage points), loss gap = held-out - train cross-entropy; "
        f"all in eval mode.",
    )
    paired = Table(
        "Paired comparisons (same seed = same subset, init and batch order)",
        ["a - b", "what it isolates", "quantity", "difference (a - b)"],
        [[f"{c.a} - {c.b}", c.meaning, c.quantity, diff_text(c.paired)] for c in a.comparisons],
        "positive = b has the smaller gap; paired Student t interval and paired t-test.",
    )
    lead = (
        f"Setup: {run.data}. Each seed draws {t.train_size:,} training digits "
        f"from the pool; {cfg.holdout:,} held-out digits, the same for every seed. MLP "
        f"784-{'-'.join(map(str, t.hidden))}-10, {t.activation} units, BN after "
        f"each hidden Linear (bn, bn-full); Adam lr {t.lr:g}, batch "
        f"{t.batch_size}, {t.epochs} epochs, {n_seeds} seeds.\n\n"
        "What is compared: BN both speeds up fitting and (the claim) regularizes. To keep "
        "the two apart the gap is read where fitting speed no longer matters: at the end of "
        f"training, when the networks fit their training set, and at the first epoch each "
        f"network reaches {match_pct:g}% training accuracy. bn-full normalizes with "
        "statistics of the whole training subset at every step (the loss still on the "
        "mini-batch), which keeps BN's normalization and removes its batch noise: "
        "bn-full - bn is the noise's share, plain - bn-full the normalization's.\n\n"
        f"{fit_note} The verdict is for this setup only: the sign of the effect depends on it "
        "(units, epochs, training size; the README has a run with the paper's sigmoid units)."
    )
    return Section(
        "C6: does batch norm regularize?",
        lead,
        claims=list(a.claims),
        tables=[per_variant, paired],
        figures=_figures(
            pngs,
            (
                "gap_acc.png",
                "Accuracy gap",
                "train - held-out accuracy per epoch; line = mean, band = min..max over seeds.",
            ),
            ("gap_loss.png", "Loss gap", "held-out - train cross-entropy."),
            ("accuracy.png", "Accuracy", "solid: training subset; dashed: held-out."),
        ),
        anchor="c6",
    )


def _probe_section(pngs: dict[str, bytes], a: RegularizationAnalysis) -> Section:
    """The batch-dependence probe: table of spreads, slopes, figure."""
    probe = a.probe
    ls, bs1 = a.logit_slope, a.bn1_slope
    prows = [
        [
            str(p.batch_size),
            f"{p.logit_std:.4f} [{p.logit_std_lo:.4f}, {p.logit_std_hi:.4f}]",
            f"{p.bn1_std:.4f}",
            f"{p.logit_std_eval:.3g}",
            f"{p.bn1_std_eval:.3g}",
            f"{100 * p.flip_rate:.1f}%",
        ]
        for p in probe
    ]
    ptable = Table(
        "Spread of one digit's outputs over random batches",
        [
            "B",
            "logit std, train [95% CI]",
            "BN-1 std, train",
            "logit std, eval",
            "BN-1 std, eval",
            "prediction flips",
        ],
        prows,
        "std over batches, root mean square over units (10 logits; first BN layer's "
        "channels); flips = batches in which the digit's predicted class differs from "
        "its eval-mode prediction.",
    )

    def slope_text(f: SlopeFit) -> str:
        ci = f" [{f.lo:.3f}, {f.hi:.3f}]" if math.isfinite(f.lo) else ""
        return f"{f.slope:.3f}{ci}"

    intro = (
        f"The network: seed {a.seeds[0]}'s bn network after training. The digit: the "
        f"first held-out digit, placed in {probe[0].batches} random batches of B - 1 "
        "other digits from the training pool for every batch size B. In train mode BN "
        "normalizes with the batch's statistics, so the digit's outputs move with its "
        "batch mates; in eval mode BN uses the running statistics and the same batches "
        "give exactly the same outputs.\n\n"
        f"Log-log slope of the spread against B (fitted for B >= {FIT_MIN_BATCH}; 95% CI): "
        f"logits {slope_text(ls)}, first BN output {slope_text(bs1)}; a batch mean's "
        "standard error gives -0.5."
    )
    return Section(
        "Batch dependence: one digit in many batches",
        intro,
        tables=[ptable],
        figures=_figures(
            pngs,
            (
                "batch_spread.png",
                "Spread vs batch size",
                "error bars: 95% bootstrap CI over batches.",
            ),
        ),
        anchor="batch-dependence",
    )


REPORT: ExperimentReport[Config, RegularizationAnalysis] = ExperimentReport(
    name="regularization",
    title="bnlab regularization: does BN regularize? (claim C6)",
    config=Config,
    analyse=analyse,
    report=report,
    result_line=result_line,
)
