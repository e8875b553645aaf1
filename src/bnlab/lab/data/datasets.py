"""MNIST and Fashion-MNIST: where the files are found, download with md5 check, batching.

Lookup order for a dataset ``name`` (the first place holding both files of the split wins):

1. ``data_dir`` (the CLI's ``--data``), else the environment variable ``BNLAB_DATA`` when set
   and non-empty. Either may hold the IDX files directly or be a root holding ``<name>/``.
   A directory named after the *other* dataset (``.../mnist`` when asking for
   ``fashion-mnist``) is only used as a root: both datasets use the same file names, so this
   is what keeps one from being loaded as the other. A given directory that does not exist is
   an error, never a silent fall-through to a download: it is almost always a typo.
2. The user cache ``$BNLAB_CACHE/<name>``, default ``${XDG_CACHE_HOME:-~/.cache}/bnlab/<name>``.
3. System locations (:data:`SYSTEM_DIRS`), e.g. Debian's ``/usr/share/datasets/fashion-mnist``.
4. Download from :data:`MIRRORS` into the cache, each ``.gz`` file checked against :data:`MD5`.

Local files are not md5-checked (distributions recompress them; Debian's Fashion-MNIST files
hold the same arrays under different md5 sums), but every file is validated when read: IDX
header, exact payload size, image shape, label range, image count == label count.

A split lives in memory as one ``uint8`` tensor ``(N, 28, 28)`` plus ``int64`` labels; parsed
files are cached in-process, so loading the same split again costs nothing. Training batches
are rows of :func:`batch_indices`, one seeded permutation per epoch: no per-sample Python.
"""

from __future__ import annotations

import functools
import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import numpy as np
import torch
from torch import Tensor
from tqdm import tqdm

from bnlab.cache import cache_dir
from bnlab.lab.data.idx import DataError, read_idx

__all__ = [
    "MD5",
    "MIRRORS",
    "SYSTEM_DIRS",
    "Dataset",
    "available_splits",
    "batch_indices",
    "load_dataset",
    "to_unit_range",
]

DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")
IMAGE_SHAPE = (28, 28)
NUM_CLASSES = 10

# Base names of the (images, labels) files of each split; each may also end in ".gz".
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# Tried in order; a file is fetched as <mirror><file>.gz. Module-level so tests can patch them.
MIRRORS: dict[str, list[str]] = {
    "mnist": [
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ],
    "fashion-mnist": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
}

# md5 of the canonical .gz files, checked on every download.
MD5: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

# Read-only places where a distribution installs the files, and the package that does.
SYSTEM_DIRS: dict[str, list[Path]] = {
    "fashion-mnist": [Path("/usr/share/datasets/fashion-mnist")],
}
SYSTEM_PACKAGES: dict[str, str] = {
    "fashion-mnist": "apt-get install dataset-fashion-mnist (Debian/Ubuntu)",
}

DOWNLOAD_TIMEOUT_S = 30.0  # per connect / read; a stalled mirror must not hang a run forever
_CHUNK = 1 << 20
_REDOWNLOAD = "delete it and download again"

Log = Callable[[str], None]


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == is elementwise
class Dataset:
    """One split of a dataset, whole in memory.

    The tensors are shared with the in-process cache of :func:`load_dataset`: treat them as
    read-only (index them, convert them with :func:`to_unit_range`; do not modify in place).
    """

    name: str  # "mnist" | "fashion-mnist"
    split: str  # "train" | "test"
    images: Tensor = field(repr=False)  # uint8 (N, 28, 28), contiguous
    labels: Tensor = field(repr=False)  # int64 (N,), values 0..9
    source: Path  # directory the files came from (absolute)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __repr__(self) -> str:
        return f"Dataset({self.name!r}, {self.split!r}, n={len(self)}, source='{self.source}')"


@dataclass(frozen=True)
class _Place:
    """A directory where a dataset may be, and why it is looked at."""

    path: Path
    origin: str  # "--data", "BNLAB_DATA", "cache" or "system"

    def describe(self, split: str | None = None) -> str:
        if not self.path.is_dir():
            return f"{self.path} ({self.origin}: does not exist)"
        splits = (split,) if split in SPLITS else SPLITS
        missing = [b for s in splits for b in FILES[s] if _find_file(self.path, b) is None]
        return f"{self.path} ({self.origin}: lacks {', '.join(m + '[.gz]' for m in missing)})"


