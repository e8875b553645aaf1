"""SyncBatchNorm vs BatchNorm, forward+backward per step, on gloo processes (CPU, float32).

The shapes of bench_bn.py are the global batches; each of the processes holds its share of the
samples and times, interleaved round by round with the same number of steps on every rank:

- ``bn``:   bnlab.nn.BatchNorm*d, statistics of its own share (per-rank BN: no communication);
- ``sync``: bnlab.nn.SyncBatchNorm, statistics of the whole batch (one all_gather in forward,
            one all_reduce in backward).

``comm`` is the time spent inside those two collectives during the sync steps (waiting for the
other rank included), and ``share`` = comm / sync: the part of a SyncBatchNorm step that is
communication. Rank 0's medians are printed. Run it alone on the machine.

    python bench/bench_syncbn.py                       # 2 processes, 1 thread each
    python bench/bench_syncbn.py --nproc 2 --rounds 7
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import socket
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

import bnlab.nn as bnn

SHAPES = [(100, 256), (100, 784), (256, 1024), (32, 256, 14, 14), (64, 64, 56, 56)]
COLLECTIVES = ("all_gather_single", "all_gather_into_tensor", "all_reduce")


@contextmanager
def _comm_timer(total: list[float]) -> Iterator[None]:
    """Adds the seconds spent inside torch.distributed's collectives to total[0]."""
    saved = {n: getattr(dist, n) for n in COLLECTIVES if hasattr(dist, n)}

    def timed(fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                total[0] += time.perf_counter() - start

        return call

    for name, fn in saved.items():
        setattr(dist, name, timed(fn))
    try:
        yield
    finally:
        for name, fn in saved.items():
            setattr(dist, name, fn)


def _steps(module: nn.Module, x: torch.Tensor, dy: torch.Tensor, n: int) -> float:
    """Seconds per forward+backward step, over n steps."""
    params = (x, *module.parameters())
    start = time.perf_counter()
    for _ in range(n):
        torch.autograd.grad(module(x), params, dy)
    return (time.perf_counter() - start) / n


def _bench_case(
    shape: tuple[int, ...], channels_last: bool, args: argparse.Namespace, rank: int, world: int
) -> dict[str, float]:
    n_global, c = shape[0], shape[1]
    local = (n_global // world + (rank < n_global % world), *shape[1:])
    gen = torch.Generator().manual_seed(rank)
    x = (torch.randn(local, generator=gen) * 2 + 0.5).requires_grad_()
    dy = torch.randn(local, generator=gen)
    if channels_last:
        x = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
        dy = dy.contiguous(memory_format=torch.channels_last)
    bn = (bnn.BatchNorm1d if len(shape) < 4 else bnn.BatchNorm2d)(c)
    sync = bnn.SyncBatchNorm(c)
    # the same step count on every rank (collectives): rank 0's calibration, broadcast
    _steps(sync, x, dy, 2)  # warm-up
    per_step = _steps(bn, x, dy, 3)
    n = torch.tensor([max(3, math.ceil(args.min_seconds / per_step))])
    dist.broadcast(n, src=0)
    steps = int(n)
    bn_s, sync_s, comm_s = [], [], []
    for _ in range(args.rounds):  # interleaved: drift hits both sides alike
        dist.barrier()
        bn_s.append(_steps(bn, x, dy, steps))
        dist.barrier()
        comm = [0.0]
        with _comm_timer(comm):
            sync_s.append(_steps(sync, x, dy, steps))
        comm_s.append(comm[0] / steps)
    return {
        "bn": statistics.median(bn_s),
        "sync": statistics.median(sync_s),
        "comm": statistics.median(comm_s),
    }


def _worker(rank: int, world: int, port: int, args: argparse.Namespace) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if sys.platform == "linux":  # gloo's own sockets on loopback too, whatever the hostname is
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(args.threads)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    if rank == 0:
        print(
            f"torch {torch.__version__}, {world} gloo processes x {args.threads} thread(s), "
            "float32, training mode, fwd+bwd per step; shape = global batch"
        )
    ratios, shares = [], []
    for shape in SHAPES:
        for channels_last in [False, True] if len(shape) == 4 else [False]:
            r = _bench_case(shape, channels_last, args, rank, world)
            if rank == 0:
                ratios.append(r["sync"] / r["bn"])
                shares.append(r["comm"] / r["sync"])
                fmt = "channels_last" if channels_last else "contiguous"
                print(
                    f"shape {shape!s:18} {fmt:13} bn {r['bn'] * 1e3:8.3f} ms   "
                    f"sync {r['sync'] * 1e3:8.3f} ms   ratio {ratios[-1]:5.2f}   "
                    f"comm {r['comm'] * 1e3:7.3f} ms   share {shares[-1]:5.1%}"
                )
    if rank == 0:
        geomean = math.exp(sum(map(math.log, ratios)) / len(ratios))
        print(
            f"geomean ratio sync/bn: {geomean:.2f}; communication share of a sync step: "
            f"{min(shares):.0%} to {max(shares):.0%} ({len(ratios)} cases)"
        )
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min-seconds", type=float, default=0.1)
    args = parser.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    torch.multiprocessing.start_processes(
        _worker, args=(args.nproc, port, args), nprocs=args.nproc, start_method="spawn"
    )


if __name__ == "__main__":
    main()
