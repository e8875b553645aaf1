"""Derived seeds: one independent, reproducible random stream per purpose."""

from __future__ import annotations

import zlib

import numpy as np
import torch

__all__ = ["derived_generator", "derived_seed"]


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
