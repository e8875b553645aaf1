"""Shared fixtures: where the real data is (skip cleanly when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def data_root() -> Path:
    """$BNLAB_TEST_DATA, else ../shared/data beside the repository."""
    root = os.environ.get("BNLAB_TEST_DATA")
    return Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """A data root holding mnist/ with at least the test split, or skip."""
    root = data_root()
    if not all((root / "mnist" / f).is_file() for f in MNIST_TEST_FILES):
        pytest.skip(f"MNIST not found in {root / 'mnist'} (set BNLAB_TEST_DATA to a data root)")
    return root
