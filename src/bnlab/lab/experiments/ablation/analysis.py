"""`bnlab gan-ablation`'s analysis: main effects and two-way interactions of the factors on
log Frechet distance, paths between the notebooks, repairs of notebook 2, and a conclusion.
Reads the run (:class:`~bnlab.lab.results.Run`; its records are GAN epoch records, as
``bnlab gan`` writes them); trains nothing, draws nothing. The run writes what
:func:`analyse` returns as summary.json.
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from bnlab.lab.experiments.ablation.config import (
    FACTOR_TEXT,
    NOTEBOOK2,
    NOTEBOOK2_SHUFFLED,
    NOTEBOOK3,
    NOTEBOOK3_UNSHUFFLED,
    TWO_LEVEL,
    AblationConfig,
    Cell,
    design,
)
from bnlab.lab.experiments.gan.analysis import LEARNED_CLASSES
from bnlab.lab.results import Run

__all__ = [
    "AblationAnalysis",
    "Effect",
    "FactorEffect",
    "ModesOnceFixed",
    "PathStep",
    "Repair",
    "Response",
    "analyse",
    "cells_and_scores",
    "effects",
    "no_cell_learned",
    "result_line",
]


@dataclass(frozen=True)
class Effect:
    """One term of the fit as an FD ratio: exp of its contrast (see :func:`_contrasts`)."""

    term: str  # a factor, modes:<m>, or an interaction "a x b"
    log_effect: float
    ratio: float  # exp(log_effect); for an interaction a ratio of ratios
    lo: float  # 95% CI of the ratio (nan without residual degrees of freedom)
    hi: float
    p: float
    dof: int  # residual degrees of freedom of the fit


@dataclass(frozen=True)
class FactorEffect(Effect):
    """A main effect in the ranking, named by its factor (the same as its term)."""

    factor: str


class PathStep(NamedTuple):
    """One single change on the way between the notebooks (a table row; a list in JSON)."""

    start: str  # "from notebook 2's setup", "from notebook 3's setup", "notebook2 as run", ...
    change: str  # "(as is)", "BN on G's output -> False", "shuffle -> True", ...
    fd: str  # the changed cell's mean FD over seeds, 3 significant digits
    ratio: str  # against the start's FD, 2 decimals


class Repair(NamedTuple):
    """Notebook 2's BN placement with some BN layers removed, no mode switching (a table row)."""

    removed: str  # the BN layers removed, in words
    cell: str  # the cell's name
    fd: str  # its mean FD over seeds, 3 significant digits
    ratio: str  # against notebook 2's placement, 2 decimals


@dataclass(frozen=True)
class ModesOnceFixed:
    """Mode switching vs none with DCGAN-style placement, paired over seeds."""

    modes: str  # notebook3 or tidy
    ratio: float  # FD ratio, geometric mean over seeds
    lo: float  # 95% t interval (nan with one seed)
    hi: float
    n: int  # seeds


@dataclass(frozen=True)
class Response:
    """Everything the analysis says about one response (FD with G in eval or train mode)."""

    terms: tuple[Effect, ...]  # main effects and two-way interactions
    ranking: tuple[FactorEffect, ...]  # the main effects, largest |log effect| first
    paths: tuple[PathStep, ...]
    repairs: tuple[Repair, ...]
    modes_fixed: tuple[ModesOnceFixed, ...]
    cell_means: dict[str, float]  # cell -> geometric mean over seeds (nan: not scored)
    conclusion: str


@dataclass(frozen=True)
class AblationAnalysis:
    """What a run shows (summary.json): per response (``fd``, ``fd_train``) the fit, paths,
    repairs and a conclusion; ``ranking`` repeats the eval-mode ranking."""

    experiment: str  # "gan-ablation"
    responses: dict[str, Response]
    ranking: tuple[FactorEffect, ...]
    no_answer: str = ""  # why the run cannot name an effect (no cell learned); "" if it can


