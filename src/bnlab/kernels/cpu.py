"""bnlab's C++ CPU kernels: built on first use, cached per torch version, loaded as operators.

Why these means:

- A C++ extension through ``torch.utils.cpp_extension`` (not numba, not Python): batch norm on
  a CPU is memory-bound, so what matters is the number of passes over memory (statistics in one
  pass, normalize in one; backward sums in one, dx in one) with vectorized inner loops and
  ATen's own thread pool (``at::parallel_for``, so ``torch.set_num_threads`` governs it).
  numba would bring its own threading layer and a second LLVM, and could not register autograd
  with torch's dispatcher.
- A ``torch.library`` operator (``torch.ops.bnlab.batch_norm``) whose autograd is a C++
  ``torch::autograd::Function``: on an MLP's (100, 256) the Python ``autograd.Function``
  overhead alone is a tenth of torch's whole forward+backward time. The library is built without
  pybind11 (``is_python_module=False``): smaller, and faster to compile.
- Built lazily (``import bnlab`` does not compile) into ``$BNLAB_CACHE/kernels/torch-<ver>/``
  (default ``~/.cache/bnlab/kernels``), under a name that hashes the sources, the flags and the
  CPU, so one build serves every later process and a change rebuilds. The first build is
  announced on stderr with its duration (about a minute on 2 cores); ninja and a C++ compiler
  must be present, else bnlab says so once and runs the plain-torch path.
- ``-march=native``: the library is built on the machine that runs it (the CPU is in the cache
  key), so the compiler may use every vector instruction it has.
- Full-size outputs of 1 MiB and more come from a small cache of blocks that earlier outputs
  freed, in transparent huge pages (the page faults of fresh multi-MB outputs cost more than a
  batch norm itself; see bn_kernels.cpp). It holds at most ``$BNLAB_OUTPUT_CACHE_MB`` MiB
  (default 256; 0 turns it off), read when the library loads;
  :func:`bnlab.kernels.set_output_cache_limit` changes it at run time.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from bnlab.cache import cache_dir

__all__ = ["library_path", "load", "status"]

_CSRC = Path(__file__).with_name("csrc")
_SOURCES = ("bn_kernels.cpp", "bn_ops.cpp")
_HEADERS = ("bn_cpu.h",)
_CFLAGS = ("-O3", "-march=native", "-fopenmp", "-Wno-unused-function")
_LDFLAGS = ("-fopenmp",)

_state: str | None = None  # None: not tried; "ok"; else why the kernels are unavailable


def _cpu_signature() -> str:
    """What the compiler's -march=native depends on: the CPU's model and feature flags."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return platform.machine() + line
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _cache_root() -> Path:
    return cache_dir("kernels") / f"torch-{torch.__version__}"


def library_path() -> Path:
    """Where the built library for these sources, flags, torch and CPU lives (or will)."""
    h = hashlib.sha256()
    for name in (*_SOURCES, *_HEADERS):
        h.update((_CSRC / name).read_bytes())
    h.update(repr((_CFLAGS, _LDFLAGS, torch.__version__, sys.version_info[:2])).encode())
    h.update(_cpu_signature().encode())
    return _cache_root() / f"bnlab_cpu_{h.hexdigest()[:16]}.so"


def _build(target: Path) -> None:
    """Compile, load (cpp_extension loads what it builds) and install at ``target``."""
    from torch.utils import cpp_extension

    # One build directory per torch version: ninja recompiles only what changed.
    build_dir = target.parent / "build"
    build_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"bnlab: compiling the C++ batch-norm kernels (once per torch version; "
        f"cached in {target.parent})...",
        file=sys.stderr,
        flush=True,
    )
    start = time.perf_counter()
    built = cpp_extension.load(
        name="bnlab_cpu",
        sources=[str(_CSRC / s) for s in _SOURCES],
        extra_cflags=list(_CFLAGS),
        extra_ldflags=list(_LDFLAGS),
        build_directory=str(build_dir),
        is_python_module=False,
        verbose=False,
    )
    # Install atomically: a process that finds the target finds it whole.
    with tempfile.NamedTemporaryFile(dir=target.parent, suffix=".tmp", delete=False) as tmp:
        shutil.copyfile(str(built), tmp.name)
    os.replace(tmp.name, target)
    print(
        f"bnlab: compiled the C++ kernels in {time.perf_counter() - start:.1f} s", file=sys.stderr
    )


def _output_cache_limit_from_env() -> int | None:
    """Bytes from ``$BNLAB_OUTPUT_CACHE_MB`` (None when unset); a clear error when malformed."""
    raw = os.environ.get("BNLAB_OUTPUT_CACHE_MB")
    if raw is None or raw.strip() == "":
        return None
    try:
        mb = float(raw)
    except ValueError:
        mb = -1.0
    if not 0 <= mb < 2**40:  # also NaN and inf
        raise ValueError(
            f"BNLAB_OUTPUT_CACHE_MB={raw!r} is not a size in MiB: give a number >= 0 "
            "(0 turns the output cache off), or unset it for the default 256"
        )
    return int(mb * 2**20)


def load(required: bool = False) -> bool:
    """Load the library (building it first if needed); True when ``torch.ops.bnlab`` is loaded.

    On failure: an error if ``required``, else one message on stderr and False from then on.
    (:func:`bnlab.kernels.cpu_ops` then registers the operator implemented in Python.)
    """
    global _state
    if _state == "ok":
        return True
    if _state is None:
        # A malformed setting is the user's to fix, not a reason to run without the kernels:
        # it raises here, outside the build failures caught below.
        limit = _output_cache_limit_from_env()
        try:
            target = library_path()
            if target.exists():
                torch.ops.load_library(str(target))
            else:
                _build(target)
            if limit is not None:
                torch.ops.bnlab.set_output_cache_limit(limit)
            _state = "ok"
            return True
        except Exception as exc:  # no compiler, no ninja, read-only cache, ...
            lines = str(exc).strip().splitlines() or [""]
            first_error = next((ln for ln in lines if "error" in ln.lower()), lines[-1])
            _state = f"{type(exc).__name__}: {first_error.strip()[:300]}"
            if not required:
                print(
                    f"bnlab: the compiled CPU kernels are unavailable ({_state}); running the "
                    f"plain-torch batch norm (slower, same numbers). Needs g++ and ninja "
                    f"(pip install ninja).",
                    file=sys.stderr,
                )
    if required:
        raise RuntimeError(f"bnlab: the compiled CPU kernels are unavailable: {_state}")
    return False


def status() -> str:
    """ "ok", "not loaded yet", or why the kernels are unavailable."""
    return _state or "not loaded yet"
