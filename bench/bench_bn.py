"""bnlab.functional.batch_norm vs torch.nn.functional.batch_norm, measured in the same run.

Training mode (batch statistics + running-stat update), CPU, float32. For each shape and memory
format it times forward and forward+backward of both implementations, interleaved round by
round so that drift of the machine hits both sides alike, and prints the median time per call
and the ratio bnlab / native. The geomean of the ratios is the number to quote.

    python bench/bench_bn.py                 # all shapes, torch's default thread count
    python bench/bench_bn.py --threads 1 --rounds 7
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bnlab.functional import batch_norm

SHAPES = [(100, 256), (100, 784), (256, 1024), (32, 256, 14, 14), (64, 64, 56, 56)]


def _inputs(shape: tuple[int, ...], channels_last: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen) * 2 + 0.5
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    c = shape[1]
    return {
        "x": x.requires_grad_(),
        "w": torch.rand(c, generator=gen).add_(0.5).requires_grad_(),
        "b": torch.randn(c, generator=gen).requires_grad_(),
        "rm": torch.zeros(c),
        "rv": torch.ones(c),
        "dy": torch.randn(shape, generator=gen).contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        ),
    }


def _step(fn: Callable, t: dict[str, torch.Tensor], backward: bool) -> None:
    y = fn(t["x"], t["rm"], t["rv"], t["w"], t["b"], True, 0.1, 1e-5)
    if backward:
        torch.autograd.grad(y, (t["x"], t["w"], t["b"]), t["dy"])


def _time(fn: Callable, t: dict[str, torch.Tensor], backward: bool, min_s: float) -> float:
    """Seconds per call: repeat until min_s has elapsed."""
    _step(fn, t, backward)
    n, start = 0, time.perf_counter()
    while True:
        _step(fn, t, backward)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="0 = torch's default")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.15)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, training mode")
    ratios: dict[str, list[float]] = {"fwd": [], "fwd+bwd": []}
    for shape in SHAPES:
        for channels_last in [False, True] if len(shape) == 4 else [False]:
            t = _inputs(shape, channels_last)
            for kind, backward in (("fwd", False), ("fwd+bwd", True)):
                mine, native = [], []
                for _ in range(args.rounds):  # interleaved: drift hits both sides alike
                    native.append(_time(F.batch_norm, t, backward, args.min_seconds))
                    mine.append(_time(batch_norm, t, backward, args.min_seconds))
                m, n = statistics.median(mine), statistics.median(native)
                ratios[kind].append(m / n)
                fmt = "channels_last" if channels_last else "contiguous"
                print(
                    f"shape {shape!s:18} {fmt:13} fp32 {kind:7}  bnlab {m * 1e3:8.3f} ms"
                    f"   torch {n * 1e3:8.3f} ms   ratio {m / n:5.2f}"
                )
    for kind, rs in ratios.items():
        geomean = math.exp(sum(map(math.log, rs)) / len(rs))
        print(f"geomean ratio bnlab/torch {kind:7}: {geomean:.2f}  ({len(rs)} cases)")


if __name__ == "__main__":
    main()
