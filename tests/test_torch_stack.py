"""bnlab's BN works wherever torch's BN works: torch.compile (inductor, fullgraph=True),
torch.export, ONNX run in onnxruntime, CPU bfloat16 autocast, torch.jit (trace works; script
fails with one clear error), deepcopy and pickle.

Each compiled graph costs seconds on a small CPU machine, so the compile tests put every bnlab
BN layer (BatchNorm1d on 2D and 3D input, BatchNorm2d, BatchNorm3d, BatchNormAct2d with a leaky
ReLU on channels_last input, SyncBatchNorm) into one net: one graph for training (two steps),
one for evaluation. The eager reference runs the default backend (the C++ kernels where they
build); the compiled graph traces the plain-torch formulas (bnlab.functional), so these tests
also hold the two renditions together.

Tolerances (float32): outputs and dx atol 1e-5, rtol 1e-5 (seen: <= 1e-6); parameter gradients
(sums over the batch) atol 1e-4, rtol 1e-4 (seen: <= 2e-5); running statistics atol 1e-6,
rtol 1e-5 (seen: <= 3e-7); num_batches_tracked exactly.
"""

from __future__ import annotations

import copy
import importlib.util
import pickle
import socket
import sys
from collections.abc import Callable, Iterator

import pytest
import torch
import torch.distributed as dist
from torch import Tensor, nn

import bnlab.nn as bnn

OUT_TOL = {"atol": 1e-5, "rtol": 1e-5}
GRAD_TOL = {"atol": 1e-4, "rtol": 1e-4}
STAT_TOL = {"atol": 1e-6, "rtol": 1e-5}


