"""Tests of `bnlab ioffe2015`: the paper's network, the evaluation, the verdict rules, the
chunked training, and the ``--quick`` run end to end on the real MNIST digits (the
``mnist_root`` fixture; skipped with the reason when absent)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from bnlab.lab.configs import build, replace_flat
from bnlab.lab.experiments.common import Digits
from bnlab.lab.experiments.ioffe2015 import experiment as io
from bnlab.lab.experiments.ioffe2015 import train as io_train
from bnlab.lab.experiments.reports import build_report
from bnlab.lab.runs import read_jsonl
from bnlab.nn import BatchNorm1d


def test_net_is_the_papers_mlp_with_bn_before_each_sigmoid() -> None:
    tr = io.Ioffe2015Config().training
    plain, bn = (
        io.build_net(norm, seed=3, hidden=tr.hidden, layers=tr.layers, init_std=tr.init_std)
        for norm in (False, True)
    )
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
    assert float(w.std()) == pytest.approx(tr.init_std, rel=0.02)
    assert isinstance(bn[1], BatchNorm1d)


def test_evaluate_reads_the_last_sigmoid_input_and_keeps_running_stats() -> None:
    net = io.build_net(True, seed=0, hidden=100, layers=3, init_std=0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(500, 784, generator=torch.Generator().manual_seed(1))
    y = torch.randint(0, 10, (500,), generator=torch.Generator().manual_seed(2))
    out = io.evaluate(net, x, y, unit=7)
    pre = io.last_sigmoid_input(net)  # the net's first 8 modules
    assert len(pre) == 8 and isinstance(pre[-1], BatchNorm1d)
    with torch.no_grad():
        twin = io.build_net(True, seed=0, hidden=100, layers=3, init_std=0.5).train()
        z = io.last_sigmoid_input(twin)(x)[:, 7].double()
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


def _synthetic_data(seeds: tuple[int, ...] = (0,)) -> io.IoffeData:
    """Random "digits" (uint8 pixels, labels 0..9), cut per seed as a run would cut MNIST."""
    gen = torch.Generator().manual_seed(7)
    images = torch.randint(0, 256, (400, 784), generator=gen, dtype=torch.uint8)
    labels = torch.randint(0, 10, (400,), generator=gen)
    digits = Digits("synthetic", images, labels, images, labels, "test", Path("."), False)
    return io.IoffeData(digits, {s: digits.split(50, s) for s in seeds})


def test_each_seed_holds_out_its_own_digits_apart_from_its_training_digits() -> None:
    gen = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (100, 784), generator=gen, dtype=torch.uint8)
    labels = torch.arange(100) % 10
    one = Digits("synthetic", images, labels, images, labels, "test", Path("."), False)
    a, b = one.split(20, 0, "--test-size"), one.split(20, 1, "--test-size")
    for cut in (a, b):
        assert len(cut.held) == 20 and len(cut.train) == 80
        assert set(cut.train.tolist()).isdisjoint(cut.held.tolist())
        x, y = one.held_out(cut)
        assert x.dtype == torch.float32 and float(x.min()) >= -1 and float(x.max()) <= 1
        torch.testing.assert_close(y, labels[cut.held])
    assert not torch.equal(a.held, b.held) and "holds out 20" in a.description
    test_images, test_labels = images[:30].flip(1), labels[:30]
    two = Digits("synthetic", images, labels, test_images, test_labels, "train", Path("."), True)
    cut = two.split(20, 0, "--test-size")
    assert torch.equal(cut.train, torch.arange(100)) and int(cut.held.max()) < 30
    assert torch.equal(two.training(cut)[1], labels) and "of the test split" in cut.description
    with pytest.raises(ValueError, match=r"--test-size must be in 1\.\.30"):
        two.split(31, 0, "--test-size")
    with pytest.raises(ValueError, match=r"--test-size must be in 1\.\.98"):
        one.split(99, 0, "--test-size")


@pytest.mark.usefixtures("seeded_one_thread")
def test_a_net_trained_in_chunks_equals_the_net_trained_at_once() -> None:
    data = _synthetic_data()
    training = io.Training(steps=50, eval_every=20, batch_size=10, hidden=16, layers=2,
                           init_std=0.1, lr=0.5)  # fmt: skip
    job = io.NetJob(0, "bn", training, unit=3)
    whole = io_train.train_net(job, None, 0, 50, data)
    assert whole.done == 50 and whole.state is None
    assert [(r["step"], r["loss"] is None) for r in whole.records] == [
        (0, True),
        (20, False),
        (40, False),
        (50, False),
    ]
    records, state, start = [], None, 0
    for end in (13, 20, 47, 50):  # boundaries between evaluations carry the loss sum
        chunk = io_train.train_net(job, state, start, end, data)
        assert chunk.done == end
        records += chunk.records
        state, start = chunk.state, end
    assert records == whole.records


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"unit": 100}, "--unit must be in 0..99"),
        ({"batch_size": 1}, "--batch-size must be at least 2"),
        ({"eval_every": 0}, "--eval-every must be at least 1"),
        ({"seeds": (1, 1)}, "--seeds must not repeat"),
        ({"lr": float("nan")}, "--lr must be a positive number"),
        ({"init_std": 0.0}, "--init-std must be a positive number"),
    ],
)
def test_bad_config_is_a_one_line_value_error_before_any_work(
    tmp_path: Path, changes: dict[str, Any], match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        io.run(build(io.Ioffe2015Config, out=tmp_path / "r", **changes), log=lambda _m: None)
    assert not (tmp_path / "r").exists()


def test_quick_run_writes_the_run_directory_and_a_report_rebuilt_from_it(
    tmp_path: Path, mnist_root: Path, check_run_files: Any, report_from_files: Any
) -> None:
    cfg = build(io.Ioffe2015Config, quick=True, seeds=(0, 1), data=mnist_root, out=tmp_path / "run")
    lines: list[str] = []
    result = io.run(cfg, log=lines.append)
    run_dir = result.run_dir
    assert result.failed == {}

    meta = check_run_files(run_dir, "ioffe2015", ["figure1.png"])
    quick = replace_flat(cfg, io.EXPERIMENT.quick).training
    assert meta["config"]["steps"] == quick.steps and meta["paper_steps"] == 50_000
    assert {p.name for p in (run_dir / "checkpoints").rglob("*.pt")} == {"baseline.pt", "bn.pt"}
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert records == result.records
    steps = io.eval_steps(quick.steps, quick.eval_every)
    assert sorted((r["seed"], r["net"], r["step"]) for r in records) == [
        (seed, net, step) for seed in (0, 1) for net in io.NETS for step in steps
    ]
    for r in records:
        assert {"seed", "accuracy", "loss", "p15", "p50", "p85", "unit_medians"} <= set(r)
        assert r["p15"] <= r["p50"] <= r["p85"] and len(r["unit_medians"]) == quick.hidden
        assert (r["loss"] is None) == (r["step"] == 0)

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert [c["id"] for c in summary["claims"]] == ["Fig. 1(a)", "Fig. 1(b, c)"]
    assert summary["seeds"] == [0, 1] and len(summary["per_seed"]) == 4
    html = (run_dir / "report.html").read_text()
    assert "Fig. 1(a)" in html and "50,000" in html and html.count("<img") == 1
    marks = "/".join(f"{m:,}" for m in summary["checkpoints"])
    assert lines[-1].startswith(f"ioffe2015: accuracy at steps {marks}: baseline ")
    assert "\n" not in lines[-1]

    (section,) = report_from_files(io_train, "train_net", run_dir, "figure1.png")
    assert [c.id for c in section.claims] == ["Fig. 1(a)", "Fig. 1(b, c)"]
    assert len(section.figures) == 1 and len(section.tables) == 2
    (run_dir / "report.html").unlink()
    assert build_report([run_dir]) == run_dir / "report.html"  # bnlab report finds it


def test_training_flags_keep_their_flat_names_and_config_json_stays_flat() -> None:
    import tyro

    from bnlab.lab.configs import config_from_dict, config_to_dict

    cfg = tyro.cli(io.Ioffe2015Config, args=["--steps", "300", "--batch-size", "30", "--unit", "5"])
    assert cfg.training == io.Training(steps=300, batch_size=30) and cfg.unit == 5
    flat = config_to_dict(cfg)
    assert flat["steps"] == 300 and "training" not in flat
    assert config_from_dict(io.Ioffe2015Config, flat) == cfg
