"""The IDX file format of MNIST and Fashion-MNIST: read (gzip or raw) and write.

An IDX file is a 4-byte magic number, one big-endian uint32 per dimension, then the array
in C order. The magic number is two zero bytes, a type code (``0x08`` = unsigned byte, the
only type these datasets use and the only one supported here) and the number of dimensions:
``0x00000803`` for an images file (N, rows, cols), ``0x00000801`` for a labels file (N,).

Every way a file can be wrong (not there, damaged gzip, wrong magic number, too short, too
long) raises :class:`DataError`, a ``ValueError`` whose one-line message names the file,
says what is wrong and how to fix it. Whether a file is gzip is decided by its first two
bytes, not its name, so a raw file named ``*.gz`` (or the reverse) still reads.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from io import BufferedIOBase
from pathlib import Path

import numpy as np

__all__ = ["DataError", "read_idx", "write_idx"]

_GZIP_MAGIC = b"\x1f\x8b"
_UINT8 = 0x08
_CHUNK = 1 << 20  # read in 1 MiB pieces: a damaged header must not make us allocate terabytes
_REDOWNLOAD = "delete it and download again"


class DataError(ValueError):
    """A dataset file or directory is missing, damaged or inconsistent.

    The message is one line: the file (or directory), what is wrong, and how to fix it.
    """


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file of unsigned bytes, gzip-compressed or raw.

    Args:
        path: the file. Compression is detected from the content, not the name.

    Returns:
        A writable, C-contiguous ``uint8`` array with the shape the header declares.

    Raises:
        DataError: the file is missing or unreadable, the gzip stream is damaged or cut
            short, the magic number is not ``0x000008dd``, or the payload is not exactly
            ``prod(dims)`` bytes (truncated or trailing data).
    """
    path = Path(path)
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == _GZIP_MAGIC
            raw.seek(0)
            if compressed:
                with gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                    return _read_stream(stream, path)
            return _read_stream(raw, path)
    except EOFError as e:
        # The stream ends before its end-of-stream marker: the usual partial download.
        raise DataError(
            f"{path}: truncated gzip stream (file is damaged or partly downloaded); {_REDOWNLOAD}"
        ) from e
    except (zlib.error, gzip.BadGzipFile) as e:
        # Corrupt deflate data, a CRC or length mismatch at the end, garbage after the stream.
        raise DataError(
            f"{path}: damaged gzip stream ({_reason(e)}; file is damaged or partly "
            f"downloaded); {_REDOWNLOAD}"
        ) from e
    except FileNotFoundError as e:
        raise DataError(f"{path}: no such file; check the path or download the dataset") from e
    except IsADirectoryError as e:
        raise DataError(f"{path}: is a directory, not an IDX file; pass the file itself") from e
    except PermissionError as e:
        raise DataError(f"{path}: permission denied; make the file readable") from e


def _reason(e: BaseException) -> str:
    return str(e) or type(e).__name__


def _read_stream(stream: BufferedIOBase, path: Path) -> np.ndarray:
    """Parse header and payload from an open (possibly decompressing) byte stream."""
    magic = _read_exactly(stream, 4)
    if len(magic) < 4:
        raise DataError(
            f"{path}: file too short for an IDX header ({len(magic)} bytes; file is damaged "
            f"or partly downloaded); {_REDOWNLOAD}"
        )
    zero0, zero1, type_code, ndim = magic
    if zero0 != 0 or zero1 != 0 or type_code != _UINT8 or ndim == 0:
        value = int.from_bytes(magic, "big")
        raise DataError(
            f"{path}: wrong magic number: expected 0x00000803 (images) or 0x00000801 (labels), "
            f"got 0x{value:08X} (not an MNIST-format IDX file of unsigned bytes); "
            f"{_REDOWNLOAD}, or point to the right file"
        )
    dims_bytes = _read_exactly(stream, 4 * ndim)
    if len(dims_bytes) < 4 * ndim:
        raise DataError(
            f"{path}: header cut short ({ndim} dimensions declared, {len(dims_bytes)} of "
            f"{4 * ndim} size bytes present; file is damaged or partly downloaded); "
            f"{_REDOWNLOAD}"
        )
    dims = struct.unpack(f">{ndim}I", dims_bytes)
    expected = math.prod(dims)
    shape = "x".join(map(str, dims))

    # Read at most expected + 1 bytes: one byte too many already proves trailing data.
    buf = bytearray()
    while len(buf) <= expected:
        chunk = stream.read(min(_CHUNK, expected + 1 - len(buf)))
        if not chunk:
            break
        buf += chunk
    if len(buf) < expected:
        raise DataError(
            f"{path}: truncated data: header declares {shape} = {expected:,} bytes, file holds "
            f"{len(buf):,} (file is damaged or partly downloaded); {_REDOWNLOAD}"
        )
    if len(buf) > expected:
        extra = len(buf) - expected + _count_rest(stream)
        unit = "byte" if extra == 1 else "bytes"
        raise DataError(
            f"{path}: {extra:,} {unit} of trailing data after the {shape} array declared in the "
            f"header (not a valid IDX file); {_REDOWNLOAD}"
        )
    # frombuffer on a bytearray is writable and shares memory: no copy of the payload.
    return np.frombuffer(buf, dtype=np.uint8).reshape(dims)


def _read_exactly(stream: BufferedIOBase, n: int) -> bytes:
    """Read n bytes, fewer only at end of stream (a single read() may return less)."""
    out = b""
    while len(out) < n:
        chunk = stream.read(n - len(out))
        if not chunk:
            break
        out += chunk
    return out


def _count_rest(stream: BufferedIOBase) -> int:
    n = 0
    while chunk := stream.read(_CHUNK):
        n += len(chunk)
    return n


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write a ``uint8`` array as an IDX file; gzip-compressed if the name ends in ``.gz``.

    The gzip header carries no timestamp, so equal arrays give byte-identical files (and
    equal md5 sums), which tests of the download check rely on.
    """
    path = Path(path)
    arr = np.ascontiguousarray(array)
    if arr.dtype != np.uint8:
        raise TypeError(f"write_idx writes uint8 arrays only, got {arr.dtype}")
    if not 1 <= arr.ndim <= 255:
        raise ValueError(f"an IDX array needs 1..255 dimensions, got {arr.ndim}")
    header = bytes([0, 0, _UINT8, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = header + arr.tobytes()
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)
