"""bnlab.nn.SyncBatchNorm: ranks holding slices of a batch compute what one BatchNorm computes on
the whole batch (torch.nn.BatchNorm*d as the oracle, float64).

The distributed tests share one group of 3 gloo processes, started once for this module
(starting processes is the slow part): the workers run every case, write what they computed,
and the test functions below compare it with the single-process oracle. 2-process cases run in
the process group of ranks 0 and 1 (so ``process_group`` is exercised too), 3-process cases in
the world.

CI runs gloo on CPU. The same checks run on NCCL with BNLAB_SYNCBN_BACKEND=nccl
BNLAB_SYNCBN_DEVICE=cuda BNLAB_SYNCBN_WORLD=2 (rank r on GPU r % device count); see
bench/gpu_syncbn_check.sh.
"""

from __future__ import annotations

import datetime
import inspect
import multiprocessing
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
from torch import nn

import bnlab.nn as bnn
from bnlab.nn import SyncBatchNorm
from bnlab.nn.sync_batchnorm import DEBUG_ENV

BACKEND = os.environ.get("BNLAB_SYNCBN_BACKEND", "gloo")
DEVICE = os.environ.get("BNLAB_SYNCBN_DEVICE", "cpu")
WORLD = int(os.environ.get("BNLAB_SYNCBN_WORLD", "3"))  # 2 or 3; 3-process cases need 3
JOIN_TIMEOUT_S = 150  # the whole group; a hang fails the tests instead of blocking them
PG_TIMEOUT_S = 30  # a rank stuck in a collective raises after this
TOL = {"rtol": 1e-10, "atol": 1e-12}  # float64: only reduction order differs


@dataclass(frozen=True)
class Case:
    """One parity check: the whole batch's shape, and how many samples each rank holds."""

    shape: tuple[int, ...]
    split: tuple[int, ...]
    channels_last: bool = False
    momentum: float | None = 0.1

    @property
    def name(self) -> str:
        shape, split = "x".join(map(str, self.shape)), "+".join(map(str, self.split))
        return f"{shape}{'-cl' if self.channels_last else ''}-{split}-m{self.momentum}"


SHAPES = [(100, 4), (100, 4, 3), (100, 4, 3, 2), (100, 3, 2, 2, 2)]  # 2d, 3d, 4d, 5d
SPLITS_2 = [(50, 50), (70, 30), (1, 99), (0, 100)]
SPLITS_3 = [(34, 33, 33), (60, 0, 40), (1, 1, 98)]
CASES = (
    [Case(s, p) for s in SHAPES for p in SPLITS_2]
    + [Case(s, p, channels_last=True) for s in SHAPES[2:] for p in [(70, 30), (0, 100)]]
    + [Case(SHAPES[0], (70, 30), momentum=None), Case(SHAPES[2], (1, 99), momentum=None)]
    + [Case(SHAPES[0], p) for p in SPLITS_3]
    + [Case(SHAPES[2], p, channels_last=True) for p in SPLITS_3]
    + [Case(SHAPES[3], SPLITS_3[1])]
)
DOUBLE_BACKWARD_CASES = [Case((40, 3), (25, 15)), Case((20, 3, 2, 2), (0, 20), channels_last=True)]
STEPS = 3  # training steps per case: the running statistics accumulate


# ---- inputs: every process builds the same whole batch from the case ---------------------------


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
    return t.contiguous(memory_format=fmt)


