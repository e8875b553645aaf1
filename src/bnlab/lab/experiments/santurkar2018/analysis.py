"""`bnlab santurkar2018`'s analysis: records -> numbers, a verdict per part, and C5b.

Reads a :class:`~bnlab.lab.results.Run` (its config and records); trains nothing, draws
nothing. The run writes what :func:`analyse` returns as summary.json (the dataclasses' field
names are its keys); the report shows the same numbers.

Seeds are the replicates: every number below is a per-seed value (a run's mean over its
measured steps and layers, or its final accuracy), compared between variants of the same seed
with a paired 95% t-interval (:func:`bnlab.lab.stats.paired`). A ratio is compared on log scale.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from bnlab.lab.experiments.santurkar2018.config import Config
from bnlab.lab.results import Run, Verdict
from bnlab.lab.stats import Estimate, mean_ci, paired, verdict

__all__ = [
    "CHANCE",
    "LANDSCAPE",
    "LR_TOLERANCE",
    "NOISY_MARGIN",
    "BnHelps",
    "C5bVerdict",
    "Diff",
    "Evidence",
    "HelpsNet",
    "IcsMeasure",
    "IcsNet",
    "IcsRatioMeasure",
    "LandscapeMeasure",
    "LandscapeNet",
    "LogDiff",
    "LrNet",
    "MeanCI",
    "NoisyNet",
    "Part",
    "Parts",
    "Ratio",
    "Santurkar2018Analysis",
    "SweepPoint",
    "analyse",
    "bn_helps",
    "c5b",
    "combine",
    "part_ics",
    "part_landscape",
    "part_lr",
    "part_noisy",
    "result_line",
]

NOISY_MARGIN = 0.02  # "about as well": noisy BN's held-out accuracy at most 2 pp below BN's
LR_TOLERANCE = 0.05  # a net "trains" at an lr if its accuracy is within 5 pp of the sweep's best
CHANCE = 0.10  # the accuracy a diverged run is scored with (10 classes)

N = TypeVar("N")


# ---- the results --------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeanCI:
    """A mean over seeds with its 95% t-interval (nan ends with one seed)."""

    mean: float
    ci95: tuple[float, float]
    n: int

    @classmethod
    def of(cls, e: Estimate) -> MeanCI:
        return cls(e.mean, (e.lo, e.hi), e.n)

    def estimate(self) -> Estimate:
        """As :class:`bnlab.lab.stats.Estimate` (what :func:`~bnlab.lab.stats.verdict` reads)."""
        return Estimate(self.mean, self.ci95[0], self.ci95[1], self.n)


@dataclass(frozen=True)
class Diff:
    """a - b, paired over the seeds both have."""

    diff: MeanCI
    p: float  # two-sided paired t-test
    n: int  # pairs with both values finite
    seeds: tuple[int, ...]


@dataclass(frozen=True)
class Ratio:
    """a / b: exp of a mean log difference and of its interval's ends."""

    mean: float
    ci95: tuple[float, float]


@dataclass(frozen=True)
class LogDiff(Diff):
    """log a - log b, paired over seeds (``diff``), and the ratio a / b it stands for."""

    ratio: Ratio


@dataclass(frozen=True)
class Part(Generic[N]):
    """One part of the paper: its question, each net's numbers and verdict, the combined
    verdict and the rule it follows from."""

    question: str
    nets: dict[str, N]  # by net (cnn, mlp, dln)
    verdict: Verdict
    rule: str


@dataclass(frozen=True)
class NoisyNet:
    """Part 1 for one net: final held-out accuracy and distribution drift of each variant."""

    test_acc: dict[str, MeanCI]  # by variant: standard, bn, noisy-bn
    bn_minus_noisy: Diff
    noisy_minus_standard: Diff
    drift: dict[str, MeanCI]  # by variant
    drift_noisy_over_standard: LogDiff
    verdict: Verdict


