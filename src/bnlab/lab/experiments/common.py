"""Small pieces the experiments share: devices, the data directory, threads, the digits and
their train/held-out split, batch orders, and classifier evaluation."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from bnlab.lab.data import available_splits, batch_indices, load_dataset, to_unit_range
from bnlab.lab.data.fingerprint import not_data
from bnlab.lab.seeding import derived_generator, torch_threads

__all__ = [
    "CLASSES",
    "PIXELS",
    "SPLIT_SEED",
    "Digits",
    "Split",
    "accuracy_and_loss",
    "batch_order",
    "data_dir_arg",
    "load_digits",
    "resolve_device",
    "torch_threads",
    "train_test",
]

PIXELS = 28 * 28  # a flattened MNIST / Fashion-MNIST image: the classifiers' input
CLASSES = 10
# The seed of the held-out split, fixed rather than --seed: every seed, variant and classifier
# experiment (regularization, running-stats, batch-size) holds out the same images, so their
# held-out numbers are measured on one set.
SPLIT_SEED = 1502_03167  # the BN paper's arXiv number
Log = Callable[[str], None]


def resolve_device(device: str) -> torch.device:
    """ "auto" is cuda when available, else cpu; "cuda" without a GPU is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available here; use --device cpu")
    return torch.device(device)


def data_dir_arg(data: Path | None) -> Path | None:
    return None if data is None or str(data) == "" else Path(data)


@dataclass(eq=False)
class Split:
    """One cut of :class:`Digits` into training and held-out digits, as indices (no copies)."""

    train: Tensor  # (N,) indices into Digits.train_images
    held: Tensor  # (holdout,) indices into Digits.held_images
    description: str = not_data()  # where each part came from, with sizes


@dataclass(eq=False)
class Digits:
    """A dataset's labelled digits for the classifier experiments, loaded once as uint8.

    ``train_*`` is the train split, or the only split present; ``held_*`` is the test split
    when both are present, else the same tensors as ``train_*``. :meth:`split` cuts them by
    index, so one load serves the splits of several seeds and ships to workers once.
    """

    dataset: str
    train_images: Tensor  # (N, 784) uint8
    train_labels: Tensor  # (N,) int64
    held_images: Tensor  # (M, 784) uint8
    held_labels: Tensor  # (M,) int64
    split_name: str  # the split of train_images: "train" or "test"
    source: Path
    two_splits: bool  # held_* is the test split (else the held-out digits come from train_*)

    def split(self, holdout: int, split_seed: int, flag: str = "--holdout") -> Split:
        """``holdout`` held-out digits picked by a permutation seeded with ``split_seed``.

        With both splits, training gets the whole train split and the held-out digits come
        from the test split. With one split (e.g. MNIST's 10,000 test digits), the permutation
        is cut: its first ``holdout`` digits are held out, the rest is for training.

        Raises:
            ValueError: ``holdout`` does not fit, naming ``flag`` (the option that set it).
        """
        pick = torch.Generator().manual_seed(split_seed)
        n, name = len(self.train_labels), self.dataset
        items = "digits" if name == "mnist" else "images"  # Fashion-MNIST's are clothes
        if self.two_splits:
            m = len(self.held_labels)
            if not 0 < holdout <= m:
                raise ValueError(f"{flag} must be in 1..{m} (the test split), got {holdout}")
            held = torch.randperm(m, generator=pick)[:holdout]
            what = (
                f"{name}: train split ({n:,} {items}) for training, {holdout:,} {items} "
                f"of the test split held out, from {self.source}"
            )
            return Split(torch.arange(n), held, what)
        if not 0 < holdout < n - 1:
            raise ValueError(
                f"{flag} must be in 1..{n - 2} (the {self.split_name} split has {n:,} "
                f"{items} and the rest is for training), got {holdout}"
            )
        perm = torch.randperm(n, generator=pick)
        held, rest = perm[:holdout], perm[holdout:]
        what = (
            f"{name}: only the {self.split_name} split ({n:,} {items}, {self.source}); a seeded "
            f"permutation holds out {holdout:,} and leaves {len(rest):,} for training"
        )
        return Split(rest, held, what)

    def training(self, split: Split) -> tuple[Tensor, Tensor]:
        """(x (N, 784) float32 in [-1, 1], y (N,)) of the split's training digits."""
        return to_unit_range(self.train_images[split.train]), self.train_labels[split.train]

    def held_out(self, split: Split) -> tuple[Tensor, Tensor]:
        """(x (holdout, 784) float32 in [-1, 1], y (holdout,)) of the held-out digits."""
        return to_unit_range(self.held_images[split.held]), self.held_labels[split.held]


