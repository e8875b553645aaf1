"""The metric network: a small CNN whose penultimate layer gives the features GAN metrics use.

bnlab trains it itself, on CPU in about half a minute, deterministically for a seed, and caches
it under ``$BNLAB_CACHE/classifiers/`` (default ``~/.cache/bnlab/classifiers/``, the same root
as the datasets). It never trains on the images the GAN metrics score against:

- both splits present: it trains on the train split minus a validation slice of
  ``holdout_size`` images; the *reference* (real images for the Frechet distance, and the
  reported accuracy) is the whole test split;
- one split present (this project's machines hold only MNIST's 10,000 test images): a seeded
  permutation of that split gives ``holdout_size`` held-out images (default 3,000), used both
  for the reported accuracy and as the reference, and the rest (7,000) to train on.

Which images were held out is fully described by ``split_seed`` and the sizes, both stored in
the cached file with the weights, the training config and the accuracy.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from bnlab.cache import cache_dir
from bnlab.lab.configs import config_to_dict
from bnlab.lab.data import Dataset, available_splits, batch_indices, load_dataset, to_unit_range
from bnlab.lab.data.datasets import _canonical_name
from bnlab.lab.runs import load_checkpoint, save_checkpoint
from bnlab.lab.seeding import derived_generator, derived_seed, torch_threads
from bnlab.nn import BatchNorm1d, BatchNorm2d

__all__ = [
    "ClassifierConfig",
    "DataSplit",
    "DigitClassifier",
    "TrainedClassifier",
    "classifier_cache_path",
    "load_or_train_classifier",
    "make_split",
    "predict",
    "train_classifier",
]

Log = Callable[[str], None]

NUM_CLASSES = 10
# Bump when the architecture, the training loop or the file layout changes: it is part of the
# cache key, so an old file is retrained rather than loaded into a different network.
FORMAT_VERSION = 2  # 2: trained with TRAIN_THREADS threads whatever the caller's count
# The torch CPU thread count the classifier trains with, whatever the caller set. A parallel
# conv or matmul sums in an order that depends on the thread count, so the same seed trained
# with 1 and with 2 threads gave two different classifiers (weights up to 1.2 apart), and
# Frechet distances several percent apart: a fresh machine with another core count (or a run
# whose adaptive --threads had lowered the count) scored the README's commands differently.
# 2 is the count of this project's CI and benchmark machines, so the classifier they trained
# before this constant existed is the one every machine of that kind now trains (checked
# bitwise); machines with another instruction set (AVX-512 vs AVX2) may still round otherwise.
TRAIN_THREADS = 2
EVAL_BATCH = 2000  # images per forward when predicting: big enough to amortize, ~40 MB at most
BACKGROUND = -1.0  # the [-1, 1] value of a black pixel, shown where a shifted image moves in


@dataclass(frozen=True)
class ClassifierConfig:
    """How the metric classifier is trained; every field is part of its cache key."""

    steps: int = 1000
    """Optimizer steps. A step budget, not epochs, so the same config trains in the same time on
    7,000 images (about 18 epochs) or on 57,000 (about 2): ~20 s on 2 CPU cores, >= 99% on the
    MNIST hold-out."""
    batch_size: int = 128
    """Images per step: large enough for stable BatchNorm statistics, small enough for many
    steps in the budget."""
    lr: float = 3e-3
    """Peak Adam learning rate of the one-cycle schedule (warm-up, then cosine decay to ~0),
    which converges reliably within a small, fixed budget."""
    max_shift: int = 2
    """Random translations of up to this many pixels in x and y: a cheap augmentation against
    overfitting when there are only 7,000 training images (18 passes over them)."""
    width: int = 32
    """Channels of the first conv layer (the second has twice as many): 32 reaches 99.2% on the
    MNIST hold-out; training and scoring cost grow with its square."""
    feature_dim: int = 128
    """Size of the penultimate layer, i.e. of the Frechet-distance features: large enough to
    separate digit styles, small enough that a 128x128 covariance is well estimated from
    3,000 reference images."""
    holdout_size: int = 3000
    """Images of the training split the classifier never sees: the reference and accuracy set
    when only one split exists (3,000 gives a stable Frechet reference and accuracy to
    +-0.2%), else a validation slice."""
    seed: int = 0
    """Seeds the weight init, the batch order and the shifts."""
    split_seed: int = 0
    """Seeds the permutation that picks the held-out images; separate from ``seed`` so that a
    classifier retrained with another seed scores against the same reference images."""

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "width", "feature_dim", "holdout_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"ClassifierConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"ClassifierConfig.lr must be > 0, got {self.lr}")
        if self.max_shift < 0:
            raise ValueError(f"ClassifierConfig.max_shift must be >= 0, got {self.max_shift}")


class DigitClassifier(nn.Module):
    """conv5x5/2 - conv3x3/2 - fc - fc10 on 28x28 grayscale images in [-1, 1].

    Strided convolutions instead of stride-1 convolutions and pooling keep the activations
    small: a forward of 10,000 images costs about 0.25 s on 2 idle CPU cores, several times
    less than the pooled version.
    :meth:`features` is the penultimate layer after its ReLU.
    """

    def __init__(self, width: int = 32, feature_dim: int = 128) -> None:
        super().__init__()
        self.width = width
        self.feature_dim = feature_dim
        # Conv / Linear before BatchNorm carry no bias: BN's beta replaces it.
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 5, stride=2, padding=2, bias=False),  # (N, w, 14, 14)
            BatchNorm2d(width),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False),  # (N, 2w, 7, 7)
            BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.Flatten(),  # (N, 2w * 49)
            nn.Linear(2 * width * 49, feature_dim, bias=False),
            BatchNorm1d(feature_dim),
            nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, NUM_CLASSES)

    def features(self, x: Tensor) -> Tensor:
        """Penultimate activations ``(N, feature_dim)`` of images ``(N, 1, 28, 28)``."""
        out: Tensor = self.body(x)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Class logits ``(N, 10)`` of images ``(N, 1, 28, 28)`` in [-1, 1]."""
        out: Tensor = self.head(self.features(x))
        return out


