"""`bnlab regularization`'s analysis: records -> final and matched gaps over seeds, paired
comparisons, the probe's log-log slope, and a verdict per claim (C6, its cause, its premise).

BN also speeds up optimization, which changes the gap at any fixed epoch for reasons that have
nothing to do with regularization. Two readings keep the two apart: the gap at the *end* of
training, when every network fits its training set (the report checks that they do), and the
gap at *equal training accuracy* (the first epoch at which a network reaches
``match_train_acc``). ``bn-full - bn`` is the part of the gap due to the batch noise,
``plain - bn-full`` the part due to normalizing at all.

Reads a :class:`~bnlab.lab.results.Run` (its typed config and its records); trains nothing,
draws nothing. The run writes what :func:`analyse` returns as summary.json; the report shows
the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnlab.lab.experiments.regularization.config import CI_LEVEL, Config
from bnlab.lab.results import Claim, Run, Verdict
from bnlab.lab.stats import Estimate, Paired, format_ci, mean_ci, paired

__all__ = [
    "COMPARISONS",
    "FINAL_WINDOW",
    "FIT_ACC",
    "FIT_MIN_BATCH",
    "MIN_EFFECT_PP",
    "Comparison",
    "PerSeed",
    "ProbePoint",
    "RegularizationAnalysis",
    "SlopeFit",
    "VariantSummary",
    "analyse",
    "c6_verdict",
    "claims",
    "comparison",
    "diff_text",
    "fit_slope",
    "result_line",
]

# The "final" gap averages the last epochs: on 1,000 training digits one epoch's accuracy
# moves by a few tenths of a point from epoch to epoch; five epochs damp that.
FINAL_WINDOW = 5
# A gap reduction below this (percentage points) is too small to matter: 25 of 5,000 held-out
# digits, about the seed-to-seed spread of one network's held-out accuracy. For "does not hold".
MIN_EFFECT_PP = 0.5
# A network "fits" its training subset at this eval-mode training accuracy (one digit in 1,000
# may stay wrong): below it, the final gap also measures a difference in fit.
FIT_ACC = 0.999
# The 1/sqrt(B) law is a large-B law: at B = 2 and 4 a normalized value is bounded
# (exactly +-1 at B = 2), so the log-log slope is fitted from this batch size on.
FIT_MIN_BATCH = 8
# (a, b, what a - b isolates): positive = b has the smaller gap.
COMPARISONS = (
    ("plain", "bn", "BN's total effect"),
    ("bn-full", "bn", "batch noise (BN with vs without mini-batch statistics)"),
    ("plain", "bn-full", "normalization without batch noise"),
)
NOTES = (
    f"final = mean over the last {FINAL_WINDOW} epochs; CI: {CI_LEVEL:.0%} t interval over "
    "seeds (paired for comparisons); probe CI: percentile bootstrap over batches"
)


# ---- the analysis, as summary.json holds it -----------------------------------------------------


@dataclass(frozen=True)
class PerSeed:
    """One value per seed, in the config's seed order; nan where the (variant, seed) has no
    records (a failed job) or never reached ``match_train_acc`` (the matched values)."""

    gap: tuple[float, ...]  # final train - held-out accuracy, percentage points
    loss_gap: tuple[float, ...]  # final held-out - train cross-entropy
    train_acc: tuple[float, ...]  # final, eval mode, fraction
    test_acc: tuple[float, ...]
    matched_gap: tuple[float, ...]  # at the first epoch reaching match_train_acc
    matched_test_acc: tuple[float, ...]
    matched_epoch: tuple[float, ...]  # that epoch (1-based)


@dataclass(frozen=True)
class VariantSummary:
    """One variant over seeds: the per-seed values and the mean [CI] of each."""

    per_seed: PerSeed
    gap: Estimate
    loss_gap: Estimate
    train_acc: Estimate
    test_acc: Estimate
    matched_gap: Estimate
    matched_test_acc: Estimate
    matched_epoch: Estimate
    reached_match: int  # seeds that reached match_train_acc


@dataclass(frozen=True)
class Comparison:
    """A paired comparison a - b of one quantity over seeds (positive: b has the smaller gap)."""

    a: str
    b: str
    meaning: str  # what a - b isolates
    quantity: str  # "final gap" or "gap at equal train acc"
    paired: Paired


@dataclass(frozen=True)
class ProbePoint:
    """The probe at one batch size: the spread of one digit's outputs over random batches."""

    kind: str  # "probe" (summary.json keeps the record's form)
    batch_size: int
    batches: int
    logit_std: float  # train mode, RMS over the 10 logits
    logit_std_lo: float  # its 95% bootstrap CI over batches
    logit_std_hi: float
    bn1_std: float  # train mode, RMS over the first BN layer's channels
    logit_std_eval: float  # eval mode: 0 where the output does not depend on the batch
    bn1_std_eval: float
    flip_rate: float  # share of batches that change the digit's predicted class


