"""`bnlab regularization`: does batch norm regularize (the blog's claim C6)?

The blog says BN regularizes because "an example's output depends on the other examples in
its batch". This experiment measures both halves of that sentence:

1. **The effect.** The same MLP classifier is trained with and without BN on a small
   training subset (1,000 digits by default, so that every network can fit it perfectly)
   and evaluated on held-out digits. The quantity is the generalization gap, train accuracy
   minus held-out accuracy (both in eval mode), over epochs and seeds. All variants of one
   seed share the training subset, the initial Linear weights and the order of the batches,
   so paired differences across seeds isolate the variant.

   BN also speeds up optimization, which changes the gap at any fixed epoch for reasons
   that have nothing to do with regularization. Two comparisons keep the two apart: the gap
   at the *end* of training, when every network fits its training set (the report checks
   that they do), and the gap at *equal training accuracy* (the first epoch at which the
   network reaches ``match_train_acc`` on its training set). A third variant, ``bn-full``,
   normalizes every step with statistics over the whole training subset instead of the
   mini-batch: BN's normalization without its batch noise. ``bn-full - bn`` is then the part
   of the gap that the batch noise is responsible for, ``plain - bn-full`` the part due to
   normalizing at all.

2. **The mechanism.** One fixed held-out digit is put into many random batches drawn from
   the training pool; the spread (standard deviation over batches) of its logits and of its
   first BN layer's output is measured in train mode (batch statistics) and in eval mode
   (running statistics, exactly zero spread), for batch sizes 2 ... 256. A batch mean of B
   examples has a standard error proportional to 1/sqrt(B), so the spread should fall with
   a log-log slope near -1/2.

The model is the MLP of Ioffe & Szegedy (2015), section 4.1: three hidden layers of 100
units, BN after each hidden Linear, before the activation (the blog's placement). ReLU units
and Adam by default. The sign of the effect depends on the setup: with the paper's sigmoid
units (``--activation sigmoid --epochs 60``, 5 seeds, plain and bn) BN *widened* the final gap
by 2.8 pp [2.0, 3.7] (95% CI; 1.8 [0.8, 2.8] at equal training accuracy), where with ReLU
units it narrows it.

References:
    S. Ioffe, C. Szegedy, "Batch Normalization: Accelerating Deep Network Training by
    Reducing Internal Covariate Shift", ICML 2015 (arXiv:1502.03167), sections 3.4 and 4.1.
    P. Luo et al., "Towards Understanding Regularization in Batch Normalization", ICLR 2019.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats
from torch import Tensor, nn

from bnlab.config import IntList, StrList
from bnlab.data import batch_indices
from bnlab.experiments import common
from bnlab.experiments.common import derived_generator, derived_seed
from bnlab.models.mlp import forward_with_bn, mlp
from bnlab.report.html import Claim, Section, Table, Verdict
from bnlab.runs import append_jsonl
from bnlab.stats import Estimate, Paired, format_ci, mean_ci, paired

__all__ = [
    "Config",
    "Result",
    "probe_batch_dependence",
    "report",
    "run",
    "summarize",
    "train_variant",
]

EXPERIMENT = "regularization"
VARIANTS = ("plain", "bn", "bn-full")
# Fixed, not --seed: every seed (and the running-stats experiment) holds out the same digits,
# so the held-out accuracy of different seeds and variants is measured on one set.
SPLIT_SEED = 1502_03167  # the BN paper's arXiv number
CI_LEVEL = 0.95
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
BOOTSTRAP_RESAMPLES = 2000  # percentile-bootstrap CIs of a spread: stable to ~0.01 relative
# (plain - bn, bn-full - bn, plain - bn-full): positive = the second one has the smaller gap.
COMPARISONS = (
    ("plain", "bn", "BN's total effect"),
    ("bn-full", "bn", "batch noise (BN with vs without mini-batch statistics)"),
    ("plain", "bn-full", "normalization without batch noise"),
)

Log = Callable[[str], None]


@dataclass(frozen=True)
class Config:
    """Does BN regularize (blog claim C6)? Train-test gap with/without BN, and batch noise.

    Defaults: 10 seeds x (plain, bn, bn-full) on 1,000 MNIST digits for 40 epochs, plus the
    batch-dependence probe; about 3-5 minutes on a 2-core CPU.
    """

    variants: StrList = VARIANTS
    """networks to train: plain (no BN), bn (BN with mini-batch statistics), bn-full (BN with
    statistics of the whole training subset at every step: normalization without batch noise).
    plain and bn are required (claim C6 compares them)"""
    seeds: IntList = tuple(range(10))
    """one run of every variant per seed (subset, init, batch order); 10 give a paired-t 95%
    CI about 1/3 as wide as 3 seeds do"""
    train_size: int = 1000
    """training digits per seed (drawn from the training pool): small, so every network can fit
    it perfectly and overfit"""
    holdout: int = 5000
    """held-out digits (the same for every seed): enough that one digit is 0.02 pp"""
    epochs: int = 40
    """passes over the training subset: plain needs ~20 to fit it, BN ~5; 40 leave both time to
    settle at (near) 100% training accuracy"""
    batch_size: int = 50
    """mini-batch size of training; BN's batch statistics come from this many digits"""
    lr: float = 1e-3
    """Adam learning rate (default betas): the common default, the same for every variant"""
    hidden: IntList = (100, 100, 100)
    """hidden layer widths: the MLP of Ioffe & Szegedy 2015, section 4.1"""
    activation: Literal["relu", "sigmoid"] = "relu"
    """hidden unit; sigmoid is the paper's choice (with it BN widened the gap in a 5-seed check:
    the sign of C6 depends on the setup)"""
    match_train_acc: float = 0.99
    """training accuracy at which the gaps are also compared (equal fit, not equal epochs)"""
    probe_batch_sizes: IntList = (2, 4, 8, 16, 32, 64, 128, 256)
    """batch sizes of the batch-dependence probe: powers of two for the log-log slope"""
    probe_batches: int = 200
    """random batches per batch size around the fixed digit; 200 give the spread to ~5%"""
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    """which dataset"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, ~/.cache/bnlab, system dirs, download)"""
    out: Path | None = None
    """run directory (default: runs/regularization-<date>-<time>)"""


