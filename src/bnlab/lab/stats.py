"""Uncertainty for multi-seed results: means with t confidence intervals, paired comparisons.

Seeds are the unit of replication: one seed = one full training run. Two variants run with the
same seed see the same data order, z and (for the same init) weights, so their difference is a
*paired* observation; the paired t-interval and test use that.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from bnlab.lab.results import Claim, Verdict

__all__ = [
    "Estimate",
    "Paired",
    "format_ci",
    "mean_ci",
    "paired",
    "paired_by_seed",
    "paired_claim",
    "verdict",
    "verdict_or_direction",
]

# Paired differences whose sd is below this share of their mean (or of 1) are taken as
# constant: float rounding, e.g. 10.5 - 8.5 vs 10.4 - 8.4, leaves an sd near 1e-16 on which a
# t-test reports an arbitrary p (scipy warns of catastrophic cancellation).
CONSTANT_REL = 1e-9


@dataclass(frozen=True)
class Estimate:
    mean: float
    lo: float  # lower end of the confidence interval (nan with one value)
    hi: float
    n: int

    def fmt(self, digits: int = 3) -> str:
        """``mean [lo, hi]``; the mean alone where there is no interval (one seed: how many
        seeds a number rests on is said once, where the report names the run's seeds)."""
        if self.n == 0:
            return "-"
        if self.n < 2 or not math.isfinite(self.lo):
            return f"{self.mean:.{digits}g}"
        return f"{self.mean:.{digits}g} [{self.lo:.{digits}g}, {self.hi:.{digits}g}]"


@dataclass(frozen=True)
class Paired:
    """a - b over matched seeds."""

    diff: Estimate
    p_value: float  # two-sided paired t-test (nan with fewer than 2 pairs)
    effect_size: float  # Cohen's d_z: mean difference / sd of differences
    n: int


def format_ci(est: Estimate, spec: str = "{:.2f}", unit: str = "") -> str:
    """``mean{unit} [lo, hi]`` with ``spec`` for each number; the interval is left out where
    there is none (one value), "-" where there is no mean. E.g. spec "{:+.2f}" for a
    difference: "+0.60 pp [-6.18, +7.38]"."""
    if not math.isfinite(est.mean):
        return "-"
    if not (math.isfinite(est.lo) and math.isfinite(est.hi)):
        return f"{spec.format(est.mean)}{unit}"
    return f"{spec.format(est.mean)}{unit} [{spec.format(est.lo)}, {spec.format(est.hi)}]"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Estimate:
    """Mean and the t confidence interval over independent replicates (seeds)."""
    from scipy import stats as sps  # here: SciPy costs start-up time

    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    n = len(x)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    mean = float(x.mean())
    if n < 2:
        return Estimate(mean, math.nan, math.nan, 1)
    sem = float(x.std(ddof=1)) / math.sqrt(n)
    half = float(sps.t.ppf(0.5 + level / 2, n - 1)) * sem
    return Estimate(mean, mean - half, mean + half, n)


def paired(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Paired:
    """Paired comparison of a and b (same seeds, same order).

    Pairs with a missing (non-finite) value are left out. Differences that are all equal, up
    to rounding (sd <= ``CONSTANT_REL`` x max(1, |mean|)), have no t statistic: p is 0 (1 when
    the mean is 0 up to the same tolerance) and the effect size infinite (0), rather than a
    t-test on rounding noise.
    """
    from scipy import stats as sps  # here: SciPy costs start-up time

    if len(a) != len(b):
        raise ValueError(f"paired comparison needs matched seeds, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[np.isfinite(d)]
    est = mean_ci(list(d), level)
    if len(d) < 2:
        return Paired(est, math.nan, math.nan, len(d))
    sd = float(d.std(ddof=1))
    tol = CONSTANT_REL * max(1.0, abs(est.mean))
    if sd <= tol:
        nonzero = abs(est.mean) > tol
        p = 0.0 if nonzero else 1.0
        dz = math.copysign(math.inf, est.mean) if nonzero else 0.0
    else:
        p = float(sps.ttest_1samp(d, 0.0).pvalue)
        dz = est.mean / sd
    return Paired(est, p, dz, len(d))


def verdict(diff: Estimate, expected: Literal["positive", "negative"]) -> Verdict:
    """holds if the CI excludes 0 on the expected side, does not hold if on the other side,
    inconclusive otherwise (including a single seed, which has no interval)."""
    if diff.n < 2 or not math.isfinite(diff.lo):
        return "inconclusive"
    if expected == "positive":
        return "holds" if diff.lo > 0 else "does not hold" if diff.hi < 0 else "inconclusive"
    return "holds" if diff.hi < 0 else "does not hold" if diff.lo > 0 else "inconclusive"


def verdict_or_direction(diff: Estimate, expected: Literal["positive", "negative"]) -> Verdict:
    """:func:`verdict` with two or more seeds; with one, the direction of the measured
    difference: "agrees" when it lies on the expected side of 0, "disagrees" on the other
    (inconclusive when it is 0 or missing). A direction is not a verdict: one seed cannot tell
    an effect from seed-to-seed noise."""
    if diff.n >= 2:
        return verdict(diff, expected)
    if diff.n == 1 and math.isfinite(diff.mean) and diff.mean != 0:
        return "agrees" if (diff.mean > 0) == (expected == "positive") else "disagrees"
    return "inconclusive"


def paired_by_seed(a: dict[int, float], b: dict[int, float]) -> Paired | None:
    """a - b over the seeds both have (seed -> value), or None when they share none."""
    seeds = sorted(set(a) & set(b))
    return paired([a[s] for s in seeds], [b[s] for s in seeds]) if seeds else None


def paired_claim(
    cid: str,
    statement: str,
    quantity: str,
    a: dict[int, float],
    b: dict[int, float],
    expected: Literal["positive", "negative"],
    *,
    margin: float = 0.0,
    what: str = "",
    extra: str = "",
    rule: str = "",
) -> Claim | None:
    """The claim that a - b (seed -> value each, paired over seeds) lies on the ``expected``
    side of ``margin`` (0, or a non-inferiority margin): its verdict from the 95% CI, or its
    direction with one seed; None when the two share no seed."""
    p = paired_by_seed(a, b)
    if p is None:
        return None
    diff = p.diff
    value = f"{mean_ci(list(a.values())).fmt()} vs {mean_ci(list(b.values())).fmt()}, "
    value += f"diff {diff.fmt()}"
    if p.n >= 2:
        value += f"; p={p.p_value:.3g}, d_z={p.effect_size:.2f}; {p.n} seeds"
    if extra:
        value += f"; {extra}"
    line = f"{'>' if expected == 'positive' else '<'} {margin:.3g}"
    rule = rule or (
        f"holds if the 95% CI of the paired difference{f' ({what})' if what else ''} over "
        f"seeds is entirely {line}; does not hold if entirely on the other side; else "
        f"inconclusive. One seed gives the direction only: agrees if the difference is "
        f"{line}, else disagrees"
    )
    shifted = Estimate(diff.mean - margin, diff.lo - margin, diff.hi - margin, diff.n)
    return Claim(cid, statement, quantity, value, verdict_or_direction(shifted, expected), rule)