def _batches(case: Case) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, dy) for each step: float64, shifted and scaled differently per channel and step."""
    gen = torch.Generator().manual_seed(sum(case.shape) * 31 + len(case.split))
    c = case.shape[1]
    for step in range(STEPS):
        per_channel = (1, c) + (1,) * (len(case.shape) - 2)
        scale = torch.rand(per_channel, generator=gen, dtype=torch.float64) * 3 + 0.5
        x = torch.randn(case.shape, generator=gen, dtype=torch.float64) * scale + step - 2
        dy = torch.randn(case.shape, generator=gen, dtype=torch.float64)
        if case.channels_last:
            x, dy = _channels_last(x), _channels_last(dy)
        yield x, dy


def _affine(module: nn.Module) -> nn.Module:
    with torch.no_grad():
        c = module.weight.shape[0]
        module.weight.copy_(torch.linspace(0.5, 1.5, c, dtype=module.weight.dtype))
        module.bias.copy_(torch.linspace(-1.0, 1.0, c, dtype=module.bias.dtype))
    return module


def _torch_bn(case: Case) -> nn.Module:
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
    return _affine(cls[len(case.shape)](case.shape[1], momentum=case.momentum, dtype=torch.float64))


def _bounds(case: Case, rank: int) -> tuple[int, int]:
    lo = sum(case.split[:rank])
    return lo, lo + case.split[rank]


# ---- what the workers run -----------------------------------------------------------------------


def _run_parity(case: Case, rank: int, group: Any, dev: torch.device) -> dict[str, Any]:
    lo, hi = _bounds(case, rank)
    c, dtype = case.shape[1], torch.float64
    bn = _affine(SyncBatchNorm(c, momentum=case.momentum, process_group=group, dtype=dtype))
    bn.to(dev)
    steps = []
    for x, dy in _batches(case):
        x, dy = x.to(dev), dy.to(dev)
        xr = x[lo:hi].clone(memory_format=torch.preserve_format).requires_grad_()
        y = bn(xr)
        (y * dy[lo:hi]).sum().backward()
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        steps.append(
            {
                "y": y.detach(),
                "dx": xr.grad,
                "dw": bn.weight.grad.clone(),
                "db": bn.bias.grad.clone(),
                "y_channels_last": x.dim() > 3 and y.is_contiguous(memory_format=fmt),
            }
        )
        bn.zero_grad()
    x_eval = next(_batches(case))[0][lo:hi].to(dev)
    return {
        "steps": steps,
        "buffers": {k: v.clone() for k, v in bn.named_buffers()},
        "eval_y": bn.eval()(x_eval),
    }


def _run_double_backward(case: Case, rank: int, group: Any, dev: torch.device) -> dict[str, Any]:
    lo, hi = _bounds(case, rank)
    bn = _affine(SyncBatchNorm(case.shape[1], process_group=group, dtype=torch.float64)).to(dev)
    x, a = (t.to(dev) for t in next(_batches(case)))
    xr = x[lo:hi].clone(memory_format=torch.preserve_format).requires_grad_()
    (gx,) = torch.autograd.grad((bn(xr).tanh() * a[lo:hi]).sum(), xr, create_graph=True)
    penalty = gx.square().sum()  # a gradient penalty; a sum, so the ranks' parts add up
    dx, dw, db = torch.autograd.grad(penalty, (xr, bn.weight, bn.bias))
    return {"gx": gx.detach(), "dx": dx, "dw": dw, "db": db}


class _CountCollectives:
    """Counts the torch.distributed collectives called inside the block (patched by name)."""

    NAMES = ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast")

    def __init__(self) -> None:
        self.calls: list[str] = []

    def _wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(name)
            return fn(*args, **kwargs)

        return counted

    def __enter__(self) -> _CountCollectives:
        self._saved = {n: getattr(dist, n) for n in self.NAMES if hasattr(dist, n)}
        for n, fn in self._saved.items():
            setattr(dist, n, self._wrap(n, fn))
        return self

    def __exit__(self, *exc: object) -> None:
        for n, fn in self._saved.items():
            setattr(dist, n, fn)


def _run_collective_counts(rank: int, pair: Any, single: Any, dev: torch.device) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(rank)
    x = torch.randn(12, 4, 3, generator=gen, dtype=torch.float64).to(dev)
    bn = SyncBatchNorm(4, process_group=pair, dtype=torch.float64, device=dev)
    xr = x.clone().requires_grad_()
    with _CountCollectives() as fwd:
        y = bn(xr)
    with _CountCollectives() as bwd:
        y.sum().backward()
    with _CountCollectives() as ev:
        bn.eval()(x)
    # a process group of one: no communication, and bnlab's BatchNorm's numbers
    solo = SyncBatchNorm(4, process_group=single, dtype=torch.float64, device=dev)
    xs = x.clone().requires_grad_()
    with _CountCollectives() as one:
        y_solo = solo(xs)
        y_solo.backward(torch.ones_like(y_solo))
    return {
        "forward": fwd.calls,
        "backward": bwd.calls,
        "eval": ev.calls,
        "group_of_one": one.calls,
        "x": x,
        "solo_y": y_solo.detach(),
        "solo_dx": xs.grad,
        "solo_buffers": {k: v.clone() for k, v in solo.named_buffers()},
    }


def _run_one_value_globally(rank: int, pair: Any, dev: torch.device) -> dict[str, Any]:
    bn = SyncBatchNorm(4, process_group=pair, device=dev)
    x = torch.randn(1 if rank == 0 else 0, 4, device=dev)  # one value per channel, both ranks
    try:
        bn(x)
    except ValueError as e:
        return {"raised": str(e), "num_batches_tracked": int(bn.num_batches_tracked)}
    return {"raised": None}


def _run_channel_mismatch_in_debug_mode(rank: int, pair: Any, dev: torch.device) -> dict[str, Any]:
    c = 4 + rank  # rank 0: 4 channels, rank 1: 5
    os.environ[DEBUG_ENV] = "1"
    try:
        SyncBatchNorm(c, process_group=pair, device=dev)(torch.randn(6, c, device=dev))
    except ValueError as e:
        return {"raised": str(e)}
    finally:
        del os.environ[DEBUG_ENV]
    return {"raised": None}


def _ddp_model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    return model.double()


def _ddp_batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        yield (torch.randn(100, 5, generator=gen, dtype=torch.float64) + 1 for _ in range(2))


def _ddp_step(model: nn.Module, a: torch.Tensor, b: torch.Tensor) -> None:
    """One SGD step (lr 0.1, by hand: torch.optim's first step imports torch._dynamo, seconds
    here) with two forwards before one backward, as a GAN's discriminator on real and fake."""
    model.zero_grad()
    (model(a).mean() + model(b).square().mean()).backward()
    with torch.no_grad():
        for p in model.parameters():
            p.sub_(p.grad, alpha=0.1)


