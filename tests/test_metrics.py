"""Tests of bnlab.lab.metrics: Frechet distance, class coverage, stray dots, the metric classifier.

Pure functions are checked against independent oracles (closed forms, eigendecompositions,
per-pixel loops). Metrics on real digits use the MNIST test split in ``../shared/data/mnist``
(or ``$BNLAB_TEST_DATA/mnist``) and a classifier trained briefly (:data:`SMALL`); Fashion-MNIST
comes from Debian's system directory. Those tests skip with the reason when the files are
absent. Caching, splitting and determinism run on small synthetic datasets. Every test uses a
private ``BNLAB_CACHE``: nothing touches ~/.cache.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bnlab.lab.data import datasets, to_unit_range, write_idx
from bnlab.lab.metrics import (
    ClassifierConfig,
    GanEvaluator,
    class_coverage,
    feature_statistics,
    frechet_distance,
    stray_dots,
)
from bnlab.lab.metrics import classifier as classifier_module
from bnlab.lab.metrics.classifier import (
    classifier_cache_path,
    load_or_train_classifier,
    make_split,
    train_classifier,
)
from bnlab.lab.runs import load_checkpoint
from bnlab.lab.seeding import torch_threads

# A classifier trained in about 2 s (~97% on the MNIST hold-out): enough for its features to
# order noisy and blurred digits, not enough for the accuracy target.
SMALL = ClassifierConfig(steps=80, batch_size=64)
# For synthetic data: as fast as training gets.
TINY = ClassifierConfig(steps=3, batch_size=16, holdout_size=40, width=4, feature_dim=8)
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
FASHION_DIR = datasets.SYSTEM_DIRS["fashion-mnist"][0]


@pytest.fixture(autouse=True)
def private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNLAB_CACHE", str(cache))
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    return cache


@pytest.fixture(scope="module")
def mnist(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> GanEvaluator:
    """An evaluator on real MNIST with the SMALL classifier, trained once for the module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BNLAB_CACHE", str(tmp_path_factory.mktemp("cache")))
        return GanEvaluator.load("mnist", data_dir=mnist_root, config=SMALL, log=None)


def _reference(evaluator: GanEvaluator) -> torch.Tensor:
    """The held-out real digits as (M, 784) floats in [-1, 1]."""
    return to_unit_range(evaluator.reference_images).reshape(-1, 784)


def _write_split(directory: Path, split: str, n: int, seed: int = 0) -> None:
    """A synthetic split whose image i carries i in its first two pixels (to trace indices)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[:, 0, 0], images[:, 0, 1] = np.arange(n) % 256, np.arange(n) // 256
    labels = (np.arange(n) % 10).astype(np.uint8)
    names = TRAIN_FILES if split == "train" else TEST_FILES
    write_idx(directory / names[0], images)
    write_idx(directory / names[1], labels)


def _indices(images: torch.Tensor) -> set[int]:
    return set((images[:, 0, 0].long() + 256 * images[:, 0, 1].long()).tolist())


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (N, 784) images with a separable Gaussian, border padded with black."""
    radius = 4
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    img = F.pad(x.reshape(-1, 1, 28, 28), (radius,) * 4, value=-1.0)
    img = F.conv2d(img, k.view(1, 1, 1, -1))
    img = F.conv2d(img, k.view(1, 1, -1, 1))
    return img.reshape(-1, 784)


def _noisy(x: torch.Tensor, sigma: float) -> torch.Tensor:
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    return (x + sigma * noise).clamp(-1.0, 1.0)


# --- Frechet distance (pure) ----------------------------------------------------------------


def _random_spd(d: int, rng: np.random.Generator) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _frechet_oracle(mu1, s1, mu2, s2) -> float:  # type: ignore[no-untyped-def]
    """tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2): symmetric, so eigh does it exactly."""
    w, v = np.linalg.eigh(s1)
    root1 = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(root1 @ s2 @ root1)
    return float(
        np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner.clip(0)).sum()
    )


