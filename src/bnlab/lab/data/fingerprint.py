"""What data a run trained on, as a digest: a resume must train on the same data.

Hand-written: no library walks arbitrary containers of tensors; hashlib does the hashing.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import field
from typing import Any

import torch

__all__ = ["data_fingerprint", "not_data"]

_NOT_DATA = "bnlab_not_data"


def not_data() -> Any:
    """A dataclass field that describes the data without being it (a path, a caption):
    ``description: str = not_data()``. :func:`data_fingerprint` leaves it out, so the same data
    loaded from another directory has the same fingerprint."""
    return field(metadata={_NOT_DATA: True})


def data_fingerprint(data: Any) -> str:
    """A digest of the loaded data itself (every tensor's dtype, shape and bytes, through
    dataclasses, dicts and sequences; dataclass fields marked :func:`not_data` are left out):
    the same data wherever it was loaded from, and any other dataset, split, subset or
    preprocessing differs."""
    digest = hashlib.blake2b(digest_size=16)

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                digest.update(t.view(torch.uint8).numpy().data)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                if not f.metadata.get(_NOT_DATA):  # how it is described is not what it is
                    digest.update(f.name.encode())
                    walk(getattr(obj, f.name))
        elif isinstance(obj, Mapping):
            for k in sorted(obj, key=str):
                digest.update(str(k).encode())
                walk(obj[k])
        elif isinstance(obj, (list, tuple)):
            digest.update(f"S{len(obj)}".encode())
            for item in obj:
                walk(item)
        elif obj is None or isinstance(obj, (bool, int, float, str)):
            digest.update(repr(obj).encode())
        else:  # anything else: its kind only (functions, devices, ...)
            digest.update(type(obj).__qualname__.encode())

    walk(data)
    return digest.hexdigest()
