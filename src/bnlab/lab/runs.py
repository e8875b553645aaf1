"""Run directories: atomic files, append-only metrics, checkpoints.

Every file a run leaves is written whole or not at all: data goes to a temporary file in the
same directory, which is then renamed over the target (``os.replace`` is atomic on POSIX). A
run killed at any moment leaves the previous version of each file, never half of a new one.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import torch

__all__ = [
    "append_jsonl",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_json",
    "load_checkpoint",
    "new_run_dir",
    "read_config",
    "read_jsonl",
    "save_checkpoint",
    "to_json",
    "write_jsonl",
]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp's temporaries are 0600


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary sibling of ``path`` for writing; rename it over ``path`` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt: never leave the temporary file behind
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def to_json(value: Any) -> Any:
    """``value`` as plain JSON data, the one conversion every file of a run goes through:
    dataclasses become objects with their field names (an analysis is its summary.json),
    mappings objects, tuples and lists arrays, paths strings, tensors and numpy values
    numbers or lists.

    Raises:
        TypeError: anything else, naming its type.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # torch tensors, numpy arrays and scalars
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")


def _json_default(obj: Any) -> Any:
    return to_json(obj)


def atomic_write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, indent=2, default=_json_default, allow_nan=True)
    atomic_write_bytes(path, (text + "\n").encode())


def append_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Append records, one JSON object per line. Each line goes out in a single write."""
    lines = "".join(json.dumps(r, default=_json_default) + "\n" for r in records)
    if not lines:
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(lines)
        f.flush()


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> None:
    """Replace a JSON-lines file atomically (used when a resumed run rebuilds its metrics)."""
    text = "".join(json.dumps(r, default=_json_default) + "\n" for r in records)
    atomic_write_bytes(path, text.encode())


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSON-lines file.

    A torn *last* line (a kill mid-write: no newline at its end) is skipped with a warning; a
    line that is not a JSON object anywhere else is an error naming the file and line.
    """
    path = Path(path)
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.split("\n")
    out = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise json.JSONDecodeError("not a JSON object", line, 0)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # the last line has no newline: torn by a kill mid-write
                warnings.warn(
                    f"{path}: skipped a torn last line {number} (a write cut off)", stacklevel=2
                )
                continue
            raise ValueError(
                f"{path}, line {number}: not a JSON record ({exc.msg}); the file is corrupt"
            ) from None
        out.append(record)
    return out


def read_config(run_dir: str | Path) -> dict[str, Any]:
    """A run directory's config.json, or a ValueError naming the file and what is wrong."""
    path = Path(run_dir) / "config.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{run_dir} is not a bnlab run directory (no config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read it ({exc})") from None
    if not isinstance(meta, dict) or "experiment" not in meta or "config" not in meta:
        raise ValueError(f"{path}: not a bnlab config (no experiment/config entries)")
    return meta


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    state: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=False)
    return state


def new_run_dir(root: str | Path, prefix: str) -> Path:
    """A fresh ``root/prefix-YYYYmmdd-HHMMSS`` (suffixed if that exists already)."""
    root = Path(root)
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = root / f"{prefix}-{stamp}"
    k = 1
    while path.exists():
        k += 1
        path = root / f"{prefix}-{stamp}-{k}"
    return path


def latest_run_dir(root: str | Path, prefix: str) -> Path | None:
    """The newest ``root/prefix-*`` holding a config.json, for ``--resume`` without ``--out``."""
    candidates = [p for p in Path(root).glob(f"{prefix}-*") if (p / "config.json").exists()]
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None