def test_frechet_distance_of_identical_feature_sets_is_zero() -> None:
    features = np.random.default_rng(0).normal(size=(500, 16)) * 3 + 1
    mu, sigma = feature_statistics(features)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_matches_the_eigendecomposition_oracle() -> None:
    rng = np.random.default_rng(1)
    for d in (1, 5, 32):
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        s1, s2 = _random_spd(d, rng), _random_spd(d, rng)  # do not commute
        expected = _frechet_oracle(mu1, s1, mu2, s2)
        assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)


def test_frechet_distance_of_gaussian_samples_approaches_the_closed_form() -> None:
    # Commuting covariances (diagonal, then the same rotation applied to both) have the
    # closed form |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2.
    rng = np.random.default_rng(2)
    d, n = 8, 200_000
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    v1, v2 = rng.uniform(0.5, 4.0, size=d), rng.uniform(0.5, 4.0, size=d)
    closed_form = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
    rotation, _ = np.linalg.qr(rng.normal(size=(d, d)))
    x1 = (rng.normal(size=(n, d)) * np.sqrt(v1)) @ rotation.T + mu1
    x2 = (rng.normal(size=(n, d)) * np.sqrt(v2)) @ rotation.T + mu2
    fd = frechet_distance(*feature_statistics(x1), *feature_statistics(x2))
    assert fd == pytest.approx(closed_form, rel=0.02)


def test_frechet_distance_survives_singular_covariances() -> None:
    # Fewer samples than features and dead (constant) features: the product is singular.
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(20, 64)), rng.normal(size=(20, 64)) + 0.5
    a[:, :10] = 0.0
    fd = frechet_distance(*feature_statistics(a), *feature_statistics(b))
    assert math.isfinite(fd) and fd > 0


def test_frechet_distance_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="shapes do not match"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        feature_statistics(np.zeros((1, 3)))


def test_feature_statistics_are_float64_mean_and_unbiased_covariance() -> None:
    x = torch.randn(300, 5, generator=torch.Generator().manual_seed(0)) * 1000 + 1e4
    mu, sigma = feature_statistics(x)
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, x.double().mean(0).numpy(), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.double().numpy(), rowvar=False), rtol=1e-9)


# --- Frechet distance on real digits --------------------------------------------------------


def test_frechet_distance_between_halves_of_real_digits_is_small(mnist: GanEvaluator) -> None:
    x = _reference(mnist)
    half = len(x) // 2
    real_vs_real = frechet_distance(*mnist.statistics(x[:half]), *mnist.statistics(x[half:]))
    noisy = mnist.frechet_distance(_noisy(x, 0.4))
    blurred = mnist.frechet_distance(_gaussian_blur(x, 2.0))
    assert real_vs_real < 0.1 * min(noisy, blurred)


def test_frechet_distance_grows_with_noise(mnist: GanEvaluator) -> None:
    x = _reference(mnist)
    fds = [mnist.frechet_distance(_noisy(x, s)) for s in (0.0, 0.1, 0.2, 0.4, 0.8)]
    assert fds[0] == pytest.approx(0.0, abs=1e-6)  # the reference itself
    assert all(a < b for a, b in itertools.pairwise(fds)), fds


def test_frechet_distance_grows_with_blur(mnist: GanEvaluator) -> None:
    x = _reference(mnist)
    fds = [mnist.frechet_distance(_gaussian_blur(x, s)) for s in (0.5, 1.0, 1.5, 2.0)]
    assert all(a < b for a, b in itertools.pairwise(fds)), fds


# --- class coverage -------------------------------------------------------------------------


def _logits_for(classes: list[int]) -> torch.Tensor:
    return F.one_hot(torch.tensor(classes), 10).float() * 10.0  # confident, known argmax


def test_class_coverage_of_an_even_spread_is_ten_classes_and_zero_kl() -> None:
    got = class_coverage(_logits_for(list(range(10)) * 30))
    assert got["classes_covered"] == 10
    assert got["kl_uniform"] == pytest.approx(0.0, abs=1e-12)
    expected_confidence = math.exp(10) / (math.exp(10) + 9)
    assert got["confidence"] == pytest.approx(expected_confidence, rel=1e-9)


