"""Figures from run records (metrics.jsonl): the blog's loss plots, with seed bands."""

from __future__ import annotations

import io
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from bnlab.lab.runs import atomic_write_bytes

__all__ = [
    "curves_by_variant",
    "log_scale",
    "plot_losses",
    "plot_metric",
    "pyplot",
    "save_figure",
]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the file-only Agg backend, imported on first use: matplotlib
    costs about a second of start-up that the CLI, the workers and data-parallel ranks never
    need (they import every experiment's report module)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path, dpi: int = 110) -> bytes:
    """Write a figure as PNG atomically; returns the bytes (the HTML report embeds them)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return data


def curves_by_variant(
    records: list[dict[str, Any]], key: str
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """variant -> (epochs, values (seeds, epochs)) for the epochs every seed has reached."""
    table: dict[str, dict[int, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        if key in r and r.get("variant") is not None and r[key] is not None:
            table[r["variant"]][r.get("seed", 0)][r["epoch"]] = r[key]
    out = {}
    for variant, by_seed in table.items():
        common = sorted(set.intersection(*(set(e) for e in by_seed.values())))
        if not common:
            continue
        values = np.array([[by_seed[s][e] for e in common] for s in sorted(by_seed)])
        out[variant] = (np.array(common), values)
    return out


LOG_SPAN = 30.0  # curves whose positive values span more than this factor get a log axis


def log_scale(values: np.ndarray) -> bool:
    """Whether values span orders of magnitude (e.g. Frechet distance 20 vs 1,200), so a
    linear axis would flatten the working models into one line: all positive, max/min above
    :data:`LOG_SPAN`."""
    v = values[np.isfinite(values)]
    return bool(v.size) and bool((v > 0).all()) and float(v.max() / v.min()) > LOG_SPAN


def plot_metric(
    records: list[dict[str, Any]],
    key: str,
    title: str,
    ylabel: str,
    path: str | Path,
    variants: list[str] | None = None,
) -> bytes | None:
    """One line per variant (mean over seeds) with a band from min to max over seeds."""
    curves = curves_by_variant(records, key)
    if not curves:
        return None
    order = [v for v in (variants or sorted(curves)) if v in curves]
    fig, ax = pyplot().subplots(figsize=(7, 4))
    for variant in order:
        epochs, values = curves[variant]
        mean = values.mean(0)
        (line,) = ax.plot(
            epochs, mean, label=variant, lw=1.4, marker="o" if len(epochs) < 12 else None, ms=3
        )
        if values.shape[0] > 1:
            ax.fill_between(
                epochs, values.min(0), values.max(0), color=line.get_color(), alpha=0.18, lw=0
            )
    n_seeds = max(values.shape[0] for _, values in curves.values())
    if log_scale(np.concatenate([values.ravel() for _, values in curves.values()])):
        ax.set_yscale("log")
        title += ", log scale"
    ax.set_title(title + (f" (mean, band = min..max over {n_seeds} seeds)" if n_seeds > 1 else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def plot_losses(
    records: list[dict[str, Any]], run_dir: str | Path, variants: list[str] | None = None
) -> dict[str, bytes]:
    """loss_d.png and loss_g.png: per-epoch mean losses of every variant (the blog's plots)."""
    run_dir = Path(run_dir)
    if variants is None:
        variants = list(dict.fromkeys(r["variant"] for r in records if "variant" in r))
    out = {}
    for key, name, title in (
        ("d_loss", "loss_d.png", "Discriminator loss"),
        ("g_loss", "loss_g.png", "Generator loss"),
    ):
        data = plot_metric(records, key, title, "mean loss per epoch", run_dir / name, variants)
        if data is not None:
            out[name] = data
    return out