@dataclass(frozen=True)
class SlopeFit:
    """A log-log slope against the batch size, with its t CI (nan with too few points)."""

    slope: float
    lo: float
    hi: float
    n: int  # batch sizes fitted


@dataclass(frozen=True)
class RegularizationAnalysis:
    """What a regularization run found: summary.json (plus the driver's "failed")."""

    experiment: str  # "regularization"
    seeds: tuple[int, ...]
    variants: dict[str, VariantSummary]  # in the config's variant order
    comparisons: tuple[Comparison, ...]  # COMPARISONS x (final gap, gap at equal train acc)
    probe: tuple[ProbePoint, ...]  # by batch size; empty without a probe
    logit_slope: SlopeFit
    bn1_slope: SlopeFit
    min_final_train_acc: float  # over every (variant, seed) with records
    claims: tuple[Claim, ...]
    notes: str


# ---- the numbers --------------------------------------------------------------------------------


def _final(rows: list[dict[str, Any]], key: str) -> float:
    """Mean of ``key`` over the last FINAL_WINDOW epochs of one (variant, seed)."""
    last = sorted(rows, key=lambda r: r["epoch"])[-FINAL_WINDOW:]
    return float(np.mean([r[key] for r in last])) if last else math.nan


def c6_verdict(lo: float, hi: float) -> Verdict:
    """holds: CI above 0; does not hold: CI below MIN_EFFECT_PP; else inconclusive."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if lo > 0:
        return "holds"
    if hi < MIN_EFFECT_PP:
        return "does not hold"
    return "inconclusive"


def fit_slope(bs: Sequence[float], ys: Sequence[float]) -> SlopeFit:
    """Log-log slope of ``ys`` against batch sizes ``bs`` >= FIT_MIN_BATCH, with a t CI."""
    from scipy import stats

    pts = [(b, y) for b, y in zip(bs, ys, strict=True) if b >= FIT_MIN_BATCH and y > 0]
    if len(pts) < 2:
        return SlopeFit(math.nan, math.nan, math.nan, len(pts))
    fit = stats.linregress(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]))
    half = math.nan
    if len(pts) > 2:
        half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, len(pts) - 2) * fit.stderr)
    slope = float(fit.slope)
    return SlopeFit(slope, slope - half, slope + half, len(pts))


def _variant(epochs: list[dict[str, Any]], variant: str, cfg: Config) -> VariantSummary:
    """One variant's final and matched values per seed (epoch records), and their means."""
    cols: dict[str, list[float]] = {f.name: [] for f in dataclasses.fields(PerSeed)}
    for s in cfg.seeds:
        rows = sorted(
            (r for r in epochs if r["variant"] == variant and r["seed"] == s),
            key=lambda r: r["epoch"],
        )
        cols["gap"].append(_final(rows, "acc_gap_pp"))
        cols["loss_gap"].append(_final(rows, "loss_gap"))
        cols["train_acc"].append(_final(rows, "train_acc"))
        cols["test_acc"].append(_final(rows, "test_acc"))
        hit = next((r for r in rows if r["train_acc"] >= cfg.match_train_acc), None)
        cols["matched_gap"].append(hit["acc_gap_pp"] if hit else math.nan)
        cols["matched_test_acc"].append(hit["test_acc"] if hit else math.nan)
        cols["matched_epoch"].append(float(hit["epoch"]) if hit else math.nan)
    per_seed = PerSeed(**{k: tuple(v) for k, v in cols.items()})
    means = {k: mean_ci(v, CI_LEVEL) for k, v in cols.items()}
    reached = sum(math.isfinite(x) for x in per_seed.matched_epoch)
    return VariantSummary(per_seed, **means, reached_match=reached)


def _comparisons(per: dict[str, VariantSummary]) -> tuple[Comparison, ...]:
    """COMPARISONS of the variants that ran, each of the final gap and the matched gap."""
    out = []
    for a, b, meaning in COMPARISONS:
        if a in per and b in per:
            for quantity, key in (("final gap", "gap"), ("gap at equal train acc", "matched_gap")):
                d = paired(getattr(per[a].per_seed, key), getattr(per[b].per_seed, key), CI_LEVEL)
                out.append(Comparison(a, b, meaning, quantity, d))
    return tuple(out)


def _probe_point(r: dict[str, Any]) -> ProbePoint:
    return ProbePoint(
        kind=r["kind"],
        batch_size=r["batch_size"],
        batches=r["batches"],
        logit_std=r["logit_std"],
        logit_std_lo=r["logit_std_lo"],
        logit_std_hi=r["logit_std_hi"],
        bn1_std=r["bn1_std"],
        logit_std_eval=r["logit_std_eval"],
        bn1_std_eval=r["bn1_std_eval"],
        flip_rate=r["flip_rate"],
    )