@dataclass(frozen=True, eq=False)  # eq=False: tensors compare elementwise
class DataSplit:
    """Which images the classifier trains on, which it never sees, and the GAN reference."""

    dataset: str
    source_split: str  # the split it trains on: "train" or (only split present) "test"
    train_images: Tensor = field(repr=False)  # uint8 (n_train, 28, 28)
    train_labels: Tensor = field(repr=False)  # int64 (n_train,)
    holdout_images: Tensor = field(repr=False)  # uint8: of source_split, never trained on
    holdout_labels: Tensor = field(repr=False)
    reference_images: Tensor = field(repr=False)  # uint8: what the GAN metrics compare with
    reference_labels: Tensor = field(repr=False)
    split_seed: int
    reference_is_holdout: bool  # one split: the held-out part is the reference

    @property
    def key(self) -> str:
        """File-name part naming the split: ``train-val3000`` or ``test-holdout3000``."""
        kind = "holdout" if self.reference_is_holdout else "val"
        return f"{self.source_split}-{kind}{len(self.holdout_images)}"

    def record(self) -> dict[str, Any]:
        """What identifies the images (stored in the checkpoint): seed and sizes suffice."""
        return {
            "dataset": self.dataset,
            "source_split": self.source_split,
            "split_seed": self.split_seed,
            "source_size": len(self.train_images) + len(self.holdout_images),
            "train_size": len(self.train_images),
            "holdout_size": len(self.holdout_images),
            "reference": "held-out part" if self.reference_is_holdout else "test split",
            "reference_size": len(self.reference_images),
            "permutation": "torch.randperm(source_size, derived_generator(split_seed, "
            "'classifier-split')); the first holdout_size indices are held out",
        }

    def describe(self) -> str:
        """What it trains on, e.g. "7,000 images of the mnist test split (3,000 held out...)"."""
        kind = "held out" if self.reference_is_holdout else "held out for validation"
        return (
            f"{len(self.train_images):,} images of the {self.dataset} {self.source_split} split "
            f"({len(self.holdout_images):,} {kind}, split seed {self.split_seed})"
        )


