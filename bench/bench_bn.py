"""bnlab.functional.batch_norm vs torch.nn.functional.batch_norm, measured in the same run.

Training mode (batch statistics + running-stat update), CPU, float32. For each shape and memory
format it times forward and forward+backward of both implementations, interleaved round by
round so that drift of the machine hits both sides alike, and prints the median time per call
and the ratio bnlab / native: the median over rounds of each round's ratio, with the rounds'
range. Then:

- achieved bandwidth on (64, 64, 56, 56): the bytes bnlab's kernels must move (forward reads x
  twice and writes y; backward reads x and dy twice and writes dx: 8 tensor passes) per second,
  against the copy bandwidth (``dst.copy_(x)``: one read + one write) measured in this run;
- fused BN + ReLU (``bnlab.functional.batch_norm_act``) vs native BN followed by native
  in-place ReLU (as torchvision's ResNet does), forward+backward.

The geomeans of the ratios are the numbers to quote; the issue's targets are checked at the end.

    python bench/bench_bn.py                     # every shape, 2 threads
    python bench/bench_bn.py --quick             # the 7 original cases only
    python bench/bench_bn.py --backend torch     # bnlab's plain-torch path instead
"""

from __future__ import annotations

import argparse
import math
import resource
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bnlab import kernels
from bnlab.functional import batch_norm, batch_norm_act

SHAPES = [(100, 256), (100, 784), (256, 1024), (32, 256, 14, 14), (64, 64, 56, 56)]
RESNET50 = [(32, 64, 112, 112), (32, 2048, 7, 7)]  # first and last BN at batch 32
BANDWIDTH_SHAPE = (64, 64, 56, 56)
PASSES = 8  # tensor-sized reads + writes of forward (3) and backward (5)


def _inputs(shape: tuple[int, ...], channels_last: bool) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, generator=gen) * 2 + 0.5).contiguous(memory_format=fmt)
    c = shape[1]
    return {
        "x": x.requires_grad_(),
        "w": torch.rand(c, generator=gen).add_(0.5).requires_grad_(),
        "b": torch.randn(c, generator=gen).requires_grad_(),
        "rm": torch.zeros(c),
        "rv": torch.ones(c),
        "dy": torch.randn(shape, generator=gen).contiguous(memory_format=fmt),
    }


def _native_bn_relu(x, rm, rv, w, b, training, momentum, eps):  # type: ignore[no-untyped-def]
    return F.relu(F.batch_norm(x, rm, rv, w, b, training, momentum, eps), inplace=True)


def _bnlab_bn_relu(x, rm, rv, w, b, training, momentum, eps):  # type: ignore[no-untyped-def]
    return batch_norm_act(x, rm, rv, w, b, training, momentum, eps, act="relu")


def _step(fn: Callable, t: dict[str, torch.Tensor], backward: bool) -> None:
    y = fn(t["x"], t["rm"], t["rv"], t["w"], t["b"], True, 0.1, 1e-5)
    if backward:
        torch.autograd.grad(y, (t["x"], t["w"], t["b"]), t["dy"])


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time(
    fn: Callable, t: dict[str, torch.Tensor], backward: bool, min_s: float
) -> tuple[float, float]:
    """Seconds per call, and minor page faults per call (memory the allocator had to map
    afresh: at sizes of a few MB it can cost more than the batch norm itself), repeating until
    min_s has elapsed."""
    _step(fn, t, backward)
    n, start, faults = 0, time.perf_counter(), _minor_faults()
    while True:
        _step(fn, t, backward)
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return elapsed / n, (_minor_faults() - faults) / n


def _compare(
    mine_fn: Callable, native_fn: Callable, t: dict[str, torch.Tensor], backward: bool, args
) -> tuple[float, float, list[float], tuple[float, float]]:
    """Median seconds per call of each side, the per-round ratios mine / native, and the median
    page faults per call of each side.

    Each round times both sides back to back (alternating which goes first), so a round's
    ratio compares the two under the same machine state; the median of the rounds' ratios is
    the number to quote (drift between rounds, which a ratio of medians would keep, cancels)."""
    mine: list[tuple[float, float]] = []
    native: list[tuple[float, float]] = []
    for r in range(args.rounds):
        if r % 2 == 0:
            native.append(_time(native_fn, t, backward, args.min_seconds))
            mine.append(_time(mine_fn, t, backward, args.min_seconds))
        else:
            mine.append(_time(mine_fn, t, backward, args.min_seconds))
            native.append(_time(native_fn, t, backward, args.min_seconds))
    ratios = [m[0] / n[0] for m, n in zip(mine, native, strict=True)]
    faults = (statistics.median(m[1] for m in mine), statistics.median(n[1] for n in native))
    return (
        statistics.median(m[0] for m in mine),
        statistics.median(n[0] for n in native),
        ratios,
        faults,
    )


