"""The GAN run's report: the blog's figures, metric curves with seed bands, a verdict per claim.

Everything here reads the run directory (config.json, metrics.jsonl, samples/, real.png);
nothing trains. ``claims()`` also feeds summary.json, so the HTML and the machine-readable
summary always carry the same numbers.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw

from bnlab.report.html import Claim, Figure, Section, Table
from bnlab.report.plots import plot_losses, plot_metric
from bnlab.runs import atomic_write_json, read_jsonl
from bnlab.stats import Estimate, mean_ci, paired, verdict

__all__ = ["claims", "report", "summary"]

# metric key -> (title, y label, lower is better)
METRICS: dict[str, tuple[str, str, bool]] = {
    "fd": ("Frechet distance to held-out real digits", "FD (classifier features)", True),
    "classes_covered": ("Classes covered by 10,000 samples", "classes (of 10)", False),
    "kl_uniform": ("KL(class histogram || uniform)", "KL (nats)", True),
    "confidence": ("Mean max-softmax confidence", "confidence", False),
    "stray_dots": ("Stray white dots", "share of isolated bright pixels", True),
}
LOSSES = {
    "d_loss": "D loss",
    "g_loss": "G loss",
    "d_x": "D(x)",
    "d_g_z": "D(G(z))",
    "g_acc": "G accuracy",
}
BASELINE = "init"  # the blog's comparison: He/Xavier without BN ...
BN_MODELS = ("init-bn", "init-bn-tidy")  # ... against BN, as notebook 3 ran it and tidied
BROKEN = "init-bn-nomode"  # notebook 2


def _load(run_dir: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    cfg = json.loads((run_dir / "config.json").read_text())
    records = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "event" not in r]
    return cfg, records


def _final(records: list[dict[str, Any]], variant: str, key: str) -> dict[int, float]:
    """seed -> value of ``key`` at the last epoch where it was measured for that seed."""
    out: dict[int, tuple[int, float]] = {}
    for r in records:
        if r.get("variant") == variant and r.get(key) is not None:
            seed, epoch = r["seed"], r["epoch"]
            if seed not in out or epoch > out[seed][0]:
                out[seed] = (epoch, float(r[key]))
    return {s: v for s, (_, v) in out.items()}


def _late_mean(
    records: list[dict[str, Any]], variant: str, key: str, share: float = 0.25
) -> dict[int, float]:
    """seed -> mean of ``key`` over the last ``share`` of the epochs (losses are noisy)."""
    by_seed: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for r in records:
        if r.get("variant") == variant and r.get(key) is not None:
            by_seed[r["seed"]].append((r["epoch"], float(r[key])))
    out = {}
    for seed, rows in by_seed.items():
        rows.sort()
        k = max(1, math.ceil(len(rows) * share))
        out[seed] = float(np.mean([v for _, v in rows[-k:]]))
    return out


def _compare(a: dict[int, float], b: dict[int, float]) -> tuple[Estimate, float, float, int]:
    seeds = sorted(set(a) & set(b))
    p = paired([a[s] for s in seeds], [b[s] for s in seeds])
    return p.diff, p.p_value, p.effect_size, p.n


def _claim(
    cid: str,
    statement: str,
    records: list[dict[str, Any]],
    variants: tuple[str, str],
    key: str,
    expected: Literal["positive", "negative"],
    extra: str = "",
) -> Claim | None:
    """Paired difference variants[0] - variants[1] of ``key`` over seeds: final value for image
    metrics, mean of the last quarter of epochs for losses."""
    late = key in LOSSES
    reduce = _late_mean if late else _final
    a, b = (reduce(records, v, key) for v in variants)
    if not a or not b:
        return None
    diff, p, dz, n = _compare(a, b)
    if n == 0:
        return None
    what = f"{variants[0]} - {variants[1]}"
    label = LOSSES.get(key, key.replace("_train", "").replace("_", " "))
    quantity = f"{label}, {'mean of the last 25% of epochs' if late else 'final'}, {what}"

    def fmt(d: dict[int, float]) -> str:
        return mean_ci(list(d.values())).fmt()

    value = f"diff {diff.fmt()}"
    if n >= 2:
        value += f"; p={p:.3g}, d_z={dz:.2f}"
    value += f"; {n} seed{'s' if n > 1 else ''}; {fmt(a)} vs {fmt(b)}"
    if extra:
        value += f"; {extra}"
    sign = "> 0" if expected == "positive" else "< 0"
    rule = (
        f"holds if the 95% CI of the paired difference ({what}) over seeds is entirely "
        f"{sign}; does not hold if entirely on the other side; else inconclusive "
        "(one seed is always inconclusive)"
    )
    return Claim(cid, statement, quantity, value, verdict(diff, expected), rule)


C1_TEXT = (
    "Without train/eval handling (notebook 2), the BN model produces broken samples and "
    "abnormal D/G losses."
)
C2_TEXT = (
    "With train/eval handling both models draw good digits; the BN model shows fewer "
    "stray white dots."
)
C4_TEXT = "Hence BN improves the GAN generator's performance."
GOOD_DIGITS_CLASSES = 9.0  # "good digits": samples cover at least 9 of the 10 classes


def _good_digits(
    claim: Claim | None, records: list[dict[str, Any]], variant: str, key: str
) -> Claim | None:
    """C2 also says both models draw good digits: no fewer dots can save a model that does not
    (pure noise has few *isolated* bright pixels)."""
    if claim is None:
        return None
    covered = mean_ci(list(_final(records, variant, key).values()))
    rule = claim.rule + f"; and {variant} must cover >= {GOOD_DIGITS_CLASSES:.0f} of 10 classes"
    if covered.n and covered.mean < GOOD_DIGITS_CLASSES:
        return dataclasses.replace(claim, verdict="does not hold", rule=rule)
    return dataclasses.replace(claim, rule=rule)


def _modes_present(records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(metric-key suffix, label) for each G mode the run scored; train first: the blog's view."""
    out = []
    if any("fd_train" in r for r in records):
        out.append(("_train", "G in train mode, as the blog's images"))
    if any("fd" in r for r in records):
        out.append(("", "G in eval mode"))
    return out


