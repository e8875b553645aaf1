"""bnlab.lab.optim.ExactAdam vs torch.optim.Adam (default, bit-identical) on the blog GAN's weights.

One optimizer step over G's or D's parameters, 1 thread (as in `bnlab gan`'s workers),
interleaved round by round; prints the median time per step and the ratio torch / bnlab.

    python bench/bench_adam.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from bnlab.lab.models.gan import BLOG_VARIANTS, build_discriminator, build_generator
from bnlab.lab.optim import ExactAdam


def _time(step, n: int) -> float:
    step()
    start = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    variant = BLOG_VARIANTS["init"]
    for name, build in (("G", build_generator), ("D", build_discriminator)):
        mine_net, ref_net = build(variant), build(variant)
        mine_params, ref_params = list(mine_net.parameters()), list(ref_net.parameters())
        grads = [torch.randn_like(p) for p in ref_params]
        exact = ExactAdam(mine_params, lr=2e-4)
        adam = torch.optim.Adam(ref_params, lr=2e-4)

        def torch_step(
            adam: torch.optim.Adam = adam,
            ps: list[nn.Parameter] = ref_params,
            grads: list[torch.Tensor] = grads,
        ) -> None:
            for p, g in zip(ps, grads, strict=True):
                p.grad = g
            adam.step()

        mine, ref = [], []
        for _ in range(args.rounds):
            ref.append(_time(torch_step, args.steps))
            mine.append(_time(lambda exact=exact, grads=grads: exact.step(grads), args.steps))
        m, r = statistics.median(mine), statistics.median(ref)
        n = sum(p.numel() for p in ref_params)
        print(
            f"{name} ({n:,} params)  torch Adam {r * 1e3:6.3f} ms   ExactAdam {m * 1e3:6.3f} ms"
            f"   ratio torch/bnlab {r / m:.2f}"
        )


if __name__ == "__main__":
    main()