@dataclass(frozen=True)
class IcsMeasure:
    """One measure of internal covariate shift, standard vs BN."""

    standard: MeanCI
    bn: MeanCI
    bn_minus_standard: Diff
    bn_reduces_ics: Verdict


@dataclass(frozen=True)
class IcsRatioMeasure(IcsMeasure):
    """A measure of ICS that is a size (l2): also compared as a ratio."""

    bn_over_standard: LogDiff


@dataclass(frozen=True)
class IcsNet:
    """Part 2 for one net: ICS by relative l2 (the verdict), cosine and raw l2."""

    rel_l2: IcsRatioMeasure
    cos: IcsMeasure
    l2: IcsRatioMeasure
    verdict: Verdict


@dataclass(frozen=True)
class LandscapeMeasure:
    """One landscape measure, standard vs BN, compared as a ratio."""

    standard: MeanCI
    bn: MeanCI
    bn_over_standard: LogDiff
    bn_smoother: Verdict


@dataclass(frozen=True)
class LandscapeNet:
    """Part 3 for one net: the measures of :data:`LANDSCAPE`."""

    loss_range: LandscapeMeasure
    grad_diff_max: LandscapeMeasure
    beta: LandscapeMeasure
    verdict: Verdict

    def measures(self) -> dict[str, LandscapeMeasure]:
        """By the keys of :data:`LANDSCAPE`, in its order."""
        return {
            "loss_range": self.loss_range,
            "grad_diff_max": self.grad_diff_max,
            "beta": self.beta,
        }


@dataclass(frozen=True)
class SweepPoint(MeanCI):
    """Final held-out accuracy at one learning rate (a diverged seed scores :data:`CHANCE`)."""

    diverged: tuple[int, ...]  # the seeds that diverged


@dataclass(frozen=True)
class LrNet:
    """Part 4 for one net: the sweep's accuracies and the rates each variant trains at."""

    test_acc: dict[str, dict[str, SweepPoint]]  # variant -> learning rate ("%g") -> accuracy
    best: float  # the best mean accuracy of the sweep
    trains_at: dict[str, tuple[str, ...]]  # variant -> the learning rates ("%g") it trains at
    verdict: Verdict


@dataclass(frozen=True)
class HelpsNet:
    """The premise for one net: BN - standard at the end of the main runs."""

    measure: Literal["test_acc", "test_loss"]
    bn_minus_standard: Diff
    verdict: Verdict


@dataclass(frozen=True)
class BnHelps:
    """The premise: does the BN net end better than the standard one?"""

    nets: dict[str, HelpsNet]
    verdict: Verdict


@dataclass(frozen=True)
class Evidence:
    """The verdicts C5b follows from."""

    bn_helps: Verdict
    wider_lr_range: Verdict
    noisy_bn_trains_as_well: Verdict
    bn_reduces_ics: Verdict
    bn_landscape_smoother: Verdict


@dataclass(frozen=True)
class C5bVerdict:
    """Claim C5b, decided from the parts."""

    claim: str
    statement: str
    verdict: Verdict
    evidence: Evidence
    rule: str


@dataclass(frozen=True)
class Parts:
    noisy_bn: Part[NoisyNet]
    ics: Part[IcsNet]
    landscape: Part[LandscapeNet]
    lr_range: Part[LrNet]


@dataclass(frozen=True)
class Santurkar2018Analysis:
    """What a run found: summary.json."""

    parts: Parts
    bn_helps: BnHelps
    C5b: C5bVerdict  # summary.json's key, the claim's name
    diverged: tuple[str, ...]  # keys of the jobs that diverged


def _diff(a: dict[int, float], b: dict[int, float]) -> Diff:
    """a - b over the seeds both have."""
    seeds = sorted(set(a) & set(b))
    p = paired([a[s] for s in seeds], [b[s] for s in seeds])
    return Diff(MeanCI.of(p.diff), p.p_value, p.n, tuple(seeds))