def _run_ddp(rank: int, pair: Any, dev: torch.device) -> dict[str, Any]:
    from torch.nn.parallel import DistributedDataParallel

    model = SyncBatchNorm.convert_sync_batchnorm(_ddp_model().to(dev), process_group=pair)
    ddp = DistributedDataParallel(model, process_group=pair)  # buffers synced before forwards
    for a, b in _ddp_batches():
        _ddp_step(ddp, a[rank * 50 : rank * 50 + 50].to(dev), b[rank * 50 : rank * 50 + 50].to(dev))
    return {"state": {k: v.clone() for k, v in model.state_dict().items()}}


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_cpu(v) for v in obj]
    return obj


def _guarded(fn: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    try:
        return _to_cpu(fn(*args))
    except Exception:  # one failing case fails its own test, not the others
        return {"error": traceback.format_exc()}


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    if sys.platform == "linux":  # gloo's own sockets on loopback too, whatever the hostname is
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    torch.set_num_threads(1)  # 3 processes on a small machine
    dev = torch.device("cpu")
    if DEVICE == "cuda":
        dev = torch.device("cuda", rank % torch.cuda.device_count())
        torch.cuda.set_device(dev)
    dist.init_process_group(
        BACKEND,
        rank=rank,
        world_size=WORLD,
        timeout=datetime.timedelta(seconds=PG_TIMEOUT_S),
    )
    pair = dist.new_group([0, 1])  # every rank takes part in creating every group
    singles = [dist.new_group([r]) for r in range(WORLD)]
    groups = {2: pair, 3: dist.group.WORLD}
    results: dict[str, Any] = {}
    for case in CASES:
        if rank < len(case.split) <= WORLD:
            group = groups[len(case.split)]
            results[case.name] = _guarded(_run_parity, case, rank, group, dev)
    if rank < 2:
        results["counts"] = _guarded(_run_collective_counts, rank, pair, singles[rank], dev)
        results["one_value"] = _guarded(_run_one_value_globally, rank, pair, dev)
        results["mismatch"] = _guarded(_run_channel_mismatch_in_debug_mode, rank, pair, dev)
        results["ddp"] = _guarded(_run_ddp, rank, pair, dev)
        for case in DOUBLE_BACKWARD_CASES:
            results["dbl-" + case.name] = _guarded(_run_double_backward, case, rank, pair, dev)
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of the WORLD worker processes computed, by case name."""
    if not (dist.is_available() and dist.is_backend_available(BACKEND)):
        pytest.skip(f"torch.distributed with {BACKEND} is not available")
    if DEVICE == "cuda" and not torch.cuda.is_available():
        pytest.skip("BNLAB_SYNCBN_DEVICE=cuda but no CUDA device")
    out = tmp_path_factory.mktemp("syncbn")
    method = "spawn"
    if "forkserver" in multiprocessing.get_all_start_methods():
        # torch imported once, by the server, not by every worker: seconds on a small machine.
        # torch._dynamo too: the first double backward through SyncBatchNorm imports it (torch's
        # differentiable collectives do). If a forkserver already runs, this is ignored.
        method = "forkserver"
        multiprocessing.get_context(method).set_forkserver_preload(
            ["torch", "torch._dynamo", "bnlab.nn"]
        )
    ctx = torch.multiprocessing.start_processes(
        _worker, args=(_free_port(), str(out)), nprocs=WORLD, join=False, start_method=method
    )
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    try:
        while not ctx.join(timeout=1.0):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the {WORLD} SyncBatchNorm workers did not finish in {JOIN_TIMEOUT_S} s"
                )
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.terminate()
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


def _result(ranks: list[dict[str, Any]], name: str, rank: int) -> dict[str, Any]:
    got = ranks[rank][name]
    assert "error" not in got, f"rank {rank} failed:\n{got['error']}"
    return got


# ---- distributed: parity with one process on the whole batch -----------------------------------


@pytest.mark.distributed
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_ranks_on_slices_equal_batchnorm_on_the_whole_batch(ranks, case):
    if len(case.split) > WORLD:
        pytest.skip(f"{len(case.split)} processes; BNLAB_SYNCBN_WORLD={WORLD}")
    ref = _torch_bn(case)
    for step, (x, dy) in enumerate(_batches(case)):
        xf = x.clone(memory_format=torch.preserve_format).requires_grad_()
        y = ref(xf)
        (y * dy).sum().backward()
        dw, db = torch.zeros_like(ref.weight), torch.zeros_like(ref.bias)
        for rank in range(len(case.split)):
            lo, hi = _bounds(case, rank)
            got = _result(ranks, case.name, rank)["steps"][step]
            torch.testing.assert_close(got["y"], y[lo:hi].detach(), **TOL)
            torch.testing.assert_close(got["dx"], xf.grad[lo:hi], **TOL)
            if case.channels_last and hi > lo:
                assert got["y_channels_last"], "output lost the channels_last format"
            dw, db = dw + got["dw"], db + got["db"]  # each rank's share; DDP sums them
        torch.testing.assert_close(dw, ref.weight.grad, **TOL)
        torch.testing.assert_close(db, ref.bias.grad, **TOL)
        ref.zero_grad()
    x_eval = next(_batches(case))[0]
    y_eval = ref.eval()(x_eval)
    for rank in range(len(case.split)):
        got = _result(ranks, case.name, rank)
        for name, buf in ref.named_buffers():  # identical on every rank; unbiased global var
            torch.testing.assert_close(got["buffers"][name], buf, **TOL, msg=name)
        lo, hi = _bounds(case, rank)
        torch.testing.assert_close(got["eval_y"], y_eval[lo:hi].detach(), **TOL)


@pytest.mark.distributed
@pytest.mark.parametrize("case", DOUBLE_BACKWARD_CASES, ids=lambda c: c.name)
def test_double_backward_equals_batchnorm_on_the_whole_batch(ranks, case):
    ref = _torch_bn(case)
    x, a = next(_batches(case))
    xf = x.clone(memory_format=torch.preserve_format).requires_grad_()
    (gx,) = torch.autograd.grad((ref(xf).tanh() * a).sum(), xf, create_graph=True)
    dx, dw, db = torch.autograd.grad(gx.square().sum(), (xf, ref.weight, ref.bias))
    got = [_result(ranks, "dbl-" + case.name, r) for r in range(len(case.split))]
    for rank, g in enumerate(got):
        lo, hi = _bounds(case, rank)
        torch.testing.assert_close(g["gx"], gx[lo:hi].detach(), **TOL)
        torch.testing.assert_close(g["dx"], dx[lo:hi], **TOL)
    torch.testing.assert_close(sum(g["dw"] for g in got), dw, **TOL)
    torch.testing.assert_close(sum(g["db"] for g in got), db, **TOL)


@pytest.mark.distributed
def test_ddp_with_syncbn_on_two_halves_equals_one_process_on_the_batch(ranks):
    # 3 SGD steps of a model with two forwards per step; 50 + 50 samples, so DDP's average of
    # the ranks' mean-loss gradients is the gradient of the mean loss over all 100.
    model = _ddp_model()
    for a, b in _ddp_batches():
        _ddp_step(model, a, b)
    for rank in range(2):
        got = _result(ranks, "ddp", rank)["state"]
        for key, value in model.state_dict().items():
            torch.testing.assert_close(got[key], value, **TOL, msg=key)


@pytest.mark.distributed
def test_one_collective_per_forward_and_one_per_backward(ranks):
    for rank in range(2):
        got = _result(ranks, "counts", rank)
        assert got["forward"] == ["all_gather_single"]
        assert got["backward"] == ["all_reduce"]


@pytest.mark.distributed
def test_eval_and_a_group_of_one_do_not_communicate_and_equal_batchnorm(ranks):
    for rank in range(2):
        got = _result(ranks, "counts", rank)
        assert got["eval"] == [] and got["group_of_one"] == []
        bn = bnn.BatchNorm1d(4, dtype=torch.float64)
        x = got["x"].clone().requires_grad_()
        y = bn(x)
        y.backward(torch.ones_like(y))
        assert torch.equal(got["solo_y"], y.detach())
        assert torch.equal(got["solo_dx"], x.grad)
        for name, buf in bn.named_buffers():
            assert torch.equal(got["solo_buffers"][name], buf), name


@pytest.mark.distributed
def test_one_value_per_channel_globally_raises_on_every_rank_like_batchnorm(ranks):
    for rank in range(2):
        got = _result(ranks, "one_value", rank)
        assert got["raised"] is not None, f"rank {rank} did not raise"
        assert "more than 1 value per channel" in got["raised"]
        assert "over all 2 ranks" in got["raised"]
        assert got["num_batches_tracked"] == 0  # a failed forward changes no state


@pytest.mark.distributed
def test_debug_mode_reports_different_channel_counts_on_every_rank(ranks):
    for rank in range(2):
        got = _result(ranks, "mismatch", rank)
        assert got["raised"] is not None, f"rank {rank} did not raise"
        assert "different channel counts (from 4 to 5" in got["raised"]
        assert f"this rank: {4 + rank}" in got["raised"]


# ---- one process: errors, conversion, state_dicts -----------------------------------------------


def test_training_without_a_process_group_says_how_to_start_one():
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    with pytest.raises(RuntimeError, match=r"torchrun.*init_process_group"):
        SyncBatchNorm(4)(torch.randn(8, 4))


def test_eval_needs_no_process_group_and_equals_batchnorm():
    sync, bn = SyncBatchNorm(4).eval(), bnn.BatchNorm1d(4).eval()
    with torch.no_grad():
        for m in (sync, bn):
            m.running_mean.copy_(torch.arange(4.0))
            m.running_var.copy_(torch.arange(1.0, 5.0))
    x = torch.randn(8, 4, 3)
    assert torch.equal(sync(x), bn(x))


def test_is_a_torch_batchnorm_with_torchs_constructor():
    assert isinstance(SyncBatchNorm(3), nn.modules.batchnorm._BatchNorm)
    # not torch's SyncBatchNorm: DDP refuses CPU models holding one
    assert not isinstance(SyncBatchNorm(3), nn.SyncBatchNorm)
    mine = inspect.signature(SyncBatchNorm.__init__).parameters
    ref = inspect.signature(nn.SyncBatchNorm.__init__).parameters
    assert list(mine) == list(ref)
    assert [p.default for p in mine.values()] == [p.default for p in ref.values()]


def test_bad_input_names_module_and_shape():
    with pytest.raises(ValueError, match=r"SyncBatchNorm\(4\).*5 channels"):
        SyncBatchNorm(4).eval()(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"SyncBatchNorm\(4\) expected 2D, 3D, 4D or 5D"):
        SyncBatchNorm(4).eval()(torch.randn(4))


def _model() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        bnn.BatchNorm1d(5, momentum=None),
        nn.Sequential(nn.Linear(5, 6), nn.Unflatten(1, (2, 3, 1, 1)), bnn.BatchNorm3d(2)),
        nn.Flatten(),
    )


def test_convert_and_revert_keep_parameters_state_and_mode():
    torch.manual_seed(0)
    model = _model()
    for _ in range(3):
        model(torch.randn(8, 3, 6, 6))
    model[5].eval()
    params = [id(p) for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    x = torch.randn(8, 3, 6, 6)
    with torch.no_grad():
        expected = model.eval()(x)
    model.train()
    model[5].eval()

    group = object()  # stands for a process group; conversion only stores it
    converted = SyncBatchNorm.convert_sync_batchnorm(model, process_group=group)
    assert converted is model
    syncs = [m for m in model.modules() if isinstance(m, SyncBatchNorm)]
    assert len(syncs) == 3 and all(m.process_group is group for m in syncs)
    assert [id(p) for p in model.parameters()] == params  # optimizers stay valid
    assert [m.training for m in model.modules()] == modes
    assert model.state_dict().keys() == state.keys()
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k

    reverted = SyncBatchNorm.revert_sync_batchnorm(model)
    assert reverted is model
    kinds = [type(m) for m in model.modules() if "BatchNorm" in type(m).__name__]
    assert kinds == [bnn.BatchNorm2d, bnn.BatchNorm1d, bnn.BatchNorm3d]
    assert [id(p) for p in model.parameters()] == params
    assert [m.training for m in model.modules()] == modes
    assert model[5].momentum is None
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)


def test_convert_a_bare_layer_returns_the_new_layer_and_keeps_bias_false():
    layer = nn.BatchNorm2d(3, momentum=None, bias=False).eval()
    sync = SyncBatchNorm.convert_sync_batchnorm(layer)
    assert type(sync) is SyncBatchNorm and not sync.training
    assert sync.bias is None and sync.weight is layer.weight and sync.momentum is None
    back = SyncBatchNorm.revert_sync_batchnorm(sync)
    assert type(back) is bnn.BatchNorm2d and back.bias is None and not back.training


def test_revert_a_layer_built_directly_uses_the_input_it_saw():
    layer = SyncBatchNorm(3).eval()
    with pytest.raises(ValueError, match="Run one forward first"):
        SyncBatchNorm.revert_sync_batchnorm(layer)
    layer(torch.randn(2, 3, 4, 4, 4))
    assert type(SyncBatchNorm.revert_sync_batchnorm(layer)) is bnn.BatchNorm3d


def test_a_refused_revert_names_the_layer_and_reverts_nothing():
    model = SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU()))
    model.append(SyncBatchNorm(3))  # built directly, no input seen
    with pytest.raises(ValueError, match=r"whether 2 normalize.*nothing was reverted"):
        SyncBatchNorm.revert_sync_batchnorm(model)
    assert type(model[0]) is SyncBatchNorm  # the revertible layer was left as it was


@pytest.mark.parametrize(
    "other",
    [
        lambda: nn.SyncBatchNorm(5),
        lambda: nn.BatchNorm2d(5),
        lambda: bnn.BatchNorm2d(5),
    ],
    ids=["torch.SyncBatchNorm", "torch.BatchNorm2d", "bnlab.BatchNorm2d"],
)
def test_state_dict_round_trips_with_torch_and_bnlab_modules(other):
    mine = SyncBatchNorm(5)
    with torch.no_grad():
        mine.weight.uniform_()
        mine.bias.uniform_()
        mine.running_mean.uniform_()
        mine.running_var.uniform_(1, 2)
        mine.num_batches_tracked.fill_(7)
    theirs = other()
    theirs.load_state_dict(mine.state_dict())  # strict
    back = SyncBatchNorm(5)
    back.load_state_dict(theirs.state_dict())
    for key, value in mine.state_dict().items():
        assert torch.equal(theirs.state_dict()[key], value), key
        assert torch.equal(back.state_dict()[key], value), key
    version = mine.state_dict()._metadata[""]["version"]
    assert version == theirs.state_dict()._metadata[""]["version"] == 2