def load_dataset(
    name: str,
    split: str = "train",
    data_dir: str | os.PathLike[str] | None = None,
    download: bool = True,
    log: Log | None = print,
) -> Dataset:
    """Find (or download) one split of MNIST or Fashion-MNIST and load it into memory.

    Args:
        name: ``"mnist"`` or ``"fashion-mnist"`` (case and ``_`` vs ``-`` do not matter).
        split: ``"train"``, ``"test"``, or ``"any"``: train if present locally, else test
            (logged, with the reason); if neither is present, train is downloaded.
        data_dir: directory holding the IDX files or a root holding ``<name>/``; default the
            environment variable ``BNLAB_DATA``. See the module docstring for the lookup order.
        download: fetch missing files from :data:`MIRRORS` into the cache.
        log: where to send progress lines (fallback split, downloads); ``None`` = silent,
            which also hides the download progress bar.

    Returns:
        The split: ``images`` uint8 ``(N, 28, 28)``, ``labels`` int64 ``(N,)``.

    Raises:
        DataError: unknown name or split, ``data_dir`` does not exist, files missing with
            ``download=False``, no network, md5 mismatch, or a damaged / inconsistent file.
    """
    name = _canonical_name(name)
    if split not in (*SPLITS, "any"):
        raise DataError(f"unknown split {split!r}; choose 'train', 'test' or 'any'")
    places = _places(name, data_dir)
    wanted = SPLITS if split == "any" else (split,)
    for s in wanted:
        hit = _locate(s, places)
        if hit is not None:
            place, images_path, labels_path = hit
            dataset = _load(name, s, place.path, images_path, labels_path)
            if s != wanted[0] and log is not None:
                log(
                    f"{name}: {wanted[0]} split not found, using the {s} split "
                    f"({len(dataset):,} images) from {place.path}"
                )
            return dataset

    target = wanted[0]
    if not download:
        what = "neither the train nor the test split" if split == "any" else f"{split} split not"
        raise DataError(
            f"{name}: {what} found and download=False; looked in: "
            f"{'; '.join(p.describe(split) for p in places)}. Put the files "
            f"({_file_list(split)}; gz or raw) in one of these, or pass --data DIR / set "
            f"BNLAB_DATA to the directory holding them, or allow the download"
        )
    directory = _download(name, target, split, places, log)
    hit = _locate(target, [_Place(directory, "cache")])
    assert hit is not None, "a completed download leaves both files in the cache"
    return _load(name, target, directory, hit[1], hit[2])


