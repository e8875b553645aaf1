"""`bnlab gan-norms`: every normalization builds and trains, Virtual BN's rows are independent,
the blog variants are untouched, the analysis gives the planted verdicts, and the `--quick` run
works end to end through the CLI."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import tyro
from torch import nn

import bnlab.nn as bnn
from bnlab.lab import cli
from bnlab.lab.experiments.gan.config import GanConfig, GanTraining
from bnlab.lab.experiments.gan.train import GanTrainer
from bnlab.lab.experiments.gan_norms import analysis as norms_analysis
from bnlab.lab.experiments.gan_norms.config import NORM_VARIANTS, NormsConfig
from bnlab.lab.experiments.gan_norms.report import compare_report
from bnlab.lab.experiments.reports import build_report
from bnlab.lab.models.gan import (
    BLOG_VARIANTS,
    VBN_REFERENCE,
    Variant,
    WithReference,
    build_discriminator,
    build_generator,
    parse_variant,
)
from bnlab.lab.results import Run, load_run
from bnlab.lab.runs import append_jsonl, atomic_write_json

BY_NAME = {v.name: v for v in NORM_VARIANTS}
LAYER = {
    "bn": bnn.BatchNorm1d,
    "renorm": bnn.BatchRenorm1d,
    "vbn": bnn.VirtualBatchNorm1d,
    "ln": nn.LayerNorm,
    "gn": nn.GroupNorm,
}


def _layers(model: nn.Module, cls: type) -> int:
    return sum(type(m) is cls for m in model.modules())


@pytest.mark.parametrize("name", list(BY_NAME))
def test_every_normalization_builds_and_trains_one_step(name):
    v = BY_NAME[name]
    images = torch.randint(0, 256, (20, 784), dtype=torch.uint8)
    cfg = GanTraining(epochs=1, batch_size=10, hidden=64, metrics=False)
    t = GanTrainer(v, cfg, 0, images, torch.device("cpu"))
    g_kind, d_kind = LAYER[v.g_kind], LAYER[v.d_kind]
    assert _layers(t.G, g_kind) == sum(v.g_norm)
    assert _layers(t.D, d_kind) == sum(v.d_norm)
    spectral = [m for m in t.D.modules() if nn.utils.parametrize.is_parametrized(m)]
    assert len(spectral) == (3 if v.d_sn else 0)
    before = [p.detach().clone() for p in (*t.g_params, *t.d_params)]
    order, z = t.begin_epoch(0)
    from bnlab.lab.data import to_unit_range

    stats = t.step(to_unit_range(images[order[0]]), z[0, 0], z[0, 1])
    assert all(math.isfinite(float(s)) for s in stats)
    after = [p.detach() for p in (*t.g_params, *t.d_params)]
    assert all(not torch.equal(a, b) for a, b in zip(before, after, strict=True))


def test_renorm_trains_as_bn_during_its_warm_up():
    # RENORM_WARMUP: r_max = 1, d_max = 0 (BN exactly) for the first 500 steps
    images = torch.randint(0, 256, (40, 784), dtype=torch.uint8)
    cfg = GanTraining(epochs=1, batch_size=10, metrics=False)
    bn, renorm = (
        GanTrainer(BY_NAME[n], cfg, 0, images, torch.device("cpu")) for n in ("bn-dcgan", "renorm")
    )
    assert bn.train_epoch(0)["d_loss"] == pytest.approx(renorm.train_epoch(0)["d_loss"], rel=1e-5)
    for a, b in zip(bn.g_params, renorm.g_params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_group_norm_uses_32_groups_of_the_hidden_features():
    d = build_discriminator(BY_NAME["gn"])
    (gn,) = [m for m in d.modules() if isinstance(m, nn.GroupNorm)]
    assert (gn.num_groups, gn.num_channels) == (32, 256)


def test_virtual_bn_rows_depend_on_the_reference_and_themselves_alone():
    torch.manual_seed(0)
    ref = torch.randn(VBN_REFERENCE, 64)
    g = build_generator(BY_NAME["vbn"], reference=ref).train()
    assert isinstance(g, WithReference)
    z = torch.randn(8, 64)
    z2 = z.clone()
    z2[3] += 1.0
    with torch.no_grad():
        a, b = g(z), g(z2)
    assert a.shape == (8, 784)  # the reference rows are dropped
    others = [i for i in range(8) if i != 3]
    torch.testing.assert_close(a[others], b[others], rtol=0, atol=0)
    assert not torch.allclose(a[3], b[3])
    # the same test fails for BN: a sample moves every other sample's output
    bn = build_generator(BY_NAME["bn-dcgan"]).train()
    with torch.no_grad():
        assert not torch.allclose(bn(z)[others], bn(z2)[others])


def test_virtual_bn_generator_needs_its_reference_batch():
    with pytest.raises(ValueError, match="reference"):
        build_generator(BY_NAME["vbn"])


def test_trainer_draws_the_reference_z_from_the_seed():
    images = torch.randint(0, 256, (20, 784), dtype=torch.uint8)
    cfg = GanTraining(epochs=1, batch_size=10, metrics=False)
    refs = [
        GanTrainer(BY_NAME["vbn"], cfg, s, images, torch.device("cpu")).G.reference
        for s in (0, 0, 1)
    ]
    assert torch.equal(refs[0], refs[1]) and not torch.equal(refs[0], refs[2])


def test_virtual_bn_in_d_is_refused_naming_the_fix():
    with pytest.raises(ValueError, match="g_kind=vbn"):
        Variant("x", d_norm=(False, True, False), d_kind="vbn")
    with pytest.raises(ValueError, match="choose one of bn, renorm, vbn, ln, gn"):
        parse_variant("x=init:g_kind=wn")


def test_norm_variants_round_trip_and_blog_specs_are_unchanged():
    for v in NORM_VARIANTS:
        assert parse_variant(v.spec()) == v
    for name, v in BLOG_VARIANTS.items():
        assert v.spec() == name
        assert (v.g_kind, v.d_kind, v.d_sn) == ("bn", "bn", False)
    mine = parse_variant("mine=init-bn:modes=tidy")
    assert mine.spec() == (
        "mine=init:init=he-xavier:g_norm=110:d_norm=011:modes=tidy:joint_real_fake=0:shuffle=1"
    )
    assert "g_kind" not in mine.describe()
    assert dataclasses.replace(BY_NAME["bn-nb3"], name="init-bn") == BLOG_VARIANTS["init-bn"]


def test_gan_norms_variants_flag_knows_its_own_names_as_names_and_bases():
    cfg = tyro.cli(
        NormsConfig, args=["--variants", "none,renorm,renorm-g=bn-dcgan:g_kind=renorm,init-bn"]
    )
    assert [v.name for v in cfg.variants] == ["none", "renorm", "renorm-g", "init-bn"]
    assert cfg.variants[1] == BY_NAME["renorm"]
    assert cfg.variants[2] == dataclasses.replace(
        BY_NAME["bn-dcgan"], name="renorm-g", g_kind="renorm"
    )
    with pytest.raises(ValueError, match=r"known: plain, .*, none, bn-nb3, .*sn-d\+bn-g"):
        parse_variant("wn", {**BLOG_VARIANTS, **BY_NAME})
    with pytest.raises(ValueError, match="unknown variant 'renorm'; known: plain, init,"):
        parse_variant("renorm")  # bnlab gan's flag knows the blog's five only


def test_data_parallel_refuses_other_normalizations():
    with pytest.raises(ValueError, match="ln"):
        GanConfig(variants=(BY_NAME["ln"],), nproc=2).validate()


def test_gan_norms_needs_both_sampling_modes():
    with pytest.raises(ValueError, match="--sample-mode"):
        NormsConfig(training=GanTraining(sample_mode="eval")).validate()


# ---- the analysis on planted numbers -----------------------------------------------------------

# variant -> (FD eval, FD train): ln beats none; renorm shrinks BN's gap (20 -> 1); sn-d is within
# 10% of the best BN (bn-dcgan, 60), sn-d+bn-g is 50% worse.
PLANTED = {
    "none": (100.0, 100.0),
    "bn-nb3": (80.0, 50.0),
    "bn-dcgan": (60.0, 40.0),
    "renorm": (60.0, 59.0),
    "vbn": (70.0, 50.0),
    "ln": (50.0, 50.0),
    "gn": (100.0, 100.0),
    "sn-d": (62.0, 62.0),
    "sn-d+bn-g": (90.0, 70.0),
}


def _fake_run(
    tmp_path,
    truth: Callable[[str], tuple[float, float]],
    seeds=(0, 1, 2, 3, 4),
    noise=0.02,
    covered=10.0,
    **config,
) -> Run[NormsConfig]:
    rng = np.random.default_rng(0)
    atomic_write_json(
        tmp_path / "config.json",
        {"experiment": "gan-norms", "config": {"epochs": 3, "seeds": list(seeds), **config}},
    )
    records = []
    for v in NORM_VARIANTS:
        for s in seeds:
            fd, fd_train = truth(v.name)
            e = math.exp(rng.normal(0, noise))
            records.append(
                {
                    "seed": s,
                    "variant": v.name,
                    "epoch": 3,
                    "fd": fd * e,
                    "fd_train": fd_train * e * math.exp(rng.normal(0, noise / 4)),
                    "classes_covered": covered,
                    "classes_covered_train": covered,
                    "images_per_s": 5000.0,
                }
            )
    append_jsonl(tmp_path / "metrics.jsonl", records)
    return load_run(tmp_path, NormsConfig, "gan-norms")


def _verdicts(run: Run[NormsConfig]) -> dict[str, str]:
    return {c.id: c.verdict for c in norms_analysis.analyse(run).claims}


def test_analysis_finds_the_planted_effects(tmp_path):
    a = norms_analysis.analyse(_fake_run(tmp_path, PLANTED.__getitem__))
    v = {c.id: c.verdict for c in a.claims}
    assert (a.baseline, a.best_bn) == ("none", "bn-dcgan")
    assert v["Q1 [ln]"] == "holds" and v["Q1 [bn-dcgan]"] == "holds"
    assert v["Q1 [gn]"] == "inconclusive"  # the same FD as none, up to noise
    assert v["Q2 [renorm]"] == "holds"
    assert v["Q2 [bn-nb3]"] == "does not hold"  # gap 30 > 20
    assert "Q2 [ln]" not in v  # no gap by construction
    assert v["Q3 [sn-d]"] == "holds" and v["Q3 [sn-d+bn-g]"] == "does not hold"
    rows = {r.variant: r for r in a.rows}
    assert rows["bn-nb3"].values["gap"].mean == pytest.approx(30, rel=0.05)
    assert rows["none"].values["ms_per_step"].mean == pytest.approx(20.0)  # 1000 * 100 / 5000
    assert "ln" in a.answers["Which normalizations beat no normalization (FD, G in eval mode)?"]


def test_one_seed_gives_directions(tmp_path):
    v = _verdicts(_fake_run(tmp_path, PLANTED.__getitem__, seeds=(0,)))
    assert v["Q1 [ln]"] == "agrees"
    assert v["Q3 [sn-d+bn-g]"] == "disagrees"


def test_noise_alone_is_inconclusive(tmp_path):
    v = _verdicts(_fake_run(tmp_path, lambda name: (100.0, 100.0), noise=0.05))
    assert {c for c in v if c.startswith("Q1")} and all(
        verdict == "inconclusive" for c, verdict in v.items() if c.startswith("Q1")
    )


def test_a_run_that_learned_nothing_gives_no_answer(tmp_path):
    a = norms_analysis.analyse(_fake_run(tmp_path, PLANTED.__getitem__, covered=1.0))
    assert a.no_answer and all(c.verdict == "no answer" for c in a.claims)


def test_runs_on_two_datasets_are_compared_verdict_by_verdict(tmp_path):
    """bnlab report on an MNIST and a Fashion-MNIST run: one table with each run's FD, classes
    and own verdict per variant, each run's answers, and a variant one run lacks said so."""
    mnist = _fake_run(tmp_path / "m", PLANTED.__getitem__)
    fashion = _fake_run(
        tmp_path / "f", lambda n: (PLANTED[n][0] * 2, PLANTED[n][1] * 2), seeds=(0, 1, 2),
        dataset="fashion-mnist", epochs=50,
    )  # fmt: skip
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    config["config"]["variants"] = [
        dataclasses.asdict(v) for v in NORM_VARIANTS if v.name in ("none", "ln")
    ]
    atomic_write_json(tmp_path / "f" / "config.json", config)
    fashion = load_run(tmp_path / "f", NormsConfig, "gan-norms")
    runs = [mnist, fashion]
    [section] = compare_report(runs, [norms_analysis.analyse(r) for r in runs])
    [table] = section.tables
    assert table.header[1:4] == ["FD mnist, 3 epochs, 5 seeds", "classes mnist, 3 epochs, 5 seeds",
                                 "vs none mnist, 3 epochs, 5 seeds"]  # fmt: skip
    assert table.header[4].startswith("FD fashion-mnist, 3 of 50 epochs, 3 seeds")  # not there yet
    rows = {r[0]: r for r in table.rows}
    assert rows["none"][3] == rows["none"][6] == "baseline"
    assert rows["ln"][3] == "holds" and float(rows["ln"][4].split()[0]) == pytest.approx(
        100, rel=0.05
    )
    assert rows["gn"][4] == "not run"
    assert "\n\nfashion-mnist, 3 of 50 epochs, 3 seeds: Which normalizations" in section.intro
    out = build_report([tmp_path / "m", tmp_path / "f"], out=tmp_path / "both.md", markdown=True)
    text = out.read_text()
    assert text.index("runs compared") < text.index("what to use instead of BN")