def analyse(run: Run[Config]) -> RegularizationAnalysis:
    """Per-variant final and matched gaps over seeds, paired comparisons, the probe's slopes,
    and the claims. A (variant, seed) without records (a failed job) counts as missing: nan,
    left out of means and pairs."""
    cfg = run.config
    epochs = [r for r in run.records if r.get("kind") == "epoch"]
    per = {v: _variant(epochs, v, cfg) for v in cfg.variants}
    comparisons = _comparisons(per)
    probe = tuple(
        _probe_point(r)
        for r in sorted(
            (r for r in run.records if r.get("kind") == "probe"), key=lambda r: r["batch_size"]
        )
    )
    bs = [float(p.batch_size) for p in probe]
    train_accs = [x for v in per.values() for x in v.per_seed.train_acc if math.isfinite(x)]
    return RegularizationAnalysis(
        experiment="regularization",
        seeds=tuple(cfg.seeds),
        variants=per,
        comparisons=comparisons,
        probe=probe,
        logit_slope=fit_slope(bs, [p.logit_std for p in probe]),
        bn1_slope=fit_slope(bs, [p.bn1_std for p in probe]),
        min_final_train_acc=min(train_accs, default=math.nan),
        claims=tuple(claims(comparisons, probe, cfg)),
        notes=NOTES,
    )


# ---- the claims ---------------------------------------------------------------------------------


def comparison(comparisons: Sequence[Comparison], a: str, b: str, quantity: str) -> Paired | None:
    """The paired comparison a - b of ``quantity``, if it was made."""
    return next((c.paired for c in comparisons if (c.a, c.b, c.quantity) == (a, b, quantity)), None)


def diff_text(d: Paired) -> str:
    """A paired difference in percentage points: mean [CI] (95% CI, n seeds, p)."""
    if not math.isfinite(d.diff.mean):
        return "-"
    p = f", p = {d.p_value:.3g}" if math.isfinite(d.p_value) else ""
    return f"{format_ci(d.diff, '{:+.2f}', ' pp')} (95% CI, {d.n} seeds{p})"


def claims(
    comparisons: Sequence[Comparison], probe: Sequence[ProbePoint], cfg: Config
) -> list[Claim]:
    """C6 (BN regularizes), its cause (batch noise) and its premise (batch dependence), each
    with the quantity measured and a verdict by its rule."""
    out = []
    main = comparison(comparisons, "plain", "bn", "final gap")
    if main is not None:
        out.append(
            Claim(
                "C6",
                "BN regularizes.",
                f"reduction of the final train - held-out accuracy gap by BN (plain - bn), "
                f"paired over seeds, {cfg.training.train_size:,} training digits",
                diff_text(main),
                c6_verdict(main.diff.lo, main.diff.hi),
                f"holds if the 95% CI lies above 0; does not hold if it lies below "
                f"{MIN_EFFECT_PP} pp (no reduction of practical size); else inconclusive",
            )
        )
    noise = comparison(comparisons, "bn-full", "bn", "final gap")
    if noise is not None:
        out.append(
            Claim(
                "C6 (cause)",
                "BN regularizes because an example's output depends on the other examples in "
                "its batch.",
                "gap reduction due to mini-batch statistics: bn-full (statistics of the whole "
                "training subset) - bn, paired over seeds",
                diff_text(noise),
                c6_verdict(noise.diff.lo, noise.diff.hi),
                "the same rule as C6",
            )
        )
    batch_size = cfg.training.batch_size
    at = min(probe, key=lambda p: abs(p.batch_size - batch_size), default=None)
    if at is not None:
        eval_max = max(max(p.logit_std_eval, p.bn1_std_eval) for p in probe)
        dependent = at.logit_std_lo > 0
        verdict: Verdict = "holds" if dependent and eval_max == 0 else "does not hold"
        out.append(
            Claim(
                "C6 (premise)",
                "In training, an example's output depends on the other examples in its batch; "
                "in evaluation it does not.",
                f"std of one held-out digit's logits over {at.batches} random batches of "
                f"B = {at.batch_size} (the probe size nearest the training batch, "
                f"{batch_size}; RMS over the 10 logits), train vs eval mode",
                f"train {at.logit_std:.3g} [{at.logit_std_lo:.3g}, "
                f"{at.logit_std_hi:.3g}] (95% bootstrap CI); eval {eval_max:.3g} (max over B)",
                verdict,
                "holds if the train-mode CI excludes 0 and the eval-mode spread is exactly 0",
            )
        )
    return out


def result_line(analysis: RegularizationAnalysis, run: Run[Config]) -> str:
    """The one line printed at the end of a run."""
    gaps = ", ".join(f"{v} {s.gap.mean:.2f}" for v, s in analysis.variants.items())
    verdicts = {c.id: c for c in analysis.claims}
    text = f"final train-test gap (pp) {gaps}"
    if "C6" in verdicts:
        text = f"C6 {verdicts['C6'].verdict}: {text}; plain - bn {verdicts['C6'].value}"
    noise = comparison(analysis.comparisons, "bn-full", "bn", "final gap")
    if noise is not None:
        text += f"; bn-full - bn {noise.diff.mean:+.2f} pp"
    if analysis.probe:
        text += f"; spread ~ B^{analysis.logit_slope.slope:.2f}"
    return text