def claims(records: list[dict[str, Any]]) -> list[Claim]:
    """C1-C4 of the blog, each a paired comparison across seeds (one row per G mode scored)."""
    present = {r["variant"] for r in records}
    modes = _modes_present(records)
    out: list[Claim | None] = []
    if {BROKEN, BASELINE} <= present:
        pair = (BROKEN, BASELINE)
        d_loss = _claim("", "", records, pair, "d_loss", "positive")
        extra = f"D loss {d_loss.value.split('; ')[-1]}" if d_loss else ""
        for sfx, label in modes:
            out.append(
                _claim(f"C1 [{label}]", C1_TEXT, records, pair, "fd" + sfx, "positive", extra)
            )
        if not modes:  # no image metrics: D(x) of a D that cannot tell real from fake
            out.append(_claim("C1", C1_TEXT, records, pair, "d_x", "negative", extra))
    for bn in BN_MODELS:
        if not {bn, BASELINE} <= present:
            continue
        pair = (bn, BASELINE)
        tag = "" if bn == "init-bn" else ", tidy switching"
        for sfx, label in modes:
            cov = _claim("", "", records, pair, "classes_covered" + sfx, "positive")
            c2 = _claim(
                f"C2 [{label}{tag}]",
                C2_TEXT,
                records,
                pair,
                "stray_dots" + sfx,
                "negative",
                f"classes covered {cov.value.split('; ')[-1]}" if cov else "",
            )
            out.append(_good_digits(c2, records, bn, "classes_covered" + sfx))
        suffix = f" [{tag[2:]}]" if tag else ""
        out.append(
            _claim(
                "C3a" + suffix,
                "The BN model has a higher discriminator loss.",
                records,
                pair,
                "d_loss",
                "positive",
            )
        )
        out.append(
            _claim(
                "C3b" + suffix,
                "The BN model has a lower generator loss.",
                records,
                pair,
                "g_loss",
                "negative",
            )
        )
        for sfx, label in modes:
            out.append(_claim(f"C4 [{label}{tag}]", C4_TEXT, records, pair, "fd" + sfx, "negative"))
    return [c for c in out if c is not None]


def summary(run_dir: Path) -> dict[str, Any]:
    """Per variant: final values (mean and 95% CI over seeds) and the claims, for machines."""
    cfg, records = _load(run_dir)
    variants = list(cfg.get("variants", {})) or sorted({r["variant"] for r in records})
    keys = [
        k
        for k in (*LOSSES, *METRICS, *(f"{m}_train" for m in METRICS))
        if any(k in r for r in records)
    ]
    per_variant = {}
    for v in variants:
        entry = {}
        for k in keys:
            vals = _late_mean(records, v, k) if k in LOSSES else _final(records, v, k)
            est = mean_ci(list(vals.values()))
            entry[k] = {"mean": est.mean, "ci95": [est.lo, est.hi], "n_seeds": est.n}
        per_variant[v] = entry
    return {
        "experiment": "gan",
        "config": cfg.get("config", {}),
        "variants": per_variant,
        "claims": [c.__dict__ for c in claims(records)],
        "notes": "losses: mean over the last 25% of epochs; metrics: last measured epoch; "
        "CI: t interval over seeds",
    }