def _log_diff(a: dict[int, float], b: dict[int, float]) -> LogDiff:
    """log a - log b over the seeds both have, and as a ratio."""
    seeds = sorted(set(a) & set(b))

    def log(v: float) -> float:
        return math.log(max(v, 1e-300))

    p = paired([log(a[s]) for s in seeds], [log(b[s]) for s in seeds])
    d = p.diff
    lo, hi = (math.exp(v) if math.isfinite(v) else math.nan for v in (d.lo, d.hi))
    ratio = Ratio(math.exp(d.mean) if math.isfinite(d.mean) else math.nan, (lo, hi))
    return LogDiff(MeanCI.of(d), p.p_value, p.n, tuple(seeds), ratio)


def _mean_ci(values: dict[int, float]) -> MeanCI:
    return MeanCI.of(mean_ci(list(values.values())))


def combine(verdicts: Iterable[Verdict]) -> Verdict:
    """Several nets' verdicts on one question: holds if at least one holds and none does not
    hold; does not hold if at least one does not hold and none holds; inconclusive otherwise
    (mixed, all inconclusive, or none)."""
    vs = list(verdicts)
    if "holds" in vs and "does not hold" not in vs:
        return "holds"
    if "does not hold" in vs and "holds" not in vs:
        return "does not hold"
    return "inconclusive"


def _by_seed(
    records: list[dict[str, Any]], kind: str, net: str, variant: str, part: str = "main"
) -> dict[int, list[dict[str, Any]]]:
    out: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in records:
        if (
            r.get("kind") == kind
            and r.get("net") == net
            and r.get("variant") == variant
            and (kind not in ("final", "curve") or r.get("part") == part)
        ):
            out[int(r["seed"])].append(r)
    for rows in out.values():
        rows.sort(key=lambda r: r["step"])
    return out


def _final(
    records: list[dict[str, Any]],
    net: str,
    variant: str,
    key: str,
    part: str = "main",
    lr: float | None = None,
) -> tuple[dict[int, float], list[int]]:
    """seed -> final ``key`` (a diverged run: chance accuracy, or inf loss), and the seeds that
    diverged."""
    out, diverged = {}, []
    for r in records:
        if (
            r.get("kind") == "final"
            and r.get("part") == part
            and r["net"] == net
            and r["variant"] == variant
            and (lr is None or math.isclose(r["lr"], lr))
        ):
            seed = int(r["seed"])
            if r.get("diverged"):
                diverged.append(seed)
                out[seed] = CHANCE if key == "test_acc" else math.inf
            elif r.get(key) is not None:
                out[seed] = float(r[key])
    return out, sorted(diverged)


def _nanmean(values: Iterable[float]) -> float:
    v = [x for x in values if x is not None and math.isfinite(x)]
    return float(np.mean(v)) if v else math.nan


# ---- part 1: noisy BN -------------------------------------------------------------------------


def _drift(records: list[dict[str, Any]], net: str, variant: str) -> dict[int, float]:
    """seed -> mean over measured steps (after the first) and layers of how far each unit's
    mean moved since the previous measured step, on the fixed probe batch."""
    out = {}
    for seed, rows in _by_seed(records, "acts", net, variant).items():
        out[seed] = _nanmean(
            layer.get("drift_mean", math.nan) for r in rows for layer in r["layers"]
        )
    return out