def cells_and_scores(
    run: Run[AblationConfig], key: str
) -> tuple[dict[str, Cell], dict[str, dict[int, float]]]:
    """The run's cells (from its config) and, per cell, seed -> last measured ``key``."""
    cells = {c.name: c for c in design(run.config.cells)}
    scores: dict[str, dict[int, float]] = defaultdict(dict)
    last: dict[tuple[str, int], int] = {}
    for r in run.records:
        if r.get(key) is None or r["variant"] not in cells:
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
) -> list[Effect]:
    """Least squares on log(score) over the factorial cells and seeds; one row per effect.

    ``ratio`` is the multiplicative change of the score: exp of the contrast in
    :func:`_contrasts` (for an interaction, a ratio of ratios). The 95% CI uses the residual
    variance of the fit (higher-order interactions and seed noise).
    """
    from scipy import stats as sps

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
            Effect(
                term=term,
                log_effect=est,
                ratio=math.exp(est),
                lo=math.exp(est - t * se) if ok else math.nan,
                hi=math.exp(est + t * se) if ok else math.nan,
                p=float(2 * sps.t.sf(abs(est / se), dof)) if ok else math.nan,
                dof=int(dof),
            )
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


def _paths(cells: dict[str, Cell], scores: dict[str, dict[int, float]]) -> list[PathStep]:
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
        rows.append(PathStep(label, "(as is)", f"{b:.3g}", "1.00"))
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
            rows.append(PathStep(label, what, f"{v:.3g}", f"{v / b:.2f}" if b else "-"))
    for nb, other in ((NOTEBOOK2, NOTEBOOK2_SHUFFLED), (NOTEBOOK3, NOTEBOOK3_UNSHUFFLED)):
        a, b = _cell_mean(scores, nb.label), _cell_mean(scores, other.label)
        if math.isfinite(a) and math.isfinite(b):
            rows.append(
                PathStep(
                    f"{nb.label} as run", f"shuffle -> {other.shuffle}", f"{b:.3g}", f"{b / a:.2f}"
                )
            )
    return rows


PLACEMENT = ("logit_bn", "g_out_bn", "d_in_bn")


def _repairs(cells: dict[str, Cell], scores: dict[str, dict[int, float]]) -> list[Repair]:
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
            rows.append(Repair(what, name, f"{fd:.3g}", f"{fd / nb2:.2f}" if nb2 else "-"))
    return rows


def _modes_once_fixed(
    cells: dict[str, Cell], scores: dict[str, dict[int, float]]
) -> list[ModesOnceFixed]:
    """Mode switching where placement follows the DCGAN guideline (no BN on G's output, D's
    input or logit), paired over seeds: is it still needed?"""
    from scipy import stats as sps

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
                ModesOnceFixed(
                    m, math.exp(mean), math.exp(mean - half), math.exp(mean + half), len(d)
                )
            )
        elif d:
            out.append(ModesOnceFixed(m, math.exp(d[0]), math.nan, math.nan, 1))
    return out


def _conclusion(
    ranking: list[FactorEffect],
    terms: list[Effect],
    modes_fixed: list[ModesOnceFixed],
    paths: list[PathStep],
    repairs: list[Repair] | None = None,
) -> str:
    def sig(e: Effect) -> bool:
        return math.isfinite(e.lo) and (e.lo > 1 or e.hi < 1)

    parts = []
    strong = [e for e in ranking if sig(e)]
    if strong:
        top = strong[0]
        name = FACTOR_TEXT.get(top.factor.split(":")[0], top.factor)
        parts.append(
            f"The largest effect on the Frechet distance is {name} ({top.factor})"
            f": FD x{top.ratio:.2f} [{top.lo:.2f}, {top.hi:.2f}] (95% CI, on vs off or vs "
            "no switching, averaged over the other factors)."
        )
        others = [FACTOR_TEXT.get(e.factor, e.factor) + f" (x{e.ratio:.2f})" for e in strong[1:4]]
        if others:
            parts.append("Also significant: " + ", ".join(others) + ".")
    else:
        parts.append(
            "No factor's main effect is distinguishable from noise at this budget "
            "(all 95% CIs include x1); run more seeds or epochs."
        )
    inter = sorted(
        (t for t in terms if " x " in t.term and sig(t)), key=lambda t: -abs(t.log_effect)
    )
    if inter:
        t = inter[0]
        parts.append(
            f"The strongest interaction is {t.term} (ratio of ratios "
            f"x{t.ratio:.2f} [{t.lo:.2f}, {t.hi:.2f}]): one factor's effect "
            "depends on the other's level."
        )
    fixes = [r for r in paths if r.start == "from notebook 2's setup" and r.change != "(as is)"]
    if fixes:
        best = min(fixes, key=lambda r: float(r.ratio))
        parts.append(
            f"Starting from notebook 2's setup, the single change that helps most is "
            f"'{best.change}' (FD x{float(best.ratio):.2f})."
        )
    if repairs:
        fix = min(repairs, key=lambda r: float(r.fd))
        parts.append(
            f"Without mode switching, notebook 2 works best after removing {fix.removed} "
            f"(FD {fix.fd}, x{float(fix.ratio):.2f} of notebook 2's placement)."
        )
    by_name = {e.factor: e for e in ranking}
    dcgan = [by_name[f] for f in ("g_out_bn", "d_in_bn") if f in by_name]
    if dcgan:
        worse = [e for e in dcgan if math.isfinite(e.lo) and e.lo > 1]
        parts.append(
            "DCGAN guideline (no BN on G's output or D's input): "
            + "; ".join(f"{FACTOR_TEXT[e.factor]} x{e.ratio:.2f}" for e in dcgan)
            + (
                " - the data agree: each violation makes FD worse."
                if len(worse) == len(dcgan)
                else " - the data support it only partly at this budget."
                if worse
                else " - no measurable harm at this budget."
            )
        )
    for m in modes_fixed:
        if math.isfinite(m.lo):
            verdict = (
                "makes it worse"
                if m.lo > 1
                else "helps"
                if m.hi < 1
                else "makes no measurable difference"
            )
            parts.append(
                f"With DCGAN-style placement (no BN on G's output, D's input or logit), "
                f"switching modes as '{m.modes}' vs never {verdict}: FD "
                f"x{m.ratio:.2f} [{m.lo:.2f}, {m.hi:.2f}]."
            )
    return " ".join(parts)


