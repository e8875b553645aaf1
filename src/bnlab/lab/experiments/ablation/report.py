"""`bnlab gan-ablation`'s report: effects, paths and cell tables, rendered from the analysis of
:mod:`bnlab.lab.experiments.ablation.analysis`. Reads the run (:class:`~bnlab.lab.results.Run`);
never trains, never writes summary.json.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from bnlab.lab.experiments.ablation.analysis import (
    AblationAnalysis,
    Effect,
    FactorEffect,
    analyse,
    cells_and_scores,
    result_line,
)
from bnlab.lab.experiments.ablation.config import FACTOR_TEXT, AblationConfig
from bnlab.lab.experiments.protocol import ExperimentReport
from bnlab.lab.report.html import Figure, Section, Table
from bnlab.lab.results import Run

__all__ = ["REPORT", "report"]


def _mean_text(by_seed: dict[int, float]) -> str:
    vals = [v for v in by_seed.values() if math.isfinite(v)]
    return f"{np.mean(vals):.1f}" if vals else "-"


def _fmt_ratio(e: Effect) -> str:
    if not math.isfinite(e.lo):
        return f"x{e.ratio:.2f}"
    return f"x{e.ratio:.2f} [{e.lo:.2f}, {e.hi:.2f}]"


def _effects_figure(ranking: tuple[FactorEffect, ...], title: str, path: Path) -> bytes:
    from bnlab.lab.report.plots import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6.5, 0.45 * len(ranking) + 1))
    names = [
        FACTOR_TEXT.get(e.factor.split(":")[0], e.factor)
        + (f" ({e.factor.split(':')[1]})" if ":" in e.factor else "")
        for e in ranking
    ]
    y = np.arange(len(ranking))[::-1]
    est = np.array([e.log_effect for e in ranking]) / math.log(10)
    lo = np.array([math.log10(e.lo) if math.isfinite(e.lo) else np.nan for e in ranking])
    hi = np.array([math.log10(e.hi) if math.isfinite(e.hi) else np.nan for e in ranking])
    ax.barh(y, est, color=["#c0392b" if v > 0 else "#2e86c1" for v in est], alpha=0.8)
    ax.errorbar(est, y, xerr=[est - lo, hi - est], fmt="none", color="k", capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, names)
    ax.set_xlabel("log10 FD ratio (right = worse)")
    ax.set_title(title)
    return save_figure(fig, path)


def report(run: Run[AblationConfig], analysis: AblationAnalysis) -> list[Section]:
    """The report's sections, one per G mode scored, from the run alone (draws the effects
    figures into the run directory)."""
    cfg = run.config
    sections = []
    for key, mode in (("fd", "eval"), ("fd_train", "train")):
        res = analysis.responses[key]
        if not any(math.isfinite(v) for v in res.cell_means.values()):
            continue
        main_rows = [
            [
                FACTOR_TEXT.get(e.factor.split(":")[0], e.factor)
                + (f" = {e.factor.split(':')[1]}" if ":" in e.factor else ""),
                _fmt_ratio(e),
                f"{e.p:.2g}",
            ]
            for e in res.ranking
        ]
        inter_rows = [
            [t.term, _fmt_ratio(t), f"{t.p:.2g}"]
            for t in sorted(
                (t for t in res.terms if " x " in t.term), key=lambda t: -abs(t.log_effect)
            )
        ]
        _, coverage = cells_and_scores(run, key.replace("fd", "classes_covered"))
        cell_rows = sorted(
            (
                [n, f"{v:.3g}", _mean_text(coverage.get(n, {}))]
                for n, v in res.cell_means.items()
                if math.isfinite(v)
            ),
            key=lambda r: float(r[1]),
        )
        figures = []
        if res.ranking:
            png = _effects_figure(
                res.ranking,
                f"Main effects on FD (G in {mode} mode)",
                run.dir / f"ablation_effects_{key}.png",
            )
            figures.append(Figure("Main effects", png, width=560))
        conclusion = (
            res.conclusion
            if res.terms
            else (
                "This run has no factorial cells (--cells notebooks): only the cell table below; "
                "effects need the factorial design."
            )
        )
        intro = (
            f"Response: Frechet distance after {cfg.epochs} epochs, G sampled in {mode} "
            f"mode, seeds {list(cfg.seeds)}. Effects are FD ratios with 95% CIs from a least-"
            "squares fit of log FD on main effects and two-way interactions (higher-order "
            "interactions pooled as error). Cell names: f<logit_bn><g_out_bn><d_in_bn><joint>"
            f"-<modes>.\n\n{conclusion}"
        )
        tables = [
            Table(
                "Factors ranked by their effect on FD",
                ["factor", "FD ratio [95% CI]", "p"],
                main_rows,
            ),
            Table(
                "Paths between the notebooks (cell means over seeds)",
                ["start", "single change", "FD", "ratio"],
                [list(row) for row in res.paths],
            ),
            Table(
                "Notebook 2's BN placement repaired, no mode switching (cell means)",
                ["BN removed from", "cell", "FD", "ratio"],
                [list(row) for row in res.repairs],
            ),
            Table(
                "Two-way interactions", ["interaction", "ratio of ratios [95% CI]", "p"], inter_rows
            ),
            Table(
                "All cells, best first (geometric mean FD over seeds)",
                ["cell", "FD", "classes covered (of 10)"],
                cell_rows,
            ),
        ]
        sections.append(
            Section(
                f"Ablation: why did the BN GAN fail? (G in {mode} mode)",
                intro,
                tables=[t for t in tables if t.rows],
                figures=figures,
                anchor=f"ablation-{key}",
            )
        )
    return sections


REPORT: ExperimentReport[AblationConfig, AblationAnalysis] = ExperimentReport(
    name="gan-ablation",
    title="bnlab gan-ablation: why did the BN GAN fail?",
    config=AblationConfig,
    analyse=analyse,
    report=report,
    result_line=result_line,
)
