"""`bnlab gan-ablation`: the design, and an analysis that recovers known effects."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from bnlab.lab.experiments.ablation import analysis as ablation_analysis
from bnlab.lab.experiments.ablation import experiment as ablation
from bnlab.lab.experiments.ablation import report as ablation_report
from bnlab.lab.experiments.ablation.config import AblationConfig
from bnlab.lab.experiments.ablation.experiment import NOTEBOOK2, NOTEBOOK3, Cell, design
from bnlab.lab.models.gan import BLOG_VARIANTS, parse_variant
from bnlab.lab.results import Run, load_run
from bnlab.lab.runs import append_jsonl, atomic_write_json


def test_design_is_a_full_factorial_plus_the_notebooks():
    cells = design()
    factorial = [c for c in cells if not c.label]
    assert len(factorial) == 2 * 2 * 2 * 2 * 3
    assert len({c.name for c in cells}) == len(cells)
    assert {c.label for c in cells if c.label} == {
        "notebook2",
        "notebook2-shuffled",
        "notebook3",
        "notebook3-unshuffled",
    }


def test_notebook_cells_are_the_blog_variants():
    nb2, nb3 = NOTEBOOK2.variant(), NOTEBOOK3.variant()
    for mine, blog in ((nb2, BLOG_VARIANTS["init-bn-nomode"]), (nb3, BLOG_VARIANTS["init-bn"])):
        assert dataclasses.replace(mine, name=blog.name) == blog


def test_cell_specs_round_trip_through_the_variant_parser():
    for cell in design():
        assert parse_variant(cell.variant().spec()) == cell.variant()


def _fake_run(tmp_path, truth, seeds=(0, 1, 2), noise=0.05, covered=None) -> Run[AblationConfig]:
    """A run whose FDs follow ``truth(cell)`` times log-normal noise (and, where given, whose
    samples cover ``covered(cell)`` classes)."""
    rng = np.random.default_rng(0)
    cells = design()
    atomic_write_json(
        tmp_path / "config.json",
        {
            "experiment": "gan-ablation",
            "config": {"epochs": 3, "seeds": list(seeds), "cells": "all"},
        },
    )
    records = []
    for c in cells:
        for s in seeds:
            fd = truth(c) * math.exp(rng.normal(0, noise))
            r = {"seed": s, "variant": c.name, "epoch": 3, "fd": fd, "fd_train": fd * 2}
            if covered is not None:
                r["classes_covered"] = covered(c)
            records.append(r)
    append_jsonl(tmp_path / "metrics.jsonl", records)
    return load_run(tmp_path, AblationConfig, "gan-ablation")


def test_analysis_recovers_a_planted_main_effect_and_interaction(tmp_path):
    # BN on the logit breaks the GAN (x8) but only when D trains in train mode (modes none),
    # G-output BN costs x1.5 everywhere; nothing else matters.
    def truth(c: Cell) -> float:
        fd = 10.0
        if c.logit_bn and c.modes == "none":
            fd *= 8
        if c.g_out_bn:
            fd *= 1.5
        return fd

    result = ablation_analysis.analyse(_fake_run(tmp_path, truth)).responses["fd"]
    by_term = {t.term: t for t in result.terms}
    g = by_term["g_out_bn"]
    assert g.lo < 1.5 < g.hi and g.ratio == pytest.approx(1.5, rel=0.05)
    for null in ("d_in_bn", "joint"):
        assert by_term[null].lo < 1 < by_term[null].hi
    assert result.ranking[0].factor in ("logit_bn", "modes:notebook3", "modes:tidy")
    inter = by_term["logit_bn x modes:notebook3"]
    assert inter.hi < 1  # logit BN hurts much less once D switches to eval
    paths = {
        row.change: float(row.ratio)
        for row in result.paths
        if row.start.startswith("from notebook 2")
    }
    assert paths["mode switching -> notebook3"] < 0.2  # switching modes repairs notebook 2
    assert "BN on D's logit" in result.conclusion or "mode switching" in result.conclusion


def test_analysis_finds_nothing_in_pure_noise(tmp_path):
    run = _fake_run(tmp_path, lambda c: 10.0, noise=0.1)
    result = ablation_analysis.analyse(run).responses["fd"]
    significant = [t for t in result.terms if t.lo > 1 or t.hi < 1]
    assert len(significant) <= 2  # 26 terms at 95%: about one false positive expected


def test_report_has_tables_figure_and_conclusion(tmp_path):
    run = _fake_run(tmp_path, lambda c: 30.0 if c.g_out_bn else 10.0)
    sections = ablation_report.REPORT.sections(run)
    assert len(sections) == 3  # G in eval and train mode, the run's configuration
    assert sections[-1].title == "Run configuration"
    titles = [t.title for t in sections[0].tables]
    assert "Factors ranked by their effect on FD" in titles
    assert sections[0].figures and sections[0].figures[0].png[:4] == b"\x89PNG"
    assert "BN on G's output" in sections[0].intro
    assert not (run.dir / "summary.json").exists()  # the run writes it, never the report


def test_a_tiny_ablation_runs_end_to_end(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "cache"))
    cfg = AblationConfig(
        seeds=(0,),
        epochs=1,
        data=mnist_root,
        subset=300,
        metric_samples=200,
        classifier_steps=20,
        cells="notebooks",
        out=tmp_path / "abl",
        jobs=1,
    )
    lines: list[str] = []
    result = ablation.run(cfg, log=lines.append)
    assert lines[-1].startswith("gan-ablation: no factorial cells")
    names = {r["variant"] for r in result.records}
    assert names == {"notebook2", "notebook2-shuffled", "notebook3", "notebook3-unshuffled"}
    assert all("fd" in r and "fd_train" in r for r in result.records)
    html = (result.run_dir / "report.html").read_text()
    assert "Ablation: why did the BN GAN fail?" in html
    assert (result.run_dir / "summary.json").exists()


def test_no_effect_is_named_when_no_cell_learned(tmp_path):
    """Cells that all draw one class differ only in their noise: the analysis, the conclusion
    and the line printed at the end say so instead of naming the largest effect."""
    planted = lambda c: 30.0 if c.g_out_bn else 10.0  # noqa: E731
    noise = ablation_analysis.analyse(_fake_run(tmp_path / "a", planted, covered=lambda c: 1.0))
    assert "no cell has learned to draw digits" in noise.no_answer
    assert noise.responses["fd"].conclusion.startswith("No effect to name")
    run = load_run(tmp_path / "a", AblationConfig, "gan-ablation")
    assert "no effect to name" in ablation_analysis.result_line(noise, run)
    learned = ablation_analysis.analyse(
        _fake_run(tmp_path / "b", planted, covered=lambda c: 1.0 if c.g_out_bn else 9.0)
    )
    assert learned.no_answer == ""
    assert "largest effect" in ablation_analysis.result_line(learned, run)