def part_noisy(records: list[dict[str, Any]], nets: list[str]) -> Part[NoisyNet]:
    per_net: dict[str, NoisyNet] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        acc = {v: _final(records, net, v, "test_acc")[0] for v in ("standard", "bn", "noisy-bn")}
        if not acc["bn"] or not acc["noisy-bn"]:
            continue
        gap = _diff(acc["bn"], acc["noisy-bn"])
        e = gap.diff.estimate()
        v: Verdict
        if e.n < 2 or not math.isfinite(e.lo):
            v = "inconclusive"
        elif e.hi < NOISY_MARGIN:
            v = "holds"
        elif e.lo > NOISY_MARGIN:
            v = "does not hold"
        else:
            v = "inconclusive"
        verdicts.append(v)
        drift = {k: _drift(records, net, k) for k in ("standard", "bn", "noisy-bn")}
        per_net[net] = NoisyNet(
            test_acc={k: _mean_ci(a) for k, a in acc.items()},
            bn_minus_noisy=gap,
            noisy_minus_standard=_diff(acc["noisy-bn"], acc["standard"]),
            drift={k: _mean_ci(d) for k, d in drift.items()},
            drift_noisy_over_standard=_log_diff(drift["noisy-bn"], drift["standard"]),
            verdict=v,
        )
    return Part(
        question="does noisy BN (injected, time-varying distribution shift after every BN "
        "layer) still train about as well as BN?",
        nets=per_net,
        verdict=combine(verdicts),
        rule=f"per net, the paired 95% CI of final held-out accuracy BN - noisy BN over seeds: "
        f"holds if it lies below {NOISY_MARGIN * 100:.0f} pp (noisy BN at most "
        f"{NOISY_MARGIN * 100:.0f} pp worse), does not hold if it lies above "
        f"{NOISY_MARGIN * 100:.0f} pp, inconclusive "
        "otherwise; nets combined: holds if one holds and none does not (and vice versa)",
    )


# ---- part 2: internal covariate shift -----------------------------------------------------------


def _ics_means(
    records: list[dict[str, Any]], net: str, variant: str
) -> dict[str, dict[int, float]]:
    """seed -> mean over measured steps and layers 2..k of relative l2 (||G - G'|| / ||G||),
    cosine and raw l2. Layer 1 has no layers before it (ICS 0 by definition): left out."""
    out: dict[str, dict[int, float]] = {"rel_l2": {}, "cos": {}, "l2": {}}
    for seed, rows in _by_seed(records, "ics", net, variant).items():
        rel, cos, l2 = [], [], []
        for r in rows:
            for a, c, g in zip(r["l2"][1:], r["cos"][1:], r["grad_norm"][1:], strict=True):
                l2.append(a)
                cos.append(c)
                rel.append(a / g if g > 0 else math.nan)
        out["rel_l2"][seed], out["cos"][seed], out["l2"][seed] = (
            _nanmean(rel),
            _nanmean(cos),
            _nanmean(l2),
        )
    return out


def _ics_measure(
    std: dict[int, float], bn: dict[int, float], expected: Literal["positive", "negative"]
) -> IcsMeasure:
    pair = _diff(bn, std)
    return IcsMeasure(_mean_ci(std), _mean_ci(bn), pair, verdict(pair.diff.estimate(), expected))


def _ics_sized(std: dict[int, float], bn: dict[int, float]) -> IcsRatioMeasure:
    """An l2 measure: BN lower is less ICS; compared also as a ratio."""
    m = _ics_measure(std, bn, "negative")
    ratio = _log_diff(bn, std)
    return IcsRatioMeasure(m.standard, m.bn, m.bn_minus_standard, m.bn_reduces_ics, ratio)


def part_ics(records: list[dict[str, Any]], nets: list[str]) -> Part[IcsNet]:
    per_net: dict[str, IcsNet] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        std, bn = _ics_means(records, net, "standard"), _ics_means(records, net, "bn")
        if not std["rel_l2"] or not bn["rel_l2"]:
            continue
        rel_l2 = _ics_sized(std["rel_l2"], bn["rel_l2"])
        cos = _ics_measure(std["cos"], bn["cos"], "positive")
        per_net[net] = IcsNet(rel_l2, cos, _ics_sized(std["l2"], bn["l2"]), rel_l2.bn_reduces_ics)
        verdicts.append(rel_l2.bn_reduces_ics)
    return Part(
        question="does BN reduce internal covariate shift as Definition 2.1 measures it "
        "(the change of a layer's gradient when the layers before it take their step)?",
        nets=per_net,
        verdict=combine(verdicts),
        rule="per net, per seed the mean over measured steps and layers 2..k of "
        "||G - G'|| / ||G||; holds if the paired 95% CI of BN - standard lies below 0, does not "
        "hold if above 0, inconclusive otherwise (cosine and raw l2 are reported with the same "
        "rule); nets combined: holds if one holds and none does not (and vice versa)",
    )


