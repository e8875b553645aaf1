"""`bnlab santurkar2018`'s analysis: records -> numbers, a verdict per part, and C5b.

Reads the run directory (config.json, metrics.jsonl); trains nothing, draws nothing. The run
writes what :func:`analyse` returns as summary.json; the report shows the same numbers.

Seeds are the replicates: every number below is a per-seed value (a run's mean over its
measured steps and layers, or its final accuracy), compared between variants of the same seed
with a paired 95% t-interval (:func:`bnlab.lab.stats.paired`). A ratio is compared on log scale.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.results import Verdict
from bnlab.lab.runs import read_config, read_jsonl
from bnlab.lab.stats import Estimate, mean_ci, paired, verdict

__all__ = [
    "CHANCE",
    "LR_TOLERANCE",
    "NOISY_MARGIN",
    "analyse",
    "combine",
    "load_records",
    "result_line",
]

NOISY_MARGIN = 0.02  # "about as well": noisy BN's held-out accuracy at most 2 pp below BN's
LR_TOLERANCE = 0.05  # a net "trains" at an lr if its accuracy is within 5 pp of the sweep's best
CHANCE = 0.10  # the accuracy a diverged run is scored with (10 classes)


def load_records(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(config.json's "config", the records of metrics.jsonl without driver events)."""
    config = read_config(run_dir).get("config", {})
    return config, [r for r in read_jsonl(run_dir / "metrics.jsonl") if "event" not in r]


def _est(e: Estimate) -> dict[str, Any]:
    return {"mean": e.mean, "ci95": [e.lo, e.hi], "n": e.n}


def _pair(a: dict[int, float], b: dict[int, float], log: bool = False) -> dict[str, Any]:
    """a - b over the seeds both have (log a - log b with ``log``, reported also as a ratio)."""
    seeds = sorted(set(a) & set(b))
    f = (lambda v: math.log(max(v, 1e-300))) if log else (lambda v: v)
    p = paired([f(a[s]) for s in seeds], [f(b[s]) for s in seeds])
    out = {"diff": _est(p.diff), "p": p.p_value, "n": p.n, "seeds": seeds}
    if log:
        out["ratio"] = {
            "mean": math.exp(p.diff.mean) if math.isfinite(p.diff.mean) else math.nan,
            "ci95": [math.exp(v) if math.isfinite(v) else math.nan for v in (p.diff.lo, p.diff.hi)],
        }
    out["_estimate"] = p.diff
    return out


def _public(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not k.startswith("_")}


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


def part_noisy(records: list[dict[str, Any]], nets: list[str]) -> dict[str, Any]:
    per_net: dict[str, Any] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        acc = {v: _final(records, net, v, "test_acc")[0] for v in ("standard", "bn", "noisy-bn")}
        if not acc["bn"] or not acc["noisy-bn"]:
            continue
        gap = _pair(acc["bn"], acc["noisy-bn"])
        e: Estimate = gap["_estimate"]
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
        per_net[net] = {
            "test_acc": {k: _est(mean_ci(list(a.values()))) for k, a in acc.items()},
            "bn_minus_noisy": _public(gap),
            "noisy_minus_standard": _public(_pair(acc["noisy-bn"], acc["standard"])),
            "drift": {k: _est(mean_ci(list(d.values()))) for k, d in drift.items()},
            "drift_noisy_over_standard": _public(
                _pair(drift["noisy-bn"], drift["standard"], log=True)
            ),
            "verdict": v,
        }
    return {
        "question": "does noisy BN (injected, time-varying distribution shift after every BN "
        "layer) still train about as well as BN?",
        "nets": per_net,
        "verdict": combine(verdicts),
        "rule": f"per net, the paired 95% CI of final held-out accuracy BN - noisy BN over seeds: "
        f"holds if it lies below {NOISY_MARGIN * 100:.0f} pp (noisy BN at most "
        f"{NOISY_MARGIN * 100:.0f} pp worse), does not hold if it lies above "
        f"{NOISY_MARGIN * 100:.0f} pp, inconclusive "
        "otherwise; nets combined: holds if one holds and none does not (and vice versa)",
    }


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


