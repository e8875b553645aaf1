"""`bnlab activations`' analysis: records -> the C5 numbers per (activation, init) and the
verdict. Reads the run directory; trains nothing, draws nothing. The run writes what
:func:`analyse` returns as summary.json; the report shows the same numbers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.activations.config import setting_name
from bnlab.lab.results import Claim, Verdict
from bnlab.lab.runs import read_config, read_jsonl

__all__ = [
    "CLAIM_MAX_KS",
    "analyse",
    "claims",
    "deep_mean",
    "last_layers",
    "layer_rows",
    "load_run",
    "pairs",
    "result_line",
    "settings",
]

CLAIM_MAX_KS = 0.1  # "Gaussian-like": a KS distance below this to N(0,1)


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(config.json, the records of metrics.jsonl without failure events, net by net in the
    run's order: jobs finish in any order, tables and figures list the nets as configured)."""
    meta = read_config(run_dir)
    records = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "event" not in r]
    order = {name: k for k, name in enumerate(meta.get("settings", []))}
    records.sort(key=lambda r: order.get(r.get("setting", ""), len(order)))  # stable
    return meta, records


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


def analyse(run_dir: Path) -> dict[str, Any]:
    """The C5 numbers per (activation, init), each net's accuracy, and the claims
    (summary.json)."""
    meta, records = load_run(run_dir)
    depth = int(meta["config"]["depth"])
    nets = {
        r["setting"]: {
            k: r.get(k)
            for k in ("accuracy_init", "accuracy_trained", "loss_first", "loss_last", "diverged")
        }
        for r in records
        if r.get("type") == "net"
    }
    pair_rows = []
    for a, i in pairs(records):
        row: dict[str, Any] = {"activation": a, "init": i}
        for norm in ("plain", "bn"):
            s = setting_name(a, i, norm)
            row[f"ks_{norm}_init"] = deep_mean(records, s, "init", "ks", depth)
            row[f"ks_{norm}_trained"] = deep_mean(records, s, "trained", "ks", depth)
            row[f"ks_shape_{norm}_trained"] = deep_mean(records, s, "trained", "ks_shape", depth)
        pair_rows.append(row)
    return {
        "experiment": "activations",
        "config": meta.get("config", {}),
        "last_layers": last_layers(depth),
        "pairs": pair_rows,
        "nets": nets,
        "claims": [c.__dict__ for c in claims(records, depth)],
        "notes": "ks: KS distance to N(0,1) of the pre-activations, mean over the last "
        "last_layers layers; accuracy: held-out digits, eval mode",
    }


def result_line(summary: dict[str, Any], run_dir: Path) -> str:
    """The result in one line: the C5 numbers per (activation, init) and the verdict."""
    found = ", ".join(
        f"{p['activation']}/{p['init']} {p['ks_bn_trained']:.2f} vs {p['ks_plain_trained']:.2f}"
        for p in summary["pairs"]
        if p["ks_bn_trained"] is not None and p["ks_plain_trained"] is not None
    )
    verdict = next(
        (c["verdict"] for c in summary["claims"] if c["id"] == "C5a"),
        "not judged (needs plain and bn)",
    )
    k = summary["last_layers"]
    deepest = "last layer's" if k == 1 else f"last {k} layers'"
    return (
        f"activations: KS to N(0,1) of the {deepest} pre-activations after training, "
        f"BN vs plain: {found or '-'} -> C5a {verdict}"
    )
