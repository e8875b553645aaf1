"""`bnlab gan-ablation`: which of notebook 2's differences made its BN GAN fail?

Notebook 2 ("Init&BN, fail") differs from notebook 3 ("Init&BN") in several ways at once: BN
on G's output layer, BN on D's first layer, no mode switching, an unshuffled loader. Both keep
BN on D's single-unit logit. This experiment trains a full factorial design over

    logit_bn  BN on D's logit (BatchNorm1d(1) before the Sigmoid)        off / on
    g_out_bn  BN on G's output layer (before the Tanh)                   off / on
    d_in_bn   BN on D's first layer                                      off / on
    joint     D scores real and fake as one concatenated batch           off / on
    modes     none (always train, nb 2) / notebook3 (its exact calls) / tidy

(2 x 2 x 2 x 2 x 3 = 48 cells; every cell keeps BN after G's Linear 1-2 and D's Linear 2, as
both notebooks do), plus notebook 2 and notebook 3 exactly as run (unshuffled / shuffled) to
measure shuffling. Every cell is a GAN variant trained by ``bnlab gan``'s machinery (same
batches and z per seed, processes, resume per cell), and scored after its last epoch with the
metric classifier, with G in eval and in train mode (the evaluation factor costs no training).

Analysis: log Frechet distance (FD is multiplicative: a broken GAN is 10x worse, not +x) is
fitted with main effects and all two-way interactions by least squares; higher-order
interactions pool into the error, whose residual variance gives t confidence intervals.
Effects are reported as FD ratios. The cell means also give a plain path from notebook 2 to
notebook 3: which single change repairs the broken run, and which single change breaks the
working one.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from bnlab.config import IntList
from bnlab.experiments import gan
from bnlab.models.gan import Variant
from bnlab.report.html import Figure, Section, Table
from bnlab.runs import atomic_write_json, read_jsonl

__all__ = ["AblationConfig", "Cell", "design", "effects", "report", "run"]

TWO_LEVEL = ("logit_bn", "g_out_bn", "d_in_bn", "joint")
MODES = ("none", "notebook3", "tidy")
FACTOR_TEXT = {
    "logit_bn": "BN on D's logit",
    "g_out_bn": "BN on G's output",
    "d_in_bn": "BN on D's first layer",
    "joint": "real+fake in one D batch",
    "modes": "mode switching",
}


@dataclass(frozen=True)
class AblationConfig:
    """Isolate the cause of notebook 2's failure: full factorial over BN placement, mode
    switching and real/fake batching, several seeds, scored with the GAN metrics.

    Default budget: 50 cells x 2 seeds x 20 epochs on the 10k MNIST split, about 30 minutes on
    a 2-core CPU. The full-scale version (60k train split, 200 epochs, 5 seeds) costs about
    50 x 5 x 200 x 600 steps: ~100 CPU-hours here, or a few GPU-hours.
    """

    seeds: IntList = (0, 1)
    """seeds: each a full replicate of the design (paired across cells)"""
    epochs: int = 20
    """epochs per cell: long enough for a working GAN to draw digits and a broken one to show"""
    dataset: Literal["mnist", "fashion-mnist"] = "mnist"
    """which dataset"""
    data: Path | None = None
    """directory with the IDX files (else $BNLAB_DATA, cache, system dirs, download)"""
    subset: int = 0
    """train on the first N images only (0 = the whole split); for quick checks"""
    metric_samples: int = 5_000
    """samples scored per cell and G mode (5,000 keeps scoring a small share of the budget)"""
    cells: Literal["all", "factorial", "notebooks"] = "all"
    """which cells: the 48-cell factorial plus the two notebooks (all), or one part"""
    out: Path | None = None
    """run directory (default runs/gan-ablation-<date>-<time>)"""
    jobs: int = 0
    """parallel training processes; 0 = one per CPU core"""
    resume: bool = False
    """continue an interrupted ablation (per cell, from its last checkpoint)"""
    checkpoint_every: int = 5
    """epochs between checkpoints of a cell"""


@dataclass(frozen=True)
class Cell:
    """One cell of the design: factor levels -> a GAN variant."""

    logit_bn: bool
    g_out_bn: bool
    d_in_bn: bool
    joint: bool
    modes: str
    shuffle: bool = True
    label: str = ""  # set for the notebooks' own configurations

    @property
    def name(self) -> str:
        if self.label:
            return self.label
        bits = "".join("1" if getattr(self, f) else "0" for f in TWO_LEVEL)
        return f"f{bits}-{self.modes}"

    def variant(self) -> Variant:
        return Variant(
            self.name,
            init="he-xavier",
            g_norm=(True, True, self.g_out_bn),
            d_norm=(self.d_in_bn, True, self.logit_bn),
            modes=self.modes,  # type: ignore[arg-type]
            joint_real_fake=self.joint,
            shuffle=self.shuffle,
        )

    def spec(self) -> str:
        v = self.variant()

        def bits(f: tuple[bool, ...]) -> str:
            return "".join("1" if x else "0" for x in f)

        return (
            f"{v.name}=init:g_norm={bits(v.g_norm)}:d_norm={bits(v.d_norm)}:modes={v.modes}"
            f":joint_real_fake={int(v.joint_real_fake)}:shuffle={int(v.shuffle)}"
        )


NOTEBOOK2 = Cell(True, True, True, False, "none", shuffle=False, label="notebook2")
NOTEBOOK3 = Cell(True, False, False, False, "notebook3", shuffle=True, label="notebook3")
NOTEBOOK3_UNSHUFFLED = dataclasses.replace(NOTEBOOK3, shuffle=False, label="notebook3-unshuffled")
NOTEBOOK2_SHUFFLED = dataclasses.replace(NOTEBOOK2, shuffle=True, label="notebook2-shuffled")


def design(which: str = "all") -> list[Cell]:
    cells = []
    if which in ("all", "factorial"):
        for logit, g_out, d_in, joint in itertools.product([False, True], repeat=4):
            for modes in MODES:
                cells.append(Cell(logit, g_out, d_in, joint, modes))
    if which in ("all", "notebooks"):
        cells += [NOTEBOOK2, NOTEBOOK2_SHUFFLED, NOTEBOOK3, NOTEBOOK3_UNSHUFFLED]
    return cells


def run(cfg: AblationConfig, log: Callable[[str], None] = print) -> gan.GanResult:
    cells = design(cfg.cells)
    gan_cfg = gan.GanConfig(
        variants=tuple(c.spec() for c in cells),
        epochs=cfg.epochs,
        dataset=cfg.dataset,
        data=cfg.data,
        seeds=cfg.seeds,
        subset=cfg.subset,
        metrics=True,
        metrics_at="last",
        metric_samples=cfg.metric_samples,
        sample_mode="both",
        sample_every=0,  # sample grids at epoch 1 and the last only
        checkpoint_every=cfg.checkpoint_every,
        jobs=cfg.jobs,
        out=cfg.out,
        resume=cfg.resume,
    )
    started = time.perf_counter()
    meta = {
        "ablation": {
            "config": dataclasses.asdict(cfg) | {"data": str(cfg.data), "out": str(cfg.out)},
            "cells": {c.name: dataclasses.asdict(c) for c in cells},
        }
    }
    result = gan.run(gan_cfg, log=log, experiment="gan-ablation", extra=meta)
    from bnlab.report import build_report

    path = build_report([result.run_dir])
    summ = json.loads((result.run_dir / "summary.json").read_text())
    top = summ["ranking"][0] if summ["ranking"] else None
    minutes = (time.perf_counter() - started) / 60
    if top:
        log(
            f"gan-ablation: largest effect on FD: {top['factor']} (x{top['ratio']:.2f} "
            f"[{top['lo']:.2f}, {top['hi']:.2f}]); {minutes:.1f} min; open {path}"
        )
    else:
        log(f"gan-ablation: no factorial cells, no effects; {minutes:.1f} min; open {path}")
    return result


# ---- analysis --------------------------------------------------------------------------------


def _cells_and_scores(
    run_dir: Path, key: str
) -> tuple[dict[str, Cell], dict[str, dict[int, float]]]:
    cfg = json.loads((run_dir / "config.json").read_text())
    cells = {name: Cell(**d) for name, d in cfg["ablation"]["cells"].items()}
    scores: dict[str, dict[int, float]] = defaultdict(dict)
    last: dict[tuple[str, int], int] = {}
    for r in read_jsonl(run_dir / "metrics.jsonl"):
        if "event" in r or r.get(key) is None or r["variant"] not in cells:
            continue
        k = (r["variant"], r["seed"])
        if r["epoch"] >= last.get(k, -1):
            last[k] = r["epoch"]
            scores[r["variant"]][r["seed"]] = float(r[key])
    return cells, dict(scores)


def _columns(cell: Cell) -> dict[str, float]:
    """Regressors: sum-coded main effects (two-level factors -1/+1; modes as two contrasts
    with none = (-1, -1)) and all two-way interactions. Sum coding makes the intercept the
    grand mean; reported effects are contrasts of predictions, so they do not depend on it."""
    main: dict[str, float] = {f: 1.0 if getattr(cell, f) else -1.0 for f in TWO_LEVEL}
    m1, m2 = {"none": (-1.0, -1.0), "notebook3": (1.0, 0.0), "tidy": (0.0, 1.0)}[cell.modes]
    main["m1"], main["m2"] = m1, m2
    cols = dict(main)
    for a, b in itertools.combinations(TWO_LEVEL, 2):
        cols[f"{a}*{b}"] = main[a] * main[b]
    for a in TWO_LEVEL:
        cols[f"{a}*m1"], cols[f"{a}*m2"] = main[a] * m1, main[a] * m2
    return cols


def _contrasts() -> dict[str, np.ndarray]:
    """Each reported effect as a difference of mean design rows over the factorial grid.

    - a two-level factor: mean prediction with it on minus off (all else averaged);
    - modes:<m>: mean prediction at mode m minus at modes none;
    - a x b: the effect of a when b is on minus when b is off (a ratio of ratios);
    - a x modes:<m>: the effect of a under mode m minus under modes none.
    """
    grid = [c for c in design("factorial")]
    rows = {c: np.array([1.0, *_columns(c).values()]) for c in grid}

    def mean(**levels: Any) -> np.ndarray:
        sel = [r for c, r in rows.items() if all(getattr(c, k) == v for k, v in levels.items())]
        return np.mean(sel, axis=0)

    out: dict[str, np.ndarray] = {}
    for f in TWO_LEVEL:
        out[f] = mean(**{f: True}) - mean(**{f: False})
    for m in ("notebook3", "tidy"):
        out[f"modes:{m}"] = mean(modes=m) - mean(modes="none")
    for a, b in itertools.combinations(TWO_LEVEL, 2):
        out[f"{a} x {b}"] = (mean(**{a: True, b: True}) - mean(**{a: False, b: True})) - (
            mean(**{a: True, b: False}) - mean(**{a: False, b: False})
        )
    for a in TWO_LEVEL:
        for m in ("notebook3", "tidy"):
            out[f"{a} x modes:{m}"] = (mean(**{a: True}, modes=m) - mean(**{a: False}, modes=m)) - (
                mean(**{a: True}, modes="none") - mean(**{a: False}, modes="none")
            )
    return out


def effects(
    cells: dict[str, Cell], scores: dict[str, dict[int, float]], floor: float = 1e-6
) -> list[dict[str, Any]]:
    """Least squares on log(score) over the factorial cells and seeds; one row per effect.

    ``ratio`` is the multiplicative change of the score: exp of the contrast in
    :func:`_contrasts` (for an interaction, a ratio of ratios). The 95% CI uses the residual
    variance of the fit (higher-order interactions and seed noise).
    """
    rows, y = [], []
    for name, cell in cells.items():
        if cell.label:  # the notebooks' own cells sit outside the factorial
            continue
        for value in scores.get(name, {}).values():
            if math.isfinite(value):
                rows.append([1.0, *_columns(cell).values()])
                y.append(math.log(max(value, floor)))
    if not rows:
        return []
    X, yv = np.asarray(rows), np.asarray(y)
    coef, *_ = np.linalg.lstsq(X, yv, rcond=None)
    dof = len(yv) - int(np.linalg.matrix_rank(X))
    resid = yv - X @ coef
    sigma2 = float(resid @ resid) / dof if dof > 0 else math.nan
    cov = sigma2 * np.linalg.pinv(X.T @ X)
    t = float(sps.t.ppf(0.975, dof)) if dof > 0 else math.nan
    out = []
    for term, L in _contrasts().items():
        est = float(L @ coef)
        se = math.sqrt(max(float(L @ cov @ L), 0.0)) if math.isfinite(sigma2) else math.nan
        ok = math.isfinite(se) and se > 0
        out.append(
            {
                "term": term,
                "log_effect": est,
                "ratio": math.exp(est),
                "lo": math.exp(est - t * se) if ok else math.nan,
                "hi": math.exp(est + t * se) if ok else math.nan,
                "p": float(2 * sps.t.sf(abs(est / se), dof)) if ok else math.nan,
                "dof": int(dof),
            }
        )
    return out


def _cell_mean(scores: dict[str, dict[int, float]], name: str) -> float:
    vals = [v for v in scores.get(name, {}).values() if math.isfinite(v)]
    return float(np.exp(np.mean(np.log(np.maximum(vals, 1e-6))))) if vals else math.nan


def _find(cells: dict[str, Cell], **levels: Any) -> str | None:
    for name, c in cells.items():
        if not c.label and all(getattr(c, k) == v for k, v in levels.items()):
            return name
    return None


def _paths(cells: dict[str, Cell], scores: dict[str, dict[int, float]]) -> list[list[str]]:
    """Single changes from notebook 2's placement/modes towards notebook 3's, and back."""
    nb2 = dict(logit_bn=True, g_out_bn=True, d_in_bn=True, joint=False, modes="none")
    nb3 = dict(logit_bn=True, g_out_bn=False, d_in_bn=False, joint=False, modes="notebook3")
    rows = []
    for start, target, label in (
        (nb2, nb3, "from notebook 2's setup"),
        (nb3, nb2, "from notebook 3's setup"),
    ):
        base = _find(cells, **start)
        if base is None:
            continue
        b = _cell_mean(scores, base)
        rows.append([label, "(as is)", f"{b:.3g}", "1.00"])
        for factor in ("g_out_bn", "d_in_bn", "modes", "logit_bn", "joint"):
            changed = dict(start)
            if factor in ("logit_bn", "joint"):
                changed[factor] = not start[factor]
            elif start[factor] == target[factor]:
                continue
            else:
                changed[factor] = target[factor]
            name = _find(cells, **changed)
            if name is None:
                continue
            v = _cell_mean(scores, name)
            what = f"{FACTOR_TEXT[factor]} -> {changed[factor]}"
            rows.append([label, what, f"{v:.3g}", f"{v / b:.2f}" if b else "-"])
    for nb, other in ((NOTEBOOK2, NOTEBOOK2_SHUFFLED), (NOTEBOOK3, NOTEBOOK3_UNSHUFFLED)):
        a, b = _cell_mean(scores, nb.label), _cell_mean(scores, other.label)
        if math.isfinite(a) and math.isfinite(b):
            rows.append(
                [f"{nb.label} as run", f"shuffle -> {other.shuffle}", f"{b:.3g}", f"{b / a:.2f}"]
            )
    return rows


PLACEMENT = ("logit_bn", "g_out_bn", "d_in_bn")


def _repairs(cells: dict[str, Cell], scores: dict[str, dict[int, float]]) -> list[list[str]]:
    """Notebook 2's placement repaired by every subset of removals, without mode switching:
    which BN layers must go for the GAN to work when both nets always train?"""
    rows = []
    nb2 = _cell_mean(
        scores,
        _find(cells, logit_bn=True, g_out_bn=True, d_in_bn=True, joint=False, modes="none") or "",
    )
    for k in range(len(PLACEMENT) + 1):
        for removed in itertools.combinations(PLACEMENT, k):
            levels = {f: f not in removed for f in PLACEMENT}
            name = _find(cells, **levels, joint=False, modes="none")
            if name is None:
                continue
            fd = _cell_mean(scores, name)
            what = ", ".join(FACTOR_TEXT[f] for f in removed) or "(none: notebook 2's placement)"
            rows.append([what, name, f"{fd:.3g}", f"{fd / nb2:.2f}" if nb2 else "-"])
    return rows


def _modes_once_fixed(
    cells: dict[str, Cell], scores: dict[str, dict[int, float]]
) -> list[dict[str, Any]]:
    """Mode switching where placement follows the DCGAN guideline (no BN on G's output, D's
    input or logit), paired over seeds: is it still needed?"""
    fixed = dict(logit_bn=False, g_out_bn=False, d_in_bn=False, joint=False)
    base = _find(cells, **fixed, modes="none")
    out = []
    for m in ("notebook3", "tidy"):
        other = _find(cells, **fixed, modes=m)
        if base is None or other is None:
            continue
        seeds = sorted(set(scores.get(base, {})) & set(scores.get(other, {})))
        d = [
            math.log(max(scores[other][s], 1e-6)) - math.log(max(scores[base][s], 1e-6))
            for s in seeds
        ]
        if len(d) >= 2:
            mean, sd = float(np.mean(d)), float(np.std(d, ddof=1))
            half = float(sps.t.ppf(0.975, len(d) - 1)) * sd / math.sqrt(len(d))
            out.append(
                {
                    "modes": m,
                    "ratio": math.exp(mean),
                    "lo": math.exp(mean - half),
                    "hi": math.exp(mean + half),
                    "n": len(d),
                }
            )
        elif d:
            out.append(
                {"modes": m, "ratio": math.exp(d[0]), "lo": math.nan, "hi": math.nan, "n": 1}
            )
    return out


def _conclusion(
    ranking: list[dict[str, Any]],
    terms: list[dict[str, Any]],
    modes_fixed: list[dict[str, Any]],
    paths: list[list[str]],
    repairs: list[list[str]] | None = None,
) -> str:
    def sig(e: dict[str, Any]) -> bool:
        return math.isfinite(e["lo"]) and (e["lo"] > 1 or e["hi"] < 1)

    parts = []
    strong = [e for e in ranking if sig(e)]
    if strong:
        top = strong[0]
        name = FACTOR_TEXT.get(top["factor"].split(":")[0], top["factor"])
        parts.append(
            f"The largest effect on the Frechet distance is {name} ({top['factor']})"
            f": FD x{top['ratio']:.2f} [{top['lo']:.2f}, {top['hi']:.2f}] (95% CI, on vs off or vs "
            "no switching, averaged over the other factors)."
        )
        others = [
            FACTOR_TEXT.get(e["factor"], e["factor"]) + f" (x{e['ratio']:.2f})" for e in strong[1:4]
        ]
        if others:
            parts.append("Also significant: " + ", ".join(others) + ".")
    else:
        parts.append(
            "No factor's main effect is distinguishable from noise at this budget "
            "(all 95% CIs include x1); run more seeds or epochs."
        )
    inter = sorted(
        (t for t in terms if " x " in t["term"] and sig(t)), key=lambda t: -abs(t["log_effect"])
    )
    if inter:
        t = inter[0]
        parts.append(
            f"The strongest interaction is {t['term']} (ratio of ratios "
            f"x{t['ratio']:.2f} [{t['lo']:.2f}, {t['hi']:.2f}]): one factor's effect "
            "depends on the other's level."
        )
    fixes = [r for r in paths if r[0] == "from notebook 2's setup" and r[1] != "(as is)"]
    if fixes:
        best = min(fixes, key=lambda r: float(r[3]))
        parts.append(
            f"Starting from notebook 2's setup, the single change that helps most is "
            f"'{best[1]}' (FD x{float(best[3]):.2f})."
        )
    if repairs:
        best = min(repairs, key=lambda r: float(r[2]))
        parts.append(
            f"Without mode switching, notebook 2 works best after removing {best[0]} "
            f"(FD {best[2]}, x{float(best[3]):.2f} of notebook 2's placement)."
        )
    by_name = {e["factor"]: e for e in ranking}
    dcgan = [by_name[f] for f in ("g_out_bn", "d_in_bn") if f in by_name]
    if dcgan:
        worse = [e for e in dcgan if math.isfinite(e["lo"]) and e["lo"] > 1]
        parts.append(
            "DCGAN guideline (no BN on G's output or D's input): "
            + "; ".join(f"{FACTOR_TEXT[e['factor']]} x{e['ratio']:.2f}" for e in dcgan)
            + (
                " - the data agree: each violation makes FD worse."
                if len(worse) == len(dcgan)
                else " - the data support it only partly at this budget."
                if worse
                else " - no measurable harm at this budget."
            )
        )
    for m in modes_fixed:
        if math.isfinite(m["lo"]):
            verdict = (
                "makes it worse"
                if m["lo"] > 1
                else "helps"
                if m["hi"] < 1
                else "makes no measurable difference"
            )
            parts.append(
                f"With DCGAN-style placement (no BN on G's output, D's input or logit), "
                f"switching modes as '{m['modes']}' vs never {verdict}: FD "
                f"x{m['ratio']:.2f} [{m['lo']:.2f}, {m['hi']:.2f}]."
            )
    return " ".join(parts)


def _ranking(terms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    main = [dict(t, factor=t["term"]) for t in terms if " x " not in t["term"]]
    return sorted(main, key=lambda t: -abs(t["log_effect"]))


def analyse(run_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"experiment": "gan-ablation", "responses": {}}
    for key in ("fd", "fd_train"):
        cells, scores = _cells_and_scores(run_dir, key)
        terms = effects(cells, scores)
        ranking = _ranking(terms)
        paths = _paths(cells, scores)
        repairs = _repairs(cells, scores)
        modes_fixed = _modes_once_fixed(cells, scores)
        out["responses"][key] = {
            "terms": terms,
            "ranking": ranking,
            "paths": paths,
            "repairs": repairs,
            "modes_fixed": modes_fixed,
            "cell_means": {n: _cell_mean(scores, n) for n in cells},
            "conclusion": _conclusion(ranking, terms, modes_fixed, paths, repairs),
        }
    out["ranking"] = out["responses"]["fd"]["ranking"]
    return out


def _mean_text(by_seed: dict[int, float]) -> str:
    vals = [v for v in by_seed.values() if math.isfinite(v)]
    return f"{np.mean(vals):.1f}" if vals else "-"


def _fmt_ratio(e: dict[str, Any]) -> str:
    if not math.isfinite(e["lo"]):
        return f"x{e['ratio']:.2f}"
    return f"x{e['ratio']:.2f} [{e['lo']:.2f}, {e['hi']:.2f}]"


def _effects_figure(ranking: list[dict[str, Any]], title: str, path: Path) -> bytes:
    import matplotlib.pyplot as plt

    from bnlab.report.plots import save_figure

    fig, ax = plt.subplots(figsize=(6.5, 0.45 * len(ranking) + 1))
    names = [
        FACTOR_TEXT.get(e["factor"].split(":")[0], e["factor"])
        + (f" ({e['factor'].split(':')[1]})" if ":" in e["factor"] else "")
        for e in ranking
    ]
    y = np.arange(len(ranking))[::-1]
    est = np.array([e["log_effect"] for e in ranking]) / math.log(10)
    lo = np.array([math.log10(e["lo"]) if math.isfinite(e["lo"]) else np.nan for e in ranking])
    hi = np.array([math.log10(e["hi"]) if math.isfinite(e["hi"]) else np.nan for e in ranking])
    ax.barh(y, est, color=["#c0392b" if v > 0 else "#2e86c1" for v in est], alpha=0.8)
    ax.errorbar(est, y, xerr=[est - lo, hi - est], fmt="none", color="k", capsize=3)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_yticks(y, names)
    ax.set_xlabel("log10 FD ratio (right = worse)")
    ax.set_title(title)
    return save_figure(fig, path)


def report(run_dir: Path) -> list[Section]:
    analysis = analyse(run_dir)
    atomic_write_json(run_dir / "summary.json", analysis)
    cfg = json.loads((run_dir / "config.json").read_text())
    acfg = cfg["ablation"]["config"]
    sections = []
    for key, mode in (("fd", "eval"), ("fd_train", "train")):
        res = analysis["responses"][key]
        if not any(math.isfinite(v) for v in res["cell_means"].values()):
            continue
        main_rows = [
            [
                FACTOR_TEXT.get(e["factor"].split(":")[0], e["factor"])
                + (f" = {e['factor'].split(':')[1]}" if ":" in e["factor"] else ""),
                _fmt_ratio(e),
                f"{e['p']:.2g}",
            ]
            for e in res["ranking"]
        ]
        inter_rows = [
            [t["term"], _fmt_ratio(t), f"{t['p']:.2g}"]
            for t in sorted(
                (t for t in res["terms"] if " x " in t["term"]), key=lambda t: -abs(t["log_effect"])
            )
        ]
        _, coverage = _cells_and_scores(run_dir, key.replace("fd", "classes_covered"))
        cell_rows = sorted(
            (
                [n, f"{v:.3g}", _mean_text(coverage.get(n, {}))]
                for n, v in res["cell_means"].items()
                if math.isfinite(v)
            ),
            key=lambda r: float(r[1]),
        )
        figures = []
        if res["ranking"]:
            png = _effects_figure(
                res["ranking"],
                f"Main effects on FD (G in {mode} mode)",
                run_dir / f"ablation_effects_{key}.png",
            )
            figures.append(Figure("Main effects", png, width=560))
        conclusion = (
            res["conclusion"]
            if res["terms"]
            else (
                "This run has no factorial cells (--cells notebooks): only the cell table below; "
                "effects need the factorial design."
            )
        )
        intro = (
            f"Response: Frechet distance after {acfg['epochs']} epochs, G sampled in {mode} "
            f"mode, seeds {acfg['seeds']}. Effects are FD ratios with 95% CIs from a least-"
            "squares fit of log FD on main effects and two-way interactions (higher-order "
            "interactions pooled as error). Cell names: f<logit_bn><g_out_bn><d_in_bn><joint>"
            f"-<modes>.\n\n{conclusion}"
        )
        tables = [
            Table(
                "Factors ranked by their effect on FD",
                ["factor", "FD ratio [95% CI]", "p"],
                main_rows,
            ),
            Table(
                "Paths between the notebooks (cell means over seeds)",
                ["start", "single change", "FD", "ratio"],
                res["paths"],
            ),
            Table(
                "Notebook 2's BN placement repaired, no mode switching (cell means)",
                ["BN removed from", "cell", "FD", "ratio"],
                res["repairs"],
            ),
            Table(
                "Two-way interactions", ["interaction", "ratio of ratios [95% CI]", "p"], inter_rows
            ),
            Table(
                "All cells, best first (geometric mean FD over seeds)",
                ["cell", "FD", "classes covered (of 10)"],
                cell_rows,
            ),
        ]
        sections.append(
            Section(
                f"Ablation: why did the BN GAN fail? (G in {mode} mode)",
                intro,
                tables=[t for t in tables if t.rows],
                figures=figures,
                anchor=f"ablation-{key}",
            )
        )
    return sections
