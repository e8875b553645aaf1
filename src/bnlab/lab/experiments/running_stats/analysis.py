"""`bnlab running-stats`' analysis: records -> last-epoch accuracy and statistic errors per
estimator over seeds, each estimator's accuracy paired against the population statistics'.

Reads the run directory (config.json, metrics.jsonl); trains nothing, draws nothing. The run
writes what :func:`analyse` returns as summary.json; the report shows the same numbers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.running_stats.config import CUMULATIVE, POPULATION, estimator_names
from bnlab.lab.runs import read_config, read_jsonl
from bnlab.lab.stats import mean_ci, paired

__all__ = ["analyse", "curves", "load_run", "result_line", "summarize"]


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(config.json, the records of metrics.jsonl without failure events)."""
    meta = read_config(run_dir)
    records = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "event" not in r]
    return meta, records


def summarize(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Last-epoch numbers per estimator over seeds.

    Returns ``{"estimators": {name: {...}}, "seeds": [...], "epoch": last}`` where each
    estimator has ``test_acc`` (an :class:`~bnlab.lab.stats.Estimate`, percent),
    ``acc_vs_population`` (a :class:`~bnlab.lab.stats.Paired` difference in percentage points),
    ``mean_err`` and ``var_err`` (per layer, mean over seeds).
    """
    seeds = list(config["seeds"])
    epochs = [r for r in records if r.get("kind") == "epoch"]
    last = max((r["epoch"] for r in epochs), default=0)
    final = {(r["seed"], r["estimator"]): r for r in epochs if r["epoch"] == last}
    out: dict[str, Any] = {}
    names = estimator_names(config)
    pop = [100 * final[(s, POPULATION)]["test_acc"] for s in seeds if (s, POPULATION) in final]
    for name in names:
        rows = [final[(s, name)] for s in seeds if (s, name) in final]
        if not rows:
            continue
        acc = [100 * r["test_acc"] for r in rows]
        out[name] = {
            "test_acc": mean_ci(acc),
            "acc_vs_population": paired(acc, pop) if len(pop) == len(acc) else None,
            "mean_err": np.mean([r["mean_err"] for r in rows], axis=0).tolist(),
            "var_err": np.mean([r["var_err"] for r in rows], axis=0).tolist(),
        }
    return {"estimators": out, "seeds": seeds, "epoch": last}


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


def _plain(obj: Any) -> Any:
    """Estimates and paired differences as dicts: JSON data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def analyse(run_dir: Path) -> dict[str, Any]:
    """summary.json: :func:`summarize`'s numbers as JSON data, and the cumulative average's
    variance error after each epoch (how its staleness fades)."""
    meta, records = load_run(run_dir)
    config = meta["config"]
    s = summarize(records, config)
    ep, val = curves(records, "var_err", lambda v: float(np.mean(v))).get(
        CUMULATIVE, (np.array([]), np.array([]))
    )
    return {
        "experiment": "running-stats",
        **_plain(s),
        # [epoch, variance error averaged over layers and seeds] after each epoch
        "cumulative_var_err": [[int(e), float(v)] for e, v in zip(ep, val, strict=True)],
        "notes": "last epoch; test_acc in percent, mean [95% t CI] over seeds; "
        "acc_vs_population: paired difference in percentage points; mean_err, var_err: per "
        "layer, mean over channels and seeds",
    }


def result_line(summary: dict[str, Any], run_dir: Path) -> str:
    """The one line printed at the end of a run (from :func:`analyse`'s summary)."""
    est = summary["estimators"]
    accs = ", ".join(f"{k} {v['test_acc']['mean']:.2f}%" for k, v in est.items())
    errs = ", ".join(
        f"{k} {100 * np.mean(v['var_err']):.1f}%" for k, v in est.items() if k != POPULATION
    )
    return f"held-out accuracy: {accs}; variance error vs population: {errs}"