def available_splits(name: str, data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """The splits of ``name`` present locally (in lookup order's places), never downloading.

    Returns:
        A sublist of ``["train", "test"]``; empty when nothing is present.
    """
    places = _places(_canonical_name(name), data_dir)
    return [s for s in SPLITS if _locate(s, places) is not None]


def to_unit_range(images_uint8: Tensor) -> Tensor:
    """Map uint8 pixels to float32 in [-1, 1]: ``x / 127.5 - 1``.

    The same values (up to float rounding) as torchvision's ``ToTensor()`` followed by
    ``Normalize(0.5, 0.5)``, the input range of a tanh generator's output. Elementwise, so any
    shape works: ``(B, 28, 28)`` or flattened ``(B, 784)``; the device is kept.
    """
    if images_uint8.dtype != torch.uint8:
        raise TypeError(f"to_unit_range expects uint8 pixels, got {images_uint8.dtype}")
    return images_uint8.to(torch.float32).div_(127.5).sub_(1.0)


def batch_indices(
    n: int,
    batch_size: int,
    generator: torch.Generator,
    shuffle: bool = True,
    drop_last: bool = True,
) -> Tensor:
    """One epoch of minibatch indices as a ``(num_batches, batch_size)`` int64 matrix.

    Row ``i`` indexes batch ``i``: ``images[idx[i]]``. The order is one
    ``torch.randperm(n, generator=generator)``, so the same seed gives the same batches (and
    every variant of one seed sees the same data). ``shuffle=False`` gives ``arange(n)`` order
    and leaves the generator untouched.

    ``drop_last=True`` drops the ragged tail (``n % batch_size`` samples). ``drop_last=False``
    keeps every sample and fills the last row by wrapping around to the start of the same
    order (as ``DistributedSampler`` pads), so every batch is full: a batch-norm layer never
    sees a batch of one. For exactly-once evaluation use ``torch.arange(n).split(batch_size)``.

    Raises:
        ValueError: ``batch_size < 1``, ``n < 1``, or ``drop_last`` with ``n < batch_size``
            (an epoch of zero batches would make a training loop silently do nothing).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if n < 1:
        raise ValueError(f"need at least one sample, got n={n}")
    if drop_last and n < batch_size:
        raise ValueError(
            f"batch_size {batch_size} > n {n} with drop_last=True gives no batches; "
            f"use a smaller batch or drop_last=False"
        )
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    num_batches = n // batch_size if drop_last else -(-n // batch_size)
    total = num_batches * batch_size
    if total > n:
        order = order.repeat(-(-total // n))  # wrap around: tail padded from the start
    return order[:total].reshape(num_batches, batch_size)


# --- lookup ---------------------------------------------------------------------------------


def _canonical_name(name: str) -> str:
    canonical = name.strip().lower().replace("_", "-")
    if canonical not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return canonical


def _places(name: str, data_dir: str | os.PathLike[str] | None) -> list[_Place]:
    """Every directory to look in, in lookup order; checks that a given data_dir exists."""
    places: list[_Place] = []
    if data_dir is not None and os.fspath(data_dir) != "":
        explicit: str | None = os.fspath(data_dir)
        origin = "--data"
    else:
        explicit = os.environ.get("BNLAB_DATA") or None
        origin = "BNLAB_DATA"
    if explicit is not None:
        root = Path(explicit).expanduser()
        if not root.is_dir():
            problem = "is not a directory" if root.exists() else "does not exist"
            raise DataError(
                f"data directory {root} {problem} (from {origin}); fix the path, or leave "
                f"{origin} unset to use the cache {cache_dir(name)} (downloaded if needed)"
            )
        places.append(_Place(root / name, origin))
        # Same file names for both datasets: ".../mnist" must not serve fashion-mnist.
        if root.name == name or root.name not in DATASETS:
            places.append(_Place(root, origin))
    places.append(_Place(cache_dir(name), "cache"))
    places.extend(_Place(Path(p), "system") for p in SYSTEM_DIRS.get(name, ()))
    return places


def _find_file(directory: Path, base: str) -> Path | None:
    # Raw first: it reads without decompressing (what torchvision leaves after extracting).
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _locate(split: str, places: Sequence[_Place]) -> tuple[_Place, Path, Path] | None:
    """The first place holding both files of ``split``, with the two paths."""
    images_base, labels_base = FILES[split]
    for place in places:
        images = _find_file(place.path, images_base)
        labels = _find_file(place.path, labels_base)
        if images is not None and labels is not None:
            return place, images, labels
    return None


def _file_list(split: str) -> str:
    splits = (split,) if split in SPLITS else SPLITS
    return ", ".join(f"{b}.gz" for s in splits for b in FILES[s])


# --- reading --------------------------------------------------------------------------------

_FileKey = tuple[str, int, int]  # (resolved path, mtime_ns, size): a rewritten file is re-read


def _file_key(path: Path) -> _FileKey:
    resolved = path.resolve()
    st = resolved.stat()
    return str(resolved), st.st_mtime_ns, st.st_size


def _load(name: str, split: str, directory: Path, images_path: Path, labels_path: Path) -> Dataset:
    images, labels = _read_checked(_file_key(images_path), _file_key(labels_path))
    return Dataset(name, split, images, labels, directory.resolve())


@functools.lru_cache(maxsize=8)  # both splits of both datasets
def _read_checked(images_key: _FileKey, labels_key: _FileKey) -> tuple[Tensor, Tensor]:
    """Read and validate an (images, labels) pair; errors are not cached, results are."""
    images_path, labels_path = Path(images_key[0]), Path(labels_key[0])
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise DataError(
            f"{images_path}: expected images of shape (N, 28, 28), got {images.shape} (a labels "
            f"file or another dataset?); point to the right file, or {_REDOWNLOAD}"
        )
    if labels.ndim != 1:
        raise DataError(
            f"{labels_path}: expected labels of shape (N,), got {labels.shape} (an images "
            f"file?); point to the right file, or {_REDOWNLOAD}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images):,} images but {labels_path} has {len(labels):,} "
            f"labels; the two files must come from the same split of the same download: "
            f"delete them and download again"
        )
    bad = np.flatnonzero(labels >= NUM_CLASSES)  # uint8: nothing below 0
    if bad.size:
        raise DataError(
            f"{labels_path}: label {labels[bad[0]]} at index {bad[0]} is outside 0..9 "
            f"({bad.size:,} of {len(labels):,} labels out of range: damaged, or not a class-labels "
            f"file); {_REDOWNLOAD}"
        )
    return torch.from_numpy(images), torch.from_numpy(labels).to(torch.int64)


# --- download -------------------------------------------------------------------------------


class _FetchError(Exception):
    """A mirror could not deliver a file (network, HTTP status, short read)."""


def _download(
    name: str, split: str, requested: str, places: Sequence[_Place], log: Log | None
) -> Path:
    """Fetch the missing files of ``split`` into the cache; returns the cache directory."""
    directory = cache_dir(name)
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(
            f"cannot create the cache directory {directory} ({e.strerror or e}); set "
            f"BNLAB_CACHE to a writable directory, or pass --data DIR holding the files"
        ) from e
    for base in FILES[split]:
        if _find_file(directory, base) is None:
            _fetch(name, f"{base}.gz", directory, requested, places, log)
    return directory


def _fetch(
    name: str,
    filename: str,
    directory: Path,
    requested: str,
    places: Sequence[_Place],
    log: Log | None,
) -> None:
    """Download one file from the first mirror that delivers it with the right md5."""
    expected = MD5[name][filename]
    failures: list[str] = []
    mismatch: tuple[str, str] | None = None  # (url, md5) of the first wrong file served
    for mirror in MIRRORS[name]:
        url = mirror if mirror.endswith("/") else mirror + "/"
        url += filename
        if log is not None:
            log(f"{name}: downloading {url} to {directory}")
        try:
            actual = _download_verified(url, directory / filename, expected, log is not None)
        except _FetchError as e:
            failures.append(f"{url}: {e}")
            continue
        if actual is None:
            return
        failures.append(f"{url}: md5 mismatch")
        mismatch = mismatch or (url, actual)
    if mismatch is not None:
        url, actual = mismatch
        raise DataError(
            f"{filename} downloaded from {url} has md5 {actual}, expected {expected} (the "
            f"mirror served a different or damaged file; nothing was saved; all mirrors: "
            f"{'; '.join(failures)}); try again later, or put verified files in {directory} "
            f"or a directory passed with --data DIR"
        )
    package = f" or install them with {SYSTEM_PACKAGES[name]}," if name in SYSTEM_PACKAGES else ""
    raise DataError(
        f"{name}: cannot download {filename}: no network, or every mirror failed "
        f"({'; '.join(failures)}). To work offline, put the files ({_file_list(requested)}; "
        f"gz or raw) in a directory and pass --data DIR or set BNLAB_DATA=DIR, or put them in "
        f"{directory},{package} looked in: {'; '.join(p.describe(requested) for p in places)}"
    )


def _download_verified(url: str, final: Path, expected_md5: str, progress: bool) -> str | None:
    """Stream ``url`` into a temp file beside ``final``; keep it only if the md5 matches.

    Returns ``None`` when ``final`` now holds the verified file, else the md5 that was found.
    The temp file is removed on every other outcome, Ctrl-C included, and the final name only
    ever appears by an atomic rename, so a concurrent run or a killed one never sees a partial
    or unverified file.
    """
    try:
        fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.name}.", suffix=".part")
    except OSError as e:
        raise DataError(
            f"cannot write to the cache directory {final.parent} ({e.strerror or e}); set "
            f"BNLAB_CACHE to a writable directory, or pass --data DIR holding the files"
        ) from e
    tmp = Path(tmp_name)
    kept = False
    try:
        md5 = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S)
            except (OSError, http.client.HTTPException, ValueError) as e:
                raise _FetchError(_describe(e)) from e
            with response:
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                received = 0
                with tqdm(
                    total=total, unit="B", unit_scale=True, desc=final.name, disable=not progress
                ) as bar:
                    while True:
                        try:
                            chunk = response.read(_CHUNK)
                        except (OSError, http.client.HTTPException) as e:
                            raise _FetchError(_describe(e)) from e
                        if not chunk:
                            break
                        md5.update(chunk)
                        _write(out, chunk, tmp)
                        received += len(chunk)
                        bar.update(len(chunk))
            if total is not None and received < total:
                raise _FetchError(f"connection closed after {received:,} of {total:,} bytes")
        actual = md5.hexdigest()
        if actual != expected_md5:
            return actual
        os.replace(tmp, final)
        kept = True
        return None
    finally:
        if not kept:
            tmp.unlink(missing_ok=True)


def _write(out: IO[bytes], chunk: bytes, tmp: Path) -> None:
    try:
        out.write(chunk)
    except OSError as e:
        # A local problem (disk full, quota): not worth trying another mirror.
        raise DataError(
            f"cannot write {tmp} ({e.strerror or e}); free some space, or set BNLAB_CACHE to "
            f"another directory"
        ) from e


def _describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    return str(e) or type(e).__name__
