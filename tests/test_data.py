"""Tests of bnlab.lab.data: the IDX reader, dataset lookup, download with md5 check, batching.

Error paths run on small synthetic IDX files in tmp_path. Real-data tests use the MNIST test
split in ``../shared/data/mnist`` (or ``$BNLAB_TEST_DATA/mnist``) and Debian's Fashion-MNIST,
and skip with the reason when those files are absent. Every test runs with ``BNLAB_CACHE`` in
tmp_path and the mirrors pointed at a closed local port: no test touches ~/.cache or the
network.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch

from bnlab.cache import cache_dir
from bnlab.lab.data import (
    DataError,
    Dataset,
    available_splits,
    batch_indices,
    datasets,
    load_dataset,
    read_idx,
    to_unit_range,
    write_idx,
)

UNREACHABLE = "http://127.0.0.1:9/"  # discard port: connection refused at once
REAL_SYSTEM_DIRS = dict(datasets.SYSTEM_DIRS)
REAL_MD5 = {k: dict(v) for k, v in datasets.MD5.items()}
TRAIN_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Private cache, no BNLAB_DATA, no system dirs, mirrors that refuse connections."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("BNLAB_CACHE", str(cache))
    monkeypatch.delenv("BNLAB_DATA", raising=False)
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    monkeypatch.setattr(datasets, "MIRRORS", {k: [UNREACHABLE] for k in datasets.MIRRORS})
    return cache


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)


def _labels(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 10, size=n, dtype=np.uint8)


def _write_split(
    directory: Path, split: str = "test", n: int = 12, n_labels: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Write a synthetic split as gz IDX files; returns (images, labels)."""
    directory.mkdir(parents=True, exist_ok=True)
    names = TRAIN_FILES if split == "train" else TEST_FILES
    images, labels = _images(n), _labels(n if n_labels is None else n_labels)
    write_idx(directory / names[0], images)
    write_idx(directory / names[1], labels)
    return images, labels


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _files_under(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file()) if directory.exists() else []


# --- real data ------------------------------------------------------------------------------


def _real_mnist_dir() -> Path:
    root = os.environ.get("BNLAB_TEST_DATA")
    base = Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared" / "data"
    directory = base / "mnist"
    if not all((directory / f).is_file() for f in TEST_FILES):
        pytest.skip(f"MNIST test split not found in {directory} (set BNLAB_TEST_DATA to a root)")
    return directory


def test_real_mnist_test_split_has_10000_images_of_every_class() -> None:
    ds = load_dataset("mnist", "test", data_dir=_real_mnist_dir(), download=False, log=None)
    assert len(ds) == 10_000
    assert ds.images.shape == (10_000, 28, 28) and ds.images.dtype == torch.uint8
    assert ds.images.is_contiguous()
    assert ds.labels.shape == (10_000,) and ds.labels.dtype == torch.int64
    assert ds.labels.min() == 0 and ds.labels.max() == 9
    assert torch.bincount(ds.labels, minlength=10).min() > 0
    assert ds.images.max() == 255 and ds.images.min() == 0


def test_real_mnist_gz_files_match_the_md5_table() -> None:
    directory = _real_mnist_dir()
    for f in TEST_FILES:
        assert _md5(directory / f) == REAL_MD5["mnist"][f]


def test_any_split_falls_back_to_test_and_says_so() -> None:
    directory = _real_mnist_dir()
    lines: list[str] = []
    ds = load_dataset("mnist", "any", data_dir=directory.parent, download=False, log=lines.append)
    assert ds.split == "test" and len(ds) == 10_000
    assert ds.source == directory.resolve()
    assert lines == [
        f"mnist: train split not found, using the test split (10,000 images) from {directory}"
    ]