def _copy_bandwidth(shape: tuple[int, ...], rounds: int) -> float:
    """Bytes per second of dst.copy_(src) (read + write), best of `rounds`."""
    src, dst = torch.randn(shape), torch.empty(shape)
    dst.copy_(src)
    best = math.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(5):
            dst.copy_(src)
        best = min(best, (time.perf_counter() - start) / 5)
    return 2 * src.numel() * src.element_size() / best


def _geomean(rs: list[float]) -> float:
    return math.exp(sum(map(math.log, rs)) / len(rs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0 = default)")
    parser.add_argument("--rounds", type=int, default=9, help="interleaved rounds per case")
    parser.add_argument("--min-seconds", type=float, default=0.1)
    parser.add_argument("--quick", action="store_true", help="the 7 original cases only")
    parser.add_argument("--backend", default="compiled", choices=kernels.BACKENDS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels.set_backend(args.backend)
    batch_norm(torch.randn(4, 3), None, None, training=True)  # builds the kernels if needed
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, training mode, "
        f"bnlab backend {args.backend}"
    )
    shapes = SHAPES if args.quick else SHAPES + RESNET50
    ratios: dict[str, list[float]] = {"fwd": [], "fwd+bwd": [], "fused fwd+bwd": []}
    bandwidth = None
    for shape in shapes:
        for channels_last in [False, True] if len(shape) == 4 else [False]:
            t = _inputs(shape, channels_last)
            fmt = "channels_last" if channels_last else "contiguous"
            cases = [
                ("fwd", batch_norm, F.batch_norm, False),
                ("fwd+bwd", batch_norm, F.batch_norm, True),
                ("fused fwd+bwd", _bnlab_bn_relu, _native_bn_relu, True),
            ]
            for kind, mine_fn, native_fn, backward in cases:
                m, n, rounds, (mf, nf) = _compare(mine_fn, native_fn, t, backward, args)
                ratio = statistics.median(rounds)
                ratios[kind].append(ratio)
                label = "bn+relu" if kind.startswith("fused") else "bn"
                faults = f"   page faults/call {mf:.0f} vs {nf:.0f}" if mf + nf >= 1 else ""
                print(
                    f"shape {shape!s:19} {fmt:13} {label:7} {kind.split()[-1]:7}  "
                    f"bnlab {m * 1e3:8.3f} ms   torch {n * 1e3:8.3f} ms   ratio {ratio:5.2f} "
                    f"(rounds {min(rounds):.2f}-{max(rounds):.2f}){faults}",
                    flush=True,
                )
                if shape == BANDWIDTH_SHAPE and kind == "fwd+bwd" and bandwidth is None:
                    bandwidth = (shape, fmt, m, n)
    for kind, rs in ratios.items():
        print(
            f"geomean ratio bnlab/torch {kind:13}: {_geomean(rs):.2f}  (max {max(rs):.2f}, "
            f"{len(rs)} cases)"
        )
    copy = _copy_bandwidth(BANDWIDTH_SHAPE, args.rounds)
    if bandwidth is not None:
        shape, fmt, m, n = bandwidth
        nbytes = PASSES * math.prod(shape) * 4
        print(
            f"bandwidth on {shape} {fmt} fwd+bwd: bnlab {nbytes / m / 1e9:.1f} GB/s "
            f"({PASSES} passes of {math.prod(shape) * 4 / 1e6:.0f} MB in {m * 1e3:.1f} ms), "
            f"torch {nbytes / n / 1e9:.1f} GB/s at the same byte count; copy bandwidth "
            f"{copy / 1e9:.1f} GB/s: bnlab at {nbytes / m / copy:.0%} of copy"
        )
    fb, fused = ratios["fwd+bwd"], ratios["fused fwd+bwd"]
    checks = [
        ("fwd+bwd geomean <= 0.8x native", _geomean(fb) <= 0.8),
        ("no fwd+bwd shape slower than 1.1x native", max(fb) <= 1.1),
        ("fused BN+ReLU fwd+bwd geomean <= 0.7x native BN then ReLU", _geomean(fused) <= 0.7),
    ]
    if bandwidth is not None:
        shape, _, m, _ = bandwidth
        checks.append(
            (
                ">= 50% of copy bandwidth on (64, 64, 56, 56)",
                PASSES * math.prod(shape) * 4 / m >= copy / 2,
            )
        )
    for name, ok in checks:
        print(f"target {name}: {'met' if ok else 'NOT met'}")


if __name__ == "__main__":
    main()
