"""bnlab's user cache directory: compiled kernels (the library), and the lab's datasets and
metric classifiers, each in a subdirectory of one root."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(name: str) -> Path:
    """``$BNLAB_CACHE/<name>``, else ``${XDG_CACHE_HOME:-~/.cache}/bnlab/<name>``."""
    root = os.environ.get("BNLAB_CACHE")
    if root:
        return Path(root).expanduser() / name
    xdg = os.environ.get("XDG_CACHE_HOME")
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and must be ignored.
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "bnlab" / name
