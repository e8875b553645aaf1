"""`bnlab gan`'s analysis: records -> per-variant numbers and a verdict per claim (C1-C4),
and several runs of the same variants compared.

Reads the run (:class:`~bnlab.lab.results.Run`); trains nothing, draws nothing. The run writes
what :func:`analyse` returns as summary.json; the report shows the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from bnlab.lab.configs import config_to_dict, differing_settings
from bnlab.lab.experiments.gan.config import GanConfig
from bnlab.lab.experiments.protocol import NOT_IN_LABELS
from bnlab.lab.results import ONE_SEED, Claim, Run, Verdict, no_answer, verdict_text
from bnlab.lab.stats import Estimate, mean_ci, paired, paired_claim

__all__ = [
    "LOSSES",
    "METRICS",
    "CompareRow",
    "Final",
    "GanAnalysis",
    "GanComparison",
    "PairedDiff",
    "analyse",
    "claim_sentence",
    "claims",
    "compare",
    "final_values",
    "result_line",
    "run_labels",
    "step_ms",
    "too_small",
    "variant_names",
]

# metric key -> (title, y label, lower is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "fd": ("Frechet distance to held-out real digits", "FD (classifier features)", True),
    "classes_covered": ("Classes covered by 10,000 samples", "classes (of 10)", False),
    "kl_uniform": ("KL(class histogram || uniform)", "KL (nats)", True),
    "confidence": ("Mean max-softmax confidence", "confidence", False),
    "stray_dots": ("Stray white dots", "share of isolated bright pixels", True),
}
LOSSES = {
    "d_loss": "D loss",
    "g_loss": "G loss",
    "d_x": "D(x)",
    "d_g_z": "D(G(z))",
    "g_acc": "G accuracy",
}
BASELINE = "init"  # the blog's comparison: He/Xavier without BN ...
BN_MODELS = ("init-bn", "init-bn-tidy")  # ... against BN, as notebook 3 ran it and tidied
BROKEN = "init-bn-nomode"  # notebook 2


@dataclass(frozen=True)
class Final:
    """One quantity of one variant over the seeds (a loss: mean of its last 25% of epochs; an
    image metric: its last measured value), as summary.json holds it."""

    mean: float
    ci95: tuple[float, float]  # t interval over seeds (nan with one seed)
    n_seeds: int


@dataclass(frozen=True)
class GanAnalysis:
    """What a run shows (summary.json): final numbers per variant and the blog's claims."""

    experiment: str  # "gan"
    config: dict[str, Any]  # the run's flags as config.json holds them (flat name -> value)
    variants: dict[str, dict[str, Final]]  # variant -> quantity (d_loss, fd, fd_train, ...)
    claims: tuple[Claim, ...]
    notes: str
    no_answer: str = ""  # why the run cannot answer the claims (:func:`too_small`); "" if it can


def variant_names(run: Run[GanConfig]) -> list[str]:
    """The run's variants in the order they were given."""
    names = [v.name for v in run.config.variants]
    return names or sorted({r["variant"] for r in run.records})


def _final(records: list[dict[str, Any]], variant: str, key: str) -> dict[int, float]:
    """seed -> value of ``key`` at the last epoch where it was measured for that seed."""
    out: dict[int, tuple[int, float]] = {}
    for r in records:
        if r.get("variant") == variant and r.get(key) is not None:
            seed, epoch = r["seed"], r["epoch"]
            if seed not in out or epoch > out[seed][0]:
                out[seed] = (epoch, float(r[key]))
    return {s: v for s, (_, v) in out.items()}


final_values = _final  # for the experiments built on gan's records (gan-norms)


def step_ms(records: list[dict[str, Any]], variant: str, batch_size: int) -> dict[int, float]:
    """seed -> median wall time of one training step (ms) over that seed's epochs, from the
    images/s each epoch record carries (seeds without one are left out)."""
    by_seed: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r.get("variant") == variant and r.get("images_per_s"):
            by_seed[r["seed"]].append(1000 * batch_size / r["images_per_s"])
    return {s: float(np.median(v)) for s, v in by_seed.items()}


def _late_mean(
    records: list[dict[str, Any]], variant: str, key: str, share: float = 0.25
) -> dict[int, float]:
    """seed -> mean of ``key`` over the last ``share`` of the epochs (losses are noisy)."""
    by_seed: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r.get("variant") == variant and r.get(key) is not None:
            by_seed[r["seed"]].append((r["epoch"], float(r[key])))
    out = {}
    for seed, rows in by_seed.items():
        rows.sort()
        k = max(1, math.ceil(len(rows) * share))
        out[seed] = float(np.mean([v for _, v in rows[-k:]]))
    return out


