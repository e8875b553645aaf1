"""`bnlab running-stats`' analysis: records -> last-epoch accuracy and statistic errors per
estimator over seeds, each estimator's accuracy paired against the population statistics'.

Reads a :class:`~bnlab.lab.results.Run` (its typed config and its records); trains nothing,
draws nothing. The run writes what :func:`analyse` returns as summary.json; the report shows
the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnlab.lab.experiments.running_stats.config import (
    CUMULATIVE,
    POPULATION,
    Config,
    estimator_names,
)
from bnlab.lab.results import Run
from bnlab.lab.stats import Estimate, Paired, mean_ci, paired

__all__ = ["EstimatorSummary", "RunningStatsAnalysis", "analyse", "curves", "result_line"]

NOTES = (
    "last epoch; test_acc in percent, mean [95% t CI] over seeds; acc_vs_population: paired "
    "difference in percentage points; mean_err, var_err: per layer, mean over channels and seeds"
)


@dataclass(frozen=True)
class EstimatorSummary:
    """One estimator after the last epoch, over seeds."""

    test_acc: Estimate  # held-out accuracy with the estimate loaded, percent
    acc_vs_population: Paired | None  # minus the population's, percentage points, paired
    mean_err: tuple[float, ...]  # per BN layer: |mean - population mean| / population std
    var_err: tuple[float, ...]  # per BN layer: |var - population var| / population var


@dataclass(frozen=True)
class RunningStatsAnalysis:
    """What a running-stats run found: summary.json (plus the driver's "failed")."""

    experiment: str  # "running-stats"
    estimators: dict[str, EstimatorSummary]  # in table order; estimators without records left out
    seeds: tuple[int, ...]
    epoch: int  # the last epoch any seed reached (0: none)
    # (epoch, the cumulative average's variance error averaged over layers and seeds) after
    # each epoch: how its staleness fades
    cumulative_var_err: tuple[tuple[int, float], ...]
    notes: str


def curves(
    records: list[dict[str, Any]], key: str, reduce: Callable[[Any], float]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """estimator -> (epochs, mean over seeds of reduce(record[key])) for every epoch."""
    table: dict[str, dict[int, list[float]]] = {}
    for r in records:
        if r.get("kind") == "epoch":
            table.setdefault(r["estimator"], {}).setdefault(r["epoch"], []).append(reduce(r[key]))
    return {
        name: (np.array(sorted(by)), np.array([np.mean(by[e]) for e in sorted(by)]))
        for name, by in table.items()
    }


def _estimators(
    records: list[dict[str, Any]], cfg: Config
) -> tuple[dict[str, EstimatorSummary], int]:
    """(estimator -> its last-epoch summary, the last epoch) from the epoch records."""
    epochs = [r for r in records if r.get("kind") == "epoch"]
    last = max((r["epoch"] for r in epochs), default=0)
    final = {(r["seed"], r["estimator"]): r for r in epochs if r["epoch"] == last}
    seeds = cfg.seeds
    pop = [100 * final[(s, POPULATION)]["test_acc"] for s in seeds if (s, POPULATION) in final]
    out: dict[str, EstimatorSummary] = {}
    for name in estimator_names(cfg.training):
        rows = [final[(s, name)] for s in seeds if (s, name) in final]
        if not rows:
            continue
        acc = [100 * r["test_acc"] for r in rows]
        out[name] = EstimatorSummary(
            test_acc=mean_ci(acc),
            acc_vs_population=paired(acc, pop) if len(pop) == len(acc) else None,
            mean_err=tuple(np.mean([r["mean_err"] for r in rows], axis=0).tolist()),
            var_err=tuple(np.mean([r["var_err"] for r in rows], axis=0).tolist()),
        )
    return out, last


def analyse(run: Run[Config]) -> RunningStatsAnalysis:
    """Last-epoch accuracy and statistic errors per estimator over seeds, and the cumulative
    average's variance error after each epoch."""
    estimators, last = _estimators(run.records, run.config)
    ep, val = curves(run.records, "var_err", lambda v: float(np.mean(v))).get(
        CUMULATIVE, (np.array([]), np.array([]))
    )
    return RunningStatsAnalysis(
        experiment="running-stats",
        estimators=estimators,
        seeds=tuple(run.config.seeds),
        epoch=last,
        cumulative_var_err=tuple((int(e), float(v)) for e, v in zip(ep, val, strict=True)),
        notes=NOTES,
    )


def result_line(analysis: RunningStatsAnalysis, run: Run[Config]) -> str:
    """The one line printed at the end of a run."""
    est = analysis.estimators
    accs = ", ".join(f"{k} {v.test_acc.mean:.2f}%" for k, v in est.items())
    errs = ", ".join(
        f"{k} {100 * np.mean(v.var_err):.1f}%" for k, v in est.items() if k != POPULATION
    )
    return f"held-out accuracy: {accs}; variance error vs population: {errs}"
