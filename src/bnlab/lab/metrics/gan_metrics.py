"""GAN sample quality as numbers: Frechet distance, class coverage, stray white dots.

Each of the blog's claims about samples (C1 broken samples, C2 fewer stray dots and sharper
digits, C4 a better generator) becomes a number computed on ``(N, 784)`` generator outputs in
[-1, 1], against real images the metric classifier never trained on
(:mod:`bnlab.lab.metrics.classifier`). :class:`GanEvaluator` is the one entry point an experiment
needs; the functions below are pure and tested on their own.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import LinAlgWarning, sqrtm
from torch import Tensor

from bnlab.lab.data import to_unit_range
from bnlab.lab.metrics.classifier import (
    ClassifierConfig,
    TrainedClassifier,
    _as_image_batch,
    load_or_train_classifier,
    make_split,
    predict,
)

__all__ = [
    "COVERAGE_MIN_SHARE",
    "FD_EPS",
    "STRAY_THRESHOLD",
    "GanEvaluator",
    "class_coverage",
    "feature_statistics",
    "frechet_distance",
    "stray_dots",
]

Log = Callable[[str], None]
Array = NDArray[np.float64]

# Added to both covariance diagonals when sqrt(S1 S2) fails (singular product, e.g. dead ReLU
# features of a collapsed generator): the value pytorch-fid uses, far below feature variances.
FD_EPS = 1e-6
# Largest imaginary part of sqrt(S1 S2)'s diagonal accepted as rounding noise (pytorch-fid's).
FD_IMAG_ATOL = 1e-3
# A class counts as covered when it gets at least 1% of the samples: a tenth of its share
# under a uniform spread, so a few misclassified oddities do not count as coverage.
COVERAGE_MIN_SHARE = 0.01
# A pixel is bright when above mid-grey in [0, 1] space (0 in the generator's [-1, 1] space).
STRAY_THRESHOLD = 0.5


def feature_statistics(features: ArrayLike | Tensor) -> tuple[Array, Array]:
    """Mean ``(D,)`` and unbiased covariance ``(D, D)`` of ``(N, D)`` features, in float64."""
    x = _float64(features)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need features of shape (N, D) with N >= 2, got {x.shape}")
    mu = x.mean(axis=0)
    centered = x - mu  # two-pass: subtract the mean first, never E[x^2] - E[x]^2
    sigma = centered.T @ centered / (x.shape[0] - 1)
    return mu, sigma


def frechet_distance(
    mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike, eps: float = FD_EPS
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))`` (Dowson & Landau
    1982; the FID of Heusel et al. 2017 on other features).

    Computed here with NumPy/SciPy in float64 rather than torchmetrics' FID, which pulls in
    extra dependencies and is built around Inception features of 299x299 RGB images; SciPy is
    already a dependency and ``scipy.linalg.sqrtm`` is the standard route. The matrix square
    root of a product of two PSD matrices has real eigenvalues, so imaginary parts from
    rounding are dropped (an error if they are not tiny); if the product is singular, ``eps``
    is added to both diagonals and the root taken again. Rounding can make the result a hair
    below zero for identical inputs: it is clipped at 0.

    Raises:
        ValueError: mismatched shapes, or a square root with a large imaginary part.
    """
    m1, m2 = np.atleast_1d(_float64(mu1)), np.atleast_1d(_float64(mu2))
    s1, s2 = np.atleast_2d(_float64(sigma1)), np.atleast_2d(_float64(sigma2))
    d = m1.shape[0]
    if m1.shape != (d,) or m2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"frechet_distance: shapes do not match: mu {m1.shape}, {m2.shape}; "
            f"sigma {s1.shape}, {s2.shape}"
        )
    covmean = _sqrtm_or_none(s1 @ s2)
    if covmean is None:
        offset = np.eye(d) * eps
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LinAlgWarning)  # as good as it gets: accept it
            covmean = np.asarray(sqrtm((s1 + offset) @ (s2 + offset)))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > FD_IMAG_ATOL:
            raise ValueError(f"frechet_distance: sqrt(S1 S2) has imaginary part {imag:.3g}")
        covmean = covmean.real
    diff = m1 - m2
    fd = diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean)
    return max(float(fd), 0.0)