def _ranking(terms: list[Effect]) -> list[FactorEffect]:
    main = [FactorEffect(**vars(t), factor=t.term) for t in terms if " x " not in t.term]
    return sorted(main, key=lambda t: -abs(t.log_effect))


def no_cell_learned(run: Run[AblationConfig]) -> str:
    """Why no effect can be named ("after 1 epoch the best cell covers 1 of 10 classes"), or
    "" when some cell draws digits: comparing cells none of which learned compares kinds of
    noise (the same bar as `bnlab gan`'s claims: :data:`LEARNED_CLASSES`)."""
    best = math.nan
    for key in ("classes_covered", "classes_covered_train"):
        _, cover = cells_and_scores(run, key)
        for by_seed in cover.values():
            vals = [v for v in by_seed.values() if math.isfinite(v)]
            if vals:
                best = float(np.mean(vals)) if math.isnan(best) else max(best, float(np.mean(vals)))
    if math.isnan(best) or best >= LEARNED_CLASSES:
        return ""
    epochs = max((r["epoch"] for r in run.records if "epoch" in r), default=0)
    return (
        f"after {epochs} epoch{'s' if epochs != 1 else ''} no cell has learned to draw digits "
        f"(the best covers {best:.3g} of 10 classes; at least {LEARNED_CLASSES} needed), so "
        "differences between cells are differences between kinds of noise; run the default "
        "budget (--epochs 20)"
    )


def _response(run: Run[AblationConfig], key: str, no_answer: str = "") -> Response:
    cells, scores = cells_and_scores(run, key)
    terms = effects(cells, scores)
    ranking = _ranking(terms)
    paths = _paths(cells, scores)
    repairs = _repairs(cells, scores)
    modes_fixed = _modes_once_fixed(cells, scores)
    return Response(
        terms=tuple(terms),
        ranking=tuple(ranking),
        paths=tuple(paths),
        repairs=tuple(repairs),
        modes_fixed=tuple(modes_fixed),
        cell_means={n: _cell_mean(scores, n) for n in cells},
        conclusion=f"No effect to name: {no_answer}."
        if no_answer
        else _conclusion(ranking, terms, modes_fixed, paths, repairs),
    )


def analyse(run: Run[AblationConfig]) -> AblationAnalysis:
    """The factorial fit, paths, repairs and conclusion for FD with G in eval mode (``fd``)
    and in train mode (``fd_train``) (summary.json)."""
    why = no_cell_learned(run)
    responses = {key: _response(run, key, why) for key in ("fd", "fd_train")}
    return AblationAnalysis("gan-ablation", responses, responses["fd"].ranking, why)


def result_line(analysis: AblationAnalysis, run: Run[AblationConfig]) -> str:
    """The largest main effect on FD (G in eval mode), with its 95% CI."""
    if not analysis.ranking:
        return "gan-ablation: no factorial cells, no effects"
    if analysis.no_answer:
        return f"gan-ablation: no effect to name: {analysis.no_answer}"
    top = analysis.ranking[0]
    return (
        f"gan-ablation: largest effect on FD: {top.factor} (x{top.ratio:.2f} "
        f"[{top.lo:.2f}, {top.hi:.2f}])"
    )
