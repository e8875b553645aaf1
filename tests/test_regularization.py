"""bnlab regularization (claim C6): the statistics, the batch-dependence probe, the run dir."""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bnlab.data import to_unit_range
from bnlab.experiments import regularization as reg
from bnlab.experiments.common import train_test
from bnlab.models.mlp import mlp
from bnlab.stats import Estimate, format_ci, paired

pytestmark = pytest.mark.usefixtures("seeded_one_thread")

TINY = dict(
    seeds=(0, 1),
    train_size=100,
    holdout=500,
    epochs=3,
    batch_size=20,
    hidden=(16, 16),
    probe_batch_sizes=(2, 4, 8, 16),
    probe_batches=10,
)


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
    fit = reg._fit_slope([r["batch_size"] for r in records], [r["bn1_std"] for r in records])
    assert -0.7 < fit["slope"] < -0.35, fit
    assert fit["lo"] <= fit["slope"] <= fit["hi"]


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
    assert reg.c6_verdict(0.1, 2.0) == "holds"
    assert reg.c6_verdict(-2.0, -0.5) == "does not hold"
    assert reg.c6_verdict(-0.2, reg.MIN_EFFECT_PP - 0.1) == "does not hold"
    assert reg.c6_verdict(-1.0, 2.0) == "inconclusive"
    assert reg.c6_verdict(math.nan, math.nan) == "inconclusive"


def _epoch(variant: str, seed: int, epoch: int, train_acc: float, test_acc: float) -> dict:
    return {
        "kind": "epoch", "seed": seed, "variant": variant, "epoch": epoch,
        "train_acc": train_acc, "test_acc": test_acc, "train_loss": 0.0, "test_loss": 0.1,
        "acc_gap_pp": 100 * (train_acc - test_acc), "loss_gap": 0.1,
    }  # fmt: skip


def test_summary_reads_the_final_gap_over_the_last_epochs_and_the_gap_at_equal_fit() -> None:
    records = []
    for seed in (0, 1):
        for e in range(1, 11):
            # plain: fits at epoch 5, ends with a 10 pp gap; bn: fits at epoch 2, ends at 8 pp
            records.append(_epoch("plain", seed, e, min(1.0, 0.2 * e), 0.9 - 0.01 * seed))
            records.append(_epoch("bn", seed, e, 1.0 if e >= 2 else 0.5, 0.92 - 0.01 * seed))
    config = {"seeds": [0, 1], "variants": ["plain", "bn"], "match_train_acc": 0.99}
    s = reg.summarize(records, config)
    plain, bn = s["variants"]["plain"], s["variants"]["bn"]
    assert plain["gap"].mean == pytest.approx(10.5)  # last 5 epochs: train 1.0, test 0.9 / 0.89
    assert bn["gap"].mean == pytest.approx(8.5)
    assert plain["per_seed"]["matched_epoch"] == [5.0, 5.0]
    assert bn["per_seed"]["matched_epoch"] == [2.0, 2.0]
    main = next(c for c in s["comparisons"] if c["quantity"] == "final gap")
    assert (main["a"], main["b"], main["paired"].diff.mean) == ("plain", "bn", pytest.approx(2.0))
    assert s["min_final_train_acc"] == pytest.approx(1.0)


# ---- the run directory ------------------------------------------------------------------------


def test_bad_configs_are_value_errors(tmp_path: Path) -> None:
    for bad in (
        {"variants": ("bn", "bn-full")},
        {"variants": ("plain", "bn", "ghost")},
        {"batch_size": 1},
        {"train_size": 10, "batch_size": 20},
        {"epochs": 0},
        {"probe_batch_sizes": (1, 2)},
        {"seeds": ()},
    ):
        with pytest.raises(ValueError):
            reg.run(reg.Config(**{**TINY, **bad, "out": tmp_path / "x"}), log=lambda _m: None)
    assert not (tmp_path / "x").exists()  # nothing written before the config is checked


def test_run_writes_every_output_and_a_report_rebuilt_from_files(
    tmp_path: Path, mnist_root: Path, check_run_files: Any, report_from_files: Any
) -> None:
    out = tmp_path / "run"
    lines: list[str] = []
    cfg = reg.Config(**TINY, data=mnist_root, out=out)
    result = reg.run(cfg, log=lines.append)

    figures = {"gap_acc.png", "gap_loss.png", "accuracy.png", "batch_spread.png"}
    meta = check_run_files(out, "regularization", figures)
    assert meta["config"]["seeds"] == [0, 1] and meta["config"]["out"] == str(out)

    epochs = [r for r in result.records if r["kind"] == "epoch"]
    assert len(epochs) == 2 * 3 * 3  # seeds x variants x epochs
    for r in epochs:
        assert set(r) >= {"seed", "variant", "epoch", "train_acc", "test_acc", "train_loss",
                          "test_loss", "acc_gap_pp", "loss_gap", "batch_loss"}  # fmt: skip
        assert 0 <= r["train_acc"] <= 1 and math.isfinite(r["test_loss"])
        assert r["acc_gap_pp"] == pytest.approx(100 * (r["train_acc"] - r["test_acc"]))
    probe = [r for r in result.records if r["kind"] == "probe"]
    assert [r["batch_size"] for r in probe] == [2, 4, 8, 16]
    assert all(r["logit_std_eval"] == 0.0 and r["logit_std"] > 0 for r in probe)

    assert len(lines[-1].splitlines()) == 1 and lines[-1].startswith("C6 ")
    assert "plain - bn" in lines[-1] and "report.html" in lines[-1]

    html = (out / "report.html").read_text()
    for text in ("C6: does batch norm regularize?", "Batch dependence", "C6 (cause)",
                 "C6 (premise)", "Paired comparisons", "data:image/png;base64"):  # fmt: skip
        assert text in html, text

    sections = report_from_files(reg, "train_variant", out, "gap_acc.png")
    assert [s.anchor for s in sections] == ["c6", "batch-dependence"]
    assert [c.id for c in sections[0].claims] == ["C6", "C6 (cause)", "C6 (premise)"]
    assert sections[0].claims[2].verdict == "holds"
    assert len(sections[0].figures) == 3 and len(sections[1].figures) == 1

    with pytest.raises(ValueError, match="already holds a run"):
        reg.run(cfg, log=lambda _m: None)