# ---- part 3: landscape --------------------------------------------------------------------------

LANDSCAPE = {
    "loss_range": "loss variation along the gradient (max - min over step sizes)",
    "grad_diff_max": "gradient predictiveness: max l2 change of the gradient",
    "beta": "effective beta-smoothness: max gradient change / distance moved",
}


def _landscape_means(
    records: list[dict[str, Any]], net: str, variant: str
) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {k: {} for k in LANDSCAPE}
    for seed, rows in _by_seed(records, "landscape", net, variant).items():
        for key in LANDSCAPE:
            out[key][seed] = _nanmean(r[key] for r in rows)
    return out


def part_landscape(records: list[dict[str, Any]], nets: list[str]) -> Part[LandscapeNet]:
    per_net: dict[str, LandscapeNet] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        std, bn = _landscape_means(records, net, "standard"), _landscape_means(records, net, "bn")
        if not std["beta"] or not bn["beta"]:
            continue
        m: dict[str, LandscapeMeasure] = {}
        for key in LANDSCAPE:
            pair = _log_diff(bn[key], std[key])
            m[key] = LandscapeMeasure(
                _mean_ci(std[key]),
                _mean_ci(bn[key]),
                pair,
                verdict(pair.diff.estimate(), "negative"),
            )
        a, b = m["loss_range"].bn_smoother, m["beta"].bn_smoother
        v: Verdict = a if a == b else "inconclusive"
        verdicts.append(v)
        per_net[net] = LandscapeNet(m["loss_range"], m["grad_diff_max"], m["beta"], v)
    return Part(
        question="is the loss landscape of the BN net smoother along the gradient?",
        nets=per_net,
        verdict=combine(verdicts),
        rule="per net, per seed the mean over measured steps of the loss variation and of the "
        "effective beta-smoothness; each holds if the paired 95% CI of log(BN / standard) lies "
        "below 0 (does not hold above 0); the net's verdict is theirs when they agree, "
        "inconclusive when they differ; nets combined: holds if one holds and none does not "
        "(and vice versa). Gradient predictiveness is reported with the same rule",
    )


# ---- part 4: learning-rate range ----------------------------------------------------------------


def part_lr(records: list[dict[str, Any]], nets: list[str], lrs: list[float]) -> Part[LrNet]:
    per_net: dict[str, LrNet] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        table: dict[str, dict[str, SweepPoint]] = {}
        for variant in ("standard", "bn"):
            rows = {}
            for lr in lrs:
                acc, diverged = _final(records, net, variant, "test_acc", "sweep", lr)
                if acc:
                    e = mean_ci(list(acc.values()))
                    rows[f"{lr:g}"] = SweepPoint(e.mean, (e.lo, e.hi), e.n, tuple(diverged))
            table[variant] = rows
        if not table["standard"] or not table["bn"]:
            continue
        best = max(r.mean for t in table.values() for r in t.values())
        works: dict[str, tuple[str, ...]] = {}
        for variant, rows in table.items():
            works[variant] = tuple(
                rate
                for rate, r in rows.items()
                if (r.ci95[0] if math.isfinite(r.ci95[0]) else r.mean) >= best - LR_TOLERANCE
            )
        s, b = set(works["standard"]), set(works["bn"])
        v: Verdict
        if not b and not s:  # neither trains anywhere: nothing to compare
            v = "inconclusive"
        else:
            v = "holds" if b > s else "does not hold" if b <= s else "inconclusive"
        verdicts.append(v)
        per_net[net] = LrNet(test_acc=table, best=best, trains_at=works, verdict=v)
    return Part(
        question="does BN let the net train well over a wider range of learning rates?",
        nets=per_net,
        verdict=combine(verdicts),
        rule=f"per net, a variant trains at a learning rate if the lower end of the 95% CI of "
        f"its final held-out accuracy over seeds (diverged runs score {CHANCE:.0%}) is within "
        f"{LR_TOLERANCE * 100:.0f} pp of the best mean accuracy of the sweep; holds if BN trains "
        "at every rate the standard net trains at and more, does not hold if BN's rates are "
        "among the standard net's, inconclusive otherwise (or when neither trains anywhere); "
        "nets combined as above",
    )