def _sqrtm_or_none(a: Array) -> NDArray[np.float64] | NDArray[np.complex128] | None:
    """``sqrtm(a)``, or None when SciPy finds ``a`` singular or the root is not finite."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", LinAlgWarning)
        try:
            root = np.asarray(sqrtm(a))
        except (LinAlgWarning, np.linalg.LinAlgError):
            return None
    return root if np.isfinite(root).all() else None


def class_coverage(logits: Tensor, min_share: float = COVERAGE_MIN_SHARE) -> dict[str, float]:
    """How the samples spread over the classifier's classes.

    Args:
        logits: ``(N, C)`` class logits of N samples.
        min_share: a class is covered when at least this share of the samples is predicted
            as it.

    Returns:
        ``classes_covered`` (count of covered classes), ``kl_uniform`` (KL divergence of the
        predicted-class histogram from the uniform distribution, in nats: 0 for a perfectly
        even spread, ``log(C)`` when every sample is one class) and ``confidence`` (mean
        max-softmax probability: low for samples that look like no class in particular).
    """
    if logits.ndim != 2 or logits.shape[0] == 0:
        raise ValueError(f"need logits of shape (N, C) with N >= 1, got {tuple(logits.shape)}")
    n, c = logits.shape
    counts = torch.bincount(logits.argmax(1), minlength=c).double()
    p = counts / n
    nonzero = p[p > 0]  # 0 log 0 = 0
    kl = float((nonzero * (nonzero * c).log()).sum())  # sum p log(p / (1/C))
    confidence = float(torch.softmax(logits.double(), dim=1).amax(1).mean())
    return {
        "classes_covered": float((p >= min_share).sum()),
        "kl_uniform": max(kl, 0.0),
        "confidence": confidence,
    }


def stray_dots(images: Tensor, threshold: float = STRAY_THRESHOLD) -> float:
    """Share of bright pixels with no bright 8-neighbour: the blog's "stray white dots" (C2).

    A pixel is *bright* when its value in [0, 1] space, ``(x + 1) / 2`` for the generator's
    [-1, 1] output, exceeds ``threshold`` (mid-grey by default). A bright pixel is *isolated*
    when none of its 8 neighbours is bright (pixels beyond the border count as dark). The score
    is the number of isolated bright pixels over the number of bright pixels, pooled over the
    whole batch (so images with few bright pixels do not dominate): 0 for clean strokes, where
    every bright pixel touches another, 1 for pure salt noise. Real MNIST digits score near 0
    because a pen stroke is several pixels wide; the single white specks the blog points at in
    its non-BN samples raise it. A batch with no bright pixel at all scores 0 (nothing stray;
    the Frechet distance and coverage flag such a batch). Computed with one 3x3 box filter
    that counts bright pixels per window, with no per-image Python.

    Args:
        images: ``(N, 784)``, ``(N, 28, 28)`` or ``(N, 1, 28, 28)`` floats in [-1, 1].
    """
    x = _as_image_batch(images).float()  # (N, 1, 28, 28)
    bright = ((x + 1.0) / 2.0 > threshold).float()
    # Bright pixels in each 3x3 window, the pixel itself included; zero padding = dark border.
    # A box filter (avg_pool2d) is several times faster on CPU than a 1-channel conv2d.
    window = F.avg_pool2d(bright, 3, stride=1, padding=1, count_include_pad=True) * 9.0
    isolated = bright * (window < 1.5)  # only itself in its window (1.5: rounding margin)
    total = float(bright.sum())
    return float(isolated.sum()) / total if total > 0 else 0.0


class GanEvaluator:
    """Scores generated digits against held-out real ones with a bnlab-trained classifier.

    Build it with :meth:`load` (trains or loads the cached classifier, precomputes the
    reference statistics), then call :meth:`score` at the epochs you want measured.
    """

    def __init__(self, classifier: TrainedClassifier) -> None:
        self.classifier = classifier
        self.classifier_accuracy: float = classifier.accuracy
        self.reference_images: Tensor = classifier.split.reference_images  # uint8 (M, 28, 28)
        features, _ = predict(classifier.model, self.reference_images)
        self.reference_mu, self.reference_sigma = feature_statistics(features)
        self.stray_dots_real: float = stray_dots(to_unit_range(self.reference_images))

    @classmethod
    def load(
        cls,
        dataset: str = "mnist",
        data_dir: str | os.PathLike[str] | None = None,
        device: torch.device | str = "cpu",
        config: ClassifierConfig | None = None,
        log: Log | None = print,
    ) -> GanEvaluator:
        """Train (first time) or load the cached classifier for ``dataset`` and set up.

        Args:
            dataset: ``"mnist"`` or ``"fashion-mnist"``.
            data_dir: where the dataset is (see :func:`bnlab.lab.data.load_dataset`).
            device: where the classifier runs; ``score`` moves images there.
            config: how to train the classifier; default :class:`ClassifierConfig()`.
            log: progress and accuracy lines; ``None`` = silent.
        """
        cfg = config or ClassifierConfig()
        split = make_split(dataset, data_dir, cfg.holdout_size, cfg.split_seed, log)
        classifier = load_or_train_classifier(split, cfg, device, log)
        evaluator = cls(classifier)
        if log is not None and classifier.from_cache:
            log(f"classifier loaded from {classifier.path}: {evaluator.describe()}")
        return evaluator

    def features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """Classifier ``(features, logits)`` of images in [-1, 1] (or uint8), float32 on CPU."""
        return predict(self.classifier.model, images)

    def statistics(self, images: Tensor) -> tuple[Array, Array]:
        """Feature mean and covariance (float64) of images, for :func:`frechet_distance`."""
        return feature_statistics(self.features(images)[0])

    def frechet_distance(self, images: Tensor) -> float:
        """Frechet distance of images' features to the reference images' features."""
        mu, sigma = self.statistics(images)
        return frechet_distance(mu, sigma, self.reference_mu, self.reference_sigma)

    def score(self, images: Tensor) -> dict[str, float]:
        """All metrics of generated images, as flat JSON-able floats.

        Args:
            images: ``(N, 784)`` (or ``(N, 28, 28)``, ``(N, 1, 28, 28)``) in [-1, 1], N >= 2.

        Returns:
            ``fd`` (Frechet distance to the reference), ``classes_covered``, ``kl_uniform``,
            ``confidence`` (see :func:`class_coverage`), ``stray_dots`` (see
            :func:`stray_dots`) and ``stray_dots_real`` (the same on the reference images,
            for comparison).

        Raises:
            ValueError: wrong shape, fewer than 2 images, or non-finite values.
        """
        images = images.detach()
        if images.is_floating_point() and not bool(torch.isfinite(images).all()):
            raise ValueError("GanEvaluator.score: images contain NaN or inf (diverged run?)")
        features, logits = self.features(images)
        mu, sigma = feature_statistics(features)
        return {
            "fd": frechet_distance(mu, sigma, self.reference_mu, self.reference_sigma),
            **class_coverage(logits),
            "stray_dots": stray_dots(images.cpu()),
            "stray_dots_real": self.stray_dots_real,
        }

    def describe(self) -> str:
        """One line: what the classifier was trained on, its accuracy, the reference size."""
        split = self.classifier.split
        ref = "held-out images" if split.reference_is_holdout else "test-split images"
        return (
            f"classifier trained on {split.describe()}; accuracy "
            f"{self.classifier_accuracy:.2%} on {len(self.reference_images):,} never-trained-on "
            f"{ref}, which are also the Frechet reference"
        )


def _float64(a: ArrayLike | Tensor) -> Array:
    if isinstance(a, Tensor):
        a = a.detach().cpu().double().numpy()
    return np.asarray(a, dtype=np.float64)
