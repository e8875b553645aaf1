"""`bnlab regularization`'s analysis: records -> final and matched gaps over seeds, paired
comparisons, the probe's log-log slope, and a verdict per claim (C6, its cause, its premise).

BN also speeds up optimization, which changes the gap at any fixed epoch for reasons that have
nothing to do with regularization. Two readings keep the two apart: the gap at the *end* of
training, when every network fits its training set (the report checks that they do), and the
gap at *equal training accuracy* (the first epoch at which a network reaches
``match_train_acc``). ``bn-full - bn`` is the part of the gap due to the batch noise,
``plain - bn-full`` the part due to normalizing at all.

Reads the run directory (config.json, metrics.jsonl); trains nothing, draws nothing. The run
writes what :func:`analyse` returns as summary.json; the report shows the same numbers.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.experiments.regularization.config import CI_LEVEL
from bnlab.lab.results import Claim, Verdict
from bnlab.lab.runs import read_config, read_jsonl
from bnlab.lab.stats import Paired, format_ci, mean_ci, paired

__all__ = [
    "COMPARISONS",
    "FINAL_WINDOW",
    "FIT_ACC",
    "FIT_MIN_BATCH",
    "MIN_EFFECT_PP",
    "analyse",
    "c6_verdict",
    "claims",
    "comparison",
    "diff_text",
    "fit_slope",
    "load_run",
    "result_line",
    "summarize",
]

# The "final" gap averages the last epochs: on 1,000 training digits one epoch's accuracy
# moves by a few tenths of a point from epoch to epoch; five epochs damp that.
FINAL_WINDOW = 5
# A gap reduction below this (percentage points) is too small to matter: 25 of 5,000 held-out
# digits, about the seed-to-seed spread of one network's held-out accuracy. For "does not hold".
MIN_EFFECT_PP = 0.5
# A network "fits" its training subset at this eval-mode training accuracy (one digit in 1,000
# may stay wrong): below it, the final gap also measures a difference in fit.
FIT_ACC = 0.999
# The 1/sqrt(B) law is a large-B law: at B = 2 and 4 a normalized value is bounded
# (exactly +-1 at B = 2), so the log-log slope is fitted from this batch size on.
FIT_MIN_BATCH = 8
# (a, b, what a - b isolates): positive = b has the smaller gap.
COMPARISONS = (
    ("plain", "bn", "BN's total effect"),
    ("bn-full", "bn", "batch noise (BN with vs without mini-batch statistics)"),
    ("plain", "bn-full", "normalization without batch noise"),
)


def load_run(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """(config.json, the records of metrics.jsonl without failure events)."""
    meta = read_config(run_dir)
    records = [r for r in read_jsonl(Path(run_dir) / "metrics.jsonl") if "event" not in r]
    return meta, records


def _final(rows: list[dict[str, Any]], key: str) -> float:
    """Mean of ``key`` over the last FINAL_WINDOW epochs of one (variant, seed)."""
    last = sorted(rows, key=lambda r: r["epoch"])[-FINAL_WINDOW:]
    return float(np.mean([r[key] for r in last])) if last else math.nan


def c6_verdict(lo: float, hi: float) -> Verdict:
    """holds: CI above 0; does not hold: CI below MIN_EFFECT_PP; else inconclusive."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "inconclusive"
    if lo > 0:
        return "holds"
    if hi < MIN_EFFECT_PP:
        return "does not hold"
    return "inconclusive"


def fit_slope(bs: list[float], ys: list[float]) -> dict[str, float]:
    """Log-log slope of ``ys`` against batch sizes ``bs`` >= FIT_MIN_BATCH, with a t CI."""
    from scipy import stats

    pts = [(b, y) for b, y in zip(bs, ys, strict=True) if b >= FIT_MIN_BATCH and y > 0]
    if len(pts) < 2:
        return {"slope": math.nan, "lo": math.nan, "hi": math.nan, "n": len(pts)}
    fit = stats.linregress(np.log([p[0] for p in pts]), np.log([p[1] for p in pts]))
    half = math.nan
    if len(pts) > 2:
        half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, len(pts) - 2) * fit.stderr)
    slope = float(fit.slope)
    return {"slope": slope, "lo": slope - half, "hi": slope + half, "n": len(pts)}