def test_real_fashion_mnist_from_the_system_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    system = REAL_SYSTEM_DIRS["fashion-mnist"][0]
    if not all((system / f).is_file() for f in TRAIN_FILES + TEST_FILES):
        pytest.skip(
            f"Fashion-MNIST not installed in {system} "
            "(Debian package: apt-get install dataset-fashion-mnist)"
        )
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", REAL_SYSTEM_DIRS)
    assert available_splits("fashion-mnist") == ["train", "test"]
    train = load_dataset("fashion-mnist", "train", download=False, log=None)
    test = load_dataset("Fashion_MNIST", "test", download=False, log=None)
    assert (len(train), len(test)) == (60_000, 10_000)
    assert train.source == system.resolve() and train.name == test.name == "fashion-mnist"
    # Fashion-MNIST is exactly balanced: 6,000 / 1,000 images per class.
    assert torch.bincount(train.labels, minlength=10).tolist() == [6_000] * 10
    assert torch.bincount(test.labels, minlength=10).tolist() == [1_000] * 10


# --- lookup ---------------------------------------------------------------------------------


def test_data_dir_may_hold_the_files_or_a_root_with_the_dataset_name(tmp_path: Path) -> None:
    images, labels = _write_split(tmp_path / "root" / "mnist")
    for data_dir in (tmp_path / "root", tmp_path / "root" / "mnist"):
        ds = load_dataset("mnist", "test", data_dir=data_dir, download=False, log=None)
        np.testing.assert_array_equal(ds.images.numpy(), images)
        np.testing.assert_array_equal(ds.labels.numpy(), labels)
        assert ds.source == (tmp_path / "root" / "mnist").resolve()


def test_bnlab_data_env_is_used_when_no_data_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _write_split(tmp_path / "root" / "mnist", n=7)
    monkeypatch.setenv("BNLAB_DATA", str(tmp_path / "root"))
    assert len(load_dataset("mnist", "test", download=False, log=None)) == 7


def test_a_directory_named_after_the_other_dataset_is_not_loaded_as_this_one(
    tmp_path: Path,
) -> None:
    _write_split(tmp_path / "mnist")
    with pytest.raises(DataError, match="fashion-mnist: test split not found"):
        load_dataset("fashion-mnist", "test", data_dir=tmp_path / "mnist", download=False)


def test_data_dir_comes_before_the_cache(tmp_path: Path, isolated: Path) -> None:
    _write_split(isolated / "mnist", n=3)
    _write_split(tmp_path / "data", n=5)
    assert len(load_dataset("mnist", "test", data_dir=tmp_path / "data", log=None)) == 5
    assert len(load_dataset("mnist", "test", download=False, log=None)) == 3


def test_raw_files_load_like_gz(tmp_path: Path) -> None:
    images, labels = _images(4), _labels(4)
    write_idx(tmp_path / "t10k-images-idx3-ubyte", images)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", labels)
    ds = load_dataset("mnist", "test", data_dir=tmp_path, download=False, log=None)
    np.testing.assert_array_equal(ds.images.numpy(), images)


def test_available_splits_lists_what_is_present_without_downloading(tmp_path: Path) -> None:
    assert available_splits("mnist", tmp_path) == []
    _write_split(tmp_path, "train")
    assert available_splits("mnist", tmp_path) == ["train"]
    _write_split(tmp_path, "test")
    assert available_splits("mnist", tmp_path) == ["train", "test"]


def test_any_split_prefers_train(tmp_path: Path) -> None:
    _write_split(tmp_path, "train", n=6)
    _write_split(tmp_path, "test", n=4)
    lines: list[str] = []
    ds = load_dataset("mnist", "any", data_dir=tmp_path, download=False, log=lines.append)
    assert (ds.split, len(ds), lines) == ("train", 6, [])


def test_repeated_loads_reuse_the_parsed_tensors(tmp_path: Path) -> None:
    _write_split(tmp_path)
    a = load_dataset("mnist", "test", data_dir=tmp_path, download=False, log=None)
    b = load_dataset("mnist", "test", data_dir=tmp_path, download=False, log=None)
    assert a.images is b.images and a.labels is b.labels


# --- errors ---------------------------------------------------------------------------------