class EveryLayer(nn.Module):
    """Every bnlab BN layer in a row; (N, C, H, W) in, (N, C, L) and (N, C) out."""

    # A ReLU after each BN would only hide half the values; the in-place one after bn2d is
    # there because it once failed (a view returned by an autograd.Function, modified in place).

    def __init__(self, c: int = 3) -> None:
        super().__init__()
        self.act = bnn.BatchNormAct2d(c, act="leaky_relu", negative_slope=0.1)
        self.bn2d = bnn.BatchNorm2d(c)
        self.bn3d = bnn.BatchNorm3d(c)
        self.bn1d = bnn.BatchNorm1d(c)
        self.sync = bnn.SyncBatchNorm(c)
        self.cumulative = bnn.BatchNorm1d(c, momentum=None)  # running stats: plain averages

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        y = self.act(x.contiguous(memory_format=torch.channels_last))  # (N, C, H, W)
        y = torch.relu_(self.bn2d(y))  # in place on BN's output, as torchvision's ResNet does
        n, c, h, w = y.shape
        y = self.bn3d(y.reshape(n, c, 2, h // 2, w))  # (N, C, 2, H/2, W)
        y = self.bn1d(y.flatten(2))  # (N, C, L)
        y = self.sync(y)
        return y, self.cumulative(y.mean(2))  # (N, C, L), (N, C)


def _randomized(model: nn.Module, seed: int = 0) -> nn.Module:
    """Parameters and running statistics away from their defaults (eval mode uses them)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("num_batches_tracked"):
                t.fill_(3)
            elif name.endswith(("weight", "running_var")):
                t.copy_(torch.rand(t.shape, generator=gen) + 0.5)
            elif t.is_floating_point():
                t.copy_(torch.randn(t.shape, generator=gen))
    return model


def _twins(training: bool) -> tuple[nn.Module, nn.Module]:
    eager = _randomized(EveryLayer()).train(training)
    other = copy.deepcopy(eager)
    return eager, other


def _step(model: Callable[[Tensor], tuple[Tensor, Tensor]], seed: int) -> dict[str, Tensor]:
    """One forward + backward of a random projection of both outputs: outputs and dx."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(6, 3, 4, 4, generator=gen) * 2 + 1).requires_grad_()
    y, z = model(x)
    dy, dz = torch.randn(y.shape, generator=gen), torch.randn(z.shape, generator=gen)
    ((y * dy).sum() + (z * dz).sum()).backward()
    assert x.grad is not None
    return {"y": y.detach(), "z": z.detach(), "dx": x.grad}


def _assert_same_state(got: nn.Module, want: nn.Module) -> None:
    """Parameter gradients and buffers equal, each named in a failure."""
    for (name, p), (_, q) in zip(got.named_parameters(), want.named_parameters(), strict=True):
        assert p.grad is not None and q.grad is not None, name
        torch.testing.assert_close(p.grad, q.grad, **GRAD_TOL, msg=lambda m, n=name: f"{n}: {m}")
    for (name, b), (_, c) in zip(got.named_buffers(), want.named_buffers(), strict=True):
        if name.endswith("num_batches_tracked"):
            assert torch.equal(b, c), name
        else:
            torch.testing.assert_close(b, c, **STAT_TOL, msg=lambda m, n=name: f"{n}: {m}")


def _compiled_equals_eager(training: bool, steps: int) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    eager, compiled_model = _twins(training)
    counter = CompileCounterWithBackend("inductor")  # inductor, counting the graphs it gets
    compiled = torch.compile(compiled_model, fullgraph=True, backend=counter)
    for step in range(steps):
        for m in (eager, compiled_model):
            m.zero_grad(set_to_none=True)
        got, want = _step(compiled, seed=step), _step(eager, seed=step)
        for key in want:
            torch.testing.assert_close(
                got[key], want[key], **OUT_TOL, msg=lambda m, k=key, s=step: f"step {s} {k}: {m}"
            )
        _assert_same_state(compiled_model, eager)
    # One graph, compiled once: no graph break (fullgraph), no recompilation between steps.
    assert counter.frame_count == 1


@pytest.fixture
def world_of_one(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A 1-process gloo group on 127.0.0.1 (what SyncBatchNorm needs in training mode)."""
    if not (dist.is_available() and dist.is_backend_available("gloo")):
        pytest.skip("torch.distributed with gloo is not available")
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")  # loopback, whatever the hostname is
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# ---- torch.compile --------------------------------------------------------------------------


@pytest.mark.slow  # an inductor compile of forward and backward: ~15 s cold on 2 cores
@pytest.mark.usefixtures("world_of_one")
def test_compiled_training_steps_equal_eager():
    # Two steps: the second reads the running statistics and counters the first wrote.
    _compiled_equals_eager(training=True, steps=2)


@pytest.mark.slow
def test_compiled_eval_equals_eager_without_a_process_group():
    # Evaluation never communicates: SyncBatchNorm compiles and runs with no process group.
    assert not (dist.is_available() and dist.is_initialized())
    _compiled_equals_eager(training=False, steps=1)


def test_compiled_sync_batch_norm_without_a_process_group_says_how_to_start_one():
    # dynamo reports a raise inside a fullgraph region as its own error, quoting ours
    if dist.is_available() and dist.is_initialized():
        pytest.skip("a process group is initialized in this process")
    compiled = torch.compile(bnn.SyncBatchNorm(3), fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=r"needs an initialized torch.distributed process group"):
        compiled(torch.randn(4, 3))


@pytest.mark.parametrize("channels_last", [False, True], ids=["contiguous", "channels_last"])
@pytest.mark.usefixtures("each_backend")
def test_an_inplace_relu_may_follow_the_batch_norm(channels_last: bool):
    # nn.ReLU(inplace=True) after BN (torchvision's ResNet): BN's output must not be a view
    # that an autograd.Function made, or autograd refuses the in-place op.
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(4, 3, 5, 5).contiguous(memory_format=fmt)
    mine, theirs = bnn.BatchNormAct2d(3, act="identity"), nn.BatchNorm2d(3)
    outs = []
    for bn in (mine, theirs):
        xg = x.clone().requires_grad_()
        y = nn.ReLU(inplace=True)(bn(xg))
        y.square().sum().backward()
        outs.append((y, xg.grad))
    torch.testing.assert_close(outs[0], outs[1], **OUT_TOL)
    assert outs[0][0].stride() == outs[1][0].stride()


@pytest.mark.usefixtures("each_backend")
def test_the_elementwise_stage_returns_no_view_outside_autograd():
    # what SyncBatchNorm's autograd.Function returns from its forward
    from bnlab import functional as F

    x = torch.randn(4, 3, 5, 5)
    mean, inv_std = torch.zeros(3), torch.ones(3)
    with torch.no_grad():
        y = F.batch_norm_elemt(x, mean, inv_std, None, None)
    assert not y._is_view() and torch.equal(y, x)


# ---- export ---------------------------------------------------------------------------------


def _conv_net(seed: int = 0) -> nn.Module:
    """A small conv net with bnlab's BN, trained a few steps (running statistics moved), in
    evaluation mode."""
    torch.manual_seed(seed)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        bnn.BatchNormAct2d(8),
        nn.Conv2d(8, 8, 3, stride=2),
        bnn.BatchNorm2d(8),
        nn.ReLU(inplace=True),
        nn.Flatten(),
        nn.Linear(8 * 3 * 3, 4),
        bnn.BatchNorm1d(4),
    )
    with torch.no_grad():
        for _ in range(3):
            net(torch.randn(16, 3, 8, 8) * 2 + 1)
    return net.eval()


def test_exported_program_equals_eager():
    net, x = _conv_net(), torch.randn(5, 3, 8, 8)
    program = torch.export.export(net, (x,))
    # the graph holds no bnlab operator: the plain-torch formulas are traced
    assert "bnlab" not in str(program.graph)
    torch.testing.assert_close(program.module()(x), net(x), **OUT_TOL)


@pytest.mark.slow  # the ONNX exporter's imports and passes: ~5 s
def test_onnx_export_runs_in_onnxruntime_and_equals_eager():
    for module in ("onnxscript", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (pip install 'bnlab[test]')")
    import onnxruntime

    net, x = _conv_net(), torch.randn(5, 3, 8, 8)
    program = torch.onnx.export(net, (x,), dynamo=True, verbose=False)
    assert program is not None
    session = onnxruntime.InferenceSession(
        program.model_proto.SerializeToString(), providers=["CPUExecutionProvider"]
    )
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), net(x).detach(), **OUT_TOL)


# ---- autocast -------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.usefixtures("each_backend")
def test_bfloat16_autocast_behaves_as_torchs_batch_norm(training: bool):
    # The first BN sees the float32 input, the others the conv's bfloat16 output.
    torch.manual_seed(0)
    mine = nn.Sequential(
        bnn.BatchNorm2d(3), nn.Conv2d(3, 8, 3), bnn.BatchNorm2d(8), nn.Conv2d(8, 4, 3)
    )
    mine = _randomized(mine).train(training)
    theirs = bnn.to_torch(copy.deepcopy(mine))
    assert type(theirs[2]) is nn.BatchNorm2d
    x = torch.randn(4, 3, 8, 8) * 2 + 1
    outs = []
    for net in (mine, theirs):
        xg = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            hidden = net[:3](xg)
            y = net[3](hidden)
        y.float().square().sum().backward()
        outs.append((hidden, xg.grad))
    (h_mine, dx_mine), (h_theirs, dx_theirs) = outs
    assert h_mine.dtype == h_theirs.dtype == torch.bfloat16
    assert dx_mine is not None and dx_theirs is not None and dx_mine.dtype == dx_theirs.dtype
    torch.testing.assert_close(h_mine, h_theirs)  # bfloat16's default: atol 1e-5, rtol 1.6e-2
    torch.testing.assert_close(dx_mine, dx_theirs, atol=2e-2, rtol=1.6e-2)
    for i in (0, 2):
        a, b = mine[i], theirs[i]
        assert a.running_mean.dtype == a.running_var.dtype == torch.float32
        # statistics accumulated in float32 from the same bfloat16 activations: float32 close
        torch.testing.assert_close(a.running_mean, b.running_mean, **STAT_TOL)
        torch.testing.assert_close(a.running_var, b.running_var, **STAT_TOL)
        assert a.weight.grad is not None and b.weight.grad is not None
        assert a.weight.grad.dtype == b.weight.grad.dtype == torch.float32
        torch.testing.assert_close(a.weight.grad, b.weight.grad, atol=1e-2, rtol=1.6e-2)


def test_batch_norm_of_a_float32_input_stays_float32_under_autocast():
    bn, ref = bnn.BatchNorm2d(3), nn.BatchNorm2d(3)
    x = torch.randn(4, 3, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bn(x).dtype == ref(x).dtype == torch.float32


# ---- torch.jit --------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize(
    "layer",
    [bnn.BatchNorm1d(4), bnn.BatchNorm2d(4), bnn.BatchNormAct2d(4), bnn.SyncBatchNorm(4)],
    ids=lambda m: type(m).__name__,
)
def test_jit_script_fails_with_one_error_naming_the_alternatives(layer: nn.Module):
    name = f"{type(layer).__name__}(4)"
    for target in (layer, nn.Sequential(nn.Identity(), nn.Sequential(layer))):  # nested too
        with pytest.raises(RuntimeError) as raised:
            torch.jit.script(target)
        message = str(raised.value)
        assert message.startswith(f"{name} (bnlab.nn) cannot be compiled by torch.jit.script")
        for alternative in ("torch.compile(model)", "torch.export.export", "torch.jit.trace"):
            assert alternative in message


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")  # shape checks seen as constants
@pytest.mark.filterwarnings("ignore:`torch.jit.trace.*is deprecated:DeprecationWarning")
def test_jit_trace_of_an_eval_model_equals_eager():
    net, x = _conv_net(), torch.randn(5, 3, 8, 8)
    traced = torch.jit.trace(net, (x,))
    torch.testing.assert_close(traced(x), net(x), **OUT_TOL)
    other = torch.randn(5, 3, 8, 8)
    torch.testing.assert_close(traced(other), net(other), **OUT_TOL)


# ---- deepcopy, pickle ---------------------------------------------------------------------------


def _pickled(m: nn.Module) -> nn.Module:
    copied: nn.Module = pickle.loads(pickle.dumps(m))
    return copied


LAYERS = {
    "BatchNorm1d": (lambda: bnn.BatchNorm1d(3), (8, 3)),
    "BatchNorm2d": (lambda: bnn.BatchNorm2d(3), (8, 3, 4, 4)),
    "BatchNorm3d": (lambda: bnn.BatchNorm3d(3), (8, 3, 2, 3, 3)),
    "BatchNormAct2d": (
        lambda: bnn.BatchNormAct2d(3, act="leaky_relu", negative_slope=0.2),
        (8, 3, 4, 4),
    ),
    "SyncBatchNorm": (lambda: bnn.SyncBatchNorm(3), (8, 3, 4)),
}


@pytest.mark.parametrize("how", [copy.deepcopy, _pickled], ids=["deepcopy", "pickle"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("kind", list(LAYERS))
def test_copies_keep_state_and_outputs(kind: str, training: bool, how):
    make, shape = LAYERS[kind]
    if kind == "SyncBatchNorm" and training:
        pytest.skip("SyncBatchNorm trains in a process group only")
    layer = _randomized(make()).train(training)
    copied = how(layer)
    assert type(copied) is type(layer) and copied.training == training
    assert copied.extra_repr() == layer.extra_repr()  # eps, momentum, act, slope, ...
    for (name, a), (_, b) in zip(
        [*layer.named_parameters(), *layer.named_buffers()],
        [*copied.named_parameters(), *copied.named_buffers()],
        strict=True,
    ):
        assert a is not b and torch.equal(a, b), name
        assert isinstance(b, nn.Parameter) == isinstance(a, nn.Parameter), name
    x = torch.randn(shape)
    assert torch.equal(copied(x), layer(x))
    # the copies are independent and evolve alike (training: the same running statistics)
    for (name, a), (_, b) in zip(layer.named_buffers(), copied.named_buffers(), strict=True):
        assert torch.equal(a, b), name


# ---- bench/bench_compile.py ---------------------------------------------------------------------


def test_the_compile_benchmark_compares_one_function(monkeypatch: pytest.MonkeyPatch):
    # Its ratios mean something only if the three nets are the same net: same weights, same
    # numbers. (The benchmark itself compiles six graphs: too slow to run here; --quick smokes.)
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "bench" / "bench_compile.py"
    spec = importlib.util.spec_from_file_location("bench_compile", path)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, bench)  # its dataclass looks itself up there
    spec.loader.exec_module(bench)
    x = torch.randn(4, 3, 8, 8)
    outs = [bench.make_net(v, bench.QUICK)(x) for v in bench.VARIANTS]
    assert [type(m).__name__ for m in bench.make_net("bnlab-act", bench.QUICK)][:2] == [
        "Conv2d",
        "BatchNormAct2d",
    ]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], **OUT_TOL)
