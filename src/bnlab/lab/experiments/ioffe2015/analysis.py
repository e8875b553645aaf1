"""`bnlab ioffe2015`'s analysis: records -> accuracies at checkpoints, drift of the sigmoid
input, and a verdict per panel of Figure 1. Reads the run (:class:`~bnlab.lab.results.Run`);
trains nothing, draws nothing. The run writes what :func:`analyse` returns as summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bnlab.lab.configs import config_to_dict
from bnlab.lab.experiments.ioffe2015.config import NETS, Ioffe2015Config, Net
from bnlab.lab.results import Claim, Run, Verdict

__all__ = [
    "CHECKPOINTS",
    "Ioffe2015Analysis",
    "NetMean",
    "NetResult",
    "accuracy_at",
    "analyse",
    "checkpoint_steps",
    "claims",
    "median_drift",
    "net_rows",
    "result_line",
    "seeds_of",
]

CHECKPOINTS = (0.1, 0.5, 1.0)  # shares of the run where accuracies are compared


@dataclass(frozen=True)
class NetResult:
    """One net of one seed: accuracy at the checkpoints and the drift of its sigmoid input."""

    seed: int
    net: Net
    accuracy: dict[int, float | None]  # checkpoint step -> held-out accuracy (None: no eval)
    best_accuracy: float  # the highest held-out accuracy of any evaluation
    median_drift_unit: float  # max - min over training of the plotted unit's median input
    median_drift_mean_of_units: float  # the same, averaged over the last hidden layer's units


@dataclass(frozen=True)
class NetMean:
    """One net, averaged over the seeds (None where no seed has the number)."""

    accuracy: dict[int, float | None]  # checkpoint step -> mean held-out accuracy
    median_drift_unit: float | None


@dataclass(frozen=True)
class Ioffe2015Analysis:
    """What a run shows (summary.json): accuracy at the checkpoints and median drift per
    (seed, net) and averaged over seeds, and a verdict per panel of Figure 1."""

    experiment: str  # "ioffe2015"
    config: dict[str, Any]  # the run's flags as config.json holds them (flat name -> value)
    checkpoints: tuple[int, ...]  # the evaluated steps nearest above 10%, 50%, 100% of the run
    seeds: tuple[int, ...]  # the seeds with both nets evaluated
    mean_over_seeds: dict[Net, NetMean]
    per_seed: tuple[NetResult, ...]  # seed by seed, baseline then bn
    claims: tuple[Claim, ...]
    notes: str


def net_rows(records: list[dict[str, Any]], net: str, seed: int) -> list[dict[str, Any]]:
    """The evaluations of one (seed, net), by step."""
    return sorted(
        (r for r in records if r.get("net") == net and r.get("seed") == seed),
        key=lambda r: r["step"],
    )


def seeds_of(records: list[dict[str, Any]]) -> list[int]:
    """The seeds with evaluations of both nets (a failed job leaves its seed out)."""
    have = {(int(r["seed"]), r["net"]) for r in records if "seed" in r}
    return sorted({s for s, _ in have if all((s, net) in have for net in NETS)})


def accuracy_at(records: list[dict[str, Any]], net: str, seed: int, step: int) -> float | None:
    """Accuracy at the first evaluation at or after ``step``."""
    for r in net_rows(records, net, seed):
        if r["step"] >= step:
            return float(r["accuracy"])
    return None


def checkpoint_steps(records: list[dict[str, Any]]) -> list[int]:
    """The evaluated steps nearest above 10%, 50% and 100% of the run."""
    steps = sorted({int(r["step"]) for r in records})
    if not steps:
        return []
    last = steps[-1]
    return list(dict.fromkeys(next(s for s in steps if s >= share * last) for share in CHECKPOINTS))


def median_drift(records: list[dict[str, Any]], net: str, seed: int) -> tuple[float, float]:
    """(max - min over training of the plotted unit's median, the same averaged over all
    units of the last hidden layer)."""
    rows = net_rows(records, net, seed)
    unit = np.array([r["p50"] for r in rows])
    all_units = np.array([r["unit_medians"] for r in rows])  # (evaluations, hidden)
    return float(unit.max() - unit.min()), float((all_units.max(0) - all_units.min(0)).mean())


def _mean_over_seeds(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def claims(records: list[dict[str, Any]]) -> list[Claim]:
    """Figure 1's two expectations, each with the rule that turns the numbers into a verdict."""
    seeds = seeds_of(records)
    if not seeds:
        return []
    marks = checkpoint_steps(records)
    acc = {
        (net, step): _mean_over_seeds([accuracy_at(records, net, s, step) for s in seeds])
        for net in NETS
        for step in marks
    }
    higher = [
        (acc[("bn", m)] or 0.0) > (acc[("baseline", m)] or 0.0) for m in marks
    ]  # per checkpoint
    verdict_a: Verdict
    if all(higher):
        verdict_a = "holds"
    elif not higher[0]:
        verdict_a = "does not hold"
    else:
        verdict_a = "inconclusive"
    seeds_note = f"mean over {len(seeds)} seeds" if len(seeds) > 1 else "one seed"
    value_a = "; ".join(
        f"step {m:,}: BN {acc[('bn', m)]:.3f} vs {acc[('baseline', m)]:.3f}" for m in marks
    )
    drift = {net: np.mean([median_drift(records, net, s) for s in seeds], axis=0) for net in NETS}
    lower = [drift["bn"][k] < drift["baseline"][k] for k in (0, 1)]
    verdict_bc: Verdict
    if all(lower):
        verdict_bc = "holds"
    elif not any(lower):
        verdict_bc = "does not hold"
    else:
        verdict_bc = "inconclusive"
    value_bc = (
        f"plotted unit: BN {drift['bn'][0]:.3f} vs {drift['baseline'][0]:.3f}; mean over all "
        f"units: BN {drift['bn'][1]:.3f} vs {drift['baseline'][1]:.3f}"
    )
    return [
        Claim(
            id="Fig. 1(a)",
            statement="With BN the network reaches higher test accuracy, sooner",
            quantity=f"held-out accuracy (eval mode) at 10%, 50% and 100% of the steps; "
            f"{seeds_note}",
            value=value_a,
            verdict=verdict_a,
            rule="holds if BN is higher at all three checkpoints; does not hold if BN is not "
            "higher at the first (not sooner); else inconclusive (e.g. the baseline catches up)",
        ),
        Claim(
            id="Fig. 1(b, c)",
            statement="With BN the distribution of a sigmoid's input stays stable over training; "
            "without, it drifts (internal covariate shift)",
            quantity="drift of the median sigmoid input of the last hidden layer: max - min over "
            f"all evaluations; {seeds_note}",
            value=value_bc,
            verdict=verdict_bc,
            rule="holds if BN drifts less for the plotted unit and on average over the layer's "
            "units; does not hold if it drifts at least as much in both; else inconclusive",
        ),
    ]


