"""bnlab regularization (claim C6): the statistics, the batch-dependence probe, the run dir."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from bnlab.experiments import regularization as reg
from bnlab.report.html import Section


@pytest.fixture(autouse=True)
def _seed_and_one_thread() -> Iterator[None]:
    """Seeded, and one torch thread as in run(): tiny GEMMs crawl on a shared 2-core box."""
    torch.manual_seed(0)
    with reg.single_thread():
        yield


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


# ---- model and data ---------------------------------------------------------------------------


def test_plain_and_bn_networks_start_from_the_same_linear_weights() -> None:
    torch.manual_seed(3)
    plain = reg.build_mlp((8, 8), norm=False)
    torch.manual_seed(3)
    bn = reg.build_mlp((8, 8), norm=True)
    lin_p = [m for m in plain if isinstance(m, torch.nn.Linear)]
    lin_b = [m for m in bn if isinstance(m, torch.nn.Linear)]
    assert len(lin_p) == len(lin_b) == 3
    for a, b in zip(lin_p, lin_b, strict=True):
        torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    assert len(reg.bn_layers(bn)) == 2 and not reg.bn_layers(plain)


def test_forward_with_bn_returns_each_bn_layers_input_and_output() -> None:
    model = reg.build_mlp((6, 5), norm=True, in_features=4, out_features=3)
    x = torch.randn(10, 4)
    out, io = reg.forward_with_bn(model, x)
    torch.testing.assert_close(out, model(x))
    assert [tuple(i.shape) for i, _ in io] == [(10, 6), (10, 5)]
    torch.testing.assert_close(io[0][0], model[0](x))
    torch.testing.assert_close(io[0][1], model[1](model[0](x)))


def test_held_out_digits_are_fixed_and_disjoint_from_the_pool(mnist_root: Path) -> None:
    root = mnist_root
    a = reg.load_split("mnist", root, 500)
    b = reg.load_split("mnist", root, 500)
    assert a.test_images.shape == (500, 784) and a.test_labels.shape == (500,)
    assert torch.equal(a.test_images, b.test_images) and torch.equal(a.pool_labels, b.pool_labels)
    if "only the" in a.what:  # one split, cut in two: no digit in both parts
        pool = {bytes(r) for r in a.pool_images.numpy()}
        assert not any(bytes(r) in pool for r in a.test_images.numpy()[:50])
    with pytest.raises(ValueError, match="--holdout"):
        reg.load_split("mnist", root, 0)


# ---- the batch-dependence probe ---------------------------------------------------------------


def _probe(batch_sizes: tuple[int, ...], n_batches: int) -> list[dict]:
    model = reg.build_mlp((32, 32), norm=True)
    pool = torch.randint(0, 256, (600, 784), dtype=torch.uint8)
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
    model = reg.build_mlp((8,), norm=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reg.probe_batch_dependence(
        model, torch.zeros(784), torch.zeros(50, 784, dtype=torch.uint8), (4,), 3,
        torch.Generator().manual_seed(0),
    )  # fmt: skip
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert model.training


# ---- statistics -------------------------------------------------------------------------------


def test_paired_difference_is_the_paired_t_interval_and_test() -> None:
    a = [10.0, 12.5, 9.0, 11.0, 13.0]
    b = [9.0, 11.0, 9.5, 9.0, 12.0]
    d = reg.paired_difference(a, b)
    diffs = np.subtract(a, b)
    lo, hi = stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
    assert d["mean"] == pytest.approx(diffs.mean())
    assert (d["lo"], d["hi"]) == pytest.approx((lo, hi))
    assert d["p"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert d["n"] == 5


def test_paired_difference_drops_pairs_with_a_missing_value() -> None:
    d = reg.paired_difference([1.0, math.nan, 3.0], [0.0, 1.0, 1.0])
    assert d["n"] == 2 and d["mean"] == pytest.approx(1.5)
    assert math.isnan(reg.mean_ci([2.0])[1])


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
    assert plain["gap"][0] == pytest.approx(10.5)  # last 5 epochs: train 1.0, test 0.9 / 0.89
    assert bn["gap"][0] == pytest.approx(8.5)
    assert plain["per_seed"]["matched_epoch"] == [5.0, 5.0]
    assert bn["per_seed"]["matched_epoch"] == [2.0, 2.0]
    main = next(c for c in s["comparisons"] if c["quantity"] == "final gap")
    assert (main["a"], main["b"], main["mean"]) == ("plain", "bn", pytest.approx(2.0))
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
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_root: Path
) -> None:
    out = tmp_path / "run"
    lines: list[str] = []
    cfg = reg.Config(**TINY, data=mnist_root, out=out)
    result = reg.run(cfg, log=lines.append)

    names = {p.name for p in out.iterdir()}
    figures = {"gap_acc.png", "gap_loss.png", "accuracy.png", "batch_spread.png"}
    assert {"config.json", "metrics.jsonl", "report.html"} | figures <= names
    for f in figures:
        assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f
    meta = json.loads((out / "config.json").read_text())
    assert list(meta)[:2] == ["experiment", "config"] and meta["experiment"] == "regularization"
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

    # report() reads files only: no training, and a lost figure is drawn again from metrics
    def no_training(*_a: object, **_k: object) -> None:
        raise AssertionError("report() must not train")

    monkeypatch.setattr(reg, "train_variant", no_training)
    (out / "gap_acc.png").unlink()
    sections = reg.report(out)
    assert all(isinstance(s, Section) for s in sections)
    assert [s.anchor for s in sections] == ["c6", "batch-dependence"]
    assert [c.id for c in sections[0].claims] == ["C6", "C6 (cause)", "C6 (premise)"]
    assert sections[0].claims[2].verdict == "holds"
    assert len(sections[0].figures) == 3 and len(sections[1].figures) == 1
    assert (out / "gap_acc.png").exists()

    with pytest.raises(ValueError, match="already holds a run"):
        reg.run(cfg, log=lambda _m: None)
