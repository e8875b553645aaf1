"""BN buffers across ranks: the doctor's bn-buffers-differ-across-ranks rule (check_ranks) and
bnlab.nn.sync_buffers, on 2 gloo processes on 127.0.0.1 (the evaluation-after-DDP case)."""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import bnlab.nn as bnn
from bnlab.doctor import check, check_ranks

WORLD = 2
JOIN_TIMEOUT_S = 120
CODE = "bn-buffers-differ-across-ranks"


def _model(extra: bool = False) -> nn.Sequential:
    torch.manual_seed(0)  # the same parameters on every rank
    layers = [nn.Linear(4, 3, bias=False), bnn.BatchNorm1d(3), nn.ReLU()]
    layers += [nn.Linear(3, 2, bias=False), nn.BatchNorm1d(2)]
    if extra:
        layers.append(bnn.BatchNorm1d(2))
    return nn.Sequential(*layers)


def _codes(findings: list[Any]) -> list[tuple[str, str]]:
    return [(f.code, f.module) for f in findings if f.code == CODE]


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _one_layer_differs(rank: int) -> dict[str, Any]:
    """Layer "1" sees each rank's own batch, layer "4" the same batch on both ranks."""
    model = _model().train()
    gen = torch.Generator().manual_seed(100 + rank)
    with torch.no_grad():
        h = model[2](model[1](model[0](torch.randn(8, 4, generator=gen) + rank)))
        same = torch.randn(8, 2, generator=torch.Generator().manual_seed(7))
        model[4](same)
    before = _codes(check(model, across_ranks=True))
    state_before = _state(model)
    bnn.sync_buffers(model, src=0)
    return {
        "before": before,
        "after": _codes(check_ranks(model)),
        "state_before": state_before,
        "state_after": _state(model),
        "h": h,
    }


def _after_ddp(rank: int) -> dict[str, Any]:
    """DDP with broadcast_buffers=True: after the last step each rank has its own update."""
    model = DistributedDataParallel(_model())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(200 + rank)
    for _ in range(2):
        opt.zero_grad()
        model(torch.randn(8, 4, generator=gen) * (rank + 1)).square().mean().backward()
        opt.step()
    inner = model.module.eval()
    before = _codes(check_ranks(inner))
    bnn.sync_buffers(inner)
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        y = inner(x)
    return {"before": before, "after": _codes(check_ranks(inner)), "eval_output": y}


def _different_models(rank: int) -> dict[str, Any]:
    return {"found": _codes(check_ranks(_model(extra=rank == 1)))}


def _guarded(fn: Callable[[int], dict[str, Any]], rank: int) -> dict[str, Any]:
    try:
        return fn(rank)
    except Exception:  # one failing case fails its own test, not the others
        return {"error": traceback.format_exc()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60)
    )
    results = {
        fn.__name__: _guarded(fn, rank)
        for fn in (_one_layer_differs, _after_ddp, _different_models)
    }
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    if not (dist.is_available() and dist.is_backend_available("gloo")):
        pytest.skip("torch.distributed with gloo is not available")
    out = tmp_path_factory.mktemp("sync_buffers")
    method = "spawn"
    if "forkserver" in multiprocessing.get_all_start_methods():
        method = "forkserver"  # as in test_sync_batchnorm: torch imported once, by the server
        multiprocessing.get_context(method).set_forkserver_preload(["torch", "bnlab.nn"])
    ctx = torch.multiprocessing.start_processes(
        _worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method=method
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(f"the {WORLD} workers did not finish in {JOIN_TIMEOUT_S} s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _result(ranks: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    for rank, got in enumerate(ranks):
        assert "error" not in got[name], f"rank {rank} failed:\n{got[name]['error']}"
    return [got[name] for got in ranks]


@pytest.mark.distributed
def test_the_layer_whose_buffers_differ_is_reported_on_every_rank_and_sync_fixes_it(ranks):
    r0, r1 = _result(ranks, "_one_layer_differs")
    for r in (r0, r1):
        assert r["before"] == [(CODE, "1")]  # layer "4" saw the same batch: not reported
        assert r["after"] == []
    assert not torch.equal(
        r0["state_before"]["1.running_mean"], r1["state_before"]["1.running_mean"]
    )
    for key, value in r0["state_before"].items():  # rank 0's buffers everywhere, rank 0 unchanged
        assert torch.equal(r1["state_after"][key], value), key
        assert torch.equal(r0["state_after"][key], value), key


@pytest.mark.distributed
def test_after_ddp_training_the_ranks_evaluate_differently_until_synced(ranks):
    r0, r1 = _result(ranks, "_after_ddp")
    assert r0["before"] == r1["before"] == [(CODE, "1"), (CODE, "4")]
    assert r0["after"] == r1["after"] == []
    assert torch.equal(r0["eval_output"], r1["eval_output"])


@pytest.mark.distributed
def test_ranks_with_different_bn_layers_get_one_finding_each_not_a_hang(ranks):
    r0, r1 = _result(ranks, "_different_models")
    assert r0["found"] == r1["found"] == [(CODE, "")]


def test_sync_buffers_and_check_ranks_need_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        bnn.sync_buffers(_model())
    with pytest.raises(RuntimeError, match="init_process_group"):
        check_ranks(_model())
