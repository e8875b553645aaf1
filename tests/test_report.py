"""The GAN report from a small run directory: every section and figure, and a real browser."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.lab.experiments.reports import build_report
from bnlab.lab.images import save_grid
from bnlab.lab.runs import append_jsonl, atomic_write_json

VARIANTS = ("plain", "init", "init-bn", "init-bn-tidy", "init-bn-nomode")


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    """A 2-seed, 3-epoch GAN run directory with image metrics in both G modes."""
    from bnlab.lab.models.gan import BLOG_VARIANTS

    rng = np.random.default_rng(0)
    atomic_write_json(
        tmp_path / "config.json",
        {
            "experiment": "gan",
            "config": {"epochs": 3, "variants": [BLOG_VARIANTS[v].__dict__ for v in VARIANTS]},
            "data": "synthetic",
        },
    )
    records = []
    for seed in (0, 1):
        for k, v in enumerate(VARIANTS):
            for epoch in (1, 2, 3):
                r = {
                    "seed": seed,
                    "variant": v,
                    "epoch": epoch,
                    "d_loss": 1 + 0.1 * k,
                    "g_loss": 2 - 0.1 * epoch,
                    "d_x": 0.7,
                    "d_g_z": 0.3,
                    "g_acc": 0.2,
                    "seconds": 1.0,
                    "images_per_s": 1e4,
                }
                for sfx in ("", "_train"):
                    r.update(
                        {
                            f"fd{sfx}": 10 + k + rng.random(),
                            f"classes_covered{sfx}": 10.0,
                            f"kl_uniform{sfx}": 0.01,
                            f"confidence{sfx}": 0.95,
                            f"stray_dots{sfx}": 0.02 + 0.001 * k,
                        }
                    )
                records.append(r)
    append_jsonl(tmp_path / "metrics.jsonl", records)
    gen = torch.Generator().manual_seed(0)
    save_grid(tmp_path / "real.png", torch.rand(100, 784, generator=gen) * 2 - 1)
    for v in VARIANTS:
        for epoch in (1, 3):
            for view in ("", "-train"):
                save_grid(
                    tmp_path / "samples" / v / f"epoch-{epoch:03d}{view}.png",
                    torch.rand(100, 784, generator=gen) * 2 - 1,
                )
    return tmp_path


def test_report_contains_every_section_and_figure(run_dir: Path):
    path = build_report([run_dir])
    html = path.read_text()
    for heading in (
        "GAN: what the blog showed, measured",
        "GAN: curves",
        "GAN: samples across epochs",
        "Final numbers per variant",
        "Run configuration",
    ):
        assert heading in html
    for claim in ("C1 [", "C2 [", "C3a", "C3b", "C4 ["):
        assert claim in html
    for figure in (
        "Real digits",
        "D loss per epoch",
        "G loss per epoch",
        "Frechet distance to held-out real digits, G in eval mode",
        "Frechet distance to held-out real digits, G in train mode",
        "Stray white dots, G in eval mode",
        "init-bn: G in eval mode, fixed z",
        "init-bn-nomode: the notebook&#x27;s view",
    ):
        assert figure in html, figure
    assert html.count("data:image/png;base64,") >= 2 + 2 * 5 + 3 + 10
    assert "<script" not in html  # offline: no scripts, no remote resources
    assert not re.search(r"(src|href)=[\"']?(https?:)?//", html)
    for png in ("metric_fd.png", "metric_fd_train.png", "curve_d_x.png"):
        assert (run_dir / png).exists()
    assert not (run_dir / "summary.json").exists()  # the run writes it, never the report


def test_report_renders_in_headless_chromium(run_dir: Path, tmp_path: Path):
    """A real browser opens the report: every image loads, no script or console errors, the
    final sample grids of every variant come first (above the first table), and the long
    tables are folded."""
    from browser import inspect_page

    page = inspect_page(build_report([run_dir]), tmp_path)
    assert page["errors"] == []
    assert len(page["images"]) >= 2 + 2 + 3 + 10
    assert all(im["ok"] and im["width"] > 0 for im in page["images"]), page["images"]
    hero = page["images"][:2]
    assert [im["alt"] for im in hero] == [
        "The blog's view, epoch 3",
        "What a user deploys, epoch 3",
    ]
    first = page["first"]
    assert first["h2"] < hero[0]["top"] < hero[1]["top"] < first["ul.claims"] < first["details"]
    assert any(t["folded"] for t in page["tables"])  # folded: rules, per-variant, config


def test_a_browser_probe_sees_broken_pages(tmp_path: Path):
    """The probe can fail: a missing image, a console error and a script error are caught."""
    from browser import inspect_page

    bad = tmp_path / "bad.html"
    bad.write_text(
        "<html><head></head><body><img alt=gone src=missing.png><script>console.error('x');"
        "nope()</script></body></html>"
    )
    page = inspect_page(bad, tmp_path)
    assert not page["images"][0]["ok"]
    assert len(page["errors"]) == 3, page["errors"]


def test_runs_of_the_same_variants_are_compared_paired_by_seed(run_dir: Path, tmp_path: Path):
    import json

    from bnlab.lab.runs import read_jsonl, write_jsonl

    other = tmp_path / "four-ranks"
    shutil.copytree(run_dir, other)
    meta = json.loads((other / "config.json").read_text())
    meta["config"].update(nproc=4, ddp_bn="local")
    (other / "config.json").write_text(json.dumps(meta))
    records = read_jsonl(other / "metrics.jsonl")
    for r in records:
        r["fd"] += 5.0  # every seed 5 worse: a paired difference of exactly +5
    write_jsonl(other / "metrics.jsonl", records)
    path = build_report([run_dir, other], tmp_path / "both.html")
    html = path.read_text()
    assert "GAN: runs compared" in html
    assert "ddp_bn=local nproc=4" in html and "nproc=1" in html  # the first run: one process
    assert "+5" in html or "5 (p=" in html


def test_markdown_report_quotes_the_same_claims_and_tables(run_dir: Path):
    from bnlab.lab import cli
    from bnlab.lab.experiments.gan.analysis import claims
    from bnlab.lab.runs import read_jsonl

    assert cli.main(["report", str(run_dir), "--markdown"]) == 0
    md = (run_dir / "report.md").read_text()
    assert md.startswith("# bnlab report") and not (run_dir / "report.html").exists()
    expected = claims(read_jsonl(run_dir / "metrics.jsonl"))
    assert expected
    for c in expected:  # every claim row, with its value and verdict, as the html shows it
        assert f"| {c.id} |" in md and c.value.replace("|", "\\|") in md
        assert f"**{c.verdict}**" in md
    table_rows = [ln for ln in md.splitlines() if ln.startswith("|")]
    assert all(ln.endswith("|") for ln in table_rows)
    assert len({ln.count(" | ") for ln in table_rows if ln.startswith("| C")}) == 1
    assert "<table" not in md and "<p>" not in md  # no html
    # the figures as PNG files beside it, each linked once, each the report's own bytes
    links = re.findall(r"!\[[^\]]*\]\((report_files/[^)]+\.png)\)", md)
    assert links and len(set(links)) == len(links)
    for link in links:
        assert (run_dir / link).read_bytes().startswith(b"\x89PNG")
    assert sorted(p.name for p in (run_dir / "report_files").iterdir()) == sorted(
        link.split("/")[1] for link in links
    )


def test_curves_spanning_orders_of_magnitude_get_a_log_axis(tmp_path: Path):
    """FD 20 for the working models and 1,200 for a broken one: on a linear axis the working
    ones would be one flat line."""
    from bnlab.lab.report.plots import log_scale, plot_metric

    assert log_scale(np.array([20.0, 25.0, 1200.0]))
    assert not log_scale(np.array([10.0, 15.0]))
    assert not log_scale(np.array([0.0, 1200.0]))  # not all positive: linear
    assert not log_scale(np.array([np.nan]))
    recs = [
        {"variant": v, "seed": 0, "epoch": e, "fd": fd * e}
        for v, fd in (("init", 20.0), ("init-bn-nomode", 1200.0))
        for e in (1, 2)
    ]
    plot_metric(recs, "fd", "FD", "FD", tmp_path / "fd.png")
    assert (tmp_path / "fd.png").exists()
