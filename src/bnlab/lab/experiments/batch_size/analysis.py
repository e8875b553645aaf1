"""`bnlab batch-size`' analysis: records -> test error, train-mode error and their gap per
(series, b) over seeds, paired claims, and how the curve compares with Wu & He's.

Reads a :class:`~bnlab.lab.results.Run` (its typed config and its records); trains nothing,
draws nothing. The run writes what :func:`analyse` returns as summary.json.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnlab.lab.experiments.batch_size.config import BATCH_FREE, PRECISE, Config
from bnlab.lab.results import ONE_SEED, Claim, Run, no_answer, verdict_text
from bnlab.lab.stats import Estimate, mean_ci, paired, paired_claim

__all__ = [
    "PAPER",
    "BatchSizeAnalysis",
    "Point",
    "analyse",
    "final_records",
    "result_line",
    "series_name",
]

# Wu & He 2018, Figure 1 / Table 2: ResNet-50 ImageNet top-1 error (%) by images per GPU.
PAPER: dict[str, dict[int, float]] = {
    "bn": {32: 23.6, 16: 23.7, 8: 24.8, 4: 27.3, 2: 34.7},
    "gn": {32: 24.1, 16: 24.2, 8: 24.0, 4: 24.2, 2: 24.1},
}
# (series, b) -> seed -> that job's last-epoch record
Table = Mapping[tuple[str, int], Mapping[int, dict[str, Any]]]
SMALL = "-small-sgd"  # the suffix of the true-small-SGD-batch series ("bn-small-sgd")
# A BN net at the largest b above this error did not learn: the claims get no answer.
LEARNED_ERR = 50.0
NOTES = (
    "last epoch; errors in percent, mean [95% t CI] over seeds; gap = train-mode error minus "
    "eval-mode error (pp); differences paired over seeds"
)


@dataclass(frozen=True)
class Point:
    """One series at one normalization batch b, over seeds."""

    series: str  # bn, renorm, gn, ln, bn-precise, bn-small-sgd, gn-small-sgd
    b: int  # normalization batch (GN, LN: the SGD batch; they do not depend on it)
    test_err: Estimate  # eval mode, percent
    train_mode_err: Estimate | None  # train mode, batches as in training, percent
    gap: Estimate | None  # train-mode minus eval-mode error, pp, paired per seed
    sec_per_step: float  # mean over seeds and epochs


@dataclass(frozen=True)
class BatchSizeAnalysis:
    """What a batch-size run found: summary.json (plus the driver's "failed")."""

    experiment: str  # "batch-size"
    points: tuple[Point, ...]
    claims: tuple[Claim, ...]
    agreement: str  # where the CPU-scale curve agrees with Wu & He's, and where not
    seeds: tuple[int, ...]
    epochs: int  # the epochs every job was trained for
    no_answer: str  # why the run cannot answer ("" if it can)
    notes: str


def series_name(norm: str, regime: str) -> str:
    return norm + (SMALL if regime == "small-sgd" else "")


def final_records(records: list[dict[str, Any]], epochs: int) -> list[dict[str, Any]]:
    """Each finished job's last-epoch record."""
    return [r for r in records if r.get("kind") == "epoch" and r["epoch"] == epochs]


def _by_seed(finals: list[dict[str, Any]]) -> dict[tuple[str, int], dict[int, dict[str, Any]]]:
    """(series, b) -> seed -> record; bn's precise errors as the series bn-precise."""
    out: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for r in finals:
        name = series_name(r["norm"], r["regime"])
        out.setdefault((name, r["b"]), {})[r["seed"]] = r
        if name == "bn" and "precise_err" in r:
            out.setdefault((PRECISE, r["b"]), {})[r["seed"]] = {**r, "test_err": r["precise_err"]}
    return out


def _points(table: Table) -> list[Point]:
    points = []
    for (name, b), by_seed in sorted(table.items()):
        rows = [by_seed[s] for s in sorted(by_seed)]
        err = [100 * r["test_err"] for r in rows]
        train = [100 * r["train_mode_err"] for r in rows if "train_mode_err" in r]
        has_train = name != PRECISE and len(train) == len(err)
        points.append(
            Point(
                series=name,
                b=b,
                test_err=mean_ci(err),
                train_mode_err=mean_ci(train) if has_train else None,
                gap=paired(train, err).diff if has_train else None,
                sec_per_step=float(np.mean([r["sec_per_step"] for r in rows])),
            )
        )
    return points


def _values(
    table: Table,
    name: str,
    b: int,
    key: str = "test_err",
) -> dict[int, float]:
    """seed -> 100 * value of ``key`` of series ``name`` at ``b`` (GN and LN at any b)."""
    if name in BATCH_FREE:
        b = next((bb for (n, bb) in table if n == name), b)
    return {s: 100 * r[key] for s, r in table.get((name, b), {}).items() if key in r}


def _gap(table: Table, b: int) -> dict[int, float]:
    rows = table.get(("bn", b), {})
    return {
        s: 100 * (r["train_mode_err"] - r["test_err"])
        for s, r in rows.items()
        if "train_mode_err" in r
    }


def _claims(cfg: Config, table: Table) -> list[Claim]:
    lo, hi = min(cfg.norm_batches), max(cfg.norm_batches)
    small = min(cfg.small_sgd_batches, default=None)
    specs: list[tuple[str, str, str, dict[int, float], dict[int, float], Any]] = []
    if lo < hi:
        specs += [
            (
                "C1",
                "BN's error grows as the normalization batch shrinks (Wu & He: 23.6% at 32 "
                "images per GPU, 34.7% at 2)",
                f"BN error at b={lo} minus at b={hi}",
                _values(table, "bn", lo),
                _values(table, "bn", hi),
                "positive",
            ),
            (
                "C6",
                "BN's train-mode and eval-mode errors drift apart as b shrinks",
                f"(train-mode minus eval-mode error) at b={lo} minus at b={hi}, BN",
                _gap(table, lo),
                _gap(table, hi),
                "positive",
            ),
        ]
    specs += [
        (
            "C2",
            "GroupNorm beats BN at a small normalization batch (Wu & He: 24.1% vs 34.7% at 2)",
            f"BN error at b={lo} minus GN error",
            _values(table, "bn", lo),
            _values(table, "gn", lo),
            "positive",
        ),
        (
            "C3",
            "BN beats GroupNorm at a large normalization batch (Wu & He: 23.6% vs 24.1% at 32)",
            f"GN error minus BN error at b={hi}",
            _values(table, "gn", hi),
            _values(table, "bn", hi),
            "positive",
        ),
        (
            "C4",
            "Batch Renorm shrinks BN's small-batch loss (Ioffe 2017)",
            f"BN error minus Batch Renorm error at b={lo}",
            _values(table, "bn", lo),
            _values(table, "renorm", lo),
            "positive",
        ),
        (
            "C5",
            "Recomputing BN's statistics precisely recovers part of its small-batch loss (the "
            "loss is in the eval-mode estimate, not only in training)",
            f"BN error with running statistics minus with precise ones at b={lo}",
            _values(table, "bn", lo),
            _values(table, PRECISE, lo),
            "positive",
        ),
    ]
    if small is not None:
        specs.append(
            (
                "C7",
                "The small-batch loss is the normalization batch's: with true SGD batches of "
                f"{small} (linear lr scaling), BN still trails GN",
                f"BN error minus GN error, both with SGD batch {small}",
                _values(table, "bn" + SMALL, small),
                _values(table, "gn" + SMALL, small),
                "positive",
            )
        )
    claims = [paired_claim(*spec) for spec in specs]  # values in % (differences: pp)
    return sorted((c for c in claims if c is not None), key=lambda c: c.id)


def _mean(table: Table, name: str, b: int) -> float:
    v = _values(table, name, b)
    return float(np.mean(list(v.values()))) if v else math.nan


def _agreement(cfg: Config, table: Table) -> str:
    """Where the CPU-scale curve agrees with Wu & He's Figure 1 and where it does not."""
    lo, hi = min(cfg.norm_batches), max(cfg.norm_batches)
    bn_lo, bn_hi, gn = _mean(table, "bn", lo), _mean(table, "bn", hi), _mean(table, "gn", lo)
    if not all(math.isfinite(v) for v in (bn_lo, bn_hi, gn)) or lo == hi:
        return ""
    paper = PAPER["bn"]
    rise, paper_rise = bn_lo - bn_hi, paper[2] - paper[32]
    agrees: list[str] = []
    differs: list[str] = []
    (agrees if rise > 0 else differs).append(
        f"BN's error {'rises' if rise > 0 else 'does not rise'} as b shrinks ({rise:+.2f} pp "
        f"from b={hi} to {lo}, {100 * rise / bn_hi:+.0f}% relative; the paper: "
        f"{paper_rise:+.1f} pp from 32 to 2, {100 * paper_rise / paper[32]:+.0f}% relative)"
    )
    (agrees if gn < bn_lo else differs).append(
        f"GN is {'better' if gn < bn_lo else 'not better'} than BN at b={lo} "
        f"({gn:.2f}% vs {bn_lo:.2f}%; the paper: 24.1% vs 34.7% at 2)"
    )
    (agrees if bn_hi < gn else differs).append(
        f"BN is {'better' if bn_hi < gn else 'not better'} than GN at b={hi} "
        f"({bn_hi:.2f}% vs {gn:.2f}%; the paper: 23.6% vs 24.1% at 32)"
    )
    out = []
    if agrees:
        out.append("Agrees with Wu & He: " + "; ".join(agrees) + ".")
    if differs:
        out.append("Differs: " + "; ".join(differs) + ".")
    side = cfg.training.image_size // 4  # the last conv layer's height and width
    out.append(
        f"Scale differs throughout: a 3-layer conv net on {cfg.dataset} for "
        f"{cfg.training.epochs} epoch(s), not ResNet-50 on ImageNet for 100; the last conv "
        f"layer here computes each statistic from b x {side} x {side} values, the paper's "
        "deepest from b x 7 x 7."
    )
    return " ".join(out)


def analyse(run: Run[Config]) -> BatchSizeAnalysis:
    """Per (series, b): errors over seeds; the claims; the comparison with the paper."""
    cfg = run.config
    table = _by_seed(final_records(run.records, cfg.training.epochs))
    claims = _claims(cfg, table)
    bn_hi = _mean(table, "bn", max(cfg.norm_batches))
    why = ""
    if not table:
        why = "no job finished"
    elif math.isfinite(bn_hi) and bn_hi > LEARNED_ERR:
        why = (
            f"BN at b={max(cfg.norm_batches)} has {bn_hi:.1f}% test error: the nets did not "
            "learn; train longer (more --epochs or a larger --train-size)"
        )
    return BatchSizeAnalysis(
        experiment="batch-size",
        points=tuple(_points(table)),
        claims=tuple(no_answer(claims, why)),
        agreement=_agreement(cfg, table),
        seeds=tuple(cfg.seeds),
        epochs=cfg.training.epochs,
        no_answer=why,
        notes=NOTES,
    )


def result_line(analysis: BatchSizeAnalysis, run: Run[Config]) -> str:
    """Test error per series and b, then the claims."""
    by: dict[str, list[Point]] = {}
    for p in analysis.points:
        by.setdefault(p.series, []).append(p)
    lines = [
        f"{name:<13} " + "  ".join(f"b={p.b}: {p.test_err.mean:.2f}%" for p in pts)
        for name, pts in by.items()
    ]
    if analysis.no_answer:
        lines.append(f"No answer to the claims from this run: {analysis.no_answer}.")
    else:
        lines += [
            f"{c.id} {verdict_text(c.verdict)}: {c.statement} ({c.value})" for c in analysis.claims
        ]
        if any(c.verdict in ONE_SEED for c in analysis.claims):
            lines.append("One seed gives directions, not verdicts: run --seeds 0,1,2.")
    return "\n".join(lines) + f"\n{run.dir}: report.html, summary.json, metrics.jsonl"
