"""`bnlab gan-norms`' analysis: per variant FD (G in eval and train mode), the train/eval gap,
classes covered, stray dots and time per step; paired differences against the unnormalized
model and against the best BN; one claim per (question, variant) and one answer per question.

Reads the run (:class:`~bnlab.lab.results.Run`; its records are ``bnlab gan``'s epoch
records); trains nothing, draws nothing. The run writes what :func:`analyse` returns as
summary.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from bnlab.lab.experiments.gan.analysis import final_values, step_ms, too_small
from bnlab.lab.experiments.gan_norms.config import NormsConfig
from bnlab.lab.models.gan import Variant
from bnlab.lab.results import ONE_SEED, Claim, Run, no_answer, verdict_text
from bnlab.lab.stats import Estimate, mean_ci, paired_by_seed, paired_claim

__all__ = [
    "NON_INFERIORITY",
    "QUANTITIES",
    "NormsAnalysis",
    "VariantRow",
    "analyse",
    "baseline_of",
    "bn_models",
    "result_line",
]

# Q3 ("is spectral norm in D at least as good as BN?") is a non-inferiority question: it holds
# when the 95% CI of FD(SN) - FD(best BN) lies below this share of the best BN's mean FD.
NON_INFERIORITY = 0.10
# Per-seed quantities (a record key, or gap and ms_per_step derived from them) -> label.
QUANTITIES = {
    "fd": "FD (eval G)",
    "fd_train": "FD (train G)",
    "gap": "gap FD eval - train",
    "classes_covered": "classes (eval G)",
    "stray_dots": "stray dots (eval G)",
    "ms_per_step": "ms/step",
}


@dataclass(frozen=True)
class VariantRow:
    """One variant over the seeds: each quantity's mean [95% CI], and its FD (eval G) minus the
    unnormalized model's and minus the best BN's, paired over seeds."""

    variant: str
    values: dict[str, Estimate]  # QUANTITIES key -> over seeds
    fd_vs_none: Estimate  # paired difference; n = 0 for the baseline itself
    fd_vs_best_bn: Estimate
    batch_dependent: bool  # G's training output depends on the batch (a BN-family layer)


@dataclass(frozen=True)
class NormsAnalysis:
    """What a run shows (summary.json)."""

    experiment: str  # "gan-norms"
    baseline: str  # the unnormalized model ("" if the run has none)
    best_bn: str  # the BN variant with the lowest mean FD (eval G) ("" if none)
    rows: tuple[VariantRow, ...]
    claims: tuple[Claim, ...]
    answers: dict[str, str]  # question -> one sentence
    no_answer: str  # why the run cannot answer ("" if it can)


def baseline_of(variants: tuple[Variant, ...]) -> str:
    """The unnormalized model: the first variant without normalization or spectral norm."""
    for v in variants:
        if not v.has_bn and not v.d_sn:
            return v.name
    return ""


def bn_models(variants: tuple[Variant, ...]) -> list[str]:
    """The plain-BN variants (BN in G, BN or nothing in D, no spectral norm)."""
    return [v.name for v in variants if any(v.g_norm) and v.norms_are_bn]


def _per_seed(run: Run[NormsConfig], variant: str, key: str) -> dict[int, float]:
    records = run.records
    if key == "gap":
        ev, tr = (final_values(records, variant, k) for k in ("fd", "fd_train"))
        return {s: ev[s] - tr[s] for s in sorted(set(ev) & set(tr))}
    if key == "ms_per_step":
        return step_ms(records, variant, run.config.training.batch_size)
    return final_values(records, variant, key)


def _diff(a: dict[int, float], b: dict[int, float]) -> Estimate:
    p = paired_by_seed(a, b)
    return p.diff if p is not None else Estimate(math.nan, math.nan, math.nan, 0)


def _claims(
    run: Run[NormsConfig], baseline: str, best_bn: str
) -> tuple[list[Claim], dict[str, str]]:
    variants = run.config.variants
    fd = {v.name: _per_seed(run, v.name, "fd") for v in variants}
    gap = {v.name: {s: abs(g) for s, g in _per_seed(run, v.name, "gap").items()} for v in variants}
    out: list[Claim] = []
    q1: list[tuple[str, Claim]] = []
    q2: list[tuple[str, Claim]] = []
    q3: list[tuple[str, Claim]] = []
    if baseline:
        for v in variants:
            if v.name == baseline:
                continue
            c = paired_claim(
                f"Q1 [{v.name}]",
                f"{v.name} beats no normalization ({baseline}).",
                f"FD with G in eval mode, final, {v.name} - {baseline}",
                fd[v.name],
                fd[baseline],
                "negative",
            )
            if c:
                q1.append((v.name, c))
    if best_bn:
        for v in variants:
            if v.name == best_bn or not v.g_batch_dependent:
                continue
            c = paired_claim(
                f"Q2 [{v.name}]",
                f"{v.name} has a smaller train/eval gap than the best BN ({best_bn}).",
                f"|FD eval - FD train|, final, {v.name} - {best_bn}",
                gap[v.name],
                gap[best_bn],
                "negative",
            )
            if c:
                q2.append((v.name, c))
        for v in variants:
            if not v.d_sn:
                continue
            m = NON_INFERIORITY * mean_ci(list(fd[best_bn].values())).mean
            c = paired_claim(
                f"Q3 [{v.name}]",
                f"Spectral norm in D ({v.name}) is at least as good as the best BN ({best_bn}).",
                f"FD with G in eval mode, final, {v.name} - {best_bn}",
                fd[v.name],
                fd[best_bn],
                "negative",
                margin=m,
                rule=(
                    f"non-inferiority: holds if the 95% CI of the paired difference lies "
                    f"entirely below {NON_INFERIORITY:.0%} of {best_bn}'s mean FD ({m:.3g}); "
                    "does not hold if entirely above it; else inconclusive. One seed: agrees if "
                    "the difference is below the margin, else disagrees"
                ),
            )
            if c:
                q3.append((v.name, c))
    out = [c for _, c in q1 + q2 + q3]
    fixed = [v.name for v in variants if not v.g_batch_dependent]
    answers = {
        "Which normalizations beat no normalization (FD, G in eval mode)?": _answer(q1),
        "Which remove the train/eval gap?": (
            f"No gap by construction (G's output does not depend on the batch): "
            f"{', '.join(fixed) or 'none'}. Against the best BN ({best_bn or '-'}): " + _answer(q2)
        ),
        "Is spectral norm in D at least as good as BN?": _answer(q3),
    }
    return out, answers


def _answer(claims: list[tuple[str, Claim]]) -> str:
    """The variants grouped by verdict, e.g. "holds: ln, gn; inconclusive: vbn"."""
    if not claims:
        return "not measured in this run."
    groups: dict[str, list[str]] = {}
    for name, c in claims:
        groups.setdefault(verdict_text(c.verdict), []).append(name)
    return "; ".join(f"{k}: {', '.join(v)}" for k, v in groups.items()) + "."


def analyse(run: Run[NormsConfig]) -> NormsAnalysis:
    """Per variant numbers, paired differences and claims (summary.json)."""
    variants = run.config.variants
    baseline = baseline_of(variants)
    fd = {v.name: _per_seed(run, v.name, "fd") for v in variants}
    scored = [n for n in bn_models(variants) if fd[n]]
    best_bn = min(scored, key=lambda n: float(np.mean(list(fd[n].values())))) if scored else ""
    rows = []
    for v in variants:
        values = {k: mean_ci(list(_per_seed(run, v.name, k).values())) for k in QUANTITIES}
        none = Estimate(math.nan, math.nan, math.nan, 0)
        rows.append(
            VariantRow(
                v.name,
                values,
                _diff(fd[v.name], fd[baseline]) if baseline and v.name != baseline else none,
                _diff(fd[v.name], fd[best_bn]) if best_bn and v.name != best_bn else none,
                v.g_batch_dependent,
            )
        )
    claims, answers = _claims(run, baseline, best_bn)
    why = too_small(run.records, baseline) if baseline else ""
    claims = no_answer(claims, why)  # the numbers stay; the verdicts say the run cannot tell
    if why:
        answers = {q: f"no answer: {why}." for q in answers}
    return NormsAnalysis("gan-norms", baseline, best_bn, tuple(rows), tuple(claims), answers, why)


def result_line(analysis: NormsAnalysis, run: Run[NormsConfig]) -> str:
    """A table of the final numbers per variant, then one answer per question."""
    head = (
        f"{'variant':<12} {'FD eval':>9} {'FD train':>9} {'gap':>8} {'classes':>7} {'ms/step':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in analysis.rows:
        v = r.values

        def num(k: str, spec: str, v: dict[str, Estimate] = v) -> str:
            return spec.format(v[k].mean) if v[k].n else "-"

        lines.append(
            f"{r.variant:<12} {num('fd', '{:9.3g}'):>9} {num('fd_train', '{:9.3g}'):>9} "
            f"{num('gap', '{:+8.3g}'):>8} {num('classes_covered', '{:7.1f}'):>7} "
            f"{num('ms_per_step', '{:8.2f}'):>8}"
        )
    seeds = sorted({r["seed"] for r in run.records})
    lines.append(f"(means over seeds {', '.join(map(str, seeds))})")
    if analysis.no_answer:  # three lines of the same "no answer" would bury it
        lines.append(f"No answer to the questions from this run: {analysis.no_answer}.")
    else:
        lines += [f"{q} {a}" for q, a in analysis.answers.items()]
    if not analysis.no_answer and any(c.verdict in ONE_SEED for c in analysis.claims):
        lines.append("One seed gives directions, not verdicts: run --seeds 0,1,2,3,4.")
    return "\n".join(lines) + f"\n{run.dir}: report.html, summary.json, metrics.jsonl, samples/"