# ---- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_quick_run_end_to_end_through_the_cli(mnist_root, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["gan-norms", "--quick", "--jobs", "1", "--data", str(mnist_root), "--out", str(out)]
    assert cli.main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["variant"] for r in records} == set(BY_NAME)
    assert all("fd" in r and "fd_train" in r for r in records)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["baseline"] == "none" and summary["best_bn"] in ("bn-nb3", "bn-dcgan")
    html = (out / "report.html").read_text()
    assert "GAN normalizations: what to use instead of BN" in html
    assert html.count("data:image/png;base64,") >= len(BY_NAME)
    assert "ms/step" in capsys.readouterr().out
    # a run grows toward the full budget: more seeds on --resume train them, the rest stays
    before = {(r["seed"], r["variant"]): r for r in records}
    argv = ["gan-norms", "--resume", "--out", str(out), "--seeds", "0,1", "--data", str(mnist_root)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {(r["seed"], r["variant"]) for r in records} == {(s, v) for s in (0, 1) for v in BY_NAME}
    assert all(before[(0, r["variant"])] == r for r in records if r["seed"] == 0)


def test_only_plain_bn_variants_train_data_parallel_and_reports_name_the_layers():
    """--nproc converts BN layers to SyncBatchNorm: every other normalization (spectral norm in
    D included) is refused naming the variant; a BN variant carrying an unused kind is not."""
    for name in ("sn-d", "ln", "renorm"):
        with pytest.raises(ValueError, match=f"variants {name} use a normalization other"):
            GanConfig(variants=(BY_NAME[name],), nproc=2).validate()
    unused = dataclasses.replace(BY_NAME["bn-dcgan"], d_kind="ln", d_norm=(False, False, False))
    assert unused.norms_are_bn and not BY_NAME["sn-d+bn-g"].norms_are_bn
    GanConfig(variants=(unused,), nproc=2).validate()
    assert BY_NAME["sn-d"].definition() == (
        "G: no norm; D: no norm, spectral norm on every Linear; modes none; init he-xavier"
    )
    assert BY_NAME["ln"].definition().startswith("G: ln after Linear 1, 2; D: ln after Linear 2")


def test_step_ms_is_the_median_per_seed_from_images_per_s():
    from bnlab.lab.experiments.gan.analysis import step_ms

    records = [
        {"variant": "bn", "seed": 0, "epoch": 1, "images_per_s": 1000.0},  # 100 ms at b=100
        {"variant": "bn", "seed": 0, "epoch": 2, "images_per_s": 2000.0},  # 50
        {"variant": "bn", "seed": 0, "epoch": 3, "images_per_s": 500.0},  # 200
        {"variant": "bn", "seed": 1, "epoch": 1, "images_per_s": 4000.0},  # 25
        {"variant": "bn", "seed": 2, "epoch": 1},  # no timing: seed 2 left out
        {"variant": "none", "seed": 0, "epoch": 1, "images_per_s": 10.0},  # another variant
    ]
    assert step_ms(records, "bn", batch_size=100) == {0: 100.0, 1: 25.0}
    assert step_ms(records, "absent", batch_size=100) == {}