Result = common.RunResult  # run_dir, records, summary (see summarize()), seconds


# ---- training ---------------------------------------------------------------------------------


def train_variant(
    variant: str,
    seed: int,
    cfg: Config,
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    on_step: Callable[[], None] = lambda: None,
    on_epoch: Callable[[dict[str, Any]], None] = lambda _r: None,
) -> nn.Sequential:
    """Train one (variant, seed) network; ``on_epoch`` gets each epoch's record.

    Args:
        x_train: (n, 784) float in [-1, 1]; y_train: (n,). x_test, y_test: the held-out set.
    """
    torch.manual_seed(derived_seed(seed, "init"))  # same Linear weights for every variant
    model = mlp((common.PIXELS, *cfg.hidden, common.CLASSES), cfg.activation, bn=variant != "plain")
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    n = x_train.shape[0]
    for epoch in range(cfg.epochs):
        model.train()
        order = batch_indices(n, cfg.batch_size, derived_generator(seed, "order", epoch))
        batch_loss = torch.zeros(())
        for idx in order:  # idx: (B,) rows of the training subset
            # bn-full: statistics over all n digits, loss on the batch's rows (no batch noise)
            logits = model(x_train)[idx] if variant == "bn-full" else model(x_train[idx])  # (B, 10)
            loss = F.cross_entropy(logits, y_train[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            batch_loss += loss.detach()
            on_step()
        train_acc, train_loss = common.accuracy_and_loss(model, x_train, y_train)
        test_acc, test_loss = common.accuracy_and_loss(model, x_test, y_test)
        if not math.isfinite(train_loss):
            raise ValueError(
                f"{variant} (seed {seed}): the loss became non-finite in epoch {epoch + 1}; "
                f"use a smaller --lr than {cfg.lr}"
            )
        on_epoch(
            {
                "kind": "epoch",
                "seed": seed,
                "variant": variant,
                "epoch": epoch + 1,
                "batch_loss": batch_loss.item() / len(order),  # train mode, during the epoch
                "train_acc": train_acc,
                "test_acc": test_acc,
                "train_loss": train_loss,
                "test_loss": test_loss,
                "acc_gap_pp": 100 * (train_acc - test_acc),
                "loss_gap": test_loss - train_loss,
            }
        )
    return model


# ---- the batch-dependence probe ---------------------------------------------------------------


def _rms_std(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Root mean square over the last remaining axis of the std along ``axis``."""
    return np.sqrt((np.std(x, axis=axis, ddof=1) ** 2).mean(axis=-1))


def _spread_ci(outs: np.ndarray, seed: int) -> tuple[float, float]:
    """Percentile-bootstrap CI (over batches) of the RMS spread of (K, C) outputs."""
    if outs.shape[0] < 3 or not np.any(np.std(outs, axis=0) > 0):
        value = float(_rms_std(outs.T)) if outs.shape[0] > 1 else math.nan
        return value, value
    res = stats.bootstrap(
        (outs,),
        lambda x, axis: _rms_std(np.moveaxis(x, axis, -1), axis=-1),
        axis=0,
        confidence_level=CI_LEVEL,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@torch.no_grad()
def probe_batch_dependence(
    model: nn.Sequential,
    x0: Tensor,
    pool: Tensor,
    batch_sizes: tuple[int, ...],
    n_batches: int,
    generator: torch.Generator,
) -> list[dict[str, Any]]:
    """The spread of one example's outputs over random batches, train vs eval mode.

    For each B, ``n_batches`` batches are made of ``x0`` (row 0) and B - 1 distinct random
    rows of ``pool``; each batch goes through a train-mode and an eval-mode copy of ``model``
    (copies: train mode would move the running statistics). Recorded per B: the standard
    deviation over batches of x0's logits and of its first BN layer's output, as the root mean
    square over units, in both modes; a bootstrap CI of the train-mode logit spread; the
    fraction of batches in which x0's predicted class differs from its eval-mode prediction.

    Args:
        x0: (784,) the fixed example. pool: (P, 784), where the others come from; both float
            in [-1, 1].
    """
    train_model = copy.deepcopy(model).train()
    eval_model = copy.deepcopy(model).eval()
    reference = eval_model(x0[None]).argmax(1).item()
    records = []
    for b in batch_sizes:
        logits: dict[str, list[Tensor]] = {"train": [], "eval": []}  # each: K x (10,)
        bn1: dict[str, list[Tensor]] = {"train": [], "eval": []}  # each: K x (C,)
        for _ in range(n_batches):
            others = pool[torch.randperm(pool.shape[0], generator=generator)[: b - 1]]
            batch = torch.cat([x0[None], others])  # (B, 784)
            for mode, net in (("train", train_model), ("eval", eval_model)):
                out, io = forward_with_bn(net, batch)
                logits[mode].append(out[0])
                bn1[mode].append(io[0][1][0])
        lt = torch.stack(logits["train"]).double().numpy()  # (K, 10)
        le = torch.stack(logits["eval"]).double().numpy()
        bt = torch.stack(bn1["train"]).double().numpy()  # (K, C)
        be = torch.stack(bn1["eval"]).double().numpy()
        lo, hi = _spread_ci(lt, seed=b)
        records.append(
            {
                "kind": "probe",
                "batch_size": b,
                "batches": n_batches,
                "logit_std": float(_rms_std(lt.T)),
                "logit_std_lo": lo,
                "logit_std_hi": hi,
                "bn1_std": float(_rms_std(bt.T)),
                "logit_std_eval": float(_rms_std(le.T)),
                "bn1_std_eval": float(_rms_std(be.T)),
                "flip_rate": float((lt.argmax(1) != reference).mean()),
            }
        )
    return records


# ---- statistics -------------------------------------------------------------------------------


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


def _fit_slope(bs: list[float], ys: list[float]) -> dict[str, float]:
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
    :class:`~bnlab.stats.Estimate` per quantity), ``comparisons`` (a, b, meaning, quantity and
    the :class:`~bnlab.stats.Paired` difference a - b), ``probe`` (records and slopes) and
    ``min_final_train_acc``.
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
    train_accs = [x for v in variants for x in per[v]["per_seed"]["train_acc"]]
    return {
        "seeds": seeds,
        "variants": per,
        "comparisons": comparisons,
        "probe": probe,
        "logit_slope": _fit_slope(bs, [r["logit_std"] for r in probe]),
        "bn1_slope": _fit_slope(bs, [r["bn1_std"] for r in probe]),
        "min_final_train_acc": min(train_accs, default=math.nan),
    }


# ---- figures ----------------------------------------------------------------------------------


def _plot_accuracy(records: list[dict[str, Any]], variants: list[str], path: Path) -> bytes:
    """Train (solid) and held-out (dashed) accuracy per variant, mean over seeds."""
    import matplotlib.pyplot as plt

    from bnlab.report.plots import curves_by_variant, save_figure

    fig, ax = plt.subplots(figsize=(7, 4))
    train = curves_by_variant(records, "train_acc")
    test = curves_by_variant(records, "test_acc")
    for k, v in enumerate(x for x in variants if x in train):
        color = f"C{k}"
        ep, vals = train[v]
        ax.plot(ep, 100 * vals.mean(0), color=color, lw=1.4, label=f"{v} train")
        ep, vals = test[v]
        ax.plot(ep, 100 * vals.mean(0), color=color, lw=1.4, ls="--", label=f"{v} held-out")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%), eval mode")
    ax.set_title("Accuracy on the training subset and held-out digits (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    return save_figure(fig, path)


def _plot_spread(summary: dict[str, Any], path: Path) -> bytes | None:
    """Spread of one digit's outputs vs batch size, log-log, with the 1/sqrt(B) guide."""
    import matplotlib.pyplot as plt

    from bnlab.report.plots import save_figure

    probe = summary["probe"]
    if not probe:
        return None
    b = np.array([r["batch_size"] for r in probe], dtype=float)
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    lt = np.array([r["logit_std"] for r in probe])
    err = np.array(
        [
            [r["logit_std"] - r["logit_std_lo"] for r in probe],
            [r["logit_std_hi"] - r["logit_std"] for r in probe],
        ]
    )
    slope = summary["logit_slope"]["slope"]
    ax.errorbar(
        b,
        lt,
        yerr=np.clip(err, 0, None),
        marker="o",
        ms=4,
        lw=1.4,
        capsize=2,
        label=f"logits, train mode (slope {slope:.2f})",
    )
    bn1 = np.array([r["bn1_std"] for r in probe])
    ax.plot(
        b,
        bn1,
        marker="s",
        ms=4,
        lw=1.4,
        label=f"first BN output, train mode (slope {summary['bn1_slope']['slope']:.2f})",
    )
    ref = b >= FIT_MIN_BATCH
    if ref.any():
        anchor = lt[ref][0] * math.sqrt(b[ref][0])
        ax.plot(b, anchor / np.sqrt(b), color="gray", ls=":", label="∝ 1/sqrt(B)")
    eval_max = max(max(r["logit_std_eval"], r["bn1_std_eval"]) for r in probe)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("std over batches (RMS over units)")
    ax.set_title(f"One digit in {probe[0]['batches']} random batches per B")
    ax.text(
        0.02,
        0.03,
        f"eval mode: std = {eval_max:.3g} at every B",
        transform=ax.transAxes,
        fontsize=9,
    )
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def make_figures(run_dir: Path, records: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """gap_acc.png, gap_loss.png, accuracy.png, batch_spread.png from the run's records."""
    from bnlab.report.plots import plot_metric

    variants = list(config["variants"])
    epochs = [r for r in records if r.get("kind") == "epoch"]
    plot_metric(
        epochs,
        "acc_gap_pp",
        "Train - held-out accuracy",
        "gap (percentage points)",
        run_dir / "gap_acc.png",
        variants,
    )
    plot_metric(
        epochs,
        "loss_gap",
        "Held-out - train loss",
        "gap (cross-entropy)",
        run_dir / "gap_loss.png",
        variants,
    )
    _plot_accuracy(epochs, variants, run_dir / "accuracy.png")
    _plot_spread(summarize(records, config), run_dir / "batch_spread.png")


# ---- report -----------------------------------------------------------------------------------


def _pct(e: Estimate) -> Estimate:
    return Estimate(100 * e.mean, 100 * e.lo, 100 * e.hi, e.n)


def _diff_text(d: Paired) -> str:
    if not math.isfinite(d.diff.mean):
        return "-"
    p = f", p = {d.p_value:.3g}" if math.isfinite(d.p_value) else ""
    return f"{format_ci(d.diff, '{:+.2f}', ' pp')} (95% CI, {d.n} seeds{p})"


def _comparison(s: dict[str, Any], a: str, b: str, quantity: str) -> Paired | None:
    """The paired comparison a - b of ``quantity`` in the summary ``s``, if it was made."""
    return next(
        (
            c["paired"]
            for c in s["comparisons"]
            if (c["a"], c["b"], c["quantity"]) == (a, b, quantity)
        ),
        None,
    )


def report(run_dir: str | Path) -> list[Section]:
    """The report's sections, from the run directory's files only (never trains).

    Figures missing from the run directory are drawn again from metrics.jsonl.
    """
    run_dir, meta, records = common.read_run(run_dir)
    config = meta["config"]
    if any(not (run_dir / n).exists() for n in ("gap_acc.png", "accuracy.png")):
        make_figures(run_dir, records, config)
    s = summarize(records, config)
    sections = [_c6_section(run_dir, meta, s)]
    if s["probe"]:
        sections.append(_probe_section(run_dir, s))
    return sections


def _c6_section(run_dir: Path, meta: dict[str, Any], s: dict[str, Any]) -> Section:
    """Claims, per-variant and paired tables, gap figures."""
    config = meta["config"]
    per = s["variants"]
    n_seeds = len(s["seeds"])
    match_pct = 100 * float(config["match_train_acc"])

    lowest = {v: min(per[v]["per_seed"]["train_acc"], default=math.nan) for v in per}
    unfit = ", ".join(f"{v} {100 * a:.1f}%" for v, a in lowest.items() if not a >= FIT_ACC)
    fit_note = (
        f"Every network fits its training subset by the end (lowest final train accuracy "
        f"{100 * s['min_final_train_acc']:.1f}%), so the final gap compares generalization at "
        f"equal (perfect) fit, not fitting speed."
        if not unfit
        else f"Not every network fits its training subset by the end in eval mode (lowest "
        f"final train accuracy: {unfit}), so the final gap also holds some of the difference "
        f"in fit; the gap at equal training accuracy does not (or train longer: --epochs). A "
        f"BN network can fit its batches in train mode and still miss a few training digits "
        f"in eval mode, where its running statistics stand in for the batch's."
    )
    claims = []
    main = _comparison(s, "plain", "bn", "final gap")
    if main is not None:
        claims.append(
            Claim(
                "C6",
                "BN regularizes.",
                f"reduction of the final train - held-out accuracy gap by BN (plain - bn), "
                f"paired over seeds, {config['train_size']:,} training digits",
                _diff_text(main),
                c6_verdict(main.diff.lo, main.diff.hi),
                f"holds if the 95% CI lies above 0; does not hold if it lies below "
                f"{MIN_EFFECT_PP} pp (no reduction of practical size); else inconclusive",
            )
        )
    noise = _comparison(s, "bn-full", "bn", "final gap")
    if noise is not None:
        claims.append(
            Claim(
                "C6 (cause)",
                "BN regularizes because an example's output depends on the other examples in "
                "its batch.",
                "gap reduction due to mini-batch statistics: bn-full (statistics of the whole "
                "training subset) - bn, paired over seeds",
                _diff_text(noise),
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
        claims.append(
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

    rows = []
    for v in config["variants"]:
        p = per[v]
        rows.append(
            [
                v,
                format_ci(_pct(p["train_acc"]), "{:.1f}", "%"),
                format_ci(_pct(p["test_acc"]), "{:.2f}", "%"),
                format_ci(p["gap"], "{:.2f}", " pp"),
                format_ci(p["loss_gap"], "{:.3f}"),
                f"{format_ci(p['matched_epoch'], '{:.1f}')} ({p['reached_match']}/{n_seeds})",
                format_ci(p["matched_gap"], "{:.2f}", " pp"),
            ]
        )
    per_variant = Table(
        "Per variant (mean [95% CI] over seeds)",
        [
            "variant",
            "final train acc",
            "final held-out acc",
            "final acc gap",
            "final loss gap",
            f"epoch reaching {match_pct:g}% train acc (seeds)",
            "acc gap there",
        ],
        rows,
        f"final = mean over the last {min(FINAL_WINDOW, config['epochs'])} of "
        f"{config['epochs']} epochs; gap = train "
        f"- held-out accuracy (percentage points), loss gap = held-out - train cross-entropy; "
        f"all in eval mode.",
    )
    paired = Table(
        "Paired comparisons (same seed = same subset, init and batch order)",
        ["a - b", "what it isolates", "quantity", "difference (a - b)"],
        [
            [f"{c['a']} - {c['b']}", c["meaning"], c["quantity"], _diff_text(c["paired"])]
            for c in s["comparisons"]
        ],
        "positive = b has the smaller gap; paired Student t interval and paired t-test.",
    )
    lead = (
        f"Setup: {meta.get('data', '')}. Each seed draws {config['train_size']:,} training digits "
        f"from the pool; {config['holdout']:,} held-out digits, the same for every seed. MLP "
        f"784-{'-'.join(map(str, config['hidden']))}-10, {config['activation']} units, BN after "
        f"each hidden Linear (bn, bn-full); Adam lr {config['lr']:g}, batch "
        f"{config['batch_size']}, {config['epochs']} epochs, {n_seeds} seeds.\n\n"
        "What is compared: BN both speeds up fitting and (the claim) regularizes. To keep "
        "the two apart the gap is read where fitting speed no longer matters: at the end of "
        f"training, when the networks fit their training set, and at the first epoch each "
        f"network reaches {match_pct:g}% training accuracy. bn-full normalizes with "
        "statistics of the whole training subset at every step (the loss still on the "
        "mini-batch), which keeps BN's normalization and removes its batch noise: "
        "bn-full - bn is the noise's share, plain - bn-full the normalization's.\n\n"
        f"{fit_note}"
    )
    if config["activation"] == "relu":
        lead += (
            " The verdict is for this setup only: in a 5-seed check with sigmoid units "
            "(--activation sigmoid --epochs 60) BN widened the gap instead."
        )
    return Section(
        "C6: does batch norm regularize?",
        lead,
        claims=claims,
        tables=[per_variant, paired],
        figures=common.figure(
            run_dir,
            "gap_acc.png",
            "Accuracy gap",
            "train - held-out accuracy per epoch; line = mean, band = min..max over seeds.",
        )
        + common.figure(run_dir, "gap_loss.png", "Loss gap", "held-out - train cross-entropy.")
        + common.figure(
            run_dir, "accuracy.png", "Accuracy", "solid: training subset; dashed: held-out."
        ),
        anchor="c6",
    )


def _probe_section(run_dir: Path, s: dict[str, Any]) -> Section:
    """The batch-dependence probe: table of spreads, slopes, figure."""
    probe = s["probe"]
    ls, bs1 = s["logit_slope"], s["bn1_slope"]
    prows = [
        [
            str(r["batch_size"]),
            f"{r['logit_std']:.4f} [{r['logit_std_lo']:.4f}, {r['logit_std_hi']:.4f}]",
            f"{r['bn1_std']:.4f}",
            f"{r['logit_std_eval']:.3g}",
            f"{r['bn1_std_eval']:.3g}",
            f"{100 * r['flip_rate']:.1f}%",
        ]
        for r in probe
    ]
    ptable = Table(
        "Spread of one digit's outputs over random batches",
        [
            "B",
            "logit std, train [95% CI]",
            "BN-1 std, train",
            "logit std, eval",
            "BN-1 std, eval",
            "prediction flips",
        ],
        prows,
        "std over batches, root mean square over units (10 logits; first BN layer's "
        "channels); flips = batches in which the digit's predicted class differs from "
        "its eval-mode prediction.",
    )

    def slope_text(f: dict[str, float]) -> str:
        ci = f" [{f['lo']:.3f}, {f['hi']:.3f}]" if math.isfinite(f["lo"]) else ""
        return f"{f['slope']:.3f}{ci}"

    intro = (
        f"The network: seed {s['seeds'][0]}'s bn network after training. The digit: the "
        f"first held-out digit, placed in {probe[0]['batches']} random batches of B - 1 "
        "other digits from the training pool for every batch size B. In train mode BN "
        "normalizes with the batch's statistics, so the digit's outputs move with its "
        "batch mates; in eval mode BN uses the running statistics and the same batches "
        "give exactly the same outputs.\n\n"
        f"Log-log slope of the spread against B (fitted for B >= {FIT_MIN_BATCH}; 95% CI): "
        f"logits {slope_text(ls)}, first BN output {slope_text(bs1)}; a batch mean's "
        "standard error gives -0.5."
    )
    return Section(
        "Batch dependence: one digit in many batches",
        intro,
        tables=[ptable],
        figures=common.figure(
            run_dir,
            "batch_spread.png",
            "Spread vs batch size",
            "error bars: 95% bootstrap CI over batches.",
        ),
        anchor="batch-dependence",
    )


# ---- run --------------------------------------------------------------------------------------


def _check(cfg: Config) -> None:
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown:
        raise ValueError(
            f"unknown --variants {', '.join(unknown)}; choose from {', '.join(VARIANTS)}"
        )
    if "plain" not in cfg.variants or "bn" not in cfg.variants:
        raise ValueError("--variants must include plain and bn (the comparison of claim C6)")
    if len(set(cfg.variants)) != len(cfg.variants) or len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError("--variants and --seeds must not repeat a value")
    if not cfg.seeds:
        raise ValueError("--seeds: give at least one seed")
    if cfg.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {cfg.epochs}")
    if cfg.batch_size < 2:
        raise ValueError(
            f"--batch-size must be at least 2 (BN needs 2 values), got {cfg.batch_size}"
        )
    if cfg.train_size < cfg.batch_size:
        raise ValueError(
            f"--train-size {cfg.train_size} is smaller than one batch ({cfg.batch_size})"
        )
    if not cfg.hidden or min(cfg.hidden) < 1:
        raise ValueError(f"--hidden needs at least one positive width, got {cfg.hidden}")
    if not 0 < cfg.match_train_acc <= 1:
        raise ValueError(f"--match-train-acc must be in (0, 1], got {cfg.match_train_acc}")
    if not cfg.lr > 0:
        raise ValueError(f"--lr must be positive, got {cfg.lr}")
    if cfg.probe_batch_sizes and min(cfg.probe_batch_sizes) < 2:
        raise ValueError("--probe-batch-sizes must be at least 2 (BN needs 2 values per batch)")
    if cfg.probe_batches < 2:
        raise ValueError(f"--probe-batches must be at least 2 (a spread), got {cfg.probe_batches}")


@common.torch_threads(1)
def run(cfg: Config, log: Log = print) -> Result:
    """Train every (seed, variant), probe the batch dependence, write the run directory."""
    started = time.perf_counter()
    _check(cfg)
    # the pool: (P, 784) in [-1, 1], the same for every seed; each seed draws its subset
    x_pool, y_pool, x_test, y_test, what = common.train_test(
        cfg.dataset, cfg.data, cfg.holdout, SPLIT_SEED, log
    )
    pool_n = x_pool.shape[0]
    if cfg.train_size > pool_n:
        raise ValueError(f"--train-size {cfg.train_size} exceeds the training pool ({pool_n:,})")
    if cfg.probe_batch_sizes and max(cfg.probe_batch_sizes) > pool_n + 1:
        raise ValueError(f"--probe-batch-sizes: at most {pool_n + 1} (the pool and the digit)")
    run_dir, metrics = common.start_run(cfg.out, EXPERIMENT, cfg, data=what)
    steps = cfg.epochs * (cfg.train_size // cfg.batch_size)
    log(what)
    log(
        f"training {', '.join(cfg.variants)} x {len(cfg.seeds)} seed(s) on {cfg.train_size:,} "
        f"digits for {cfg.epochs} epochs; run dir {run_dir}"
    )
    bar = common.progress(steps * len(cfg.variants) * len(cfg.seeds))
    probe_model = None
    try:
        for seed in cfg.seeds:
            subset = torch.randperm(pool_n, generator=derived_generator(seed, "subset"))
            subset = subset[: cfg.train_size]
            x_train, y_train = x_pool[subset], y_pool[subset]  # (n, 784), (n,)
            for variant in cfg.variants:
                bar.set_description(f"seed {seed} {variant}")

                def on_epoch(r: dict[str, Any]) -> None:
                    append_jsonl(metrics, [r])
                    bar.set_postfix_str(f"gap {r['acc_gap_pp']:.1f} pp", refresh=False)

                model = train_variant(
                    variant,
                    seed,
                    cfg,
                    x_train,
                    y_train,
                    x_test,
                    y_test,
                    lambda: bar.update(1),
                    on_epoch,
                )
                if variant == "bn" and probe_model is None:
                    probe_model = model
    finally:
        bar.close()
    if cfg.probe_batch_sizes and probe_model is not None:
        log(
            f"probing batch dependence: {len(cfg.probe_batch_sizes)} batch sizes x "
            f"{cfg.probe_batches} batches"
        )
        probe = probe_batch_dependence(
            probe_model,
            x_test[0],
            x_pool,
            tuple(cfg.probe_batch_sizes),
            cfg.probe_batches,
            derived_generator(cfg.seeds[0], "probe"),
        )
        append_jsonl(metrics, probe)
    return common.finish_run(
        run_dir,
        cfg,
        "bnlab regularization: does BN regularize? (claim C6)",
        started,
        log,
        make_figures,
        summarize,
        report,
        result_line,
    )


def result_line(summary: dict[str, Any], seconds: float, run_dir: Path) -> str:
    """The one line printed at the end of a run."""
    per = summary["variants"]
    gaps = ", ".join(f"{v} {per[v]['gap'].mean:.2f}" for v in per)
    main = _comparison(summary, "plain", "bn", "final gap")
    assert main is not None, "plain and bn are required variants"
    text = (
        f"C6 {c6_verdict(main.diff.lo, main.diff.hi)}: final train-test gap (pp) {gaps}; "
        f"plain - bn {_diff_text(main)}"
    )
    noise = _comparison(summary, "bn-full", "bn", "final gap")
    if noise is not None:
        text += f"; bn-full - bn {noise.diff.mean:+.2f} pp"
    if summary["probe"]:
        text += f"; spread ~ B^{summary['logit_slope']['slope']:.2f}"
    return f"{text} ({seconds / 60:.1f} min, {run_dir / 'report.html'})"