def test_missing_data_dir_is_an_error_not_a_download(tmp_path: Path) -> None:
    missing = tmp_path / "tpyo"
    with pytest.raises(DataError, match=r"data directory .*tpyo does not exist \(from --data\)"):
        load_dataset("mnist", "test", data_dir=missing)
    assert not (tmp_path / "cache").exists()


def test_missing_bnlab_data_dir_is_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BNLAB_DATA", str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"does not exist \(from BNLAB_DATA\)"):
        load_dataset("mnist", "test")


def test_nothing_found_without_download_lists_every_place_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, isolated: Path
) -> None:
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"mnist": [tmp_path / "system"]})
    (tmp_path / "data").mkdir()
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path / "data", download=False)
    message = str(info.value)
    for place in (tmp_path / "data" / "mnist", tmp_path / "data", isolated / "mnist"):
        assert f"{place} (" in message
    assert f"{tmp_path / 'system'} (system: does not exist)" in message
    assert "t10k-images-idx3-ubyte.gz" in message and "\n" not in message


def test_truncated_gzip_is_a_clean_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, _images(50))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="truncated gzip stream") as info:
        read_idx(path)
    assert str(info.value).startswith(str(path)) and "download again" in str(info.value)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", _labels(50))
    with pytest.raises(DataError, match="truncated gzip stream"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_corrupt_gzip_data_is_a_clean_error(tmp_path: Path) -> None:
    path = tmp_path / "x.gz"
    write_idx(path, _images(50))
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = bytes(64)  # zero a piece of the deflate stream
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{path}: (damaged|truncated) gzip stream"):
        read_idx(path)


def test_wrong_magic_number_is_reported_with_the_expected_values(tmp_path: Path) -> None:
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(path, _images(3))
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[2] = 0x0D  # float32 type code instead of unsigned byte
    path.write_bytes(gzip.compress(bytes(data)))
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(info.value) == (
        f"{path}: wrong magic number: expected 0x00000803 (images) or 0x00000801 (labels), "
        f"got 0x00000D03 (not an MNIST-format IDX file of unsigned bytes); delete it and "
        f"download again, or point to the right file"
    )


def test_an_html_error_page_saved_as_gz_is_a_wrong_magic_number(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"<html><body>403 Forbidden</body></html>")
    with pytest.raises(DataError, match=r"wrong magic number.*got 0x3C68746D"):
        read_idx(path)


def test_truncated_and_trailing_payloads_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "t10k-labels-idx1-ubyte"
    write_idx(path, _labels(100))
    good = path.read_bytes()
    path.write_bytes(good[:-1])
    with pytest.raises(DataError, match="truncated data: header declares 100 = 100 bytes"):
        read_idx(path)
    path.write_bytes(good + b"xyz")
    with pytest.raises(DataError, match="3 bytes of trailing data after the 100 array"):
        read_idx(path)
    path.write_bytes(good[:6])
    with pytest.raises(DataError, match="header cut short"):
        read_idx(path)


def test_missing_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "absent.gz")


def test_image_and_label_count_mismatch_names_both_files_and_counts(tmp_path: Path) -> None:
    _write_split(tmp_path, n=5, n_labels=4)
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert f"{tmp_path.resolve() / TEST_FILES[0]} has 5 images" in message
    assert f"{tmp_path.resolve() / TEST_FILES[1]} has 4 labels" in message


