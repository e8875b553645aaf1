"""bnlab regularization (claim C6): the statistics, the batch-dependence probe, chunked
training, the --quick run end to end and its report rebuilt from the run directory."""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tyro

from bnlab.lab.configs import build, config_from_dict, config_to_dict
from bnlab.lab.data import to_unit_range
from bnlab.lab.experiments.common import train_test
from bnlab.lab.experiments.regularization import experiment as reg
from bnlab.lab.experiments.regularization.analysis import (
    MIN_EFFECT_PP,
    RegularizationAnalysis,
    c6_verdict,
    fit_slope,
)
from bnlab.lab.models.mlp import mlp
from bnlab.lab.results import Run
from bnlab.lab.runs import read_jsonl
from bnlab.lab.stats import Estimate, format_ci, paired

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


# ---- data -------------------------------------------------------------------------------------


def test_held_out_digits_are_fixed_and_disjoint_from_the_pool(mnist_root: Path) -> None:
    a = train_test("mnist", mnist_root, 500, reg.SPLIT_SEED)
    b = train_test("mnist", mnist_root, 500, reg.SPLIT_SEED)
    x_pool, y_pool, x_held, y_held, what = a
    assert x_held.shape == (500, 784) and y_held.shape == (500,)
    assert x_pool.dtype == torch.float32 and x_pool.shape[1] == 784
    assert -1.0 <= float(x_pool.min()) < float(x_pool.max()) <= 1.0
    assert all(torch.equal(u, v) for u, v in zip(a[:4], b[:4], strict=True))
    if "only the" in what:  # one split, cut in two: no digit in both parts
        pool = {bytes(r) for r in x_pool.numpy()}
        assert not any(bytes(r) in pool for r in x_held.numpy()[:50])
        assert len(y_pool) + 500 == 10_000
    with pytest.raises(ValueError, match="--holdout"):
        train_test("mnist", mnist_root, 0, reg.SPLIT_SEED)
    with pytest.raises(ValueError, match="--eval-size"):
        train_test("mnist", mnist_root, 10_000, reg.SPLIT_SEED, flag="--eval-size")


# ---- the batch-dependence probe ---------------------------------------------------------------


def _probe(batch_sizes: tuple[int, ...], n_batches: int) -> list[dict]:
    model = mlp((784, 32, 32, 10), "relu", bn=True)
    pool = to_unit_range(torch.randint(0, 256, (600, 784), dtype=torch.uint8))
    x0 = torch.rand(784) * 2 - 1
    gen = torch.Generator().manual_seed(1)
    return reg.probe_batch_dependence(model, x0, pool, batch_sizes, n_batches, gen)


def test_eval_mode_output_of_an_example_does_not_depend_on_its_batch() -> None:
    for r in _probe((2, 8, 32), 12):
        assert r["logit_std_eval"] == 0.0 and r["bn1_std_eval"] == 0.0
        assert r["logit_std"] > 0 and r["bn1_std"] > 0
        assert 0 < r["logit_std_lo"] <= r["logit_std"] <= r["logit_std_hi"]


def test_train_mode_spread_shrinks_like_one_over_sqrt_batch_size() -> None:
    records = _probe((8, 16, 32, 64, 128), 40)
    fit = fit_slope([r["batch_size"] for r in records], [r["bn1_std"] for r in records])
    assert -0.7 < fit.slope < -0.35, fit
    assert fit.lo <= fit.slope <= fit.hi