def analyse(run: Run[Ioffe2015Config]) -> Ioffe2015Analysis:
    """Accuracy at the checkpoints and median drift per (seed, net), and the claims
    (summary.json)."""
    records = run.records
    seeds = seeds_of(records)
    marks = checkpoint_steps(records)
    per_seed = []
    for seed in seeds:
        for net in NETS:
            unit, mean_units = median_drift(records, net, seed)
            per_seed.append(
                NetResult(
                    seed=seed,
                    net=net,
                    accuracy={m: accuracy_at(records, net, seed, m) for m in marks},
                    best_accuracy=max(r["accuracy"] for r in net_rows(records, net, seed)),
                    median_drift_unit=unit,
                    median_drift_mean_of_units=mean_units,
                )
            )
    mean = {
        net: NetMean(
            accuracy={
                m: _mean_over_seeds([accuracy_at(records, net, s, m) for s in seeds]) for m in marks
            },
            median_drift_unit=_mean_over_seeds([median_drift(records, net, s)[0] for s in seeds]),
        )
        for net in NETS
    }
    return Ioffe2015Analysis(
        experiment="ioffe2015",
        config=config_to_dict(run.config),
        checkpoints=tuple(marks),
        seeds=tuple(seeds),
        mean_over_seeds=mean,
        per_seed=tuple(per_seed),
        claims=tuple(claims(records)),
        notes="accuracy: held-out digits, eval mode, at the first evaluation at or after "
        "each checkpoint step; median drift: max - min over all evaluations of the median "
        "sigmoid input (the plotted unit, and the mean over the last hidden layer's units)",
    )


def result_line(analysis: Ioffe2015Analysis, run: Run[Ioffe2015Config]) -> str:
    """The result in one line: accuracies at the checkpoints, median drift, both verdicts."""
    marks = analysis.checkpoints
    mean = analysis.mean_over_seeds

    def accs(net: Net) -> str:
        return "/".join(_fmt(mean[net].accuracy[m]) for m in marks)

    def drift(net: Net) -> str:
        value = mean[net].median_drift_unit
        return "-" if value is None else f"{value:.2f}"

    verdicts = ", ".join(f"{c.id} {c.verdict}" for c in analysis.claims) or "no verdicts"
    return (
        f"ioffe2015: accuracy at steps {'/'.join(f'{m:,}' for m in marks)}: baseline "
        f"{accs('baseline')}, BN {accs('bn')}; median drift of sigmoid input (unit "
        f"{run.config.unit}): baseline {drift('baseline')}, BN {drift('bn')} -> {verdicts}"
    )


def _fmt(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