def _reduced(records: list[dict[str, Any]], variant: str, key: str) -> dict[int, float]:
    """seed -> the claims' reading of ``key``: the mean of the last quarter of epochs for a
    loss (noisy), the last measured value for an image metric."""
    return _late_mean(records, variant, key) if key in LOSSES else _final(records, variant, key)


def _claim(
    cid: str,
    statement: str,
    records: list[dict[str, Any]],
    variants: tuple[str, str],
    key: str,
    expected: Literal["positive", "negative"],
    extra: str = "",
) -> Claim | None:
    """Paired difference variants[0] - variants[1] of ``key`` over seeds (:func:`_reduced`)."""
    what = f"{variants[0]} - {variants[1]}"
    label = LOSSES.get(key, key.replace("_train", "").replace("_", " "))
    late = "mean of the last 25% of epochs" if key in LOSSES else "final"
    a, b = (_reduced(records, v, key) for v in variants)
    return paired_claim(
        cid, statement, f"{label}, {late}, {what}", a, b, expected, what=what, extra=extra
    )


def _versus(records: list[dict[str, Any]], variants: tuple[str, str], key: str) -> str:
    """ "A vs B" of ``key`` (means over seeds) for a claim's extra numbers, "" if unmeasured."""
    a, b = (_reduced(records, v, key) for v in variants)
    if not a or not b:
        return ""
    return f"{mean_ci(list(a.values())).fmt()} vs {mean_ci(list(b.values())).fmt()}"


C1_TEXT = (
    "Without train/eval handling (notebook 2), the BN model produces broken samples and "
    "abnormal D/G losses."
)
C2_TEXT = (
    "With train/eval handling both models draw good digits; the BN model shows fewer "
    "stray white dots."
)
C4_TEXT = "Hence BN improves the GAN generator's performance."
GOOD_DIGITS_CLASSES = 9.0  # "good digits": samples cover at least 9 of the 10 classes


def _good_digits(
    claim: Claim | None, records: list[dict[str, Any]], variant: str, key: str
) -> Claim | None:
    """C2 also says both models draw good digits: no fewer dots can save a model that does not
    (pure noise has few *isolated* bright pixels)."""
    if claim is None:
        return None
    covered = mean_ci(list(_final(records, variant, key).values()))
    rule = claim.rule + f"; and {variant} must cover >= {GOOD_DIGITS_CLASSES:.0f} of 10 classes"
    if covered.n and covered.mean < GOOD_DIGITS_CLASSES:
        fails: Verdict = "disagrees" if claim.verdict in ONE_SEED else "does not hold"
        return dataclasses.replace(claim, verdict=fails, rule=rule)
    return dataclasses.replace(claim, rule=rule)


# A run answers the blog's claims only once its baseline draws digits: every claim compares a
# model with He/Xavier init without BN (init), and before that model learns, differences between
# variants are differences between kinds of noise. "Draws digits": its samples cover at least
# LEARNED_CLASSES of the 10 classes (in the best-scored G mode); without image metrics, at least
# MIN_EPOCHS epochs (the blog's first sample grid after epoch 1 is at epoch 25).
LEARNED_CLASSES = 5
MIN_EPOCHS = 25


def too_small(records: list[dict[str, Any]], baseline: str = BASELINE) -> str:
    """Why this run cannot answer the claims (e.g. "after 2 epochs init covers 1 of 10
    classes"), or "" when it can. ``baseline``: the unnormalized He/Xavier model's name."""
    if not any(r.get("variant") == baseline for r in records):
        return ""
    epochs = max(r["epoch"] for r in records if r.get("variant") == baseline)
    covered = [
        mean_ci(list(final_values(records, baseline, "classes_covered" + sfx).values())).mean
        for sfx in ("", "_train")
        if any("classes_covered" + sfx in r for r in records)
    ]
    if covered:
        best = max(covered)
        if not best >= LEARNED_CLASSES:
            return (
                f"after {epochs} epoch{'s' if epochs != 1 else ''} the baseline {baseline} "
                f"covers {best:.3g} of 10 classes (at least {LEARNED_CLASSES} needed): no model "
                "draws digits yet; the blog trained 200 epochs"
            )
        return ""
    if epochs < MIN_EPOCHS:
        return (
            f"{epochs} epoch{'s' if epochs != 1 else ''} without image metrics (at least "
            f"{MIN_EPOCHS} needed): too short to compare the models; the blog trained 200 epochs"
        )
    return ""