# ---- does BN help, and C5b -----------------------------------------------------------------------


def bn_helps(records: list[dict[str, Any]], nets: list[str]) -> BnHelps:
    """The premise: the BN net ends better than the standard one (main runs, same lr)."""
    per_net: dict[str, HelpsNet] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        key: Literal["test_acc", "test_loss"] = "test_loss" if net == "dln" else "test_acc"
        std, bn = _final(records, net, "standard", key)[0], _final(records, net, "bn", key)[0]
        if not std or not bn:
            continue
        pair = _diff(bn, std)
        v = verdict(pair.diff.estimate(), "negative" if key == "test_loss" else "positive")
        verdicts.append(v)
        per_net[net] = HelpsNet(measure=key, bn_minus_standard=pair, verdict=v)
    return BnHelps(nets=per_net, verdict=combine(verdicts))


def c5b(
    helps: Verdict, noisy: Verdict, ics: Verdict, landscape: Verdict, lr: Verdict
) -> C5bVerdict:
    """ "BN helps because it reduces internal covariate shift", decided from the parts."""
    premise = helps == "holds" or lr == "holds"
    v: Verdict
    if premise and (noisy == "holds" or ics == "does not hold"):
        v = "does not hold"
    elif premise and noisy == "does not hold" and ics == "holds":
        v = "holds"
    else:
        v = "inconclusive"
    why = Evidence(
        bn_helps=helps,
        wider_lr_range=lr,
        noisy_bn_trains_as_well=noisy,
        bn_reduces_ics=ics,
        bn_landscape_smoother=landscape,
    )
    return C5bVerdict(
        claim="C5b",
        statement="BN helps because it reduces internal covariate shift",
        verdict=v,
        evidence=why,
        rule="given that BN helps (its main-run accuracy, or its learning-rate range): does "
        "not hold if BN's benefit survives injected distributional shift (noisy BN trains about "
        "as well: part 1 holds) or BN does not reduce ICS by Definition 2.1 (part 2 does not "
        "hold); holds only if BN reduces ICS and noisy BN loses the benefit; inconclusive "
        "otherwise (or when BN does not help here). The landscape (part 3) is the paper's "
        "alternative explanation and is reported beside it",
    )


def analyse(run: Run[Config]) -> Santurkar2018Analysis:
    cfg, records = run.config, run.records
    nets = list(cfg.nets)
    image_nets = [n for n in nets if n != "dln"]
    parts = Parts(
        noisy_bn=part_noisy(records, image_nets),
        ics=part_ics(records, nets),
        landscape=part_landscape(records, nets),
        lr_range=part_lr(records, list(cfg.sweep_nets), list(cfg.sweep_lrs)),
    )
    helps = bn_helps(records, nets)
    claim = c5b(
        helps.verdict,
        parts.noisy_bn.verdict,
        parts.ics.verdict,
        parts.landscape.verdict,
        parts.lr_range.verdict,
    )
    diverged = sorted({r["key"] for r in records if r.get("kind") == "final" and r.get("diverged")})
    return Santurkar2018Analysis(parts, helps, claim, tuple(diverged))


def result_line(analysis: Santurkar2018Analysis, run: Run[Config]) -> str:
    p = analysis.parts
    return (
        f"santurkar2018: noisy BN trains about as well as BN: {p.noisy_bn.verdict}; BN "
        f"reduces ICS: {p.ics.verdict}; BN landscape smoother: "
        f"{p.landscape.verdict}; wider lr range: {p.lr_range.verdict}; C5b (BN helps "
        f"because it reduces ICS): {analysis.C5b.verdict}"
    )
