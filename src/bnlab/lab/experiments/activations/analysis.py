"""`bnlab activations`' analysis: a run's records -> the C5 numbers per (activation, init) and
the verdict. Reads the run through its :class:`~bnlab.lab.results.Run`; trains nothing, draws
nothing. The run writes what :func:`analyse` returns as summary.json; the report shows the
same numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bnlab.lab.configs import config_to_dict
from bnlab.lab.experiments.activations.config import ActivationsConfig, setting_name
from bnlab.lab.results import Claim, Run, Verdict

__all__ = [
    "CLAIM_MAX_KS",
    "ActivationsAnalysis",
    "NetSummary",
    "PairKs",
    "analyse",
    "claims",
    "deep_mean",
    "last_layers",
    "layer_rows",
    "ordered_records",
    "pairs",
    "result_line",
    "settings",
]

CLAIM_MAX_KS = 0.1  # "Gaussian-like": a KS distance below this to N(0,1)


@dataclass(frozen=True)
class PairKs:
    """One (activation, init), plain and with BN: KS distances to N(0,1) of the
    pre-activations, each the mean over the last ``last_layers`` layers (None: not measured)."""

    activation: str
    init: str
    ks_plain_init: float | None
    ks_plain_trained: float | None
    ks_shape_plain_trained: float | None  # of the values standardized by their own mean, std
    ks_bn_init: float | None
    ks_bn_trained: float | None
    ks_shape_bn_trained: float | None


@dataclass(frozen=True)
class NetSummary:
    """One net's summary record: held-out accuracy (eval mode) and its loss curve's ends."""

    accuracy_init: float | None
    accuracy_trained: float | None
    loss_first: float | None
    loss_last: float | None
    diverged: bool | None  # training stopped at a non-finite loss


@dataclass(frozen=True)
class ActivationsAnalysis:
    """What summary.json holds: the C5 numbers per (activation, init), each net's accuracy,
    and the claims."""

    experiment: str  # "activations"
    config: dict[str, Any]  # the run's settings by flat name, as config.json's "config"
    last_layers: int  # how many of the deepest layers the KS numbers average over
    pairs: tuple[PairKs, ...]  # in the order the nets were configured
    nets: dict[str, NetSummary]  # by net name (tanh-he-bn), in the configured order
    claims: tuple[Claim, ...]
    notes: str


def ordered_records(run: Run[ActivationsConfig]) -> list[dict[str, Any]]:
    """The run's records net by net in the run's order (config.json's "settings"): jobs
    finish in any order, tables and figures list the nets as configured."""
    order = {name: k for k, name in enumerate(run.meta.get("settings", []))}
    return sorted(run.records, key=lambda r: order.get(r.get("setting", ""), len(order)))


def layer_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("type") == "layer"]


def settings(records: list[dict[str, Any]]) -> list[str]:
    """The nets with layer records, in the order they first appear."""
    return list(dict.fromkeys(r["setting"] for r in layer_rows(records)))


def last_layers(depth: int) -> int:
    """How many of the deepest layers the claim averages over: the last third."""
    return max(1, depth // 3)


def deep_mean(
    records: list[dict[str, Any]], setting: str, stage: str, key: str, depth: int
) -> float | None:
    """Mean of ``key`` of the pre-activations over the last third of the layers."""
    first = depth - last_layers(depth) + 1
    vals = [
        r[key]
        for r in layer_rows(records)
        if r["setting"] == setting
        and r["stage"] == stage
        and r["kind"] == "pre"
        and r["layer"] >= first
        and r.get(key) is not None
    ]
    return float(np.mean(vals)) if vals else None


def pairs(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(activation, init) pairs measured both plain and with BN, in the order they appear."""
    have = set(settings(records))
    out: list[tuple[str, str]] = []
    for r in layer_rows(records):
        a, i = r["activation"], r["init"]
        if (a, i) not in out and {setting_name(a, i, "plain"), setting_name(a, i, "bn")} <= have:
            out.append((a, i))
    return out


def _bn_vs_plain(
    records: list[dict[str, Any]], key: str, depth: int
) -> list[tuple[str, str, float, float]]:
    out = []
    for a, i in pairs(records):
        bn = deep_mean(records, setting_name(a, i, "bn"), "trained", key, depth)
        plain = deep_mean(records, setting_name(a, i, "plain"), "trained", key, depth)
        if bn is not None and plain is not None:
            out.append((a, i, bn, plain))
    return out


def claims(records: list[dict[str, Any]], depth: int) -> list[Claim]:
    """C5a (the distributional half of the post's C5; why BN helps, C5b, is santurkar2018's),
    judged twice: against N(0,1) itself (scale and shape), and on shape alone."""
    k = last_layers(depth)
    where = f"pre-activations of the last {k} of {depth} layers, after training"
    out = []
    for key, label, thresholded in (("ks", "", True), ("ks_shape", " (shape only)", False)):
        rows = _bn_vs_plain(records, key, depth)
        if not rows:
            continue
        wins = sum(bn < plain for *_, bn, plain in rows)
        worst_bn = max(bn for *_, bn, _ in rows)
        n = len(rows)
        verdict: Verdict
        if wins == n and (not thresholded or worst_bn < CLAIM_MAX_KS):
            verdict = "holds"
        elif wins <= n / 2:
            verdict = "does not hold"
        else:
            verdict = "inconclusive"
        what = "raw values" if key == "ks" else "values standardized by their own mean and std"
        value = (
            f"BN {np.mean([r[2] for r in rows]):.3f} (worst {worst_bn:.3f}) vs plain "
            f"{np.mean([r[3] for r in rows]):.3f} (best {min(r[3] for r in rows):.3f}); "
            f"BN lower in {wins}/{n} (activation, init) pairs"
        )
        rule = (
            "holds if BN is lower in every pair"
            + (f" and below {CLAIM_MAX_KS} in every pair" if thresholded else "")
            + "; does not hold if BN is lower in at most half the pairs; else inconclusive"
        )
        out.append(
            Claim(
                id="C5a" + label,
                statement="BN keeps per-layer activation distributions near N(0,1) (the "
                "distributional half of internal covariate shift)",
                quantity=f"KS distance to N(0,1) of the {what}; {where}; mean over pairs",
                value=value,
                verdict=verdict,
                rule=rule,
            )
        )
    return out


def analyse(run: Run[ActivationsConfig]) -> ActivationsAnalysis:
    """The C5 numbers per (activation, init), each net's accuracy, and the claims
    (summary.json)."""
    records = ordered_records(run)
    depth = run.config.training.depth
    nets = {
        r["setting"]: NetSummary(
            r.get("accuracy_init"),
            r.get("accuracy_trained"),
            r.get("loss_first"),
            r.get("loss_last"),
            r.get("diverged"),
        )
        for r in records
        if r.get("type") == "net"
    }

    def ks(activation: str, init: str, norm: str, stage: str, key: str = "ks") -> float | None:
        return deep_mean(records, setting_name(activation, init, norm), stage, key, depth)

    pair_rows = tuple(
        PairKs(
            activation=a,
            init=i,
            ks_plain_init=ks(a, i, "plain", "init"),
            ks_plain_trained=ks(a, i, "plain", "trained"),
            ks_shape_plain_trained=ks(a, i, "plain", "trained", "ks_shape"),
            ks_bn_init=ks(a, i, "bn", "init"),
            ks_bn_trained=ks(a, i, "bn", "trained"),
            ks_shape_bn_trained=ks(a, i, "bn", "trained", "ks_shape"),
        )
        for a, i in pairs(records)
    )
    return ActivationsAnalysis(
        experiment="activations",
        config=config_to_dict(run.config),
        last_layers=last_layers(depth),
        pairs=pair_rows,
        nets=nets,
        claims=tuple(claims(records, depth)),
        notes="ks: KS distance to N(0,1) of the pre-activations, mean over the last "
        "last_layers layers; accuracy: held-out digits, eval mode",
    )


def result_line(analysis: ActivationsAnalysis, run: Run[ActivationsConfig]) -> str:
    """The result in one line: the C5 numbers per (activation, init) and the verdict."""
    found = ", ".join(
        f"{p.activation}/{p.init} {p.ks_bn_trained:.2f} vs {p.ks_plain_trained:.2f}"
        for p in analysis.pairs
        if p.ks_bn_trained is not None and p.ks_plain_trained is not None
    )
    verdict = next(
        (c.verdict for c in analysis.claims if c.id == "C5a"),
        "not judged (needs plain and bn)",
    )
    k = analysis.last_layers
    deepest = "last layer's" if k == 1 else f"last {k} layers'"
    return (
        f"activations: KS to N(0,1) of the {deepest} pre-activations after training, "
        f"BN vs plain: {found or '-'} -> C5a {verdict}"
    )
