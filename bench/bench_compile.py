"""A small conv net with bnlab's BN vs the same net with torch's BN, eager and torch.compile'd.

The net: three blocks of conv 3x3 + BN + ReLU (16, 32, 64 channels; stride 2 in the last two),
global average pool, linear; batch 32 of 3x32x32, float32, CPU. Three variants of the same
architecture and weights:

- ``torch``: torch.nn.BatchNorm2d + ReLU (the baseline);
- ``bnlab``: bnlab.nn.BatchNorm2d + ReLU (the drop-in swap);
- ``bnlab-act``: bnlab.nn.BatchNormAct2d (BN and ReLU fused).

Each is timed eager and compiled (``torch.compile``, inductor, default mode) on two tasks: a
training step (forward + backward, training mode) and an evaluation forward (eval mode, under
``torch.no_grad``). Variants are timed round by round, the order rotating each round, so that
drift of the machine hits all alike; the table gives the median time per step and the median
over rounds of each round's ratio variant / torch (same task, same mode), with the rounds' range.
The first compiled call of each (variant, task) is reported as compile time.

    python bench/bench_compile.py                 # the real run (minutes: 6 inductor compiles)
    python bench/bench_compile.py --quick         # a smoke run: tiny net, 2 rounds
    python bench/bench_compile.py --threads 1     # torch threads (default 2)

The claim to check: a compiled model does not get slower by swapping in bnlab (the compiled
``bnlab`` / ``torch`` ratios near 1).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

import bnlab.nn as bnn
from bnlab import kernels

VARIANTS = ("torch", "bnlab", "bnlab-act")


@dataclass(frozen=True)
class Size:
    batch: int = 32
    image: int = 32
    channels: tuple[int, int, int] = (16, 32, 64)


QUICK = Size(batch=4, image=8, channels=(4, 8, 8))


def _block(c_in: int, c_out: int, stride: int, variant: str) -> list[nn.Module]:
    conv = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
    if variant == "bnlab-act":
        return [conv, bnn.BatchNormAct2d(c_out, act="relu")]
    bn = nn.BatchNorm2d(c_out) if variant == "torch" else bnn.BatchNorm2d(c_out)
    return [conv, bn, nn.ReLU(inplace=True)]


def make_net(variant: str, size: Size) -> nn.Sequential:
    """The benchmark's net with the given BN; the same weights for every variant (seeded)."""
    torch.manual_seed(0)
    c1, c2, c3 = size.channels
    layers = [
        *_block(3, c1, 1, variant),
        *_block(c1, c2, 2, variant),
        *_block(c2, c3, 2, variant),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(c3, 10),
    ]
    return nn.Sequential(*layers)


def _train_step(net: Callable, x: torch.Tensor, target: torch.Tensor) -> None:
    loss = nn.functional.cross_entropy(net(x), target)
    loss.backward()


def _eval_step(net: Callable, x: torch.Tensor, target: torch.Tensor) -> None:
    with torch.no_grad():
        net(x)


def _time(step: Callable[[], None], min_s: float) -> float:
    """Seconds per step, repeating until min_s has elapsed (after one untimed step)."""
    step()
    n, start = 0, time.perf_counter()
    while True:
        step()
        n += 1
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return elapsed / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch threads (0 = default)")
    parser.add_argument("--rounds", type=int, default=7, help="interleaved rounds per case")
    parser.add_argument("--min-seconds", type=float, default=0.2, help="per variant and round")
    parser.add_argument("--quick", action="store_true", help="tiny net, 2 rounds: a smoke run")
    parser.add_argument("--backend", default="compiled", choices=kernels.BACKENDS)
    args = parser.parse_args()
    size = QUICK if args.quick else Size()
    if args.quick:
        args.rounds, args.min_seconds = 2, 0.01
    if args.threads:
        torch.set_num_threads(args.threads)
    kernels.set_backend(args.backend)  # eager bnlab; compiled graphs trace the torch formulas
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, "
        f"batch {size.batch} x 3 x {size.image} x {size.image}, channels {size.channels}, "
        f"bnlab eager backend {args.backend}, {args.rounds} rounds"
    )
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(size.batch, 3, size.image, size.image, generator=gen)
    target = torch.randint(0, 10, (size.batch,), generator=gen)
    tasks = {"train step": (True, _train_step), "eval forward": (False, _eval_step)}
    summary: dict[tuple[str, str, str], float] = {}
    for mode in ("eager", "compiled"):
        for task, (training, step_fn) in tasks.items():
            steps: dict[str, Callable[[], None]] = {}
            for variant in VARIANTS:
                net = make_net(variant, size).train(training)
                run = torch.compile(net) if mode == "compiled" else net
                steps[variant] = lambda run=run, f=step_fn: f(run, x, target)
                if mode == "compiled":
                    start = time.perf_counter()
                    steps[variant]()
                    print(
                        f"  compile {variant:9} {task:12} {time.perf_counter() - start:6.1f} s",
                        flush=True,
                    )
            times: dict[str, list[float]] = {v: [] for v in VARIANTS}
            for r in range(args.rounds):
                order = VARIANTS[r % 3 :] + VARIANTS[: r % 3]  # rotate who goes first
                for variant in order:
                    times[variant].append(_time(steps[variant], args.min_seconds))
            base = times["torch"]
            cells = []
            for variant in VARIANTS:
                median = statistics.median(times[variant])
                ratios = [t / b for t, b in zip(times[variant], base, strict=True)]
                ratio = statistics.median(ratios)
                summary[(mode, task, variant)] = ratio
                spread = f"{ratio:4.2f}, rounds {min(ratios):.2f}-{max(ratios):.2f}"
                cells.append(
                    f"{variant} {median * 1e3:7.2f} ms" + f" ({spread})" * (variant != "torch")
                )
            print(f"{mode:8} {task:12}  " + "   ".join(cells), flush=True)
    print("ratio bnlab / torch (median over rounds; < 1: bnlab faster):")
    for mode in ("eager", "compiled"):
        for task in tasks:
            parts = [f"{v} {summary[(mode, task, v)]:.2f}" for v in VARIANTS[1:]]
            print(f"  {mode:8} {task:12}  " + "   ".join(parts))


if __name__ == "__main__":
    main()
