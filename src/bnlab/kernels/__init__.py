"""Which implementation runs bnlab's batch norm: compiled kernels, or the plain-torch path.

The math is bnlab.functional's; the compiled kernels are faster renditions of the same formulas,
checked against it by the same tests (``tests/`` parametrize over the backend):

- C++ kernels on CPU tensors (:mod:`bnlab.kernels.cpu`; built on first use, then cached);
- Triton kernels on CUDA tensors (:mod:`bnlab.kernels.triton_bn`).

Backends, chosen with ``BNLAB_BACKEND`` or :func:`set_backend` / :func:`use_backend`:

- ``auto`` (default): the compiled kernels where they apply, the plain-torch path elsewhere (and
  everywhere, said once on stderr, if the C++ kernels cannot be built here);
- ``compiled``: as auto, but a C++ build failure is an error (tests and benchmarks use it);
- ``torch``: the plain-torch path only: the reference rendition, and what runs for inputs the
  kernels do not take (other strides, empty batches, integer dtypes, other devices).

The double backward (``create_graph=True``) always runs the plain-torch differentiable formula.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import torch

from bnlab import functional as _functional

__all__ = [
    "BACKENDS",
    "cpu_ops",
    "cuda_kernels",
    "get_backend",
    "output_cache_bytes",
    "set_backend",
    "set_output_cache_limit",
    "use_backend",
]

BACKENDS = ("auto", "compiled", "torch")


def _validated(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source}={name!r} is not a bnlab backend; choose one of {BACKENDS}")
    return name


_backend = _validated(os.environ.get("BNLAB_BACKEND", "auto"), "BNLAB_BACKEND")


def get_backend() -> str:
    return _backend


def set_backend(name: str) -> None:
    """Select ``auto``, ``compiled`` or ``torch`` for every later call (process-wide)."""
    global _backend
    _backend = _validated(name, "backend")


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """``with use_backend("torch"): ...`` runs the block on that backend, then restores."""
    previous = get_backend()
    set_backend(name)
    try:
        yield
    finally:
        set_backend(previous)


_cpu_ready = False
_graph_library: Any = None  # the torch.library.Library that holds the Python operator


def cpu_ops() -> Any | None:
    """``torch.ops.bnlab`` when the backend wants the C++ kernels and they are built, else None.
    The first call builds or loads them."""
    global _cpu_ready, _graph_library
    if _backend == "torch":
        return None
    if _cpu_ready:
        return torch.ops.bnlab
    from bnlab.kernels import cpu

    if not cpu.load(required=_backend == "compiled"):
        return None
    # Under create_graph=True the C++ autograd calls the math's differentiable backward through
    # the bnlab::batch_norm_backward_graph operator.
    _graph_library = torch.library.Library("bnlab", "IMPL")
    _graph_library.impl(
        "batch_norm_backward_graph", _functional._graph_backward_op, "CompositeImplicitAutograd"
    )
    _cpu_ready = True
    return torch.ops.bnlab


def set_output_cache_limit(mib: float) -> float:
    """Most MiB the C++ kernels keep of freed full-size outputs for reuse (0 = none, and give
    back what they hold); returns the previous limit. Default 256, or ``$BNLAB_OUTPUT_CACHE_MB``.
    A no-op returning 0 where the C++ kernels are not loaded."""
    if mib < 0:
        raise ValueError(f"set_output_cache_limit: {mib} MiB; give a size >= 0 (0 = no cache)")
    ops = cpu_ops()
    if ops is None:
        return 0.0
    return float(ops.set_output_cache_limit(int(mib * 2**20))) / 2**20


def output_cache_bytes() -> int:
    """Bytes of freed outputs the C++ kernels hold for reuse now (0 where not loaded)."""
    ops = cpu_ops()
    return 0 if ops is None else int(ops.output_cache_bytes())


def cuda_kernels() -> Any | None:
    """The Triton kernels module when the backend wants compiled kernels and Triton imports."""
    if _backend == "torch":
        return None
    from bnlab.kernels import triton_bn

    return triton_bn if triton_bn.available() else None


# Serve bnlab.functional's dispatch: the math asks, it never imports this package.
_functional.register_kernels("cpu", cpu_ops)
_functional.register_kernels("cuda", cuda_kernels)
