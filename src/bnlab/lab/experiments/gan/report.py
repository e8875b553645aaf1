"""`bnlab gan`'s report: the blog's figures, metric curves with seed bands, samples, and the
claims of :mod:`bnlab.lab.experiments.gan.analysis`. Reads the run
(:class:`~bnlab.lab.results.Run`); never trains, never writes summary.json.
"""

from __future__ import annotations

import io
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from bnlab.lab.experiments.gan.analysis import (
    LOSSES,
    METRICS,
    ONE_SEED_NOTE,
    GanAnalysis,
    analyse,
    compare,
    result_line,
    variant_names,
)
from bnlab.lab.experiments.gan.config import GanConfig
from bnlab.lab.experiments.protocol import ExperimentReport
from bnlab.lab.report.html import Figure, Section, Table
from bnlab.lab.report.plots import plot_losses, plot_metric
from bnlab.lab.results import ONE_SEED, Run
from bnlab.lab.stats import Estimate

__all__ = ["REPORT", "compare_report", "hero_figures", "report", "sample_strip"]


def _strip(items: list[tuple[str, Path]], height: int | None = None) -> bytes:
    """Labelled images side by side (label above each), as one PNG; ``height``: scale each
    image to it (else half size for big grids)."""
    imgs = [Image.open(p).convert("L") for _, p in items]
    if height is None:
        height = imgs[0].height // 2 if imgs[0].width > 400 else imgs[0].height
    imgs = [im.resize((round(im.width * height / im.height), height)) for im in imgs]
    font = ImageFont.load_default(size=13)
    lines = [textwrap.wrap(label, max(12, imgs[0].width // 7)) for label, _ in items]
    pad, line_h = 8, 16
    label_h = line_h * max(len(ls) for ls in lines) + 4
    w = sum(im.width for im in imgs) + pad * (len(imgs) + 1)
    canvas = Image.new("L", (w, height + label_h + 2 * pad), 255)
    draw = ImageDraw.Draw(canvas)
    x = pad
    for ls, im in zip(lines, imgs, strict=True):
        for k, line in enumerate(ls):
            draw.text((x, 3 + k * line_h), line, fill=0, font=font)
        canvas.paste(im, (x, label_h + pad))
        x += im.width + pad
    buf = io.BytesIO()
    canvas.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _grids(run_dir: Path, variant: str, view: str) -> list[Path]:
    """The variant's saved sample grids (first seed), by epoch: ``view`` eval or train."""
    suffix = "" if view == "eval" else f"-{view}"
    return sorted((run_dir / "samples" / variant).glob(f"epoch-[0-9][0-9][0-9]{suffix}.png"))


def sample_strip(run_dir: Path, variant: str, view: str, max_cols: int = 6) -> bytes | None:
    """The variant's sample grids at up to ``max_cols`` epochs side by side, labelled."""
    files = _grids(run_dir, variant, view)
    if not files:
        return None
    idx = np.unique(np.linspace(0, len(files) - 1, min(max_cols, len(files))).round().astype(int))
    return _strip([(f"epoch {int(files[i].name[6:9])}", files[i]) for i in idx])


def _summary_table(analysis: GanAnalysis) -> Table:
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
        if any(k in v for v in analysis.variants.values())
    ]
    rows = []
    for variant, entry in analysis.variants.items():
        row = [variant]
        for k in cols:
            e = entry.get(k)
            row.append(Estimate(e.mean, e.ci95[0], e.ci95[1], e.n_seeds).fmt() if e else "-")
        rows.append(row)
    names = {**LOSSES, **{k: k.replace("_", " ") for k in METRICS}, "fd_train": "FD (train-mode G)"}
    return Table(
        "Final numbers per variant (mean [95% CI] over seeds)",
        ["variant", *[names.get(k, k) for k in cols]],
        rows,
        "Losses: mean over the last 25% of epochs. Image metrics: last measured "
        "epoch, 10,000 samples from a fixed z, G in eval mode unless marked train.",
        folded=True,
    )


# The blog's names for the variants it ran (bnlab's names for the others).
BLOG_NAMES = {
    "plain": "notebook 1: PyTorch's default init",
    "init": "He/Xavier init, no BN",
    "init-bn": "notebook 3: BN, train()/eval() as written",
    "init-bn-tidy": "notebook 3's BN, tidy train()/eval()",
    "init-bn-nomode": "notebook 2: BN, no train()/eval()",
}


def hero_figures(run: Run[Any], variants: list[str]) -> list[Figure]:
    """What the blog showed, side by side: each variant's last samples as the notebooks drew
    them (a training batch, G in train mode), then the same G in eval mode where scored."""
    out = []
    for view, title, how in (
        ("train", "The blog's view", "G in train mode, the last training batch"),
        ("eval", "What a user deploys", "G in eval mode (running statistics), a fixed z"),
    ):
        last = [
            (BLOG_NAMES.get(v, v), files[-1])
            for v in variants
            if (files := _grids(run.dir, v, view))
        ]
        if last:
            epoch = int(last[0][1].name[6:9])
            out.append(
                Figure(f"{title}, epoch {epoch}", _strip(last, height=180), f"{how}; first seed.")
            )
    return out


def _variants_table(cfg: GanConfig) -> Table:
    rows = [[v.name, BLOG_NAMES.get(v.name, "-"), v.definition()] for v in cfg.variants]
    return Table("Variants", ["variant", "in the blog", "definition"], rows, folded=True)


def report(run: Run[GanConfig], analysis: GanAnalysis) -> list[Section]:
    """The report's sections, from the run alone (draws its figures into the run directory)."""
    run_dir, records, cfg = run.dir, run.records, run.config
    variants = variant_names(run)
    seeds = sorted({r["seed"] for r in records})
    intro = (
        f"The blog's MNIST GAN, reproduced: {len(variants)} variants, "
        f"{'seed' if len(seeds) == 1 else 'seeds'} {', '.join(map(str, seeds))}, "
        f"{cfg.training.epochs} epochs on {run.meta.get('data', '?')}. All variants of a seed "
        "saw the same batches and the same z. Above: the last samples of each variant (first "
        "seed). Below: each claim of the blog (C1-C4) as a measured difference between "
        "variants."
    )
    why = analysis.no_answer
    if why:
        intro += f"\n\nNo answer from this run: {why}."
    elif any(c.verdict in ONE_SEED for c in analysis.claims):
        intro += "\n\n" + ONE_SEED_NOTE
    sections = [
        Section(
            "GAN: what the blog showed, measured",
            intro,
            claims=list(analysis.claims),
            tables=[_summary_table(analysis), _variants_table(cfg)],
            anchor="gan",
            hero=hero_figures(run, variants),
            source="the blog",
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
            png = sample_strip(run_dir, v, view)
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


def compare_report(runs: list[Run[GanConfig]], analyses: list[GanAnalysis]) -> list[Section]:
    """Runs of the same variants and seeds side by side (e.g. one process, N ranks with
    per-rank BN, N ranks with SyncBN: does BN's batch matter?), paired over seeds; the runs'
    own analyses are not needed (their sections follow)."""
    comp = compare(runs)
    names = {"fd": "FD (eval G)", "fd_train": "FD (train-mode G)", "classes_covered": "classes"}
    header = ["variant", "run", *(names[k] for k in comp.keys)]
    header += [f"{names[k]} - {comp.labels[0]}" for k in comp.keys if k != "classes_covered"]
    header.append("ms/step")
    rows = []
    for r in comp.rows:
        row = [r.variant, r.run]
        row += [r.finals[k].fmt() for k in comp.keys]
        for k in comp.keys:
            if k == "classes_covered":
                continue
            d = r.diffs.get(k)
            row.append(f"{d.diff.fmt()} (p={d.p:.2g})" if d else "-")
        row.append(f"{r.ms_per_step:.1f}")
        rows.append(row)
    intro = (
        "The same variants and seeds trained in several ways: "
        + "; ".join(f"{lab}: {d}" for lab, d in zip(comp.labels, comp.runs, strict=True))
        + ". Differences are paired over seeds against the first run (95% CI). ms/step: the "
        "median wall time of a training step (D and G) over epochs; with several ranks it "
        "includes their communication."
    )
    return [
        Section(
            "GAN: runs compared",
            intro,
            tables=[Table("Final metrics per run", header, rows)],
            anchor="gan-compare",
        )
    ]


REPORT: ExperimentReport[GanConfig, GanAnalysis] = ExperimentReport(
    name="gan",
    title="bnlab gan: the blog's GAN notebooks, measured",
    config=GanConfig,
    analyse=analyse,
    report=report,
    result_line=result_line,
    compare=compare_report,
)
