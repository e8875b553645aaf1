"""Tests of `bnlab activations`: the statistics, the nets, the chunked training, and the
``--quick`` run end to end.

The statistics are checked against NumPy / SciPy computed independently. The end-to-end test
runs on the real MNIST digits (the ``mnist_root`` fixture) and skips with the reason when those
files are absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from scipy import stats as sps

import bnlab.nn as bnn
from bnlab.lab import cli
from bnlab.lab.configs import build, replace_flat
from bnlab.lab.experiments.activations import experiment as act
from bnlab.lab.experiments.activations import measure
from bnlab.lab.experiments.activations import train as act_train
from bnlab.lab.experiments.activations.config import NetTraining
from bnlab.lab.experiments.activations.report import SUMMARY_FIGURES
from bnlab.lab.experiments.common import Digits
from bnlab.lab.experiments.reports import build_report
from bnlab.lab.runs import read_jsonl

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
    assert sum(s["hist"]["counts"]) == pytest.approx(v.size * (1 - 2 * measure.HIST_TAIL), abs=2)


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
    plain = act.build_net("tanh", "xavier", bn=False, depth=3, width=8, seed=5)
    bn = act.build_net("tanh", "xavier", bn=True, depth=3, width=8, seed=5)
    lin = [[m.weight for m in net if isinstance(m, torch.nn.Linear)] for net in (plain, bn)]
    assert [tuple(w.shape) for w in lin[0]] == [(8, 784), (8, 8), (8, 8), (10, 8)]
    for a, b in zip(*lin, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [type(m) for m in bn[:3]] == [torch.nn.Linear, bnn.BatchNorm1d, torch.nn.Tanh]
    assert sum(isinstance(m, bnn.BatchNorm1d) for m in bn) == 3
    other = act.build_net("relu", "xavier", bn=False, depth=3, width=8, seed=5)
    assert not torch.equal(other[0].weight, plain[0].weight)  # its own stream per activation


def test_recording_normalizes_bn_layers_and_leaves_running_stats_untouched() -> None:
    net = act.build_net("relu", "unit", bn=True, depth=4, width=32, seed=0)
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
    assert c5["C5a"].verdict == "holds" and "2/2" in c5["C5a"].value
    too_far = rows(0.2, 0.3, "small") + rows(0.05, 0.2, "he")  # lower, but not Gaussian-like
    assert act.claims(too_far, depth=3)[0].verdict == "inconclusive"
    worse = rows(0.4, 0.3, "small") + rows(0.05, 0.2, "he")
    assert act.claims(worse, depth=3)[0].verdict == "does not hold"


def _synthetic_data(n: int = 300, eval_size: int = 60) -> act.ActivationsData:
    """Random "digits" (uint8 pixels, labels 0..9), cut as a run would cut MNIST."""
    gen = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (n, 784), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (n,), generator=gen)
    digits = Digits("synthetic", images, labels, images, labels, "test", Path("."), False)
    return act.ActivationsData(digits, digits.split(eval_size, 0))


def _without_timing(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


@pytest.mark.usefixtures("seeded_one_thread")
def test_a_net_trained_in_chunks_equals_the_net_trained_at_once() -> None:
    data = _synthetic_data()
    training = NetTraining(depth=3, width=16, steps=25, batch_size=20, lr=1e-3, seed=1)
    job = act.NetJob("tanh", "he", "bn", training)
    whole = act_train.train_net(job, None, 0, 25, data)
    assert whole.done == 25 and whole.state is None and whole.failed is None
    records, state, start = [], None, 0
    for end in (7, 13, 25):  # boundaries inside loss windows: the window sum is carried
        chunk = act_train.train_net(job, state, start, end, data)
        assert chunk.done == end and chunk.files == {}
        records += chunk.records
        state, start = chunk.state, end
    assert _without_timing(records) == _without_timing(whole.records)
    kinds = [r["type"] for r in whole.records]
    assert kinds.count("layer") == 3 * 2 * 2 and kinds.count("net") == 1
    assert [r["step"] for r in whole.records if r["type"] == "loss"] == [10, 20, 25]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"inits": ("orthogonal",)}, "--inits: orthogonal not among small, unit, xavier, he"),
        ({"inits": ()}, "--inits: nothing given"),
        ({"norms": ("bn", "bn")}, "--norms must not repeat"),
        ({"depth": 0}, "--depth must be at least 1"),
        ({"steps": 0}, "--steps must be at least 1"),
        ({"batch_size": 1}, "--batch-size must be at least 2"),
        ({"eval_size": 1}, "--eval-size must be at least 2"),
        ({"lr": 0.0}, "--lr must be in"),
    ],
)
def test_bad_config_is_a_one_line_value_error_before_any_work(
    tmp_path: Path, changes: dict[str, Any], match: str
) -> None:
    cfg = build(act.ActivationsConfig, out=tmp_path / "r", **changes)
    with pytest.raises(ValueError, match=match):
        act.run(cfg, log=lambda _m: None)
    assert not (tmp_path / "r").exists()


def test_the_command_line_refuses_an_unknown_init_naming_the_choices(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["activations", "--inits", "small,orthogonal", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "'orthogonal' is not one of small, unit, xavier, he" in err
    assert not (tmp_path / "r").exists()


def test_quick_run_writes_the_run_directory_and_a_report_rebuilt_from_it(
    tmp_path: Path, mnist_root: Path, check_run_files: Any, report_from_files: Any
) -> None:
    cfg = act.ActivationsConfig(quick=True, data=mnist_root, out=tmp_path / "run")
    lines: list[str] = []
    result = act.run(cfg, log=lines.append)
    run_dir = result.run_dir
    assert run_dir == tmp_path / "run" and result.failed == {}

    pngs = {p.name for p in run_dir.glob("*.png")}
    meta = check_run_files(run_dir, "activations", pngs)
    quick = replace_flat(cfg, act.EXPERIMENT.quick)
    depth, width, steps = quick.training.depth, quick.training.width, quick.training.steps
    assert meta["config"]["depth"] == depth and meta["config"]["quick"] is True
    assert meta["train_size"] in (10_000 - quick.eval_size, 60_000)
    nets = [f"{a}-{i}-{n}" for a in quick.activations for i in quick.inits for n in quick.norms]
    assert meta["settings"] == nets
    assert {p.name for p in (run_dir / "checkpoints").iterdir()} == {f"{s}.pt" for s in nets}

    records = read_jsonl(run_dir / "metrics.jsonl")
    assert records == result.records
    layers = [r for r in records if r["type"] == "layer"]
    assert len(layers) == len(nets) * depth * 2 * 2  # net x layer x stage x kind
    for r in layers:
        assert all(k in r for k in STAT_FIELDS), r.keys()
        assert r["finite"] == 1.0 and r["n"] == quick.eval_size * width
    summaries = {r["setting"]: r for r in records if r["type"] == "net"}
    assert sorted(summaries) == sorted(nets)
    assert all(0 <= s["accuracy_trained"] <= 1 and not s["diverged"] for s in summaries.values())
    losses = [r["step"] for r in records if r["type"] == "loss" and r["setting"] == nets[0]]
    assert losses == list(range(10, steps + 1, 10))

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert [c["id"] for c in summary["claims"]] == ["C5a", "C5a (shape only)"]
    assert len(summary["pairs"]) == len(quick.activations) * len(quick.inits)
    expected = {f"hist-{s}.png" for s in nets} | set(SUMMARY_FIGURES)
    assert expected | {"training-loss.png"} == pngs
    html = (run_dir / "report.html").read_text()
    assert "C5a" in html and html.count("<img") == len(pngs)
    assert lines[-1].startswith("activations: KS to N(0,1)") and "\n" not in lines[-1]

    sections = report_from_files(act_train, "train_net", run_dir, "depth-std.png")
    assert [s.anchor for s in sections] == ["c5", "histograms", "training"]
    assert [c.id for c in sections[0].claims] == ["C5a", "C5a (shape only)"]
    assert len(sections[0].figures) == 3 and len(sections[1].figures) == len(nets)
    (run_dir / "report.html").unlink()
    assert build_report([run_dir]) == run_dir / "report.html"  # bnlab report finds it

    with pytest.raises(ValueError, match="already holds a run"):
        act.run(cfg, log=lines.append)