def _sample_strip(run_dir: Path, variant: str, view: str, max_cols: int = 6) -> bytes | None:
    """The variant's sample grids at up to ``max_cols`` epochs side by side, labelled."""
    folder = run_dir / "samples" / variant
    suffix = "" if view == "eval" else f"-{view}"
    files = sorted(p for p in folder.glob(f"epoch-[0-9][0-9][0-9]{suffix}.png"))
    if not files:
        return None
    idx = np.unique(np.linspace(0, len(files) - 1, min(max_cols, len(files))).round().astype(int))
    chosen = [files[i] for i in idx]
    imgs = [Image.open(p).convert("L") for p in chosen]
    scale = 0.5 if imgs[0].width > 400 else 1.0
    imgs = [im.resize((int(im.width * scale), int(im.height * scale))) for im in imgs]
    pad, label_h = 8, 18
    w = sum(im.width for im in imgs) + pad * (len(imgs) + 1)
    h = max(im.height for im in imgs) + label_h + 2 * pad
    canvas = Image.new("L", (w, h), 255)
    draw = ImageDraw.Draw(canvas)
    x = pad
    for p, im in zip(chosen, imgs, strict=True):
        draw.text((x, 3), f"epoch {int(p.name[6:9])}", fill=0)
        canvas.paste(im, (x, label_h + pad))
        x += im.width + pad
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _summary_table(summ: dict[str, Any]) -> Table:
    cols = [
        k
        for k in (
            "d_loss",
            "g_loss",
            "d_x",
            "d_g_z",
            "g_acc",
            "fd",
            "classes_covered",
            "stray_dots",
            "fd_train",
        )
        if any(k in v for v in summ["variants"].values())
    ]
    rows = []
    for variant, entry in summ["variants"].items():
        row = [variant]
        for k in cols:
            e = entry.get(k)
            row.append(
                Estimate(e["mean"], e["ci95"][0], e["ci95"][1], e["n_seeds"]).fmt() if e else "-"
            )
        rows.append(row)
    names = {**LOSSES, **{k: k.replace("_", " ") for k in METRICS}, "fd_train": "FD (train-mode G)"}
    return Table(
        "Final numbers per variant (mean [95% CI] over seeds)",
        ["variant", *[names.get(k, k) for k in cols]],
        rows,
        "Losses: mean over the last 25% of epochs. Image metrics: last measured "
        "epoch, 10,000 samples from a fixed z, G in eval mode unless marked train.",
    )


def report(run_dir: Path) -> list[Section]:
    cfg, records = _load(run_dir)
    c = cfg.get("config", {})
    variants = list(cfg.get("variants", {}))
    seeds = sorted({r["seed"] for r in records})
    summ = summary(run_dir)
    atomic_write_json(run_dir / "summary.json", summ)
    intro = (
        f"The blog's MNIST GAN, reproduced: {len(variants)} variants x {len(seeds)} seed(s) "
        f"({', '.join(map(str, seeds))}), {c.get('epochs')} epochs on {cfg.get('data', '?')}. "
        "All variants of a seed saw the same batches and the same z. Variants: "
        + "; ".join(f"{k}: " + _variant_text(v) for k, v in cfg.get("variants", {}).items())
    )
    sections = [
        Section(
            "GAN: claims",
            intro + "\n\nEach claim of the blog (C1-C4) as a "
            "measured paired difference between variants over seeds.",
            claims=claims(records),
            tables=[_summary_table(summ)],
            anchor="gan",
        )
    ]
    figs = []
    real = run_dir / "real.png"
    if real.exists():
        figs.append(Figure("Real digits", real.read_bytes(), "the first 100 training images", 260))
    losses = plot_losses(records, run_dir, variants)  # loss_d.png, loss_g.png
    for name, title in (("loss_d.png", "D loss per epoch"), ("loss_g.png", "G loss per epoch")):
        if name in losses:
            figs.append(Figure(title, losses[name], "the blog's two plots", 480))
    for key, (title, ylabel, _) in METRICS.items():
        for suffix, mode in (("", "eval"), ("_train", "train")):
            if any(key + suffix in r for r in records):
                png = plot_metric(
                    records,
                    key + suffix,
                    f"{title} (G in {mode} mode)",
                    ylabel,
                    run_dir / f"metric_{key}{suffix}.png",
                    variants,
                )
                if png:
                    figs.append(Figure(f"{title}, G in {mode} mode", png, width=480))
    for key in ("d_x", "d_g_z", "g_acc"):
        png = plot_metric(
            records, key, LOSSES[key], LOSSES[key], run_dir / f"curve_{key}.png", variants
        )
        if png:
            figs.append(Figure(LOSSES[key], png, "per-epoch mean", 480))
    sections.append(
        Section(
            "GAN: curves",
            "Per-epoch means; bands span the seeds.",
            figures=figs,
            anchor="gan-curves",
        )
    )
    sample_figs = []
    for v in variants:
        for view, what in (
            ("eval", "G in eval mode, fixed z"),
            ("train", "the notebook's view: last training batch, G in train mode"),
        ):
            png = _sample_strip(run_dir, v, view)
            if png:
                sample_figs.append(Figure(f"{v}: {what}", png))
    sections.append(
        Section(
            "GAN: samples across epochs",
            "First seed. Left to right: epochs.",
            figures=sample_figs,
            anchor="gan-samples",
        )
    )
    return sections


def _variant_text(v: dict[str, Any]) -> str:
    bits = lambda f: "".join("1" if x else "0" for x in f)  # noqa: E731
    return (
        f"init {v['init']}, BN after G layers {bits(v['g_norm'])}, D layers "
        f"{bits(v['d_norm'])}, modes {v['modes']}" + ("" if v["shuffle"] else ", unshuffled")
    )
