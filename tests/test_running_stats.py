"""bnlab running-stats: precise BN, the cumulative shadow, population statistics, chunked
training, the --quick run end to end and its report rebuilt from the run directory."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tyro
from torch import nn
from torch.optim.swa_utils import update_bn

import bnlab.nn as bnn
from bnlab.lab.configs import build, config_from_dict, config_to_dict
from bnlab.lab.data import to_unit_range
from bnlab.lab.experiments.running_stats import experiment as rs
from bnlab.lab.models.mlp import forward_with_bn, mlp

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _trained_model(hidden: tuple[int, ...] = (12, 10), steps: int = 5) -> nn.Sequential:
    """A small BN MLP whose weights and running statistics have moved away from init."""
    model = mlp((6, *hidden, 3), "relu", bn=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(steps):
        x = torch.randn(16, 6) * 2 + 1
        loss = nn.functional.cross_entropy(model(x), torch.randint(0, 3, (16,)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


# ---- precise BN -------------------------------------------------------------------------------


def test_precise_bn_matches_torch_swa_update_bn() -> None:
    model = _trained_model()
    batches = [torch.randn(20, 6) * 3 - 1 for _ in range(7)]
    oracle = bnn.to_torch(copy.deepcopy(model))
    assert type(oracle[1]) is nn.BatchNorm1d  # a torch layer: the independent oracle
    update_bn(batches, oracle)
    assert bnn.recompute_stats(model, batches) == 7
    for ours, theirs in zip(rs.bn_stats(model), rs.bn_stats(oracle), strict=True):
        torch.testing.assert_close(ours[0], theirs[0])
        torch.testing.assert_close(ours[1], theirs[1])
    # update_bn leaves the number of batches in num_batches_tracked; bnlab keeps the step count
    assert int(oracle[1].num_batches_tracked) == 7
    assert int(model[1].num_batches_tracked) == 5


def test_torch_update_bn_on_bnlab_layers_gives_the_same_statistics() -> None:
    """bnlab's layers are torch's classes, so update_bn finds them too."""
    model = _trained_model()
    batches = [torch.randn(20, 6) * 3 - 1 for _ in range(3)]
    theirs = copy.deepcopy(model)
    before = rs.bn_stats(model)
    update_bn(batches, theirs)
    bnn.recompute_stats(model, batches)
    for ours, swa, (m0, _) in zip(rs.bn_stats(model), rs.bn_stats(theirs), before, strict=True):
        assert torch.equal(ours[0], swa[0]) and torch.equal(ours[1], swa[1])
        assert not torch.equal(ours[0], m0)


def test_precise_bn_is_the_plain_average_of_batch_statistics() -> None:
    model = _trained_model(hidden=(5,))
    batches = [torch.randn(30, 6) + k for k in range(4)]  # different batches, different stats
    bnn.recompute_stats(model, batches)
    w, b = (model[0].weight.detach().double().numpy(), model[0].bias.detach().double().numpy())
    h = [x.double().numpy() @ w.T + b for x in batches]  # BN input of each batch
    np.testing.assert_allclose(
        model[1].running_mean.numpy(), np.mean([a.mean(0) for a in h], axis=0), rtol=1e-5
    )
    np.testing.assert_allclose(
        model[1].running_var.numpy(), np.mean([a.var(0, ddof=1) for a in h], axis=0), rtol=1e-5
    )


def test_precise_bn_restores_momentum_and_modes_and_keeps_the_weights() -> None:
    model = _trained_model()
    model.eval()
    model[1].train()  # a mixed state must come back exactly
    model[3].momentum = 0.3
    params = {k: v.clone() for k, v in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    bnn.recompute_stats(model, [torch.randn(8, 6)])
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert (model[1].momentum, model[3].momentum) == (0.1, 0.3)
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k


def test_precise_bn_leaves_a_model_without_bn_alone() -> None:
    model = mlp((6, 4, 3), "relu")
    assert bnn.recompute_stats(model, [torch.randn(8, 6)]) == 0


# ---- the cumulative shadow and the population ------------------------------------------------


def test_cumulative_shadow_is_the_plain_average_of_batch_statistics() -> None:
    shadow = rs.ShadowStats([3, 2], momentum=None)
    batches = [[torch.randn(10, 3) * (k + 1), torch.randn(10, 2) + k] for k in range(6)]
    for inputs in batches:
        shadow.update(inputs)
    for layer, (mean, var) in enumerate(shadow.stats()):
        xs = [b[layer].double().numpy() for b in batches]
        np.testing.assert_allclose(mean.numpy(), np.mean([x.mean(0) for x in xs], 0), rtol=1e-5)
        np.testing.assert_allclose(var.numpy(), np.mean([x.var(0, ddof=1) for x in xs], 0),
                                   rtol=1e-5)  # fmt: skip


def test_shadow_with_the_models_momentum_reproduces_its_running_statistics() -> None:
    model = mlp((6, 7, 5, 3), "relu", bn=True)
    shadow = rs.ShadowStats([7, 5], momentum=0.1)
    opt = torch.optim.SGD(model.parameters(), lr=0.3)
    for _ in range(8):
        logits, io = forward_with_bn(model, torch.randn(12, 6))
        logits.square().mean().backward()
        opt.step()
        opt.zero_grad()
        shadow.update([x.detach() for x, _ in io])
    for ours, model_stats in zip(shadow.stats(), rs.bn_stats(model), strict=True):
        assert torch.equal(ours[0], model_stats[0]) and torch.equal(ours[1], model_stats[1])


def test_population_stats_match_numpy_layer_by_layer() -> None:
    model = _trained_model(hidden=(6, 4))
    x = torch.randn(300, 6) * 2
    got = rs.population_stats(model, x)
    a = x.double().numpy()
    expected = []
    for lin, bn in ((model[0], model[1]), (model[3], model[4])):
        h = a @ lin.weight.detach().double().numpy().T + lin.bias.detach().double().numpy()
        mu, var_b = h.mean(0), h.var(0)  # population mean, biased variance (normalizes)
        expected.append((mu, h.var(0, ddof=1)))
        x_hat = (h - mu) / np.sqrt(var_b + bn.eps)
        a = np.maximum(bn.weight.detach().double().numpy() * x_hat + bn.bias.detach().numpy(), 0)
    for (m, v), (em, ev) in zip(got, expected, strict=True):
        np.testing.assert_allclose(m.numpy(), em, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(v.numpy(), ev, rtol=1e-4, atol=1e-6)
    before = rs.bn_stats(model)
    for (m0, _), (m1, _) in zip(before, rs.bn_stats(model), strict=True):
        assert torch.equal(m0, m1)  # the model's own buffers did not move


def test_stat_errors_are_scale_free_and_zero_for_the_truth() -> None:
    truth = [(torch.tensor([1.0, -2.0]), torch.tensor([4.0, 0.25]))]
    assert rs.stat_errors(truth, truth) == ([0.0], [0.0])
    est = [(torch.tensor([1.0 + 0.2, -2.0 + 0.05]), torch.tensor([4.4, 0.275]))]
    mean_err, var_err = rs.stat_errors(est, truth)
    assert mean_err[0] == pytest.approx(0.1, rel=1e-4)  # 0.2 / 2 and 0.05 / 0.5
    assert var_err[0] == pytest.approx(0.1, rel=1e-4)


def test_load_bn_stats_returns_an_eval_copy_and_leaves_the_model_alone() -> None:
    model = _trained_model()
    stats = [(torch.full((12,), 3.0), torch.full((12,), 2.0)), (torch.zeros(10), torch.ones(10))]
    before = rs.bn_stats(model)
    net = rs.load_bn_stats(model, stats)
    assert not net.training and model.training
    assert torch.equal(net[1].running_mean, stats[0][0])
    assert torch.equal(rs.bn_stats(model)[0][0], before[0][0])
    with pytest.raises(ValueError, match="BN layers"):
        rs.load_bn_stats(model, stats[:1])


# ---- jobs and chunks --------------------------------------------------------------------------


def _tiny_data(n: int = 140) -> rs.StatsData:
    gen = torch.Generator().manual_seed(0)
    x = to_unit_range(torch.randint(0, 256, (n, 784), dtype=torch.uint8, generator=gen))
    y = torch.randint(0, 10, (n,), generator=gen)
    return rs.StatsData(x[:100], y[:100], x[100:], y[100:])


def _tiny_job(trace: bool = True, **kw: Any) -> rs.RunningStatsJob:
    training = rs.Training(**{"epochs": 3, "batch_size": 20, "hidden": (8, 6), **kw})
    return rs.RunningStatsJob(0, training, 60, trace)


def test_plan_traces_the_first_seed_and_trains_on_the_whole_pool_by_default() -> None:
    jobs = rs.EXPERIMENT.plan(rs.Config(seeds=(4, 2, 7)), _tiny_data())
    assert [j.key for j in jobs] == ["s4", "s2", "s7"]
    assert [j.trace for j in jobs] == [True, False, False]
    assert {j.train_size for j in jobs} == {100} and {j.unit_steps for j in jobs} == {2}
    assert all(j.training is jobs[0].training for j in jobs)  # the run's settings, not copies


def test_training_in_chunks_equals_training_in_one_go() -> None:
    """A job resumed from its state (model, Adam, every shadow's statistics and batch count)
    continues exactly where it stopped."""
    data, job = _tiny_data(), _tiny_job()
    whole = rs.EXPERIMENT.train(job, None, 0, 3, data)
    first = rs.EXPERIMENT.train(job, None, 0, 1, data)
    rest = rs.EXPERIMENT.train(job, first.state, 1, 3, data)
    assert first.records + rest.records == whole.records
    assert (first.done, rest.done, whole.failed) == (1, 3, None)
    names = ["ema-0.1", "ema-0.01", "ema-0.5", "cumulative", "precise", "population"]
    epochs = [r for r in whole.records if r["kind"] == "epoch"]
    assert [r["estimator"] for r in epochs] == names * 3
    assert [r["step"] for r in whole.records if r["kind"] == "trace"] == list(range(1, 10))


def test_a_diverging_network_fails_its_job_with_the_fix() -> None:
    result = rs.EXPERIMENT.train(_tiny_job(lr=1e30), None, 0, 3, _tiny_data())
    assert result.failed is not None and "smaller --lr" in result.failed
    assert result.done < 3


# ---- the run directory ------------------------------------------------------------------------


def test_training_flags_keep_their_names_and_config_json_stays_flat() -> None:
    cfg = tyro.cli(
        rs.Config, args=["--momentum", "0.2", "--shadow-momenta", "0.05", "--epochs", "2"]
    )
    assert cfg.training == rs.Training(epochs=2, momentum=0.2, shadow_momenta=(0.05,))
    flat = config_to_dict(cfg)
    assert (flat["momentum"], flat["shadow_momenta"]) == (0.2, [0.05]) and "training" not in flat
    assert config_from_dict(rs.Config, flat) == cfg
    assert rs.estimator_names(cfg.training) == [
        "ema-0.2", "ema-0.05", "cumulative", "precise", "population"
    ]  # fmt: skip


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"momentum": 0.0}, "must be in"),
        ({"shadow_momenta": (0.1,)}, "repeats the model's --momentum"),
        ({"shadow_momenta": (0.2, 0.2)}, "must not repeat"),
        ({"batch_size": 1}, "--batch-size"),
        ({"precise_batch_size": 1}, "--precise-batch-size"),
        ({"epochs": 0}, "--epochs"),
        ({"seeds": (1, 1)}, "none repeated"),
        ({"seeds": (-2,)}, ">= 0"),
        ({"holdout": 0}, "--holdout"),
        ({"train_size": -1}, "--train-size"),
        ({"train_size": 10}, "smaller than one batch"),
        ({"hidden": (4, 0)}, "--hidden"),
        ({"lr": -1.0}, "--lr"),
        ({"checkpoint_every": 0}, "--checkpoint-every"),
        ({"train_size": 100_000}, "exceeds the training pool"),
    ],
)
def test_bad_configs_are_value_errors_before_any_work(
    tmp_path: Path, mnist_root: Path, bad: dict[str, Any], match: str
) -> None:
    cfg = build(rs.Config, **{"data": mnist_root, "out": tmp_path / "x", **bad})
    with pytest.raises(ValueError, match=match):
        rs.run(cfg, log=lambda _m: None)
    assert not (tmp_path / "x").exists()


def test_quick_run_writes_every_output_and_a_report_rebuilt_from_files(
    tmp_path: Path, mnist_root: Path, check_run_files: Any, report_from_run_dir: Any
) -> None:
    out = tmp_path / "run"
    lines: list[str] = []
    result = rs.run(rs.Config(quick=True, data=mnist_root, out=out), log=lines.append)

    figures = {"stat_errors.png", "accuracy.png", "trace.png"}
    meta = check_run_files(out, "running-stats", figures)
    quick = rs.EXPERIMENT.quick
    n, seeds, epochs = quick["train_size"], quick["seeds"], quick["epochs"]
    assert meta["train_digits"] == n
    assert epochs > quick["checkpoint_every"]  # quick crosses a chunk boundary
    assert all((out / "checkpoints" / f"s{s}.pt").exists() for s in seeds)

    names = ["ema-0.1", "ema-0.01", "ema-0.5", "cumulative", "precise", "population"]
    epoch_records = [r for r in result.records if r["kind"] == "epoch"]
    assert len(epoch_records) == len(seeds) * epochs * len(names)
    assert {r["estimator"] for r in epoch_records} == set(names)
    for r in epoch_records:
        assert set(r) >= {"seed", "epoch", "step", "test_acc", "test_loss", "mean_err",
                          "var_err", "channel_mean", "channel_var"}  # fmt: skip
        assert len(r["mean_err"]) == len(r["var_err"]) == len(quick["hidden"])
        if r["estimator"] == "population":
            assert r["mean_err"] == [0.0, 0.0] and r["var_err"] == [0.0, 0.0]
        else:
            assert all(e > 0 and math.isfinite(e) for e in r["var_err"])
    traces = [r for r in result.records if r["kind"] == "trace"]
    assert len(traces) == epochs * (n // 50) and {r["seed"] for r in traces} == {seeds[0]}
    assert set(traces[0]["mean"]) == {"ema-0.1", "ema-0.01", "ema-0.5", "cumulative"}

    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))
    assert list(summary["estimators"]) == names and summary["failed"] == {}
    assert summary["estimators"]["population"]["acc_vs_population"]["diff"]["mean"] == 0.0
    assert [e for e, _ in summary["cumulative_var_err"]] == list(range(1, epochs + 1))
    assert len(lines[-1].splitlines()) == 1 and lines[-1].startswith("held-out accuracy: ")

    html = (out / "report.html").read_text()
    for text in ("Eval-mode statistics", "precise", "cumulative", "data:image/png;base64"):
        assert text in html, text

    sections = report_from_run_dir(rs.EXPERIMENT, out, "accuracy.png")
    assert len(sections) == 1
    table = sections[0].tables[0]
    assert [row[0] for row in table.rows] == names
    assert len(sections[0].figures) == 3
