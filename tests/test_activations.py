"""Tests of `bnlab activations`: the statistics, the nets, and a tiny end-to-end run.

The statistics are checked against NumPy / SciPy computed independently. The end-to-end test
trains a few tiny nets on the real MNIST digits (the ``mnist_root`` fixture) and skips with
the reason when those files are absent.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats as sps

import bnlab.nn as bnn
from bnlab.experiments import activations as act
from bnlab.runs import read_jsonl

STAT_FIELDS = ("mean", "std", "p15", "p50", "p85", "skew", "kurtosis", "ks", "ks_shape", "hist")


def test_layer_stats_match_numpy_and_scipy() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(400, 50, generator=gen) * 2.0 + 0.5  # (B, units), N(0.5, 2²)
    s = act.layer_stats(x)
    v = x.double().reshape(-1).numpy()
    assert s["mean"] == pytest.approx(v.mean(), abs=1e-12)
    assert s["std"] == pytest.approx(v.std(), rel=1e-12)
    for q in (15, 50, 85):
        assert s[f"p{q}"] == pytest.approx(np.percentile(v, q), rel=1e-12)
    assert s["skew"] == pytest.approx(sps.skew(v), abs=1e-10)
    assert s["kurtosis"] == pytest.approx(sps.kurtosis(v), abs=1e-10)  # excess (Fisher)
    assert s["ks"] == pytest.approx(sps.kstest(v, "norm").statistic, abs=1e-12)
    z = (v - v.mean()) / v.std()
    assert s["ks_shape"] == pytest.approx(sps.kstest(z, "norm").statistic, abs=1e-12)
    assert sum(s["hist"]["counts"]) == pytest.approx(v.size * (1 - 2 * act.HIST_TAIL), abs=2)


def test_ks_is_near_zero_for_standard_normal_and_large_for_a_collapsed_layer() -> None:
    gen = torch.Generator().manual_seed(1)
    normal = act.layer_stats(torch.randn(20_000, generator=gen))
    collapsed = act.layer_stats(torch.randn(20_000, generator=gen) * 1e-6)
    assert normal["ks"] < 0.02 and normal["ks_shape"] < 0.02
    assert collapsed["ks"] > 0.45  # all mass at 0: half the normal CDF away
    assert collapsed["ks_shape"] < 0.02  # ... yet perfectly Gaussian in shape


def test_layer_stats_of_a_dead_layer_are_defined_where_they_can_be() -> None:
    s = act.layer_stats(torch.zeros(100, 10))
    assert s["std"] == 0 and s["skew"] is None and s["ks_shape"] is None
    assert s["ks"] == pytest.approx(0.5) and sum(s["hist"]["counts"]) == 1000
    nan = act.layer_stats(torch.tensor([1.0, float("nan"), 2.0, float("inf")]))
    assert nan["finite"] == 0.5 and nan["mean"] == pytest.approx(1.5)


def test_plain_and_bn_nets_start_from_the_same_linear_weights() -> None:
    cfg = act.Config(depth=3, width=8, seed=5)
    plain = act.build_net(cfg, "tanh", "xavier", bn=False)
    bn = act.build_net(cfg, "tanh", "xavier", bn=True)
    lin = [[m.weight for m in net if isinstance(m, torch.nn.Linear)] for net in (plain, bn)]
    assert [tuple(w.shape) for w in lin[0]] == [(8, 784), (8, 8), (8, 8), (10, 8)]
    for a, b in zip(*lin, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [type(m) for m in bn[:3]] == [torch.nn.Linear, bnn.BatchNorm1d, torch.nn.Tanh]
    assert sum(isinstance(m, bnn.BatchNorm1d) for m in bn) == 3
    other = act.build_net(cfg, "relu", "xavier", bn=False)  # its own stream per activation
    assert not torch.equal(other[0].weight, plain[0].weight)


def test_recording_normalizes_bn_layers_and_leaves_running_stats_untouched() -> None:
    net = act.build_net(act.Config(depth=4, width=32, seed=0), "relu", "unit", bn=True)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(256, 784, generator=torch.Generator().manual_seed(2))
    rows = act.record_layers(net, x, "relu")
    assert [(r["layer"], r["kind"]) for r in rows] == [
        (layer, kind) for layer in range(1, 5) for kind in ("pre", "post")
    ]
    for r in rows:
        if r["kind"] == "pre":  # BN output with gamma 1, beta 0: mean 0, std 1 per unit
            assert abs(r["mean"]) < 1e-5 and r["std"] == pytest.approx(1.0, abs=1e-3)
        else:
            assert 0.3 < r["saturated"] < 0.7  # about half the ReLUs are off
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, before[k])


def test_claim_rule_turns_numbers_into_the_stated_verdicts() -> None:
    def rows(bn_ks: float, plain_ks: float, init: str) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for norm, ks in (("bn", bn_ks), ("plain", plain_ks)):
            for layer in (1, 2, 3):
                out.append(
                    {
                        "type": "layer", "setting": f"tanh-{init}-{norm}", "activation": "tanh",
                        "init": init, "norm": norm, "stage": "trained", "kind": "pre",
                        "layer": layer, "ks": ks, "ks_shape": ks / 10,
                    }
                )  # fmt: skip
        return out

    holds = rows(0.02, 0.3, "small") + rows(0.05, 0.2, "he")
    c5 = {c.id: c for c in act.claims(holds, depth=3)}
    assert c5["C5"].verdict == "holds" and "2/2" in c5["C5"].value
    too_far = rows(0.2, 0.3, "small") + rows(0.05, 0.2, "he")  # lower, but not Gaussian-like
    assert act.claims(too_far, depth=3)[0].verdict == "inconclusive"
    worse = rows(0.4, 0.3, "small") + rows(0.05, 0.2, "he")
    assert act.claims(worse, depth=3)[0].verdict == "does not hold"


def test_bad_config_is_a_one_line_value_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--inits"):
        act.run(act.Config(inits=("orthogonal",), out=tmp_path / "r"), log=lambda _m: None)
    with pytest.raises(ValueError, match="--depth"):
        act.run(act.Config(depth=0, out=tmp_path / "r"), log=lambda _m: None)


def test_tiny_run_writes_every_file_and_a_report_built_from_them(
    tmp_path: Path, mnist_root: Path, check_run_files: Any, report_from_files: Any
) -> None:
    cfg = act.Config(
        depth=3,
        width=16,
        inits=("he",),
        steps=12,
        batch_size=50,
        eval_size=100,
        data=mnist_root,
        out=tmp_path / "run",
    )
    lines: list[str] = []
    result = act.run(cfg, log=lines.append)
    run_dir = result.run_dir
    assert run_dir == tmp_path / "run"

    pngs = {p.name for p in run_dir.glob("*.png")}
    meta = check_run_files(run_dir, "activations", pngs)
    assert meta["config"]["depth"] == 3
    assert meta["train_size"] == 9_900 or meta["train_size"] == 60_000

    nets = [f"{a}-{i}-{n}" for a in ("tanh", "relu") for i in ("he",) for n in ("plain", "bn")]
    assert meta["settings"] == nets
    records = read_jsonl(run_dir / "metrics.jsonl")
    layers = [r for r in records if r["type"] == "layer"]
    assert len(layers) == len(nets) * 3 * 2 * 2  # net x layer x stage x kind
    for r in layers:
        assert all(k in r for k in STAT_FIELDS), r.keys()
        assert r["stage"] in ("init", "trained") and r["kind"] in ("pre", "post")
        assert r["finite"] == 1.0 and r["n"] == 100 * 16
    summaries = {r["setting"]: r for r in records if r["type"] == "net"}
    assert sorted(summaries) == sorted(nets)
    assert all(0 <= s["accuracy_trained"] <= 1 and not s["diverged"] for s in summaries.values())
    losses = [r for r in records if r["type"] == "loss" and r["setting"] == nets[0]]
    assert [r["step"] for r in losses] == [10, 12]

    expected = {act.hist_figure_name(s) for s in nets} | set(act.SUMMARY_FIGURES)
    assert expected | {"training-loss.png"} == pngs
    html = (run_dir / "report.html").read_text()
    assert "C5" in html and html.count("<img") == len(pngs)

    sections = report_from_files(act, "train", run_dir, "depth-std.png")
    assert [s.anchor for s in sections] == ["c5", "histograms", "training"]
    assert [c.id for c in sections[0].claims] == ["C5", "C5 (shape only)"]
    assert len(sections[0].figures) == 3 and len(sections[1].figures) == len(nets)
    assert len(lines) >= 2 and lines[-1].startswith("activations: KS to N(0,1)")
    assert "\n" not in lines[-1]

    with pytest.raises(ValueError, match="already holds a run"):
        act.run(cfg, log=lines.append)
