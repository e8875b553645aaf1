"""bnlab running-stats: precise BN, the cumulative shadow, population statistics, the run dir."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn

import bnlab.nn as bnn
from bnlab.experiments import running_stats as rs
from bnlab.models.mlp import forward_with_bn, mlp

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
    assert rs.recompute_bn_stats(model, batches) == 7
    for ours, theirs in zip(rs.bn_stats(model), rs.bn_stats(oracle), strict=True):
        torch.testing.assert_close(ours[0], theirs[0])
        torch.testing.assert_close(ours[1], theirs[1])
    assert int(model[1].num_batches_tracked) == int(oracle[1].num_batches_tracked) == 7


def test_torch_update_bn_on_bnlab_layers_gives_the_same_statistics() -> None:
    """bnlab's layers are torch's classes, so update_bn finds them too."""
    model = _trained_model()
    batches = [torch.randn(20, 6) * 3 - 1 for _ in range(3)]
    theirs = copy.deepcopy(model)
    before = rs.bn_stats(model)
    update_bn(batches, theirs)
    rs.recompute_bn_stats(model, batches)
    for ours, swa, (m0, _) in zip(rs.bn_stats(model), rs.bn_stats(theirs), before, strict=True):
        assert torch.equal(ours[0], swa[0]) and torch.equal(ours[1], swa[1])
        assert not torch.equal(ours[0], m0)


def test_precise_bn_is_the_plain_average_of_batch_statistics() -> None:
    model = _trained_model(hidden=(5,))
    batches = [torch.randn(30, 6) + k for k in range(4)]  # different batches, different stats
    rs.recompute_bn_stats(model, batches)
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
    rs.recompute_bn_stats(model, [torch.randn(8, 6)])
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert (model[1].momentum, model[3].momentum) == (0.1, 0.3)
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k


def test_precise_bn_leaves_a_model_without_bn_alone() -> None:
    model = mlp((6, 4, 3), "relu")
    assert rs.recompute_bn_stats(model, [torch.randn(8, 6)]) == 0


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


# ---- the run directory ------------------------------------------------------------------------


TINY = dict(
    seeds=(0, 1), holdout=500, train_size=200, epochs=2, batch_size=20, hidden=(16, 16),
    shadow_momenta=(0.01,),
)  # fmt: skip


def test_bad_configs_are_value_errors(tmp_path: Path) -> None:
    for bad in (
        {"momentum": 0.0},
        {"shadow_momenta": (0.1,)},
        {"batch_size": 1},
        {"precise_batch_size": 1},
        {"epochs": 0},
        {"seeds": (1, 1)},
    ):
        with pytest.raises(ValueError):
            rs.run(rs.Config(**{**TINY, **bad, "out": tmp_path / "x"}), log=lambda _m: None)
    assert not (tmp_path / "x").exists()


def test_run_writes_every_output_and_a_report_rebuilt_from_files(
    tmp_path: Path, mnist_root: Path, check_run_files: Any, report_from_files: Any
) -> None:
    out = tmp_path / "run"
    lines: list[str] = []
    result = rs.run(rs.Config(**TINY, data=mnist_root, out=out), log=lines.append)

    figures = {"stat_errors.png", "accuracy.png", "trace.png"}
    meta = check_run_files(out, "running-stats", figures)
    assert meta["train_digits"] == 200

    names = ["ema-0.1", "ema-0.01", "cumulative", "precise", "population"]
    epochs = [r for r in result.records if r["kind"] == "epoch"]
    assert len(epochs) == 2 * 2 * len(names)  # seeds x epochs x estimators
    assert {r["estimator"] for r in epochs} == set(names)
    for r in epochs:
        assert set(r) >= {"seed", "epoch", "step", "test_acc", "test_loss", "mean_err",
                          "var_err", "channel_mean", "channel_var"}  # fmt: skip
        assert len(r["mean_err"]) == len(r["var_err"]) == 2
        if r["estimator"] == "population":
            assert r["mean_err"] == [0.0, 0.0] and r["var_err"] == [0.0, 0.0]
        else:
            assert all(e > 0 and math.isfinite(e) for e in r["var_err"])
    traces = [r for r in result.records if r["kind"] == "trace"]
    assert len(traces) == 2 * (200 // 20) and {r["seed"] for r in traces} == {0}
    assert set(traces[0]["mean"]) == {"ema-0.1", "ema-0.01", "cumulative"}

    s = result.summary["estimators"]
    assert list(s) == names
    assert s["population"]["acc_vs_population"].diff.mean == 0.0
    assert len(lines[-1].splitlines()) == 1 and lines[-1].startswith("held-out accuracy: ")

    html = (out / "report.html").read_text()
    for text in ("Eval-mode statistics", "precise", "cumulative", "data:image/png;base64"):
        assert text in html, text

    sections = report_from_files(rs, "train_seed", out, "accuracy.png")
    assert len(sections) == 1
    table = sections[0].tables[0]
    assert [row[0] for row in table.rows] == names
    assert len(sections[0].figures) == 3