def load_digits(dataset: str, data: Path | None, log: Log | None = None) -> Digits:
    """The train split (or the only split present) and, when present locally, the test split.

    Args:
        dataset: "mnist" or "fashion-mnist".
        data: directory with the IDX files (None or "" = the default lookup, see bnlab.lab.data).
    """
    data_dir = data_dir_arg(data)
    quiet: Log = log if log is not None else (lambda _msg: None)
    ds = load_dataset(dataset, split="any", data_dir=data_dir, log=quiet)
    images = ds.images.reshape(len(ds), -1)  # (N, 28, 28) -> (N, 784)
    if ds.split == "train" and "test" in available_splits(dataset, data_dir):
        test = load_dataset(dataset, split="test", data_dir=data_dir, log=quiet)
        held_images, held_labels = test.images.reshape(len(test), -1), test.labels
        return Digits(
            dataset, images, ds.labels, held_images, held_labels, ds.split, ds.source, True
        )
    return Digits(dataset, images, ds.labels, images, ds.labels, ds.split, ds.source, False)


@dataclass(eq=False)
class TrainTest:
    """What every worker of a classifier experiment needs, shipped once: the training pool and
    the held-out digits, as float (N, 784) in [-1, 1] with their labels (N,)."""

    x_pool: Tensor
    y_pool: Tensor
    x_test: Tensor
    y_test: Tensor


def train_test(
    dataset: str,
    data: Path | None,
    holdout: int,
    split_seed: int,
    log: Log | None = None,
    flag: str = "--holdout",
) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """Images as float (N, 784) in [-1, 1] with labels: a training part and ``holdout`` digits,
    cut as :meth:`Digits.split` says.

    Returns:
        (x_train (N, 784), y_train (N,), x_held (holdout, 784), y_held (holdout,), one line
        saying where each part came from, with sizes)
    """
    digits = load_digits(dataset, data, log)
    split = digits.split(holdout, split_seed, flag)
    return (*digits.training(split), *digits.held_out(split), split.description)


def batch_order(n: int, batch_size: int, steps: int, seed: int) -> Tensor:
    """(steps, batch_size) indices: seeded epochs back to back, the same for every net.

    Epoch e is ``batch_indices(n, batch_size, derived_generator(seed, "order", e))``, the
    order the epoch-based experiments draw, cut after ``steps`` batches.
    """
    rows: list[Tensor] = []
    epoch = 0
    while sum(r.shape[0] for r in rows) < steps:
        rows.append(batch_indices(n, batch_size, derived_generator(seed, "order", epoch)))
        epoch += 1
    return torch.cat(rows)[:steps] if rows else torch.empty(0, batch_size, dtype=torch.long)


@torch.no_grad()
def accuracy_and_loss(
    model: nn.Module, x: Tensor, y: Tensor, chunk: int | None = None
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy in eval mode (BN with running statistics); the model's
    mode is restored. In eval mode no example depends on another, so the set goes through in
    one forward, or in forwards of ``chunk`` examples (a conv net's activations on 10,000
    images: hundreds of MB) with the same result."""
    was_training = model.training
    model.eval()
    step = chunk or x.shape[0]
    logits = torch.cat([model(x[i : i + step]) for i in range(0, x.shape[0], step)])
    model.train(was_training)
    acc = (logits.argmax(1) == y).float().mean().item()
    return acc, F.cross_entropy(logits, y).item()