def summarize(records: list[dict[str, Any]], config: dict[str, Any]) -> dict[str, Any]:
    """Per-variant final and matched gaps over seeds, paired comparisons, the probe's slope.

    Returns a dict with ``variants`` (name -> ``per_seed`` lists and their
    :class:`~bnlab.lab.stats.Estimate` per quantity), ``comparisons`` (a, b, meaning, quantity and
    the :class:`~bnlab.lab.stats.Paired` difference a - b), ``probe`` (records and slopes) and
    ``min_final_train_acc``. A (variant, seed) without records (a failed job) counts as
    missing: nan, left out of means and pairs.
    """
    seeds = list(config["seeds"])
    variants = list(config["variants"])
    match = float(config["match_train_acc"])
    epochs = [r for r in records if r.get("kind") == "epoch"]
    per: dict[str, dict[str, Any]] = {}
    for v in variants:
        cols: dict[str, list[float]] = {
            k: []
            for k in (
                "gap",
                "loss_gap",
                "train_acc",
                "test_acc",
                "matched_gap",
                "matched_test_acc",
                "matched_epoch",
            )
        }
        for s in seeds:
            rows = sorted(
                (r for r in epochs if r["variant"] == v and r["seed"] == s),
                key=lambda r: r["epoch"],
            )
            cols["gap"].append(_final(rows, "acc_gap_pp"))
            cols["loss_gap"].append(_final(rows, "loss_gap"))
            cols["train_acc"].append(_final(rows, "train_acc"))
            cols["test_acc"].append(_final(rows, "test_acc"))
            hit = next((r for r in rows if r["train_acc"] >= match), None)
            cols["matched_gap"].append(hit["acc_gap_pp"] if hit else math.nan)
            cols["matched_test_acc"].append(hit["test_acc"] if hit else math.nan)
            cols["matched_epoch"].append(float(hit["epoch"]) if hit else math.nan)
        per[v] = {
            "per_seed": cols,
            **{k: mean_ci(vals, CI_LEVEL) for k, vals in cols.items()},
            "reached_match": sum(math.isfinite(x) for x in cols["matched_epoch"]),
        }
    comparisons = []
    for a, b, meaning in COMPARISONS:
        if a in per and b in per:
            for quantity, key in (("final gap", "gap"), ("gap at equal train acc", "matched_gap")):
                d = paired(per[a]["per_seed"][key], per[b]["per_seed"][key], CI_LEVEL)
                comparisons.append(
                    {"a": a, "b": b, "meaning": meaning, "quantity": quantity, "paired": d}
                )
    probe = sorted((r for r in records if r.get("kind") == "probe"), key=lambda r: r["batch_size"])
    bs = [float(r["batch_size"]) for r in probe]
    train_accs = [x for v in variants for x in per[v]["per_seed"]["train_acc"] if math.isfinite(x)]
    return {
        "seeds": seeds,
        "variants": per,
        "comparisons": comparisons,
        "probe": probe,
        "logit_slope": fit_slope(bs, [r["logit_std"] for r in probe]),
        "bn1_slope": fit_slope(bs, [r["bn1_std"] for r in probe]),
        "min_final_train_acc": min(train_accs, default=math.nan),
    }


def comparison(s: dict[str, Any], a: str, b: str, quantity: str) -> Paired | None:
    """The paired comparison a - b of ``quantity`` in the summary ``s``, if it was made."""
    return next(
        (
            c["paired"]
            for c in s["comparisons"]
            if (c["a"], c["b"], c["quantity"]) == (a, b, quantity)
        ),
        None,
    )


def diff_text(d: Paired) -> str:
    """A paired difference in percentage points: mean [CI] (95% CI, n seeds, p)."""
    if not math.isfinite(d.diff.mean):
        return "-"
    p = f", p = {d.p_value:.3g}" if math.isfinite(d.p_value) else ""
    return f"{format_ci(d.diff, '{:+.2f}', ' pp')} (95% CI, {d.n} seeds{p})"


