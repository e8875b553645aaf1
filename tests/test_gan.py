"""`bnlab gan`: artifacts, variants as data, determinism, resume, failure isolation."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from torch import nn

import bnlab.lab.experiments.gan.experiment as gan
import bnlab.nn as bnn
from bnlab.lab.configs import build
from bnlab.lab.data import to_unit_range
from bnlab.lab.experiments.driver import RunFailed
from bnlab.lab.experiments.gan.experiment import GanConfig, GanTrainer, GanTraining, run
from bnlab.lab.experiments.gan.train import load_gan_data
from bnlab.lab.models.gan import (
    BLOG_VARIANTS,
    Variant,
    build_discriminator,
    build_generator,
    parse_variant,
)
from bnlab.lab.runs import read_jsonl

EPOCH_FIELDS = {
    "seed",
    "variant",
    "epoch",
    "d_loss",
    "g_loss",
    "d_x",
    "d_g_z",
    "g_acc",
    "seconds",
    "images_per_s",
}
TIMING = {"seconds", "images_per_s"}


def _cfg(mnist_root: Path, tmp_path: Path, **kw) -> GanConfig:
    if "variants" in kw:
        kw["variants"] = tuple(parse_variant(v) for v in kw["variants"])
    base = dict(
        data=mnist_root,
        subset=1000,
        epochs=2,
        jobs=1,
        out=tmp_path / "run",
        sample_every=1,
        metrics=False,  # image metrics have their own test
    )
    base.update(kw)
    return build(GanConfig, **base)


def _images(mnist_root: Path, subset: int) -> torch.Tensor:
    data = load_gan_data(
        "mnist", mnist_root, "any", subset, 100, False, 1, torch.device("cpu"), _quiet
    )
    return data.images


def _numbers(records):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def _quiet(_msg: str) -> None:
    pass


def test_short_run_writes_every_artifact(mnist_root, tmp_path):
    cfg = _cfg(mnist_root, tmp_path)
    result = run(cfg, log=_quiet)
    out = cfg.out
    assert out is not None and result.run_dir == out
    saved = json.loads((out / "config.json").read_text())
    assert saved["experiment"] == "gan"
    assert saved["config"]["epochs"] == 2
    names = [v.name for v in gan.DEFAULT_VARIANTS]
    assert [v["name"] for v in saved["config"]["variants"]] == names
    records = read_jsonl(out / "metrics.jsonl")
    assert len(records) == len(gan.DEFAULT_VARIANTS) * 2
    for r in records:
        assert set(r) == EPOCH_FIELDS
        assert 0 <= r["d_x"] <= 1 and 0 <= r["d_g_z"] <= 1 and 0 <= r["g_acc"] <= 1
        assert r["d_loss"] > 0 and r["g_loss"] > 0 and r["images_per_s"] > 0
    for name in ("real.png", "loss_d.png", "loss_g.png"):
        assert (out / name).stat().st_size > 1000
    for variant in names:
        for epoch in (1, 2):
            assert (out / "samples" / variant / f"epoch-{epoch:03d}.png").exists()
            assert (out / "samples" / variant / f"epoch-{epoch:03d}-train.png").exists()
        assert (out / "checkpoints" / "s777" / f"{variant}.pt").exists()
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries
    assert result.failed == {}
    assert json.loads((out / "summary.json").read_text())["failed"] == {}


def test_same_seed_gives_the_same_numbers(mnist_root, tmp_path):
    variants = ("init", "init-bn")
    a = run(_cfg(mnist_root, tmp_path / "a", variants=variants), log=_quiet)
    b = run(_cfg(mnist_root, tmp_path / "b", variants=variants), log=_quiet)
    assert _numbers(a.records) == _numbers(b.records)
    c = run(_cfg(mnist_root, tmp_path / "c", variants=variants, seed=1), log=_quiet)
    assert _numbers(a.records) != _numbers(c.records)


def test_resume_after_interrupt_gives_the_same_metrics(mnist_root, tmp_path, monkeypatch):
    variants = ("init", "init-bn-nomode")
    full = run(
        _cfg(mnist_root, tmp_path / "full", variants=variants, epochs=4, checkpoint_every=2),
        log=_quiet,
    )
    cfg = _cfg(mnist_root, tmp_path / "cut", variants=variants, epochs=4, checkpoint_every=2)
    real_epoch = GanTrainer.train_epoch
    calls = {"n": 0}

    def interrupted(self, epoch, on_step=None):
        calls["n"] += 1
        if calls["n"] == 5:  # after both jobs finished their first chunk (2 epochs each)
            raise KeyboardInterrupt
        return real_epoch(self, epoch, on_step)

    monkeypatch.setattr(GanTrainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, log=_quiet)
    monkeypatch.setattr(GanTrainer, "train_epoch", real_epoch)
    partial = read_jsonl(cfg.out / "metrics.jsonl")
    assert {r["epoch"] for r in partial} == {1, 2}
    resumed = run(dataclasses.replace(cfg, resume=True), log=_quiet)
    key = lambda r: (r["variant"], r["epoch"])  # noqa: E731
    assert _numbers(sorted(resumed.records, key=key)) == _numbers(sorted(full.records, key=key))


def test_resume_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no run to continue"):
        run(GanConfig(out=tmp_path / "nothing", resume=True), log=_quiet)


def test_refuses_to_overwrite_a_run(mnist_root, tmp_path):
    cfg = _cfg(mnist_root, tmp_path, variants=("init",), epochs=1)
    run(cfg, log=_quiet)
    with pytest.raises(ValueError, match="already holds a run"):
        run(cfg, log=_quiet)


def test_non_finite_loss_stops_only_that_variant(mnist_root, tmp_path, monkeypatch):
    real_epoch = GanTrainer.train_epoch

    def poisoned(self, epoch, on_step=None):
        if self.variant.name == "init-bn":
            with torch.no_grad():
                self.D[0].weight.fill_(float("nan"))
        return real_epoch(self, epoch, on_step)

    monkeypatch.setattr(GanTrainer, "train_epoch", poisoned)
    with pytest.raises(RunFailed) as failed:
        run(_cfg(mnist_root, tmp_path, variants=("init", "init-bn")), log=_quiet)
    result = failed.value.result
    assert list(result.failed) == ["s777/init-bn"]
    assert "non-finite" in result.failed["s777/init-bn"]
    assert {r["variant"] for r in result.records} == {"init"}
    events = [r for r in read_jsonl(result.run_dir / "metrics.jsonl") if "event" in r]
    assert events and events[0]["event"] == "failed"
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert "non-finite" in summary["failed"]["s777/init-bn"]
    assert (result.run_dir / "report.html").exists()  # the rest was still reported


def test_two_processes_produce_every_cell(mnist_root, tmp_path):
    cfg = _cfg(
        mnist_root,
        tmp_path,
        variants=("plain", "init", "init-bn"),
        epochs=2,
        checkpoint_every=1,
        jobs=2,
    )
    result = run(cfg, log=_quiet)
    assert sorted((r["variant"], r["epoch"]) for r in result.records) == sorted(
        (v, e) for v in ("plain", "init", "init-bn") for e in (1, 2)
    )


def _bn_positions(model: nn.Sequential) -> list[int]:
    """Index (1-based) of the Linear layers followed by a BN layer."""
    out, k = [], 0
    for m in model:
        if isinstance(m, nn.Linear):
            k += 1
        if isinstance(m, bnn.BatchNorm1d):
            out.append(k)
    return out


@pytest.mark.parametrize(
    ("name", "g_bn", "d_bn"),
    [
        ("plain", [], []),
        ("init", [], []),
        ("init-bn", [1, 2], [2, 3]),
        ("init-bn-tidy", [1, 2], [2, 3]),
        ("init-bn-nomode", [1, 2, 3], [1, 2, 3]),
    ],
)
def test_each_variant_builds_the_intended_layers(name, g_bn, d_bn):
    v = BLOG_VARIANTS[name]
    g, d = build_generator(v), build_discriminator(v)
    assert _bn_positions(g) == g_bn and _bn_positions(d) == d_bn
    assert isinstance(g[-1], nn.Tanh) and isinstance(d[-1], nn.Sigmoid)
    sizes = [(m.in_features, m.out_features) for m in d if isinstance(m, nn.Linear)]
    assert sizes == [(784, 256), (256, 256), (256, 1)]
    sizes = [(m.in_features, m.out_features) for m in g if isinstance(m, nn.Linear)]
    assert sizes == [(64, 256), (256, 256), (256, 784)]
    assert all(m.bias is not None for m in g if isinstance(m, nn.Linear))  # biases kept
    if name == "init-bn-nomode":
        assert d[-2].num_features == 1  # BN on D's logit, notebook 2's mistake


def test_he_xavier_init_matches_the_notebooks():
    torch.manual_seed(0)
    d = build_discriminator(BLOG_VARIANTS["init"])
    w1 = d[0].weight
    # kaiming_normal_(a=0.2, fan_in, leaky_relu): std = sqrt(2 / (1 + a^2)) / sqrt(fan_in)
    assert w1.std().item() == pytest.approx((2 / 1.04) ** 0.5 / 784**0.5, rel=0.02)
    w3 = d[-2].weight  # xavier normal: std = sqrt(2 / (fan_in + fan_out))
    assert w3.std().item() == pytest.approx((2 / 257) ** 0.5, rel=0.1)


def test_notebook3_modes_leave_d_in_eval_after_the_first_step(mnist_root):
    """D runs in train mode only in the D step of the first batch of each epoch."""
    cfg = GanTraining()
    images = _images(mnist_root, 500)
    seen = {"init-bn": [], "init-bn-tidy": [], "init-bn-nomode": []}
    for name in seen:
        trainer = GanTrainer(BLOG_VARIANTS[name], cfg, 0, images, torch.device("cpu"))
        bn = next(m for m in trainer.D if isinstance(m, bnn.BatchNorm1d))
        bn.register_forward_hook(lambda m, i, o, name=name: seen[name].append(m.training))
        trainer.train_epoch(0)
    # per step: D step (real, fake), G step (fake)
    assert seen["init-bn"][:6] == [True, True, False, False, False, False]
    assert not any(seen["init-bn"][3:])
    assert seen["init-bn-tidy"][:6] == [True, True, False, True, True, False]
    assert all(seen["init-bn-nomode"])


def test_all_variants_of_a_seed_see_the_same_batches_and_z(mnist_root):
    cfg = GanTraining()
    images = _images(mnist_root, 500)
    a = GanTrainer(BLOG_VARIANTS["plain"], cfg, 5, images, torch.device("cpu"))
    b = GanTrainer(BLOG_VARIANTS["init-bn"], cfg, 5, images, torch.device("cpu"))
    for epoch in (0, 3):
        (oa, za), (ob, zb) = a.epoch_inputs(epoch), b.epoch_inputs(epoch)
        assert torch.equal(oa, ob) and torch.equal(za, zb)
    assert not torch.equal(a.epoch_inputs(0)[1], a.epoch_inputs(1)[1])
    # notebook 2's loader was not shuffled: arange order
    c = GanTrainer(BLOG_VARIANTS["init-bn-nomode"], cfg, 5, images, torch.device("cpu"))
    assert torch.equal(c.epoch_inputs(0)[0].flatten(), torch.arange(500))


def test_variants_compose_from_the_command_line():
    v = parse_variant("mine=init-bn:modes=tidy:d_norm=010:joint_real_fake=1")
    assert v == dataclasses.replace(
        BLOG_VARIANTS["init-bn"],
        name="mine",
        modes="tidy",
        d_norm=(False, True, False),
        joint_real_fake=True,
    )
    assert parse_variant("x=:g_norm=100").g_norm == (True, False, False)
    assert parse_variant("init-bn") is BLOG_VARIANTS["init-bn"]


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("nope", "unknown variant 'nope'"),
        ("x=nope", "unknown base 'nope'"),
        ("x=init:g_norm=12", "three 0/1 digits"),
        ("x=init:color=red", "unknown key 'color'"),
        ("x=init:modes=sometimes", "bad value 'sometimes' for modes"),
        ("=init", "no name"),
    ],
)
def test_bad_variant_specs_are_clear_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        parse_variant(spec)


def test_torch_bn_option_swaps_in_torch_layers(mnist_root):
    cfg = GanTraining(bn="torch")
    images = _images(mnist_root, 200)
    t = GanTrainer(BLOG_VARIANTS["init-bn"], cfg, 0, images, torch.device("cpu"))
    assert any(type(m) is nn.BatchNorm1d for m in t.G)
    assert isinstance(Variant("x"), Variant)


def test_metrics_are_scored_in_both_g_modes(mnist_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path / "cache"))
    cfg = _cfg(
        mnist_root,
        tmp_path,
        variants=("init", "init-bn"),
        metrics=True,
        sample_mode="both",
        metric_samples=400,
        classifier_steps=20,
    )
    result = run(cfg, log=_quiet)
    keys = {"fd", "classes_covered", "kl_uniform", "confidence", "stray_dots"}
    for r in result.records:  # every epoch is a sample epoch here (sample_every=1)
        assert keys | {k + "_train" for k in keys} <= set(r)
        assert r["fd"] > 0 and 0 <= r["classes_covered"] <= 10
    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert "fd" in summary["variants"]["init-bn"] and "fd_train" in summary["variants"]["init"]
    assert any(c["id"].startswith("C4") for c in summary["claims"])


def test_tensorboard_logs_scalars_and_sample_grids(mnist_root, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run(_cfg(mnist_root, tmp_path, variants=("init",), tensorboard=True), log=_quiet)
    acc = EventAccumulator(str(result.run_dir / "tensorboard"))
    acc.Reload()
    assert {"s777/init/d_loss", "s777/init/g_loss", "s777/init/d_x"} <= set(acc.Tags()["scalars"])
    assert [e.step for e in acc.Scalars("s777/init/d_loss")] == [1, 2]
    assert "s777/init/samples-eval" in acc.Tags()["images"]


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"variants": ("init", "x=init")}, None),
        ({"variants": ("init", "init")}, "variant names must be unique"),
        ({"epochs": 0}, "--epochs must be at least 1"),
        ({"subset": 50}, "fewer images than one batch of 100"),
        ({"subset": -1}, "--subset must be >= 0"),
        ({"lr": 0.0}, "--lr must be in"),
        ({"lr": -1.0}, "--lr must be in"),
        ({"batch_size": 1}, "--batch-size must be at least 2"),
        ({"seeds": (1, 1)}, "--seeds must not repeat"),
        ({"seeds": (-1,)}, "seeds must be >= 0"),
        ({"metrics": True, "metric_samples": 1}, "--metric-samples must be at least 2"),
        ({"checkpoint_every": 0}, "--checkpoint-every must be at least 1"),
        ({"sample_every": -1}, "--sample-every must be >= 0"),
        ({"variants": ()}, "give at least one variant"),
        ({"jobs": -1}, "--jobs must be 0"),
    ],
)
def test_bad_run_settings_are_clear_errors(mnist_root, tmp_path, changes, match):
    cfg = _cfg(mnist_root, tmp_path, **{"epochs": 1, **changes})
    if match is None:
        run(cfg, log=_quiet)  # the control: a valid configuration runs
        return
    with pytest.raises(ValueError, match=match):
        run(cfg, log=_quiet)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_tensorboard_without_the_package_says_how_to_install_it(mnist_root, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("no tensorboard")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ValueError, match=r"pip install 'bnlab\[tensorboard\]'"):
        run(_cfg(mnist_root, tmp_path, variants=("init",), tensorboard=True), log=_quiet)


def test_fused_bn_act_layers_replace_bn_then_leaky_relu():
    v = BLOG_VARIANTS["init-bn-nomode"]  # BN after every Linear, the output layers too
    g = build_generator(v, fused=True)
    fused = [m for m in g if isinstance(m, bnn.BatchNormAct1d)]
    assert len(fused) == 2 and all(m.act == "leaky_relu" for m in fused)
    assert fused[0].negative_slope == 0.2
    assert type(g[-2]) is bnn.BatchNorm1d and isinstance(g[-1], nn.Tanh)  # output BN stays
    assert not any(isinstance(m, nn.LeakyReLU) for m in g)
    plain = build_generator(v)
    assert set(plain.state_dict()) != set()  # same parameters, renumbered: load by values
    assert [t.shape for t in g.state_dict().values()] == [
        t.shape for t in plain.state_dict().values()
    ]


def test_fused_training_matches_unfused_up_to_rounding(mnist_root):
    images = _images(mnist_root, 1000)
    losses = {}
    for fused in (False, True):
        trainer = GanTrainer(
            BLOG_VARIANTS["init-bn"], GanTraining(fused=fused), 0, images, torch.device("cpu")
        )
        order, z = trainer.begin_epoch(0)
        out = []
        for i in range(10):
            d, g, *_ = trainer.step(to_unit_range(images[order[i]]), z[i, 0], z[i, 1])
            out.append([float(d), float(g)])
        losses[fused] = torch.tensor(out)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-3, atol=1e-5)
