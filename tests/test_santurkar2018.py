"""`bnlab santurkar2018`: the measurements on nets where the answer is known, the networks,
the training's invariants, the verdict rules, and a --quick run end to end."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.func import functional_call

import bnlab.lab.experiments.santurkar2018.train as s_train
import bnlab.nn as bnn
from bnlab.lab.configs import build as build_config
from bnlab.lab.configs import config_from_dict, config_to_dict
from bnlab.lab.data import available_splits
from bnlab.lab.experiments.santurkar2018.analysis import c5b, combine, part_lr, part_noisy
from bnlab.lab.experiments.santurkar2018.config import Training
from bnlab.lab.experiments.santurkar2018.experiment import Config, run
from bnlab.lab.experiments.santurkar2018.measure import (
    along_direction,
    expected_scale,
    inject_noise,
    internal_covariate_shift,
    landscape,
    noise_parameters,
    sgd_step,
)
from bnlab.lab.experiments.santurkar2018.nets import NoisyShift, build, layer_names
from bnlab.lab.experiments.santurkar2018.train import Data, RunJob, synthetic_linear_task, train

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _quiet(_msg: str) -> None:
    pass


# ---- internal covariate shift (Definition 2.1) --------------------------------------------------


def _mlp_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    def loss(params):
        return nn.functional.cross_entropy(functional_call(model, params, (x,)), y)

    return loss


def _mlp():
    return nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def test_ics_is_zero_when_the_earlier_layers_do_not_move():
    model, x, y = _mlp(), torch.randn(16, 6), torch.randint(0, 3, (16,))
    params = dict(model.named_parameters())
    loss = _mlp_loss(model, x, y)
    layers = layer_names(model)
    # Only the last layer steps: no layer sees the layers before it change.
    frozen = internal_covariate_shift(
        loss,
        params,
        layers,
        lambda g: {n: (-0.5 * v if n.startswith("4.") else 0 * v) for n, v in g.items()},
    )
    for v in frozen:
        assert v.l2 == 0 and v.cos == pytest.approx(1.0)
    # The control: when every layer steps, the layers after the first do see a shift.
    moving = internal_covariate_shift(loss, params, layers, lambda g: sgd_step(g, 0.5))
    assert moving[0].l2 == 0  # nothing before the first layer
    assert moving[1].l2 > 0 and moving[2].l2 > 0 and moving[2].cos < 1


def test_ics_of_a_two_layer_linear_net_matches_the_hand_derived_gradients():
    torch.set_default_dtype(torch.float64)
    try:
        model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Linear(3, 2, bias=False))
        x, y = torch.randn(10, 4), torch.randn(10, 2)
        lr = 0.3

        def loss(params):
            return 0.5 * ((functional_call(model, params, (x,)) - y) ** 2).sum() / len(x)

        ics = internal_covariate_shift(
            loss, dict(model.named_parameters()), layer_names(model), lambda g: sgd_step(g, lr)
        )
        # By hand (NumPy): L = |W2 W1 x - y|^2 / 2N, r = W2 W1 x - y;
        # dL/dW2 = r (W1 x)^T / N, dL/dW1 = W2^T r x^T / N.
        w1, w2 = (model[k].weight.detach().numpy() for k in (0, 1))
        X, Y = x.numpy().T, y.numpy().T  # (features, N)
        r = w2 @ w1 @ X - Y
        g1, g2 = w2.T @ r @ X.T / 10, r @ (w1 @ X).T / 10
        w1_new = w1 - lr * g1
        g2_after = (w2 @ w1_new @ X - Y) @ (w1_new @ X).T / 10
        assert ics[0].l2 == 0
        assert ics[1].l2 == pytest.approx(np.linalg.norm(g2 - g2_after), rel=1e-10)
        cos = (g2 * g2_after).sum() / np.linalg.norm(g2) / np.linalg.norm(g2_after)
        assert ics[1].cos == pytest.approx(cos, rel=1e-10)
        assert ics[1].grad_norm == pytest.approx(np.linalg.norm(g2), rel=1e-10)
    finally:
        torch.set_default_dtype(torch.float32)


def test_ics_names_unknown_layers():
    model = _mlp()
    with pytest.raises(ValueError, match="not among the parameters: nope"):
        internal_covariate_shift(
            lambda p: p["0.weight"].sum(), dict(model.named_parameters()), ["nope"], lambda g: g
        )


# ---- landscape (Figure 4) on a quadratic --------------------------------------------------------


def _quadratic(seed: int, n: int = 6):
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    eig = torch.linspace(0.1, 5.0, n, dtype=torch.float64)
    a = q @ torch.diag(eig) @ q.T

    def loss(params):
        w = params["w"]
        return 0.5 * w @ a @ w

    w = torch.randn(n, generator=g, dtype=torch.float64)
    return a, eig, q, loss, {"w": w}


def test_beta_along_an_eigenvector_is_its_eigenvalue_the_rayleigh_quotient():
    a, eig, q, loss, params = _quadratic(0)
    for k in range(len(eig)):
        along = along_direction(loss, params, {"w": q[:, k]}, (0.1, 1.0, 3.0))
        rayleigh = float(q[:, k] @ a @ q[:, k])
        assert along.beta == pytest.approx(rayleigh, rel=1e-9)
        assert along.beta == pytest.approx(float(eig[k]), rel=1e-9)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), eta=st.floats(1e-3, 10.0))
def test_beta_on_a_quadratic_never_exceeds_the_largest_eigenvalue(seed, eta):
    a, eig, _, loss, params = _quadratic(seed)
    d = torch.randn(
        len(eig), generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64
    )
    along = along_direction(loss, params, {"w": d}, (eta,))
    rayleigh = float(d @ a @ d / (d @ d))
    # The secant curvature along d is exactly the Rayleigh quotient of the Hessian there; beta
    # (gradient change per distance) is ||A d|| / ||d||: at least that, at most lambda_max.
    assert along.curvatures[0] == pytest.approx(rayleigh, rel=1e-9)
    assert along.betas[0] == pytest.approx(
        float(torch.linalg.norm(a @ d) / torch.linalg.norm(d)), rel=1e-9
    )
    assert rayleigh - 1e-9 <= along.beta <= float(eig.max()) * (1 + 1e-9)


def test_landscape_moves_along_the_negative_gradient():
    a, _, _, loss, params = _quadratic(3)
    w = params["w"]
    g = a @ w
    etas = (0.05, 0.1, 0.4)
    along = landscape(loss, params, etas)
    for eta, value, diff in zip(etas, along.losses, along.grad_diffs, strict=True):
        # L(w - eta g) = L(w) - eta |g|^2 + eta^2 g^T A g / 2; the gradient changes by -eta A g.
        expected = float(0.5 * w @ a @ w - eta * g @ g + 0.5 * eta**2 * g @ a @ g)
        assert value == pytest.approx(expected, rel=1e-10)
        assert diff == pytest.approx(float(eta * torch.linalg.norm(a @ g)), rel=1e-10)
    assert along.loss0 == pytest.approx(float(0.5 * w @ a @ w))
    assert along.grad_norm == pytest.approx(float(torch.linalg.norm(g)))
    assert along.loss_range == pytest.approx(max(along.losses) - min(along.losses))


def test_landscape_refuses_bad_step_sizes_and_zero_directions():
    _, _, _, loss, params = _quadratic(0)
    with pytest.raises(ValueError, match="positive"):
        along_direction(loss, params, {"w": torch.ones(6, dtype=torch.float64)}, (0.1, -1.0))
    with pytest.raises(ValueError, match="zero"):
        along_direction(loss, params, {"w": torch.zeros(6, dtype=torch.float64)}, (0.1,))


# ---- noisy BN -----------------------------------------------------------------------------------


def test_noise_has_nonzero_mean_nonunit_variance_and_changes_every_step():
    g = torch.Generator().manual_seed(0)
    s1, m1, d1 = noise_parameters(8, 0.5, 0.5, 2.0, g)
    s2, m2, _ = noise_parameters(8, 0.5, 0.5, 2.0, g)
    assert not torch.equal(m1, m2) and not torch.equal(s1, s2)  # redrawn every step
    assert (m1.abs() <= 0.5).all() and (d1 >= 0).all() and (d1 <= 0.5).all()
    assert ((s1 >= 0.5) & (s1 <= 2.0)).all()
    # Per sample, activation c of a zero input gets N(mean_c, std_c^2); y is scaled by scale_c.
    y = torch.zeros(200_000, 8)
    out = inject_noise(y, s1, m1, d1, g)
    torch.testing.assert_close(out.mean(0), m1, atol=0.01, rtol=0)
    torch.testing.assert_close(out.std(0), d1, atol=0.01, rtol=0)
    ones = torch.ones(4, 8, 3, 3)
    out = inject_noise(ones, s1, m1, torch.zeros(8), g)
    torch.testing.assert_close(out, (s1 + m1).view(1, 8, 1, 1).expand_as(ones))


def test_noisy_layer_applies_the_noise_mean_in_eval_mode():
    layer = NoisyShift(5, 0.5, 0.5, 2.0)
    y = torch.randn(7, 5)
    layer.eval()
    torch.testing.assert_close(layer(y), y * expected_scale(2.0))
    u = torch.rand(400_000, dtype=torch.float64)
    monte_carlo = torch.exp((2 * u - 1) * math.log(2.0)).mean()
    assert expected_scale(2.0) == pytest.approx(float(monte_carlo), rel=2e-3)
    assert expected_scale(1.0) == 1.0


# ---- networks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("net", ["cnn", "mlp", "dln"])
def test_variants_of_a_net_start_from_the_same_weights(net):
    variants = ("standard", "bn") if net == "dln" else ("standard", "bn", "noisy-bn")
    models = {
        v: build(
            net, v, torch.Generator().manual_seed(3), widths=(4, 8), hidden=(16,), dln=(5, 6, 6)
        )
        for v in variants
    }
    weights = {
        v: [dict(m.named_parameters())[n] for n in layer_names(m)] for v, m in models.items()
    }
    for v in variants[1:]:
        for a, b in zip(weights["standard"], weights[v], strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not list(bnn.batch_norm_layers(models["standard"]))
    n_bn = len(list(bnn.batch_norm_layers(models["bn"])))
    assert n_bn == len(layer_names(models["bn"])) - 1  # after every layer but the last
    if "noisy-bn" in models:
        seq = list(models["noisy-bn"])
        noisy = [k for k, m in enumerate(seq) if isinstance(m, NoisyShift)]
        assert len(noisy) == n_bn and all(bnn.is_batch_norm(seq[k - 1]) for k in noisy)


def test_the_deep_linear_net_has_no_noisy_variant():
    with pytest.raises(ValueError, match="no noisy-bn"):
        build("dln", "noisy-bn", torch.Generator())


# ---- training -----------------------------------------------------------------------------------


def _data(n: int = 256) -> Data:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, 14, 14, generator=g) * 2 - 1
    y = torch.randint(0, 10, (n,), generator=g)
    return Data(x, y, x[:64], y[:64], synthetic_linear_task(6), 32, "random images")


def _job(net: str, variant: str, part: str = "main", steps: int = 12) -> RunJob:
    t = Training(widths=(4, 8), hidden=(16,), dln_depth=5, dln_width=6, measures=4, batch_size=16)
    lr = 0.01 if net == "dln" else 0.05
    return RunJob(part, net, variant, 0, lr, steps, t)  # type: ignore[arg-type]


@pytest.mark.parametrize(("net", "variant"), [("cnn", "bn"), ("mlp", "standard"), ("dln", "bn")])
def test_measuring_does_not_change_the_training(net, variant):
    """ICS, landscape and activation measurements run the model on copies of BN's buffers and
    never step: a measured run ends with exactly the weights of an unmeasured one."""
    data = _data()
    measured = train(_job(net, variant), None, 0, 12, data)
    plain = train(_job(net, variant, part="sweep"), None, 0, 12, data)
    assert {r["kind"] for r in measured.records} >= {"ics", "landscape", "curve", "final"}
    assert not {"ics", "landscape"} & {r["kind"] for r in plain.records}
    for k, v in measured.state["model"].items():
        torch.testing.assert_close(v, plain.state["model"][k], rtol=0, atol=0, msg=k)


def test_chunks_resume_to_the_same_run_noise_included():
    data = _data()
    job = _job("mlp", "noisy-bn")
    whole = train(job, None, 0, 12, data)
    first = train(job, None, 0, 5, data)
    second = train(job, first.state, 5, 12, data)
    assert first.records + second.records == whole.records
    for k, v in whole.state["model"].items():
        torch.testing.assert_close(v, second.state["model"][k], rtol=0, atol=0, msg=k)


def test_a_diverging_run_stops_and_says_so():
    data = _data()
    job = dataclasses.replace(_job("mlp", "standard", part="sweep"), lr=1e4)
    result = train(job, None, 0, 12, data)
    assert result.done == job.total and result.failed is None
    assert result.records[-1]["kind"] == "final" and result.records[-1]["diverged"]


# ---- verdict rules ------------------------------------------------------------------------------


def test_nets_combine_into_one_verdict():
    assert combine(["holds", "inconclusive"]) == "holds"
    assert combine(["does not hold", "inconclusive"]) == "does not hold"
    assert combine(["holds", "does not hold"]) == "inconclusive"
    assert combine([]) == "inconclusive"


def _final_record(part, net, variant, seed, acc, lr=0.05, diverged=False):
    r = {"kind": "final", "part": part, "net": net, "variant": variant, "seed": seed, "lr": lr}
    r.update({"step": 10, "diverged": diverged} if diverged else {"step": 10, "test_acc": acc})
    return r


def test_lr_range_counts_the_rates_each_variant_trains_at():
    records = []
    for seed, jitter in enumerate((0.0, 0.004, -0.004)):
        for lr, std, bn in ((0.1, 0.85, 0.86), (1.0, None, 0.84), (3.0, None, 0.5)):
            records.append(_final_record("sweep", "cnn", "bn", seed, bn + jitter, lr))
            diverged = std is None
            records.append(_final_record("sweep", "cnn", "standard", seed, std, lr, diverged))
    out = part_lr(records, ["cnn"], [0.1, 1.0, 3.0])
    net = out.nets["cnn"]
    assert net.trains_at == {"standard": ("0.1",), "bn": ("0.1", "1")}
    assert net.test_acc["standard"]["1"].mean == pytest.approx(0.10)  # diverged: chance
    assert net.test_acc["standard"]["1"].diverged == (0, 1, 2)
    assert out.verdict == "holds"


@pytest.mark.parametrize(("gap", "expected"), [(0.005, "holds"), (0.06, "does not hold")])
def test_noisy_bn_verdict_uses_the_margin(gap, expected):
    records = []
    for seed, jitter in enumerate((0.0, 0.002, -0.002, 0.001)):
        records.append(_final_record("main", "mlp", "bn", seed, 0.85 + jitter))
        records.append(_final_record("main", "mlp", "noisy-bn", seed, 0.85 - gap + 2 * jitter))
        records.append(_final_record("main", "mlp", "standard", seed, 0.80 + jitter))
    out = part_noisy(records, ["mlp"])
    assert out.verdict == expected
    # BN - noisy = gap - jitter per seed; the jitters average 0.00025
    assert out.nets["mlp"].bn_minus_noisy.diff.mean == pytest.approx(gap - 0.00025)


@pytest.mark.parametrize(
    ("helps", "noisy", "ics", "expected"),
    [
        ("holds", "holds", "inconclusive", "does not hold"),  # benefit survives injected shift
        ("holds", "inconclusive", "does not hold", "does not hold"),  # BN does not reduce ICS
        ("holds", "does not hold", "holds", "holds"),  # the ICS story, confirmed
        ("holds", "does not hold", "inconclusive", "inconclusive"),
        ("does not hold", "holds", "does not hold", "inconclusive"),  # nothing to explain
    ],
)
def test_c5b_follows_from_the_parts(helps, noisy, ics, expected):
    assert c5b(helps, noisy, ics, "holds", "inconclusive").verdict == expected


# ---- configuration and the whole run ------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"nets": ("cnn", "resnet")}, "unknown resnet"),
        ({"sweep_nets": ("dln",)}, "--sweep-nets: unknown dln"),
        ({"seeds": (1, 1)}, "distinct seeds"),
        ({"measures": 10, "steps": 5}, "cannot exceed"),
        ({"noise_scale": 0.5}, "noise-scale"),
        ({"etas": (1.0, 0.0)}, "--etas"),
        ({"sweep_lrs": (0.1, -1.0)}, "--sweep-lrs"),
        ({"widths": ()}, "--widths"),
        ({"nets": (), "sweep_nets": ()}, "nothing to run"),
    ],
)
def test_bad_settings_are_clear_errors_before_any_work(changes, match, tmp_path):
    cfg = build_config(Config, out=tmp_path / "run", **changes)
    with pytest.raises(ValueError, match=match):
        run(cfg, log=_quiet)
    assert not (tmp_path / "run").exists()


def test_training_flags_keep_their_flat_names_and_config_json_stays_flat():
    import tyro

    args = ["--batch-size", "32", "--etas", "1,2", "--dln-width", "8", "--steps", "100"]
    cfg = tyro.cli(Config, args=args)
    assert cfg.training == Training(batch_size=32, etas=(1.0, 2.0), dln_width=8)
    assert cfg.steps == 100
    flat = config_to_dict(cfg)
    assert flat["batch_size"] == 32 and flat["etas"] == [1.0, 2.0] and "training" not in flat
    assert config_from_dict(Config, flat) == cfg


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not {"train", "test"} <= set(available_splits("fashion-mnist")):
        pytest.skip("Fashion-MNIST not found (apt-get install dataset-fashion-mnist)")
    out = tmp_path_factory.mktemp("santurkar") / "run"
    with torch.random.fork_rng():
        return run(Config(quick=True, out=out), log=_quiet)


FIGURES = (
    "part1_curves.png",
    "part1_acts_cnn.png",
    "part1_acts_mlp.png",
    "part2_ics.png",
    "part3_landscape.png",
    "part4_lr.png",
)


def test_quick_run_writes_every_part_and_a_verdict_for_each(quick_run, check_run_files):
    run_dir = quick_run.run_dir
    meta = check_run_files(run_dir, "santurkar2018", FIGURES)
    assert meta["config"]["quick"] and meta["config"]["steps"] == 40
    summary = json.loads((run_dir / "summary.json").read_text())
    verdicts = {"holds", "does not hold", "inconclusive"}
    for part in ("noisy_bn", "ics", "landscape", "lr_range"):
        assert summary["parts"][part]["verdict"] in verdicts and summary["parts"][part]["rule"]
    assert set(summary["parts"]["ics"]["nets"]) == {"cnn", "mlp", "dln"}
    assert set(summary["parts"]["noisy_bn"]["nets"]) == {"cnn", "mlp"}
    assert summary["C5b"]["verdict"] in verdicts and summary["C5b"]["rule"]
    assert summary["failed"] == {}
    kinds = {r["kind"] for r in quick_run.records}
    assert kinds == {"ics", "landscape", "acts", "curve", "final"}
    n_jobs = (
        2 * (3 + 3 + 2) + 2 * 2 * 2 * 2
    )  # main: seeds x variants; sweep: nets x lrs x seeds x 2
    assert len({r["key"] for r in quick_run.records if r["kind"] == "final"}) == n_jobs


def test_report_rebuilds_from_the_run_directory_alone(quick_run, report_from_files):
    sections = report_from_files(s_train, "train", quick_run.run_dir, "part2_ics.png")
    titles = " ".join(s.title for s in sections)
    for part in ("C5b", "Part 1", "Part 2", "Part 3", "Part 4", "deviations"):
        assert part in titles