def test_probe_leaves_the_model_untouched() -> None:
    model = mlp((784, 8, 10), "relu", bn=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reg.probe_batch_dependence(
        model, torch.zeros(784), torch.zeros(50, 784), (4,), 3,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training


# ---- statistics -------------------------------------------------------------------------------


def test_paired_comparison_drops_seeds_with_a_missing_value() -> None:
    """A seed that never reached the matched accuracy (nan) drops out of that comparison."""
    d = paired([1.0, math.nan, 3.0], [0.0, 1.0, 1.0])
    assert d.n == 2 and d.diff.mean == pytest.approx(1.5)


def test_paired_comparison_of_differences_equal_up_to_rounding_has_no_spurious_p() -> None:
    a, b = [0.1 + 0.2, 0.3, 0.3], [0.0, 0.0, 0.0]  # 0.30000000000000004 vs 0.3: rounding
    assert np.std(np.subtract(a, b)) > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no t-test on noise (scipy's cancellation warning)
        d = paired(a, b)
    assert (d.p_value, d.effect_size) == (0.0, math.inf)
    assert d.diff.mean == pytest.approx(0.3)
    same = paired([1.0, 2.0], [1.0, 2.0])
    assert (same.p_value, same.effect_size) == (1.0, 0.0)


def test_report_intervals_read_mean_unit_then_bounds() -> None:
    assert format_ci(Estimate(0.6, -6.176, 7.376, 2), "{:+.2f}", " pp") == "+0.60 pp [-6.18, +7.38]"
    assert format_ci(Estimate(97.5, math.nan, math.nan, 1), "{:.1f}", "%") == "97.5%"
    assert format_ci(Estimate(math.nan, math.nan, math.nan, 0)) == "-"


def test_c6_verdict_follows_its_rule() -> None:
    assert c6_verdict(0.1, 2.0) == "holds"
    assert c6_verdict(-2.0, -0.5) == "does not hold"
    assert c6_verdict(-0.2, MIN_EFFECT_PP - 0.1) == "does not hold"
    assert c6_verdict(-1.0, 2.0) == "inconclusive"
    assert c6_verdict(math.nan, math.nan) == "inconclusive"


def _epoch(variant: str, seed: int, epoch: int, train_acc: float, test_acc: float) -> dict:
    return {
        "kind": "epoch", "seed": seed, "variant": variant, "epoch": epoch,
        "train_acc": train_acc, "test_acc": test_acc, "train_loss": 0.0, "test_loss": 0.1,
        "acc_gap_pp": 100 * (train_acc - test_acc), "loss_gap": 0.1,
    }  # fmt: skip


def _analyse(records: list[dict[str, Any]], **flat: Any) -> RegularizationAnalysis:
    """The analysis of a run with these records, its config the defaults but for ``flat``."""
    return reg.analyse(Run(Path("run"), "regularization", build(reg.Config, **flat), {}, records))


def test_summary_reads_the_final_gap_over_the_last_epochs_and_the_gap_at_equal_fit() -> None:
    records = []
    for seed in (0, 1):
        for e in range(1, 11):
            # plain: fits at epoch 5, ends with a 10 pp gap; bn: fits at epoch 2, ends at 8 pp
            records.append(_epoch("plain", seed, e, min(1.0, 0.2 * e), 0.9 - 0.01 * seed))
            records.append(_epoch("bn", seed, e, 1.0 if e >= 2 else 0.5, 0.92 - 0.01 * seed))
    a = _analyse(records, seeds=(0, 1), variants=("plain", "bn"), match_train_acc=0.99)
    plain, bn = a.variants["plain"], a.variants["bn"]
    assert plain.gap.mean == pytest.approx(10.5)  # last 5 epochs: train 1.0, test 0.9 / 0.89
    assert bn.gap.mean == pytest.approx(8.5)
    assert plain.per_seed.matched_epoch == (5.0, 5.0)
    assert bn.per_seed.matched_epoch == (2.0, 2.0)
    main = next(c for c in a.comparisons if c.quantity == "final gap")
    assert (main.a, main.b, main.paired.diff.mean) == ("plain", "bn", pytest.approx(2.0))
    assert a.min_final_train_acc == pytest.approx(1.0)


def test_a_seed_without_records_is_missing_not_an_error() -> None:
    """A failed job leaves its (variant, seed) without records: left out, the rest stands."""
    records = [_epoch(v, s, 1, 1.0, 0.9) for v in ("plain", "bn") for s in (0, 1)]
    records = [r for r in records if (r["variant"], r["seed"]) != ("bn", 1)]
    a = _analyse(records, seeds=(0, 1), variants=("plain", "bn"), match_train_acc=0.99)
    assert a.variants["bn"].gap.n == 1 and a.variants["plain"].gap.n == 2
    assert a.min_final_train_acc == 1.0


# ---- jobs and chunks --------------------------------------------------------------------------


def _tiny_data(n: int = 120) -> reg.RegData:
    gen = torch.Generator().manual_seed(0)
    x = to_unit_range(torch.randint(0, 256, (n, 784), dtype=torch.uint8, generator=gen))
    y = torch.randint(0, 10, (n,), generator=gen)
    return reg.RegData(x[:80], y[:80], x[80:], y[80:])


def test_plan_has_one_job_per_seed_and_variant_and_one_probe() -> None:
    cfg = reg.Config(seeds=(3, 1), probe_batch_sizes=(2, 4))
    jobs = reg.EXPERIMENT.plan(cfg, _tiny_data())
    assert [j.key for j in jobs] == [f"s{s}/{v}" for s in (3, 1) for v in reg.VARIANTS]
    assert [j.key for j in jobs if j.probe is not None] == ["s3/bn"]
    assert all(j.total == cfg.training.epochs and j.unit_steps == 20 for j in jobs)
    assert all(j.training is cfg.training for j in jobs)  # the run's settings, not a copy
    no_probe = reg.EXPERIMENT.plan(dataclasses.replace(cfg, probe_batch_sizes=()), _tiny_data())
    assert all(j.probe is None for j in no_probe)


@pytest.mark.parametrize("variant", reg.VARIANTS)
def test_training_in_chunks_equals_training_in_one_go(variant: str) -> None:
    """A job resumed from its state (model and Adam) continues exactly where it stopped."""
    data = _tiny_data()
    training = reg.Training(train_size=60, epochs=3, batch_size=20, hidden=(8,))
    probe = reg.Probe((2, 4), 3, 0) if variant == "bn" else None
    job = reg.RegJob(0, variant, training, probe)  # type: ignore[arg-type]
    whole = reg.EXPERIMENT.train(job, None, 0, 3, data)
    first = reg.EXPERIMENT.train(job, None, 0, 1, data)
    before = json.dumps({k: v.tolist() for k, v in first.state["model"].items()})
    rest = reg.EXPERIMENT.train(job, first.state, 1, 3, data)
    assert json.dumps({k: v.tolist() for k, v in first.state["model"].items()}) == before
    assert first.records + rest.records == whole.records
    assert (first.done, rest.done, whole.failed) == (1, 3, None)
    kinds = [r["kind"] for r in whole.records]
    assert kinds == ["epoch"] * 3 + (["probe"] * 2 if probe else [])
    assert not [r for r in first.records if r["kind"] == "probe"]  # only after the last epoch


def test_a_diverging_network_fails_its_job_with_the_fix() -> None:
    training = reg.Training(train_size=60, epochs=2, batch_size=20, hidden=(8,), lr=1e30)
    job = reg.RegJob(0, "plain", training)
    result = reg.EXPERIMENT.train(job, None, 0, 2, _tiny_data())
    assert result.failed is not None and "smaller --lr" in result.failed
    assert result.done < 2


# ---- the run directory ------------------------------------------------------------------------


def test_an_interrupted_run_resumes_to_the_same_records(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bnlab.lab.experiments.regularization import train

    tiny = dict(
        seeds=(0,), variants=("plain", "bn"), train_size=100, holdout=200, epochs=4,
        batch_size=20, hidden=(8,), probe_batch_sizes=(2, 4), probe_batches=3,
        checkpoint_every=2, jobs=1, data=mnist_root,
    )  # fmt: skip
    full = reg.run(build(reg.Config, **tiny, out=tmp_path / "full"), log=lambda _m: None)
    real_epoch, calls = train.train_epoch, {"n": 0}

    def interrupted(*args: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 6:  # in the second round of chunks: both jobs saved epoch 2
            raise KeyboardInterrupt
        return real_epoch(*args)

    monkeypatch.setattr(train, "train_epoch", interrupted)
    cut = build(reg.Config, **tiny, out=tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        reg.run(cut, log=lambda _m: None)
    monkeypatch.setattr(train, "train_epoch", real_epoch)
    assert not (tmp_path / "cut" / "summary.json").exists()
    partial = read_jsonl(tmp_path / "cut" / "metrics.jsonl")
    assert {r["epoch"] for r in partial} == {1, 2} and len(partial) == 4
    resumed = reg.run(dataclasses.replace(cut, resume=True), log=lambda _m: None)

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["kind"], r.get("variant", ""), r.get("epoch", 0), r.get("batch_size", 0))

    assert sorted(resumed.records, key=key) == sorted(full.records, key=key)
    assert len([r for r in full.records if r["kind"] == "probe"]) == 2


def test_training_flags_keep_their_names_and_config_json_stays_flat() -> None:
    cfg = tyro.cli(reg.Config, args=["--epochs", "5", "--hidden", "8,8", "--holdout", "10"])
    assert cfg.training == reg.Training(epochs=5, hidden=(8, 8)) and cfg.holdout == 10
    flat = config_to_dict(cfg)
    assert (flat["epochs"], flat["hidden"]) == (5, [8, 8]) and "training" not in flat
    assert config_from_dict(reg.Config, flat) == cfg


@pytest.mark.parametrize(
    "bad, match",
    [
        ({"variants": ("bn", "bn-full")}, "must include plain and bn"),
        ({"variants": ("plain", "bn", "ghost")}, "unknown --variants ghost"),
        ({"variants": ("plain", "bn", "bn")}, "must not repeat"),
        ({"seeds": ()}, "at least one seed"),
        ({"seeds": (0, 0)}, "must not repeat a seed"),
        ({"seeds": (-1,)}, ">= 0"),
        ({"batch_size": 1}, "--batch-size"),
        ({"train_size": 10, "batch_size": 20}, "smaller than one batch"),
        ({"epochs": 0}, "--epochs"),
        ({"holdout": 0}, "--holdout"),
        ({"hidden": ()}, "--hidden"),
        ({"lr": 0.0}, "--lr"),
        ({"match_train_acc": 1.5}, "--match-train-acc"),
        ({"probe_batch_sizes": (1, 2)}, "--probe-batch-sizes"),
        ({"probe_batch_sizes": (4, 4)}, "--probe-batch-sizes"),
        ({"probe_batches": 1}, "--probe-batches"),
        ({"checkpoint_every": 0}, "--checkpoint-every"),
        ({"train_size": 100_000}, "exceeds the training pool"),
    ],
)
def test_bad_configs_are_value_errors_before_any_work(
    tmp_path: Path, mnist_root: Path, bad: dict[str, Any], match: str
) -> None:
    cfg = build(reg.Config, **{"data": mnist_root, "out": tmp_path / "x", **bad})
    with pytest.raises(ValueError, match=match):
        reg.run(cfg, log=lambda _m: None)
    assert not (tmp_path / "x").exists()  # nothing written before the config is checked


def test_quick_run_writes_every_output_and_a_report_rebuilt_from_files(
    tmp_path: Path, mnist_root: Path, check_run_files: Any, report_from_run_dir: Any
) -> None:
    out = tmp_path / "run"
    lines: list[str] = []
    cfg = reg.Config(quick=True, data=mnist_root, out=out)
    result = reg.run(cfg, log=lines.append)

    figures = {"gap_acc.png", "gap_loss.png", "accuracy.png", "batch_spread.png"}
    meta = check_run_files(out, "regularization", figures)
    quick = reg.EXPERIMENT.quick
    assert meta["config"]["seeds"] == list(quick["seeds"]) and meta["config"]["out"] == str(out)
    n_seeds, epochs = len(quick["seeds"]), quick["epochs"]
    assert epochs > quick["checkpoint_every"]  # quick crosses a chunk boundary
    for seed in quick["seeds"]:
        for v in reg.VARIANTS:
            assert (out / "checkpoints" / f"s{seed}" / f"{v}.pt").exists()

    epoch_records = [r for r in result.records if r["kind"] == "epoch"]
    assert len(epoch_records) == n_seeds * len(reg.VARIANTS) * epochs
    for r in epoch_records:
        assert set(r) >= {"seed", "variant", "epoch", "train_acc", "test_acc", "train_loss",
                          "test_loss", "acc_gap_pp", "loss_gap", "batch_loss"}  # fmt: skip
        assert 0 <= r["train_acc"] <= 1 and math.isfinite(r["test_loss"])
        assert r["acc_gap_pp"] == pytest.approx(100 * (r["train_acc"] - r["test_acc"]))
    probe = sorted(
        (r for r in result.records if r["kind"] == "probe"), key=lambda r: r["batch_size"]
    )
    assert [r["batch_size"] for r in probe] == list(quick["probe_batch_sizes"])
    assert all(r["logit_std_eval"] == 0.0 and r["logit_std"] > 0 for r in probe)

    summary = json.loads((out / "summary.json").read_text())
    assert summary == json.loads(json.dumps(result.summary))  # what the run returned
    assert [c["id"] for c in summary["claims"]] == ["C6", "C6 (cause)", "C6 (premise)"]
    assert summary["failed"] == {} and summary["claims"][2]["verdict"] == "holds"
    assert len(lines[-1].splitlines()) == 1 and lines[-1].startswith("C6 ")
    assert "plain - bn" in lines[-1] and "report.html" in lines[-1]

    html = (out / "report.html").read_text()
    for text in ("C6: does batch norm regularize?", "Batch dependence", "C6 (cause)",
                 "C6 (premise)", "Paired comparisons", "data:image/png;base64"):  # fmt: skip
        assert text in html, text

    sections = report_from_run_dir(reg.EXPERIMENT, out, "gap_acc.png")
    assert [s.anchor for s in sections] == ["c6", "batch-dependence"]
    assert [c.__dict__ for c in sections[0].claims] == summary["claims"]
    assert len(sections[0].figures) == 3 and len(sections[1].figures) == 1

    with pytest.raises(ValueError, match="already holds a run"):
        reg.run(cfg, log=lambda _m: None)