def _modes_present(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(metric-key suffix, label) for each G mode the run scored; train first: the blog's view."""
    out = []
    if any("fd_train" in r for r in records):
        out.append(("_train", "G in train mode, as the blog's images"))
    if any("fd" in r for r in records):
        out.append(("", "G in eval mode"))
    return out


def claims(records: list[dict[str, Any]]) -> list[Claim]:
    """C1-C4 of the blog, each a paired comparison across seeds (one row per G mode scored)."""
    present = {r["variant"] for r in records}
    modes = _modes_present(records)
    out: list[Claim | None] = []
    if {BROKEN, BASELINE} <= present:
        pair = (BROKEN, BASELINE)
        d_loss = _versus(records, pair, "d_loss")
        extra = f"D loss {d_loss}" if d_loss else ""
        for sfx, label in modes:
            out.append(
                _claim(f"C1 [{label}]", C1_TEXT, records, pair, "fd" + sfx, "positive", extra)
            )
        if not modes:  # no image metrics: D(x) of a D that cannot tell real from fake
            out.append(_claim("C1", C1_TEXT, records, pair, "d_x", "negative", extra))
    for bn in BN_MODELS:
        if not {bn, BASELINE} <= present:
            continue
        pair = (bn, BASELINE)
        tag = "" if bn == "init-bn" else ", tidy switching"
        for sfx, label in modes:
            cov = _versus(records, pair, "classes_covered" + sfx)
            c2 = _claim(
                f"C2 [{label}{tag}]",
                C2_TEXT,
                records,
                pair,
                "stray_dots" + sfx,
                "negative",
                f"classes covered {cov}" if cov else "",
            )
            out.append(_good_digits(c2, records, bn, "classes_covered" + sfx))
        suffix = f" [{tag[2:]}]" if tag else ""
        out.append(
            _claim(
                "C3a" + suffix,
                "The BN model has a higher discriminator loss.",
                records,
                pair,
                "d_loss",
                "positive",
            )
        )
        out.append(
            _claim(
                "C3b" + suffix,
                "The BN model has a lower generator loss.",
                records,
                pair,
                "g_loss",
                "negative",
            )
        )
        for sfx, label in modes:
            out.append(_claim(f"C4 [{label}{tag}]", C4_TEXT, records, pair, "fd" + sfx, "negative"))
    return no_answer([c for c in out if c is not None], too_small(records))


def analyse(run: Run[GanConfig]) -> GanAnalysis:
    """Per variant: final values (mean and 95% CI over seeds) and the claims (summary.json)."""
    records = run.records
    keys = [
        k
        for k in (*LOSSES, *METRICS, *(f"{m}_train" for m in METRICS))
        if any(k in r for r in records)
    ]
    per_variant = {}
    for v in variant_names(run):
        entry = {}
        for k in keys:
            est = mean_ci(list(_reduced(records, v, k).values()))
            entry[k] = Final(est.mean, (est.lo, est.hi), est.n)
        per_variant[v] = entry
    return GanAnalysis(
        experiment="gan",
        config=config_to_dict(run.config),
        variants=per_variant,
        claims=tuple(claims(records)),
        notes="losses: mean over the last 25% of epochs; metrics: last measured epoch; "
        "CI: t interval over seeds",
        no_answer=too_small(records),
    )


def result_line(analysis: GanAnalysis, run: Run[GanConfig]) -> str:
    """The end of a run: last-epoch numbers per variant (mean over seeds), then the verdicts."""
    seeds = sorted({r["seed"] for r in run.records})
    lines = [summary_table(run.records, variant_names(run), seeds), ""]
    why = analysis.no_answer
    if why:  # nine lines of "no answer" would bury the one that says why
        lines.append(f"No answer to the blog's claims from this run: {why}.")
    else:
        lines += [claim_sentence(c) for c in analysis.claims]
        if any(c.verdict in ONE_SEED for c in analysis.claims):
            lines += ["", ONE_SEED_NOTE]
    return "\n".join(lines) + f"\n{run.dir}: report.html, summary.json, metrics.jsonl, samples/"


ONE_SEED_NOTE = (
    "One seed (the blog's setup) gives each claim a direction, not a verdict: a difference "
    "between two models of one seed can be seed-to-seed noise. For verdicts with 95% "
    "confidence intervals run five seeds: bnlab gan --seeds 0,1,2,3,4 (about five times this "
    "run's time)."
)


def claim_sentence(c: Claim) -> str:
    """One line of the terminal summary: the claim, its verdict or direction, its numbers."""
    return f"{c.id}: {verdict_text(c.verdict, 'the blog')} - {c.quantity}: {c.value}"


def summary_table(records: list[dict[str, Any]], variants: list[str], seeds: list[int]) -> str:
    """Last-epoch numbers per variant (mean over seeds)."""
    head = (
        f"{'variant':<16} {'epoch':>5} {'D loss':>7} {'G loss':>7} {'D(x)':>6} "
        f"{'D(G(z))':>7} {'G acc':>6} {'img/s':>7}"
    )
    lines = [head, "-" * len(head)]
    for name in variants:
        rows = [r for r in records if r["variant"] == name]
        if not rows:
            lines.append(f"{name:<16} {'-':>5}")
            continue
        last_epoch = max(r["epoch"] for r in rows)
        last = [r for r in rows if r["epoch"] == last_epoch]

        def m(k: str, last: list[dict[str, Any]] = last) -> float:
            return sum(r[k] for r in last) / len(last)

        lines.append(
            f"{name:<16} {last_epoch:>5} {m('d_loss'):>7.3f} {m('g_loss'):>7.3f} "
            f"{m('d_x'):>6.3f} {m('d_g_z'):>7.3f} {m('g_acc'):>6.3f} {m('images_per_s'):>7.0f}"
        )
    if len(seeds) > 1:
        lines.append(f"(means over seeds {', '.join(map(str, seeds))})")
    return "\n".join(lines)


# ---- several runs of the same variants and seeds, side by side ----------------------------------


# Settings that only say how a run executed; the others label a run in a comparison.
@dataclass(frozen=True)
class PairedDiff:
    """A run's value minus the first run's, paired over the seeds both ran."""

    diff: Estimate  # mean difference with its 95% CI
    p: float  # paired t-test


@dataclass(frozen=True)
class CompareRow:
    """One variant of one run in a comparison."""

    variant: str
    run: str  # the run's label (see :func:`run_labels`)
    finals: dict[str, Estimate]  # quantity (fd, fd_train, classes_covered) -> over seeds
    diffs: dict[str, PairedDiff]  # quantity -> against the first run (with >= 2 seeds in common)
    ms_per_step: float  # median over seeds of step_ms (nan: none recorded)


@dataclass(frozen=True)
class GanComparison:
    """Several runs of the same variants and seeds, side by side."""

    runs: tuple[str, ...]  # the run directories
    labels: tuple[str, ...]  # one per run: the settings in which the runs differ
    keys: tuple[str, ...]  # the quantities compared (those the first run measured)
    rows: tuple[CompareRow, ...]  # variant by variant, each run in turn


def run_labels(configs: Sequence[GanConfig]) -> list[str]:
    """A short label per run: the settings in which the runs differ (e.g. nproc=4 ddp_bn=sync),
    by their flat names and as config.json writes their values."""
    labels = []
    for differ, cfg in zip(differing_settings(configs, NOT_IN_LABELS), configs, strict=True):
        if cfg.nproc == 1:  # one process: no data parallelism, whatever ddp_bn says
            differ.pop("ddp_bn", None)
        labels.append(" ".join(f"{k}={v}" for k, v in differ.items()) or "run")
    return labels


def compare(runs: list[Run[GanConfig]]) -> GanComparison:
    """Final FD (eval and train-mode G), classes covered and time per step of each run's
    variants, with paired differences (over seeds) against the first run."""
    labels = run_labels([run.config for run in runs])
    first = runs[0]
    variants = [v for v in variant_names(first) if all(v in variant_names(r) for r in runs)]
    keys = [k for k in ("fd", "fd_train", "classes_covered") if any(k in r for r in first.records)]
    rows = []
    for v in variants:
        for run, label in zip(runs, labels, strict=True):
            finals, diffs = {}, {}
            for k in keys:
                mine = _final(run.records, v, k)
                finals[k] = mean_ci(list(mine.values()))
                base = _final(first.records, v, k)
                seeds = sorted(set(base) & set(mine))
                if label != labels[0] and len(seeds) >= 2:
                    p = paired([mine[s] for s in seeds], [base[s] for s in seeds])
                    diffs[k] = PairedDiff(p.diff, p.p_value)
            per_seed = step_ms(run.records, v, run.config.training.batch_size)
            ms = float(np.median(list(per_seed.values()))) if per_seed else math.nan
            rows.append(CompareRow(v, label, finals, diffs, ms))
    return GanComparison(
        runs=tuple(str(run.dir) for run in runs),
        labels=tuple(labels),
        keys=tuple(keys),
        rows=tuple(rows),
    )