def part_ics(records: list[dict[str, Any]], nets: list[str]) -> dict[str, Any]:
    per_net: dict[str, Any] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        std, bn = _ics_means(records, net, "standard"), _ics_means(records, net, "bn")
        if not std["rel_l2"] or not bn["rel_l2"]:
            continue
        entry: dict[str, Any] = {}
        for key, expected in (("rel_l2", "negative"), ("cos", "positive"), ("l2", "negative")):
            pair = _pair(bn[key], std[key])
            entry[key] = {
                "standard": _est(mean_ci(list(std[key].values()))),
                "bn": _est(mean_ci(list(bn[key].values()))),
                "bn_minus_standard": _public(pair),
                "bn_reduces_ics": verdict(pair["_estimate"], expected),  # type: ignore[arg-type]
            }
            if key != "cos":
                entry[key]["bn_over_standard"] = _public(_pair(bn[key], std[key], log=True))
        entry["verdict"] = entry["rel_l2"]["bn_reduces_ics"]
        verdicts.append(entry["verdict"])
        per_net[net] = entry
    return {
        "question": "does BN reduce internal covariate shift as Definition 2.1 measures it "
        "(the change of a layer's gradient when the layers before it take their step)?",
        "nets": per_net,
        "verdict": combine(verdicts),
        "rule": "per net, per seed the mean over measured steps and layers 2..k of "
        "||G - G'|| / ||G||; holds if the paired 95% CI of BN - standard lies below 0, does not "
        "hold if above 0, inconclusive otherwise (cosine and raw l2 are reported with the same "
        "rule); nets combined: holds if one holds and none does not (and vice versa)",
    }


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


def part_landscape(records: list[dict[str, Any]], nets: list[str]) -> dict[str, Any]:
    per_net: dict[str, Any] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        std, bn = _landscape_means(records, net, "standard"), _landscape_means(records, net, "bn")
        if not std["beta"] or not bn["beta"]:
            continue
        entry: dict[str, Any] = {}
        for key in LANDSCAPE:
            pair = _pair(bn[key], std[key], log=True)
            entry[key] = {
                "standard": _est(mean_ci(list(std[key].values()))),
                "bn": _est(mean_ci(list(bn[key].values()))),
                "bn_over_standard": _public(pair),
                "bn_smoother": verdict(pair["_estimate"], "negative"),
            }
        a, b = entry["loss_range"]["bn_smoother"], entry["beta"]["bn_smoother"]
        entry["verdict"] = a if a == b else "inconclusive"
        verdicts.append(entry["verdict"])
        per_net[net] = entry
    return {
        "question": "is the loss landscape of the BN net smoother along the gradient?",
        "nets": per_net,
        "verdict": combine(verdicts),
        "rule": "per net, per seed the mean over measured steps of the loss variation and of the "
        "effective beta-smoothness; each holds if the paired 95% CI of log(BN / standard) lies "
        "below 0 (does not hold above 0); the net's verdict is theirs when they agree, "
        "inconclusive when they differ; nets combined: holds if one holds and none does not "
        "(and vice versa). Gradient predictiveness is reported with the same rule",
    }


# ---- part 4: learning-rate range ----------------------------------------------------------------


def part_lr(records: list[dict[str, Any]], nets: list[str], lrs: list[float]) -> dict[str, Any]:
    per_net: dict[str, Any] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        table: dict[str, dict[str, Any]] = {}
        for variant in ("standard", "bn"):
            rows = {}
            for lr in lrs:
                acc, diverged = _final(records, net, variant, "test_acc", "sweep", lr)
                if acc:
                    rows[f"{lr:g}"] = {**_est(mean_ci(list(acc.values()))), "diverged": diverged}
            table[variant] = rows
        if not table["standard"] or not table["bn"]:
            continue
        best = max(r["mean"] for t in table.values() for r in t.values())
        works: dict[str, list[str]] = {}
        for variant, rows in table.items():
            works[variant] = [
                rate
                for rate, r in rows.items()
                if (r["ci95"][0] if math.isfinite(r["ci95"][0]) else r["mean"])
                >= best - LR_TOLERANCE
            ]
        s, b = set(works["standard"]), set(works["bn"])
        v: Verdict
        if not b and not s:  # neither trains anywhere: nothing to compare
            v = "inconclusive"
        else:
            v = "holds" if b > s else "does not hold" if b <= s else "inconclusive"
        verdicts.append(v)
        per_net[net] = {
            "test_acc": table,
            "best": best,
            "trains_at": works,
            "verdict": v,
        }
    return {
        "question": "does BN let the net train well over a wider range of learning rates?",
        "nets": per_net,
        "verdict": combine(verdicts),
        "rule": f"per net, a variant trains at a learning rate if the lower end of the 95% CI of "
        f"its final held-out accuracy over seeds (diverged runs score {CHANCE:.0%}) is within "
        f"{LR_TOLERANCE * 100:.0f} pp of the best mean accuracy of the sweep; holds if BN trains "
        "at every rate the standard net trains at and more, does not hold if BN's rates are "
        "among the standard net's, inconclusive otherwise (or when neither trains anywhere); "
        "nets combined as above",
    }