def test_class_coverage_kl_matches_the_histogram_formula() -> None:
    classes = [0] * 50 + [1] * 30 + [2] * 19 + [3]  # class 3 has 1%: covered at the threshold
    got = class_coverage(_logits_for(classes))
    p = np.array([50, 30, 19, 1]) / 100
    assert got["kl_uniform"] == pytest.approx(float(np.sum(p * np.log(p * 10))), rel=1e-12)
    assert got["classes_covered"] == 4
    assert class_coverage(_logits_for(classes), min_share=0.02)["classes_covered"] == 3


def test_real_digits_cover_all_ten_classes_with_kl_near_zero(mnist: GanEvaluator) -> None:
    got = mnist.score(_reference(mnist))
    assert got["classes_covered"] == 10
    assert got["kl_uniform"] < 0.02


def test_one_repeated_digit_covers_one_class_with_kl_log_ten(mnist: GanEvaluator) -> None:
    x = _reference(mnist)
    got = mnist.score(x[:1].repeat(500, 1))
    assert got["classes_covered"] == 1
    assert got["kl_uniform"] == pytest.approx(math.log(10), rel=1e-9)
    assert got["fd"] > mnist.frechet_distance(x[:500])


# --- stray dots -----------------------------------------------------------------------------


def _stray_oracle(images01: np.ndarray, threshold: float = 0.5) -> float:
    """Per-pixel loops over (N, 28, 28) images in [0, 1]: the definition, written plainly."""
    bright = images01 > threshold
    isolated = 0
    for img in bright:
        for i, j in zip(*np.nonzero(img), strict=True):
            window = img[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            isolated += int(window.sum() == 1)
    total = int(bright.sum())
    return isolated / total if total else 0.0


def test_isolated_bright_pixels_score_one_and_a_solid_blob_scores_zero() -> None:
    dots = -torch.ones(2, 28, 28)
    dots[:, ::3, ::3] = 1.0  # a grid of single pixels two apart: every one isolated
    dots[:, 27, 27] = 1.0  # in the corner, beyond-border pixels count as dark
    assert stray_dots(dots.reshape(2, 784)) == pytest.approx(1.0)
    blob = -torch.ones(2, 28, 28)
    blob[:, 8:20, 10:18] = 1.0
    assert stray_dots(blob) == 0.0
    assert stray_dots(-torch.ones(3, 784)) == 0.0  # nothing bright, nothing stray


def test_stray_dots_match_the_per_pixel_definition() -> None:
    rng = np.random.default_rng(4)
    images01 = (rng.random((6, 28, 28)) < rng.uniform(0.02, 0.3, size=(6, 1, 1))).astype(float)
    images01 *= rng.uniform(0.3, 1.0, size=images01.shape)  # some bright, some merely grey
    x = torch.from_numpy(images01 * 2 - 1).float()
    assert stray_dots(x) == pytest.approx(_stray_oracle(images01), abs=1e-12)


def test_real_digits_have_few_stray_dots_and_noise_adds_them(mnist: GanEvaluator) -> None:
    x = _reference(mnist)
    assert mnist.stray_dots_real < 0.005
    assert stray_dots(_noisy(x, 0.4)) > 10 * mnist.stray_dots_real


# --- score ----------------------------------------------------------------------------------


def test_score_returns_flat_json_floats_for_any_image_layout(mnist: GanEvaluator) -> None:
    x = _reference(mnist)[:400]
    got = mnist.score(x)
    assert set(got) == {
        "fd",
        "classes_covered",
        "kl_uniform",
        "confidence",
        "stray_dots",
        "stray_dots_real",
    }
    assert all(type(v) is float and math.isfinite(v) for v in got.values())
    assert json.loads(json.dumps(got)) == got
    assert mnist.score(x.reshape(-1, 1, 28, 28)) == got
    assert got["stray_dots_real"] == mnist.stray_dots_real


def test_score_rejects_non_finite_images_and_wrong_shapes(mnist: GanEvaluator) -> None:
    x = _reference(mnist)[:10].clone()
    x[3, 5] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        mnist.score(x)
    with pytest.raises(ValueError, match=r"\(N, 784\)"):
        mnist.score(torch.zeros(10, 783))


def test_describe_names_the_training_data_accuracy_and_reference(mnist: GanEvaluator) -> None:
    line = mnist.describe()
    assert "\n" not in line
    assert "7,000 images of the mnist test split" in line
    assert f"{mnist.classifier_accuracy:.2%}" in line and "3,000" in line


# --- classifier: split, cache, determinism --------------------------------------------------


def test_one_split_is_divided_into_disjoint_training_and_held_out_parts(tmp_path: Path) -> None:
    _write_split(tmp_path / "mnist", "test", 300)
    split = make_split("mnist", tmp_path, holdout_size=40, split_seed=0, log=None)
    assert (split.source_split, split.reference_is_holdout) == ("test", True)
    assert (len(split.train_images), len(split.holdout_images)) == (260, 40)
    train, held = _indices(split.train_images), _indices(split.holdout_images)
    assert not train & held and train | held == set(range(300))
    assert _indices(split.reference_images) == held
    again = make_split("mnist", tmp_path, holdout_size=40, split_seed=0, log=None)
    assert _indices(again.holdout_images) == held
    other = make_split("mnist", tmp_path, holdout_size=40, split_seed=1, log=None)
    assert _indices(other.holdout_images) != held


def test_with_both_splits_the_test_split_is_the_reference(tmp_path: Path) -> None:
    _write_split(tmp_path / "mnist", "train", 200, seed=1)
    _write_split(tmp_path / "mnist", "test", 120, seed=2)
    split = make_split("mnist", tmp_path, holdout_size=40, split_seed=0, log=None)
    assert (split.source_split, split.reference_is_holdout) == ("train", False)
    assert (len(split.train_images), len(split.holdout_images)) == (160, 40)
    assert len(split.reference_images) == 120 and _indices(split.reference_images) == set(
        range(120)
    )
    assert split.key == "train-val40"


def test_training_is_deterministic_for_a_seed(tmp_path: Path) -> None:
    _write_split(tmp_path / "mnist", "test", 200)
    split = make_split("mnist", tmp_path, holdout_size=40, split_seed=0, log=None)
    a, b = (train_classifier(split.train_images, split.train_labels, TINY) for _ in range(2))
    c = train_classifier(split.train_images, split.train_labels, dataclasses.replace(TINY, seed=1))
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(va, vb, rtol=0, atol=0, msg=name)
    assert not torch.equal(a.body[0].weight, c.body[0].weight)


def test_the_classifier_is_the_same_whatever_the_callers_thread_count(tmp_path: Path) -> None:
    """A parallel conv sums in an order set by the thread count: before TRAIN_THREADS, 1 and 2
    threads trained different classifiers from one seed (this network size is large enough for
    that; TINY is not). The caller's count comes back."""
    _write_split(tmp_path / "mnist", "test", 300)
    split = make_split("mnist", tmp_path, holdout_size=40, split_seed=0, log=None)
    cfg = ClassifierConfig(steps=4, batch_size=64, holdout_size=40)  # the default network
    states = []
    with torch_threads(0):  # restores the suite's count after
        for n in (1, 3):
            torch.set_num_threads(n)
            model = train_classifier(split.train_images, split.train_labels, cfg)
            states.append(model.state_dict())
            assert torch.get_num_threads() == n
    for name, va in states[0].items():
        torch.testing.assert_close(va, states[1][name], rtol=0, atol=0, msg=name)


def test_second_load_comes_from_the_cache_without_training(
    tmp_path: Path, private_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_split(tmp_path / "mnist", "test", 200)
    first = GanEvaluator.load("mnist", data_dir=tmp_path, config=TINY, log=None)
    path = first.classifier.path
    assert not first.classifier.from_cache
    assert path.parent == private_cache / "classifiers"
    assert path.name.startswith("mnist-test-holdout40-") and path.suffix == ".pt"

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of loading the cache")

    monkeypatch.setattr(classifier_module, "train_classifier", no_training)
    second = GanEvaluator.load("mnist", data_dir=tmp_path, config=TINY, log=None)
    assert second.classifier.from_cache and second.classifier.path == path
    assert second.classifier_accuracy == first.classifier_accuracy
    for va, vb in zip(
        first.classifier.model.state_dict().values(),
        second.classifier.model.state_dict().values(),
        strict=True,
    ):
        assert torch.equal(va, vb)
    x = to_unit_range(first.reference_images).reshape(-1, 784)
    assert second.score(x) == first.score(x)


def test_checkpoint_holds_weights_config_accuracy_and_held_out_images(tmp_path: Path) -> None:
    _write_split(tmp_path / "mnist", "test", 200)
    split = make_split("mnist", tmp_path, holdout_size=40, split_seed=0, log=None)
    lines: list[str] = []
    trained = load_or_train_classifier(split, TINY, log=lines.append)
    state = load_checkpoint(trained.path)
    assert state["config"]["steps"] == TINY.steps and state["accuracy"] == trained.accuracy
    assert state["split"]["split_seed"] == 0 and state["split"]["holdout_size"] == 40
    assert state["split"]["train_size"] == 160 and state["split"]["source_size"] == 200
    assert set(state["state_dict"]) == set(trained.model.state_dict())
    assert any(line.startswith("classifier mnist: accuracy ") for line in lines)


def test_cache_key_changes_with_the_config(tmp_path: Path) -> None:
    _write_split(tmp_path / "mnist", "test", 200)
    split = make_split("mnist", tmp_path, holdout_size=40, split_seed=0, log=None)
    base = classifier_cache_path(TINY, split)
    assert classifier_cache_path(dataclasses.replace(TINY), split) == base
    changes = {"steps": 4, "batch_size": 8, "lr": 1e-3, "max_shift": 0, "width": 8}
    changes |= {"feature_dim": 16, "seed": 1, "split_seed": 1}
    paths = {
        classifier_cache_path(dataclasses.replace(TINY, **{k: v}), split)
        for k, v in changes.items()
    }
    assert base not in paths and len(paths) == len(changes)


def test_a_cache_file_from_another_config_is_retrained(tmp_path: Path) -> None:
    _write_split(tmp_path / "mnist", "test", 200)
    split = make_split("mnist", tmp_path, holdout_size=40, split_seed=0, log=None)
    first = load_or_train_classifier(split, TINY, log=None)
    first.path.write_bytes(b"not a checkpoint")
    lines: list[str] = []
    again = load_or_train_classifier(split, TINY, log=lines.append)
    assert not again.from_cache and "unusable" in lines[0]
    assert load_or_train_classifier(split, TINY, log=None).from_cache


def test_config_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="steps"):
        ClassifierConfig(steps=0)
    with pytest.raises(ValueError, match="holdout_size"):
        ClassifierConfig(holdout_size=0)


# --- accuracy (full config) -----------------------------------------------------------------


@pytest.mark.slow
def test_default_classifier_reaches_98_5_percent_on_the_mnist_hold_out(mnist_root: Path) -> None:
    t0 = time.perf_counter()
    evaluator = GanEvaluator.load("mnist", data_dir=mnist_root, log=None)
    seconds = time.perf_counter() - t0
    print(f"default classifier: {evaluator.describe()}; trained in {seconds:.1f} s")
    assert len(evaluator.reference_images) == 3000
    assert evaluator.classifier_accuracy >= 0.985


def test_fashion_mnist_trains_on_the_train_split_and_scores_against_test() -> None:
    if not all((FASHION_DIR / f).is_file() for f in TRAIN_FILES + TEST_FILES):
        pytest.skip(
            f"Fashion-MNIST not installed in {FASHION_DIR} "
            "(Debian package: apt-get install dataset-fashion-mnist)"
        )
    evaluator = GanEvaluator.load("fashion-mnist", config=SMALL, log=None)
    split = evaluator.classifier.split
    assert (split.source_split, len(split.train_images)) == ("train", 57_000)
    assert len(evaluator.reference_images) == 10_000
    assert evaluator.classifier_accuracy > 0.7  # SMALL; the default config reaches ~90%
    got = evaluator.score(to_unit_range(evaluator.reference_images[:2000]).reshape(-1, 784))
    assert got["classes_covered"] == 10
