"""Reproducibility: derived seeds (one independent random stream per purpose) and fixed torch
thread counts (a parallel reduction's order, so its rounding, depends on the count)."""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import torch

__all__ = ["derived_generator", "derived_seed", "torch_threads"]


def derived_seed(seed: int, *parts: int | str) -> int:
    """A 63-bit seed determined by ``seed`` and ``parts`` (e.g. an epoch and a purpose).

    Each stream (data order of epoch 7, z of epoch 7, the fixed sample z, ...) gets its own
    seed, so a run resumed at epoch 7 draws exactly what an uninterrupted run draws there,
    without replaying the random numbers of epochs 1-6.
    """
    words = [int(p) if isinstance(p, int) else zlib.crc32(p.encode()) for p in parts]
    state = np.random.SeedSequence([seed & 0xFFFFFFFF, *words]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


def derived_generator(seed: int, *parts: int | str) -> torch.Generator:
    """A torch.Generator seeded with :func:`derived_seed`."""
    return torch.Generator().manual_seed(derived_seed(seed, *parts))


@contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """Run the block (or, as a decorator, each call) with ``n`` torch CPU threads (0 = leave
    as is), then restore the count.

    The classifier experiments run with 1: their matmuls are small (a (50, 784) x (784, 100)
    GEMM), a second thread buys little, and on a shared 2-core machine oversubscribed threads
    made a run several times slower. The scoring classifier trains with a fixed count
    (``bnlab.lab.metrics.classifier.TRAIN_THREADS``) so that it is the same network on every
    machine of one kind, whatever its core count.
    """
    before = torch.get_num_threads()
    if n > 0:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
