"""`bnlab gan-norms`' report: each variant's last samples side by side (``bnlab gan``'s hero
strips), the three questions' answers and claims, folded tables. Renders the analysis of
:mod:`bnlab.lab.experiments.gan_norms.analysis`; never trains, never writes summary.json.
"""

from __future__ import annotations

from bnlab.lab.experiments.gan.report import hero_figures, sample_strip
from bnlab.lab.experiments.gan_norms.analysis import (
    NON_INFERIORITY,
    QUANTITIES,
    NormsAnalysis,
    analyse,
    result_line,
)
from bnlab.lab.experiments.gan_norms.config import NormsConfig
from bnlab.lab.experiments.protocol import ExperimentReport
from bnlab.lab.report.html import Figure, Section, Table
from bnlab.lab.results import Run, verdict_text

__all__ = ["REPORT", "compare_report", "report"]


def report(run: Run[NormsConfig], analysis: NormsAnalysis) -> list[Section]:
    """The report's sections, from the run and its analysis."""
    cfg = run.config
    names = [v.name for v in cfg.variants]
    seeds = sorted({r["seed"] for r in run.records})
    intro = (
        f"The blog's MNIST-style GAN with the normalization as data: {len(names)} variants, "
        f"{'seed' if len(seeds) == 1 else 'seeds'} {', '.join(map(str, seeds))}, "
        f"{cfg.training.epochs} epochs on {run.meta.get('data', '?')}; every variant of a "
        "seed saw the same batches and z. Scored as bnlab gan: Frechet distance (FD) of "
        f"{cfg.training.metric_samples:,} samples with G in eval and in train mode, classes "
        "covered, stray dots; the gap is FD eval minus FD train (the blog's whole problem), "
        "ms/step the median wall time of one D and G step. Comparisons are paired over seeds "
        f"against the unnormalized model ({analysis.baseline or '-'}) and the best BN "
        f"({analysis.best_bn or '-'}: the BN variant with the lowest mean FD, chosen on this "
        "run's data)."
    )
    if analysis.no_answer:
        intro += f"\n\nNo answer from this run: {analysis.no_answer}."
    intro += "\n\n" + "\n".join(f"{q} {a}" for q, a in analysis.answers.items())
    header = ["variant", *QUANTITIES.values(), "FD - baseline", "FD - best BN"]
    rows = [
        [
            r.variant,
            *(r.values[k].fmt() for k in QUANTITIES),
            r.fd_vs_none.fmt() if r.fd_vs_none.n else "-",
            r.fd_vs_best_bn.fmt() if r.fd_vs_best_bn.n else "-",
        ]
        for r in analysis.rows
    ]
    tables = [
        Table(
            "Final numbers per variant (mean [95% CI] over seeds)",
            header,
            rows,
            "FD: last scoring; differences paired over seeds. Q3's non-inferiority margin: "
            f"{NON_INFERIORITY:.0%} of the best BN's mean FD.",
            folded=True,
        ),
        Table(
            "Variants",
            ["variant", "definition"],
            [[v.name, v.definition()] for v in cfg.variants],
            folded=True,
        ),
    ]
    strips = []
    for v in names:
        png = sample_strip(run.dir, v, "eval")
        if png:
            strips.append(Figure(f"{v}: G in eval mode, fixed z, across epochs", png))
    return [
        Section(
            "GAN normalizations: what to use instead of BN",
            intro,
            claims=list(analysis.claims),
            tables=tables,
            anchor="gan-norms",
            hero=hero_figures(run, names),
            source="the question",
        ),
        Section(
            "GAN normalizations: samples across epochs",
            "First seed. Left to right: epochs.",
            figures=strips,
            anchor="gan-norms-samples",
        ),
    ]


def run_label(run: Run[NormsConfig]) -> str:
    """How a comparison names a run: its data and budget, e.g. "mnist, 200 epochs, 5 seeds";
    a run still short of its epochs says how far every (variant, seed) got: "25 of 50"."""
    seeds = len({r["seed"] for r in run.records})
    cfg = run.config
    reached: dict[tuple[str, int], int] = {}  # (variant, seed) -> its last recorded epoch
    for r in run.records:
        key = (r["variant"], r["seed"])
        reached[key] = max(reached.get(key, 0), int(r["epoch"]))
    done = min(reached.values(), default=0)
    epochs = (
        f"{cfg.training.epochs}"
        if done >= cfg.training.epochs
        else f"{done} of {cfg.training.epochs}"
    )
    return f"{cfg.dataset}, {epochs} epochs, {seeds} seed{'' if seeds == 1 else 's'}"


def compare_report(runs: list[Run[NormsConfig]], analyses: list[NormsAnalysis]) -> list[Section]:
    """Several gan-norms runs side by side (e.g. MNIST and Fashion-MNIST, or two budgets): per
    variant each run's FD (eval G), classes and its verdict against no normalization; then
    each run's three answers. Every verdict is the run's own, paired over its seeds; runs are
    not paired with each other (other data, or other seeds)."""
    rows_of = [{r.variant: r for r in a.rows} for a in analyses]
    verdicts_of = [{c.id: c.verdict for c in a.claims} for a in analyses]
    labels = [run_label(r) for r in runs]
    if len(set(labels)) < len(labels):  # two runs of one budget: tell them apart by folder
        labels = [f"{lab} ({r.dir.name})" for lab, r in zip(labels, runs, strict=True)]
    names: list[str] = []
    for r in runs:
        names += [v.name for v in r.config.variants if v.name not in names]
    header = ["variant"]
    for lab in labels:
        header += [f"FD {lab}", f"classes {lab}", f"vs none {lab}"]
    rows = []
    for name in names:
        row = [name]
        for a, by_name, verdicts in zip(analyses, rows_of, verdicts_of, strict=True):
            got = by_name.get(name)
            verdict = verdicts.get(f"Q1 [{name}]")
            if got is None:
                row += ["not run", "", ""]
                continue
            row += [
                got.values["fd"].fmt(),
                got.values["classes_covered"].fmt(2),
                "baseline" if name == a.baseline else verdict_text(verdict) if verdict else "-",
            ]
        rows.append(row)
    answers = "\n\n".join(
        f"{lab}: " + (
            f"No answer: {a.no_answer}." if a.no_answer
            else " ".join(f"{q} {ans}" for q, ans in a.answers.items())
        )
        for lab, a in zip(labels, analyses, strict=True)
    )  # fmt: skip
    intro = (
        "The same question on several runs: "
        + "; ".join(f"{lab}: {r.dir}" for lab, r in zip(labels, runs, strict=True))
        + ". FD with G in eval mode, mean [95% CI] over each run's seeds; 'vs none' is the "
        "run's own verdict on 'beats no normalization' (paired over its seeds). Runs are not "
        "paired with each other: their data or seeds differ, so compare verdicts, not FDs, "
        "across datasets (each dataset's FD is measured with its own classifier).\n\n" + answers
    )
    return [
        Section(
            "GAN normalizations: runs compared",
            intro,
            tables=[Table("Per variant, per run", header, rows)],
            anchor="gan-norms-compare",
        )
    ]


REPORT: ExperimentReport[NormsConfig, NormsAnalysis] = ExperimentReport(
    name="gan-norms",
    title="bnlab gan-norms: what should a GAN use instead of BN?",
    config=NormsConfig,
    analyse=analyse,
    report=report,
    result_line=result_line,
    compare=compare_report,
)