# ---- does BN help, and C5b -----------------------------------------------------------------------


def bn_helps(records: list[dict[str, Any]], nets: list[str]) -> dict[str, Any]:
    """The premise: the BN net ends better than the standard one (main runs, same lr)."""
    per_net: dict[str, Any] = {}
    verdicts: list[Verdict] = []
    for net in nets:
        key = "test_loss" if net == "dln" else "test_acc"
        std, bn = _final(records, net, "standard", key)[0], _final(records, net, "bn", key)[0]
        if not std or not bn:
            continue
        pair = _pair(bn, std)
        v = verdict(pair["_estimate"], "negative" if key == "test_loss" else "positive")
        verdicts.append(v)
        per_net[net] = {"measure": key, "bn_minus_standard": _public(pair), "verdict": v}
    return {"nets": per_net, "verdict": combine(verdicts)}


def c5b(
    helps: Verdict, noisy: Verdict, ics: Verdict, landscape: Verdict, lr: Verdict
) -> dict[str, Any]:
    """ "BN helps because it reduces internal covariate shift", decided from the parts."""
    premise = helps == "holds" or lr == "holds"
    v: Verdict
    if premise and (noisy == "holds" or ics == "does not hold"):
        v = "does not hold"
    elif premise and noisy == "does not hold" and ics == "holds":
        v = "holds"
    else:
        v = "inconclusive"
    why = {
        "bn_helps": helps,
        "wider_lr_range": lr,
        "noisy_bn_trains_as_well": noisy,
        "bn_reduces_ics": ics,
        "bn_landscape_smoother": landscape,
    }
    return {
        "claim": "C5b",
        "statement": "BN helps because it reduces internal covariate shift",
        "verdict": v,
        "evidence": why,
        "rule": "given that BN helps (its main-run accuracy, or its learning-rate range): does "
        "not hold if BN's benefit survives injected distributional shift (noisy BN trains about "
        "as well: part 1 holds) or BN does not reduce ICS by Definition 2.1 (part 2 does not "
        "hold); holds only if BN reduces ICS and noisy BN loses the benefit; inconclusive "
        "otherwise (or when BN does not help here). The landscape (part 3) is the paper's "
        "alternative explanation and is reported beside it",
    }


def analyse(run_dir: Path) -> dict[str, Any]:
    config, records = load_records(run_dir)
    nets = list(config.get("nets", []))
    image_nets = [n for n in nets if n != "dln"]
    sweep_nets = list(config.get("sweep_nets", []))
    parts = {
        "noisy_bn": part_noisy(records, image_nets),
        "ics": part_ics(records, nets),
        "landscape": part_landscape(records, nets),
        "lr_range": part_lr(records, sweep_nets, list(config.get("sweep_lrs", []))),
    }
    helps = bn_helps(records, nets)
    claim = c5b(
        helps["verdict"],
        parts["noisy_bn"]["verdict"],
        parts["ics"]["verdict"],
        parts["landscape"]["verdict"],
        parts["lr_range"]["verdict"],
    )
    diverged = sorted({r["key"] for r in records if r.get("kind") == "final" and r.get("diverged")})
    return {"parts": parts, "bn_helps": helps, "C5b": claim, "diverged": diverged}


def result_line(summary: dict[str, Any], run_dir: Path) -> str:
    p = summary["parts"]
    return (
        f"santurkar2018: noisy BN trains about as well as BN: {p['noisy_bn']['verdict']}; BN "
        f"reduces ICS: {p['ics']['verdict']}; BN landscape smoother: "
        f"{p['landscape']['verdict']}; wider lr range: {p['lr_range']['verdict']}; C5b (BN helps "
        f"because it reduces ICS): {summary['C5b']['verdict']}"
    )
