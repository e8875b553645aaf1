"""Claims and statistics: verdicts follow the rule written beside them."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from bnlab.lab.experiments.gan.analysis import LEARNED_CLASSES, claims, too_small
from bnlab.lab.results import verdict_text
from bnlab.lab.stats import mean_ci, paired, verdict, verdict_or_direction


def test_mean_ci_is_the_t_interval():
    x = [1.0, 2.0, 4.0, 3.5]
    est = mean_ci(x)
    lo, hi = sps.t.interval(0.95, len(x) - 1, loc=np.mean(x), scale=sps.sem(x))
    assert (est.lo, est.hi) == pytest.approx((lo, hi))
    assert est.n == 4
    one = mean_ci([3.0])
    assert one.mean == 3.0 and math.isnan(one.lo) and one.n == 1


def test_paired_uses_differences_and_reports_effect_size():
    a, b = [10.0, 12.0, 11.0], [8.0, 9.5, 9.0]
    p = paired(a, b)
    d = np.subtract(a, b)
    assert p.diff.mean == pytest.approx(d.mean())
    assert p.p_value == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert p.effect_size == pytest.approx(d.mean() / d.std(ddof=1))
    with pytest.raises(ValueError, match="matched seeds"):
        paired([1.0], [1.0, 2.0])


def test_verdict_rule():
    pos = mean_ci([1.0, 1.2, 0.9])
    neg = mean_ci([-1.0, -1.2, -0.9])
    straddle = mean_ci([-1.0, 1.2, 0.1])
    assert verdict(pos, "positive") == "holds"
    assert verdict(neg, "positive") == "does not hold"
    assert verdict(straddle, "positive") == "inconclusive"
    assert verdict(neg, "negative") == "holds"
    assert verdict(mean_ci([5.0]), "positive") == "inconclusive"  # one seed: no interval


def _records(seeds, fd, extra=None):
    rng = np.random.default_rng(1)
    out = []
    for s in seeds:
        for v, base in fd.items():
            for epoch in (1, 2, 3, 4):
                r = {
                    "seed": s,
                    "variant": v,
                    "epoch": epoch,
                    "d_loss": 1.0 + 0.1 * (v == "init-bn"),
                    "g_loss": 1.0 - 0.1 * (v == "init-bn"),
                    "d_x": 0.6,
                    "d_g_z": 0.4,
                    "g_acc": 0.3,
                }
                if epoch == 4:
                    r.update(
                        fd=base * (1 + 0.05 * rng.normal()), stray_dots=0.01, classes_covered=10.0
                    )
                    if extra:
                        r.update(extra(v))
                out.append(r)
    return out


def test_claims_decide_with_seeds_and_stay_inconclusive_with_one():
    fd = {"init": 20.0, "init-bn": 10.0, "init-bn-tidy": 10.0, "init-bn-nomode": 200.0}
    rows = {c.id: c for c in claims(_records([0, 1, 2], fd))}
    assert rows["C1 [G in eval mode]"].verdict == "holds"
    assert rows["C4 [G in eval mode]"].verdict == "holds"
    assert rows["C3a"].verdict == "holds" and rows["C3b"].verdict == "holds"
    assert "p=" in rows["C4 [G in eval mode]"].value
    assert all("95% CI" in c.rule for c in rows.values())
    single = {c.id: c for c in claims(_records([0], fd))}
    # one seed: a direction against the blog, never a verdict
    assert single["C1 [G in eval mode]"].verdict == "agrees"
    assert single["C4 [G in eval mode]"].verdict == "agrees"
    assert single["C3a"].verdict == "agrees" and single["C3b"].verdict == "agrees"
    flipped = {**fd, "init-bn": 40.0}  # BN worse than the baseline: C4 points the other way
    assert {c.id: c for c in claims(_records([0], flipped))}["C4 [G in eval mode]"].verdict == (
        "disagrees"
    )
    assert not any("n=1" in c.value for c in single.values())


def test_one_seed_gives_a_direction_many_seeds_a_verdict():
    assert verdict_or_direction(mean_ci([5.0]), "positive") == "agrees"
    assert verdict_or_direction(mean_ci([-5.0]), "positive") == "disagrees"
    assert verdict_or_direction(mean_ci([-5.0]), "negative") == "agrees"
    assert verdict_or_direction(mean_ci([0.0]), "positive") == "inconclusive"
    assert verdict_or_direction(mean_ci([]), "positive") == "inconclusive"
    assert verdict_or_direction(mean_ci([-1.0, 1.2, 0.1]), "positive") == "inconclusive"
    assert verdict_or_direction(mean_ci([1.0, 1.2, 0.9]), "positive") == "holds"
    assert verdict_text("agrees", "the blog") == "agrees with the blog (one seed)"
    assert verdict_text("holds", "the blog") == "holds"


def test_a_run_too_small_to_learn_answers_no_claim():
    """When the baseline draws one class (too few epochs), every claim says "no answer" and
    why, whatever direction the noise points; the summary says it once, not per claim."""
    fd = {"init": 20.0, "init-bn": 10.0, "init-bn-tidy": 10.0, "init-bn-nomode": 200.0}
    unlearned = _records([0], fd, extra=lambda v: {"classes_covered": 1.0})
    rows = claims(unlearned)
    assert rows and all(c.verdict == "no answer" for c in rows)
    assert "covers 1 of 10 classes" in too_small(unlearned)
    assert all("No answer: after 4 epochs" in c.rule for c in rows)
    learned = _records([0], fd, extra=lambda v: {"classes_covered": float(LEARNED_CLASSES)})
    assert too_small(learned) == ""
    no_metrics = [
        {k: v for k, v in r.items() if k not in ("fd", "stray_dots", "classes_covered")}
        for r in unlearned
    ]
    assert "4 epochs without image metrics" in too_small(no_metrics)


def test_claims_report_the_blogs_train_mode_view_when_scored():
    fd = {"init": 20.0, "init-bn": 10.0, "init-bn-nomode": 200.0}
    recs = _records(
        [0, 1, 2],
        fd,
        extra=lambda v: {
            "fd_train": 50.0 if v == "init-bn" else 20.0,
            "stray_dots_train": 0.01,
            "classes_covered_train": 10.0,
        },
    )
    rows = {c.id: c for c in claims(recs)}
    assert rows["C4 [G in train mode, as the blog's images]"].verdict == "does not hold"
    assert rows["C4 [G in eval mode]"].verdict == "holds"


def test_fewer_stray_dots_do_not_save_a_model_that_draws_no_digits():
    fd = {"init": 20.0, "init-bn-tidy": 900.0}

    def broken(v):  # pure noise: few isolated pixels, one class
        return {"stray_dots": 0.001, "classes_covered": 1.0} if v == "init-bn-tidy" else {}

    rows = {c.id: c for c in claims(_records([0, 1, 2], fd, extra=broken))}
    c2 = rows["C2 [G in eval mode, tidy switching]"]
    assert c2.verdict == "does not hold" and "cover >= 9 of 10 classes" in c2.rule