def claims(s: dict[str, Any], config: dict[str, Any]) -> list[Claim]:
    """C6 (BN regularizes), its cause (batch noise) and its premise (batch dependence), each
    with the quantity measured and a verdict by its rule."""
    out = []
    main = comparison(s, "plain", "bn", "final gap")
    if main is not None:
        out.append(
            Claim(
                "C6",
                "BN regularizes.",
                f"reduction of the final train - held-out accuracy gap by BN (plain - bn), "
                f"paired over seeds, {config['train_size']:,} training digits",
                diff_text(main),
                c6_verdict(main.diff.lo, main.diff.hi),
                f"holds if the 95% CI lies above 0; does not hold if it lies below "
                f"{MIN_EFFECT_PP} pp (no reduction of practical size); else inconclusive",
            )
        )
    noise = comparison(s, "bn-full", "bn", "final gap")
    if noise is not None:
        out.append(
            Claim(
                "C6 (cause)",
                "BN regularizes because an example's output depends on the other examples in "
                "its batch.",
                "gap reduction due to mini-batch statistics: bn-full (statistics of the whole "
                "training subset) - bn, paired over seeds",
                diff_text(noise),
                c6_verdict(noise.diff.lo, noise.diff.hi),
                "the same rule as C6",
            )
        )
    probe = s["probe"]
    at = min(probe, key=lambda r: abs(r["batch_size"] - config["batch_size"]), default=None)
    if at is not None:
        eval_max = max(max(r["logit_std_eval"], r["bn1_std_eval"]) for r in probe)
        dependent = at["logit_std_lo"] > 0
        verdict: Verdict = "holds" if dependent and eval_max == 0 else "does not hold"
        out.append(
            Claim(
                "C6 (premise)",
                "In training, an example's output depends on the other examples in its batch; "
                "in evaluation it does not.",
                f"std of one held-out digit's logits over {at['batches']} random batches of "
                f"B = {at['batch_size']} (the probe size nearest the training batch, "
                f"{config['batch_size']}; RMS over the 10 logits), train vs eval mode",
                f"train {at['logit_std']:.3g} [{at['logit_std_lo']:.3g}, "
                f"{at['logit_std_hi']:.3g}] (95% bootstrap CI); eval {eval_max:.3g} (max over B)",
                verdict,
                "holds if the train-mode CI excludes 0 and the eval-mode spread is exactly 0",
            )
        )
    return out


def _plain(obj: Any) -> Any:
    """Estimates and paired differences as dicts, tuples as lists: JSON data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


def analyse(run_dir: Path) -> dict[str, Any]:
    """summary.json: :func:`summarize`'s numbers as JSON data, and the claims."""
    meta, records = load_run(run_dir)
    config = meta["config"]
    s = summarize(records, config)
    return {
        "experiment": "regularization",
        **_plain(s),
        "claims": [_plain(c) for c in claims(s, config)],
        "notes": f"final = mean over the last {FINAL_WINDOW} epochs; CI: {CI_LEVEL:.0%} t "
        "interval over seeds (paired for comparisons); probe CI: percentile bootstrap over "
        "batches",
    }


def result_line(summary: dict[str, Any], run_dir: Path) -> str:
    """The one line printed at the end of a run (from :func:`analyse`'s summary)."""
    per = summary["variants"]
    gaps = ", ".join(f"{v} {per[v]['gap']['mean']:.2f}" for v in per)
    verdicts = {c["id"]: c for c in summary["claims"]}
    text = f"final train-test gap (pp) {gaps}"
    if "C6" in verdicts:
        text = f"C6 {verdicts['C6']['verdict']}: {text}; plain - bn {verdicts['C6']['value']}"
    for c in summary["comparisons"]:
        if (c["a"], c["b"], c["quantity"]) == ("bn-full", "bn", "final gap"):
            text += f"; bn-full - bn {c['paired']['diff']['mean']:+.2f} pp"
    if summary["probe"]:
        text += f"; spread ~ B^{summary['logit_slope']['slope']:.2f}"
    return text