def make_split(
    dataset: str,
    data_dir: str | os.PathLike[str] | None,
    holdout_size: int,
    split_seed: int,
    log: Log | None = print,
) -> DataSplit:
    """Split the locally present data into classifier-training and never-trained-on parts.

    Uses the train split when present (the test split is then the reference), else the only
    split present; downloads (train and test) only when nothing is present.

    Raises:
        ValueError: ``holdout_size`` leaves fewer than one batch of training images.
        DataError: the data cannot be found or read (see :func:`bnlab.lab.data.load_dataset`).
    """
    name = _canonical_name(dataset)
    splits = available_splits(name, data_dir)
    if not splits:  # nothing local: fetch both, as the GAN experiment would
        splits = ["train", "test"]
    source = load_dataset(name, splits[0], data_dir=data_dir, log=log)
    reference: Dataset | None = None
    if len(splits) == 2:
        reference = load_dataset(name, "test", data_dir=data_dir, log=log)
    elif log is not None:
        log(
            f"{name}: only the {source.split} split is present; the classifier trains on "
            f"{len(source) - holdout_size:,} of its images and the other {holdout_size:,} are "
            f"held out as the real reference"
        )
    if holdout_size >= len(source):
        raise ValueError(
            f"holdout_size {holdout_size:,} leaves no training images in the {name} "
            f"{source.split} split ({len(source):,} images); choose a smaller holdout_size"
        )
    perm = torch.randperm(len(source), generator=derived_generator(split_seed, "classifier-split"))
    held, kept = perm[:holdout_size], perm[holdout_size:]
    holdout_images, holdout_labels = source.images[held], source.labels[held]
    if reference is None:
        ref_images, ref_labels = holdout_images, holdout_labels
    else:
        ref_images, ref_labels = reference.images, reference.labels
    return DataSplit(
        dataset=name,
        source_split=source.split,
        train_images=source.images[kept],
        train_labels=source.labels[kept],
        holdout_images=holdout_images,
        holdout_labels=holdout_labels,
        reference_images=ref_images,
        reference_labels=ref_labels,
        split_seed=split_seed,
        reference_is_holdout=reference is None,
    )


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by its own random (dx, dy) in [-max_shift, max_shift], vectorized.

    Args:
        images: ``(B, 1, 28, 28)`` floats in [-1, 1]; pixels shifted in are black (-1).
    """
    if max_shift == 0:
        return images
    b, _, h, w = images.shape
    p = max_shift
    padded = F.pad(images, (p, p, p, p), value=BACKGROUND)  # (B, 1, H + 2p, W + 2p)
    dy = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * p + 1, (b,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, :, None]  # (B, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, :]  # (B, 1, W)
    batch = torch.arange(b, device=images.device)[:, None, None]
    return padded[batch, 0, rows, cols].unsqueeze(1)  # (B, 1, H, W): a crop per image


def train_classifier(
    images: Tensor,
    labels: Tensor,
    cfg: ClassifierConfig,
    device: torch.device | str = "cpu",
    desc: str = "classifier",
    progress: bool = True,
) -> DigitClassifier:
    """Train a :class:`DigitClassifier` with Adam and a one-cycle schedule; returned in eval mode.

    Deterministic for ``cfg.seed`` on one device and instruction set: the init, batch order and
    shifts come from generators derived from it, and the CPU thread count is
    :data:`TRAIN_THREADS` for the training (the caller's is restored after); the global RNG is
    left as it was.

    Args:
        images: uint8 ``(N, 28, 28)``; labels: int64 ``(N,)``.
    """
    device = torch.device(device)
    with torch.random.fork_rng(devices=[]):  # init draws from the global RNG: keep it untouched
        torch.manual_seed(derived_seed(cfg.seed, "classifier-init"))
        model = DigitClassifier(cfg.width, cfg.feature_dim).to(device)
    images, labels = images.to(device), labels.to(device)  # uint8 on device: 4x less memory
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=cfg.steps)
    gen = derived_generator(cfg.seed, "classifier-train")
    batch_size = min(cfg.batch_size, len(images))
    model.train()
    step = 0
    with (
        torch_threads(TRAIN_THREADS),
        tqdm(total=cfg.steps, desc=desc, unit="step", disable=not progress, leave=False) as bar,
    ):
        while step < cfg.steps:
            # batch_indices draws on the CPU generator; indices go to the data's device.
            for idx in batch_indices(len(images), batch_size, gen).to(device):
                if step == cfg.steps:
                    break
                x = random_shift(to_unit_range(images[idx]).unsqueeze(1), cfg.max_shift, gen)
                loss = F.cross_entropy(model(x), labels[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.inference_mode()
def predict(model: DigitClassifier, images: Tensor) -> tuple[Tensor, Tensor]:
    """Features and logits of images in [-1, 1], in eval mode, batched.

    Args:
        images: float ``(N, 784)``, ``(N, 28, 28)`` or ``(N, 1, 28, 28)`` in [-1, 1], or uint8
            pixels (mapped with :func:`~bnlab.lab.data.to_unit_range`).

    Returns:
        ``(features, logits)``: float32 ``(N, feature_dim)`` and ``(N, 10)``, on the CPU.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    x = _as_image_batch(images)
    feats, logits = [], []
    for chunk in x.split(EVAL_BATCH):
        chunk = chunk.to(device)
        chunk = to_unit_range(chunk) if chunk.dtype == torch.uint8 else chunk.float()
        f = model.features(chunk)
        feats.append(f.cpu())
        logits.append(model.head(f).cpu())
    model.train(was_training)
    empty = torch.empty(0, model.feature_dim), torch.empty(0, NUM_CLASSES)
    return (torch.cat(feats), torch.cat(logits)) if feats else empty


def _as_image_batch(images: Tensor) -> Tensor:
    """View ``(N, 784)``, ``(N, 28, 28)`` or ``(N, 1, 28, 28)`` as ``(N, 1, 28, 28)``."""
    if images.shape[1:] in ((784,), (28, 28), (1, 28, 28)):
        return images.reshape(-1, 1, 28, 28)
    raise ValueError(
        f"expected images of shape (N, 784), (N, 28, 28) or (N, 1, 28, 28), got "
        f"{tuple(images.shape)}"
    )


def accuracy(model: DigitClassifier, images: Tensor, labels: Tensor) -> float:
    """Share of ``images`` (uint8) whose predicted class is ``labels``."""
    _, logits = predict(model, images)
    return float((logits.argmax(1) == labels.cpu()).double().mean())


# --- cache ----------------------------------------------------------------------------------


def config_hash(cfg: ClassifierConfig, split: DataSplit) -> str:
    """12 hex digits of sha256 over the config, the split record and the format version."""
    payload = {"format": FORMAT_VERSION, "config": config_to_dict(cfg), "split": split.record()}
    text = json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def classifier_cache_path(cfg: ClassifierConfig, split: DataSplit) -> Path:
    """``<cache root>/classifiers/<dataset>-<split key>-<config hash>.pt``.

    The cache root is the datasets' (``$BNLAB_CACHE``, else ``~/.cache/bnlab``).
    """
    return cache_dir("classifiers") / f"{split.dataset}-{split.key}-{config_hash(cfg, split)}.pt"


@dataclass(eq=False)
class TrainedClassifier:
    """A classifier in eval mode with what it was trained on and how well it does."""

    model: DigitClassifier
    config: ClassifierConfig
    split: DataSplit
    accuracy: float  # on the reference images, which it never trained on
    val_accuracy: float  # on the held-out part of its training split (== accuracy with one split)
    train_seconds: float
    path: Path
    from_cache: bool

    def describe(self) -> str:
        return f"{self.split.describe()}; accuracy {self.accuracy:.2%} on the reference"


def load_or_train_classifier(
    split: DataSplit,
    cfg: ClassifierConfig | None = None,
    device: torch.device | str = "cpu",
    log: Log | None = print,
) -> TrainedClassifier:
    """The cached classifier for ``(split, cfg)``, trained and cached first if there is none.

    A cache file that cannot be read or does not match the config is retrained and replaced
    (the reason is logged). Writes are atomic: concurrent runs at worst train twice.
    """
    cfg = cfg or ClassifierConfig()
    device = torch.device(device)
    path = classifier_cache_path(cfg, split)
    if path.is_file():
        state, problem = _read_cache(path, cfg, split)
        if state is not None:
            model = DigitClassifier(cfg.width, cfg.feature_dim)
            model.load_state_dict(state["state_dict"])
            return TrainedClassifier(
                model=model.to(device).eval(),
                config=cfg,
                split=split,
                accuracy=float(state["accuracy"]),
                val_accuracy=float(state["val_accuracy"]),
                train_seconds=float(state["train_seconds"]),
                path=path,
                from_cache=True,
            )
        if log is not None:
            log(f"classifier cache {path} unusable ({problem}); training again")

    t0 = time.perf_counter()
    model = train_classifier(
        split.train_images,
        split.train_labels,
        cfg,
        device,
        desc=f"classifier {split.dataset}",
        progress=log is not None,
    )
    seconds = time.perf_counter() - t0
    acc = accuracy(model, split.reference_images, split.reference_labels)
    val_acc = (
        acc
        if split.reference_is_holdout
        else accuracy(model, split.holdout_images, split.holdout_labels)
    )
    save_checkpoint(
        path,
        {
            "format": FORMAT_VERSION,
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "config": config_to_dict(cfg),
            "split": split.record(),
            "accuracy": acc,
            "val_accuracy": val_acc,
            "train_seconds": seconds,
            "torch_version": torch.__version__,
        },
    )
    if log is not None:
        val = "" if split.reference_is_holdout else f", validation {val_acc:.2%}"
        log(
            f"classifier {split.dataset}: accuracy {acc:.2%} on {len(split.reference_images):,} "
            f"never-trained-on images{val}; trained in {seconds:.0f} s on "
            f"{len(split.train_images):,} images ({cfg.steps} steps); cached in {path}"
        )
    return TrainedClassifier(model, cfg, split, acc, val_acc, seconds, path, from_cache=False)


def _read_cache(
    path: Path, cfg: ClassifierConfig, split: DataSplit
) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint if it is readable and was trained with ``cfg`` on ``split``."""
    try:
        state = load_checkpoint(path)
    except (OSError, RuntimeError, EOFError, pickle.UnpicklingError) as e:
        return None, f"unreadable: {e}"
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        return None, "another format version"
    if state.get("config") != config_to_dict(cfg) or state.get("split") != split.record():
        return None, "trained with another config or split"
    if not math.isfinite(float(state.get("accuracy", math.nan))):
        return None, "no accuracy recorded"
    return state, ""