def test_labels_out_of_range_are_an_error(tmp_path: Path) -> None:
    _, labels = _write_split(tmp_path, n=8)
    labels[5] = 10
    write_idx(tmp_path / TEST_FILES[1], labels)
    with pytest.raises(DataError, match=r"label 10 at index 5 is outside 0\.\.9"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_images_with_the_wrong_shape_are_an_error(tmp_path: Path) -> None:
    write_idx(tmp_path / TEST_FILES[0], np.zeros((4, 32, 32), np.uint8))
    write_idx(tmp_path / TEST_FILES[1], _labels(4))
    with pytest.raises(DataError, match=r"expected images of shape \(N, 28, 28\)"):
        load_dataset("mnist", "test", data_dir=tmp_path, download=False)


def test_unknown_name_or_split_is_an_error() -> None:
    with pytest.raises(DataError, match="unknown dataset 'cifar10'"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="unknown split 'val'"):
        load_dataset("mnist", "val")


# --- download -------------------------------------------------------------------------------


class FakeResponse:
    """Stands in for urlopen's response: yields the given chunks, raising exceptions in it."""

    def __init__(self, chunks: list[bytes | BaseException], length: int) -> None:
        self.chunks = list(chunks)
        self.headers = {"Content-Length": str(length)}

    def read(self, n: int) -> bytes:
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if isinstance(chunk, BaseException):
            raise chunk
        return chunk

    def __enter__(self) -> FakeResponse:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.fixture
def local_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A file:// mirror holding a synthetic MNIST, with the md5 table set to match it."""
    mirror = tmp_path / "mirror"
    _write_split(mirror, "train", n=9)
    _write_split(mirror, "test", n=4)
    monkeypatch.setattr(datasets, "MIRRORS", {"mnist": [UNREACHABLE, mirror.as_uri() + "/"]})
    md5 = {f: _md5(mirror / f) for f in TRAIN_FILES + TEST_FILES}
    monkeypatch.setattr(datasets, "MD5", {"mnist": md5})
    return mirror


def test_download_from_a_mirror_fills_the_cache(local_mirror: Path, isolated: Path) -> None:
    lines: list[str] = []
    ds = load_dataset("mnist", "train", log=lines.append)
    assert len(ds) == 9 and ds.source == (isolated / "mnist").resolve()
    np.testing.assert_array_equal(ds.images.numpy(), read_idx(local_mirror / TRAIN_FILES[0]))
    assert _files_under(isolated) == sorted(TRAIN_FILES)  # only the split asked for
    assert any(line.startswith("mnist: downloading file://") for line in lines)
    # The next load is served from the cache: the mirror is not needed any more.
    for f in TRAIN_FILES:
        (local_mirror / f).unlink()
    assert len(load_dataset("mnist", "train", download=False, log=None)) == 9


def test_md5_mismatch_names_file_and_both_sums_and_saves_nothing(
    local_mirror: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(datasets.MD5["mnist"], TEST_FILES[0], "0" * 32)
    actual = _md5(local_mirror / TEST_FILES[0])
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", log=None)
    message = str(info.value)
    assert message.startswith(f"{TEST_FILES[0]} downloaded from {local_mirror.as_uri()}/")
    assert f"has md5 {actual}, expected {'0' * 32}" in message
    assert _files_under(isolated) == []


def test_no_network_says_how_to_provide_the_files_and_saves_nothing(isolated: Path) -> None:
    with pytest.raises(DataError) as info:
        load_dataset("mnist", "test", log=None)
    message = str(info.value)
    assert "no network" in message and UNREACHABLE + TEST_FILES[0] in message
    assert "--data DIR" in message and "BNLAB_DATA" in message
    assert ", ".join(TEST_FILES) in message and str(isolated / "mnist") in message
    assert "\n" not in message
    assert _files_under(isolated) == []


def test_interrupted_download_leaves_no_partial_file(
    local_mirror: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Ctrl-C in the middle of the transfer, after the first chunk reached the temp file.
    response = FakeResponse([b"\x1f\x8b" + bytes(100), KeyboardInterrupt()], length=10**6)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: response)
    with pytest.raises(KeyboardInterrupt):
        load_dataset("mnist", "test", log=None)
    assert _files_under(isolated) == []


def test_a_failing_mirror_is_skipped_for_the_next_one(
    local_mirror: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_urlopen = urllib.request.urlopen
    seen: list[str] = []

    def urlopen(url: str, timeout: float) -> object:
        seen.append(url)
        # The http mirror serves a wrong file; the file:// one the right one.
        if url.startswith("http://"):
            return FakeResponse([b"not the file"], length=12)
        return real_urlopen(url, timeout=timeout)

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert len(load_dataset("mnist", "test", log=None)) == 4
    assert [u.split(":")[0] for u in seen] == ["http", "file", "http", "file"]
    assert _files_under(isolated) == sorted(TEST_FILES)


def test_a_connection_closed_early_is_reported_as_such(
    isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    response = FakeResponse([b"\x1f\x8b" + bytes(10)], length=1000)
    monkeypatch.setattr(urllib.request, "urlopen", lambda url, timeout: response)
    with pytest.raises(DataError, match="connection closed after 12 of 1,000 bytes"):
        load_dataset("mnist", "test", log=None)
    assert _files_under(isolated) == []


# --- batching and scaling -------------------------------------------------------------------


def test_batch_indices_are_deterministic_for_a_seed() -> None:
    a = batch_indices(103, 10, torch.Generator().manual_seed(7))
    b = batch_indices(103, 10, torch.Generator().manual_seed(7))
    c = batch_indices(103, 10, torch.Generator().manual_seed(8))
    assert a.shape == (10, 10) and a.dtype == torch.int64
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_batch_indices_are_a_permutation_minus_the_dropped_tail() -> None:
    g = torch.Generator().manual_seed(0)
    idx = batch_indices(103, 10, g)
    expected_order = torch.randperm(103, generator=torch.Generator().manual_seed(0))
    assert torch.equal(idx.flatten(), expected_order[:100])
    assert idx.unique().numel() == 100 and idx.max() < 103


def test_batch_indices_without_shuffle_are_in_order() -> None:
    idx = batch_indices(25, 5, torch.Generator().manual_seed(0), shuffle=False)
    assert torch.equal(idx, torch.arange(25).reshape(5, 5))


def test_batch_indices_keep_the_tail_as_a_full_wrapped_batch() -> None:
    idx = batch_indices(7, 3, torch.Generator(), shuffle=False, drop_last=False)
    assert idx.tolist() == [[0, 1, 2], [3, 4, 5], [6, 0, 1]]
    shuffled = batch_indices(103, 10, torch.Generator().manual_seed(3), drop_last=False)
    assert shuffled.shape == (11, 10) and shuffled.unique().numel() == 103


def test_batch_indices_reject_an_epoch_of_no_batches() -> None:
    with pytest.raises(ValueError, match="gives no batches"):
        batch_indices(5, 10, torch.Generator())


def test_to_unit_range_maps_0_to_minus_1_and_255_to_1() -> None:
    x = torch.tensor([[0, 1, 127, 128, 254, 255]], dtype=torch.uint8)
    y = to_unit_range(x)
    assert y.dtype == torch.float32 and y.shape == x.shape
    assert y[0, 0].item() == -1.0 and y[0, -1].item() == 1.0
    # The same as torchvision's ToTensor() then Normalize(0.5, 0.5).
    torch.testing.assert_close(y, (x.float() / 255 - 0.5) / 0.5)
    flat = to_unit_range(torch.full((2, 784), 255, dtype=torch.uint8))
    assert flat.shape == (2, 784) and bool((flat == 1).all())


def test_dataset_repr_does_not_print_the_tensors() -> None:
    ds = Dataset(
        "mnist",
        "test",
        torch.zeros(3, 28, 28, dtype=torch.uint8),
        torch.zeros(3, dtype=torch.int64),
        Path("/x"),
    )
    assert repr(ds) == "Dataset('mnist', 'test', n=3, source='/x')" and len(ds) == 3


def test_cache_dir_is_bnlab_cache_else_xdg_cache_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cache_dir("mnist") == tmp_path / "cache" / "mnist"
    monkeypatch.delenv("BNLAB_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir("mnist") == tmp_path / "xdg" / "bnlab" / "mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/is/invalid")  # per the XDG spec
    assert cache_dir("mnist") == Path.home() / ".cache" / "bnlab" / "mnist"
