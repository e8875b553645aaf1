"""Tests of `bnlab ioffe2015`: the paper's network, the evaluation, the verdict rules, and a
tiny end-to-end run on the real MNIST digits (the ``mnist_root`` fixture; skipped with the
reason when absent)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bnlab.experiments import ioffe2015 as io
from bnlab.nn import BatchNorm1d
from bnlab.runs import read_jsonl


def test_net_is_the_papers_mlp_with_bn_before_each_sigmoid() -> None:
    cfg = io.Config()
    plain, bn = io.build_net(cfg, bn=False, seed=3), io.build_net(cfg, bn=True, seed=3)
    kinds = [type(m).__name__ for m in bn]
    assert kinds == ["Linear", "BatchNorm1d", "Sigmoid"] * 3 + ["Linear"]
    assert [type(m).__name__ for m in plain] == ["Linear", "Sigmoid"] * 3 + ["Linear"]
    shapes = [tuple(m.weight.shape) for m in plain if isinstance(m, nn.Linear)]
    assert shapes == [(100, 784), (100, 100), (100, 100), (10, 100)]
    lin = [[m for m in net if isinstance(m, nn.Linear)] for net in (plain, bn)]
    for a, b in zip(*lin, strict=True):  # same start: the difference is BN
        torch.testing.assert_close(a.weight, b.weight)
        assert float(a.bias.detach().abs().max()) == 0.0
    w = torch.cat([m.weight.detach().reshape(-1) for m in lin[0]])
    assert float(w.std()) == pytest.approx(cfg.init_std, rel=0.02)
    assert isinstance(bn[1], BatchNorm1d)


def test_evaluate_reads_the_last_sigmoid_input_and_keeps_running_stats() -> None:
    cfg = io.Config(init_std=0.5)
    net = io.build_net(cfg, bn=True, seed=0)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(500, 784, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(2))
    out = io.evaluate(net, x, y, unit=7)
    pre = io.last_sigmoid_input(net)  # the net's first 8 modules
    assert len(pre) == 8 and isinstance(pre[-1], BatchNorm1d)
    with torch.no_grad():
        z = io.last_sigmoid_input(io.build_net(cfg, bn=True, seed=0).train())(x)[:, 7].double()
    q = torch.quantile(z, torch.tensor([0.15, 0.5, 0.85], dtype=torch.float64))
    assert [out["p15"], out["p50"], out["p85"]] == pytest.approx(q.tolist(), abs=1e-6)
    assert len(out["unit_medians"]) == 100 and 0.0 <= out["accuracy"] <= 1.0
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])  # evaluation never trains the statistics
    assert net.training


def _records(acc: dict[str, list[float]], medians: dict[str, list[float]]) -> list[dict[str, Any]]:
    out = []
    for net in io.NETS:
        for k, (a, m) in enumerate(zip(acc[net], medians[net], strict=True)):
            out.append(
                {"seed": 0, "net": net, "step": 100 * k, "accuracy": a, "p15": m - 1,
                 "p50": m, "p85": m + 1, "unit_medians": [m, m / 2]}
            )  # fmt: skip
    return out


def test_verdicts_follow_the_stated_rules() -> None:
    steps = 11  # evaluations at 0, 100, ..., 1000: checkpoints 100, 500, 1000
    rising = [0.1 + 0.08 * k for k in range(steps)]
    faster = [min(0.95, 0.5 + 0.1 * k) for k in range(steps)]
    stable, drifting = [0.1] * steps, [0.2 * k for k in range(steps)]
    c = io.claims(
        _records({"baseline": rising, "bn": faster}, {"baseline": drifting, "bn": stable})
    )
    assert [x.id for x in c] == ["Fig. 1(a)", "Fig. 1(b, c)"]
    assert [x.verdict for x in c] == ["holds", "holds"]
    assert "step 100: BN 0.600 vs 0.180" in c[0].value
    caught_up = [min(0.98, 0.1 + 0.1 * k) for k in range(steps)]
    c = io.claims(
        _records({"baseline": caught_up, "bn": faster}, {"baseline": stable, "bn": drifting})
    )
    assert [x.verdict for x in c] == ["inconclusive", "does not hold"]
    c = io.claims(_records({"baseline": faster, "bn": rising}, {"baseline": stable, "bn": stable}))
    assert [x.verdict for x in c] == ["does not hold", "does not hold"]


def test_eval_steps_include_start_and_end() -> None:
    assert io.eval_steps(1000, 300) == [0, 300, 600, 900, 1000]
    assert io.eval_steps(600, 300) == [0, 300, 600]


def test_bad_config_is_a_one_line_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--unit"):
        io.run(io.Config(unit=100, out=tmp_path / "r"), log=lambda _m: None)
    with pytest.raises(ValueError, match="--batch-size"):
        io.run(io.Config(batch_size=1, out=tmp_path / "r"), log=lambda _m: None)
    assert not (tmp_path / "r").exists()


def test_tiny_run_writes_every_file_and_a_report_built_from_them(
    tmp_path: Path, mnist_root: Path, check_run_files: Any, report_from_files: Any
) -> None:
    cfg = io.Config(steps=90, eval_every=40, test_size=200, data=mnist_root, out=tmp_path / "run")
    lines: list[str] = []
    result = io.run(cfg, log=lines.append)
    run_dir = result.run_dir

    meta = check_run_files(run_dir, "ioffe2015", ["figure1.png"])
    assert meta["config"]["steps"] == 90
    assert meta["paper_steps"] == 50_000
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert [(r["net"], r["step"]) for r in records] == [
        (net, step) for step in (0, 40, 80, 90) for net in io.NETS
    ]
    for r in records:
        assert {"seed", "accuracy", "loss", "p15", "p50", "p85", "unit_medians"} <= set(r)
        assert r["p15"] <= r["p50"] <= r["p85"] and len(r["unit_medians"]) == 100
        assert (r["loss"] is None) == (r["step"] == 0)
    assert records == result.records

    html = (run_dir / "report.html").read_text()
    assert "Fig. 1(a)" in html and "50,000" in html and html.count("<img") == 1

    (section,) = report_from_files(io, "train_seed", run_dir, "figure1.png")
    assert [c.id for c in section.claims] == ["Fig. 1(a)", "Fig. 1(b, c)"]
    assert len(section.figures) == 1 and len(section.tables) == 2
    assert lines[-1].startswith("ioffe2015: accuracy at steps 40/80/90") and "\n" not in lines[-1]
