"""bnlab's compiled CPU kernels: the walks through memory that small test shapes never reach
(grouped narrow rows and their tails, long planes cut into blocks, several threads), low
precision, the dispatch rules and the backend switch. The formulas themselves are checked on
both backends by test_functional.py, test_nn.py and test_batchnorm_act.py."""

from __future__ import annotations

import importlib.util
import shutil

import numpy as np
import pytest
import torch

from bnlab import functional as F
from bnlab import kernels, reference
from bnlab.kernels import cpu


@pytest.fixture(scope="module")
def compiled() -> None:
    if not cpu.load():
        pytest.skip(f"bnlab's compiled kernels are unavailable here: {cpu.status()}")


def _has_ninja() -> bool:
    return shutil.which("ninja") is not None or importlib.util.find_spec("ninja") is not None


def test_compiled_kernels_build_where_a_compiler_is_present():
    if shutil.which("c++") is None or not _has_ninja():
        pytest.skip("no C++ compiler or ninja here: bnlab runs the plain-torch path")
    assert cpu.load(), cpu.status()
    assert cpu.library_path().is_file()


# Shapes chosen for the code paths they reach (2 threads split work above 64k values):
WALKS = [
    ((1000, 3), False),  # rows of 3 read 22 at a time, a tail of 10 rows
    ((20011, 7), False),  # grouped rows over 2 threads, then a tail of 1 row
    ((9, 3000), False),  # wide rows, few of them
    ((64, 64, 9, 9), True),  # channels_last, 2 threads
    ((2, 3, 20000), False),  # planes longer than a cache block
    ((8, 16, 33, 35), False),  # planes over 2 threads, a chunk boundary inside a plane
    ((5, 70, 1, 1), False),  # no spatial extent: read as rows
    ((3, 4, 5, 6, 7), True),  # channels_last_3d
]


def _x(shape, channels_last, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 100  # a mean far from 0
    if channels_last:
        x = x.contiguous(
            memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        )
    dy = torch.randn(shape, generator=gen, dtype=dtype)
    w = torch.rand(shape[1], generator=gen, dtype=dtype) + 0.5
    b = torch.randn(shape[1], generator=gen, dtype=dtype)
    return x, dy, w, b


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize(("shape", "channels_last"), WALKS)
def test_every_walk_matches_the_numpy_reference_in_float64(shape, channels_last):
    x, dy, w, b = _x(shape, channels_last)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    rm, rv = torch.zeros(shape[1], dtype=torch.float64), torch.ones(shape[1], dtype=torch.float64)
    with kernels.use_backend("compiled"):
        y = F.batch_norm(xg, rm, rv, wg, bg, training=True, momentum=0.5)
        dx, dw, db = torch.autograd.grad(y, (xg, wg, bg), dy)
    y_ref, cache = reference.batch_norm_forward(x.numpy(), w.numpy(), b.numpy())
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(dy.numpy(), cache)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(dx.numpy(), dx_ref, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(dw.numpy(), dw_ref, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(db.numpy(), db_ref, rtol=1e-9, atol=1e-9)
    axes = tuple(d for d in range(x.dim()) if d != 1)
    mean_ref = 0.5 * x.numpy().mean(axes)
    var_ref = 0.5 + 0.5 * x.numpy().var(axes, ddof=1)
    np.testing.assert_allclose(rm.numpy(), mean_ref, rtol=1e-12)
    np.testing.assert_allclose(rv.numpy(), var_ref, rtol=1e-10)
    assert y.stride() == x.stride() and dx.stride() == x.stride()


def _stages(x, dy, w, count):
    mean, m2 = F.batch_norm_stats(x)
    inv_std = (m2 / count + 1e-5).rsqrt()
    y = F.batch_norm_elemt(x, mean, inv_std, w, None)
    s0, s1 = F.batch_norm_backward_reduce(dy, x, mean, inv_std)
    dx = F.batch_norm_backward_elemt(dy, x, mean, inv_std, w, s0, s1, count)
    return {"mean": mean, "var": m2 / count, "y": y, "s0": s0, "s1": s1, "dx": dx}


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize(("shape", "channels_last"), WALKS)
def test_float32_stages_are_as_accurate_as_the_torch_path(shape, channels_last):
    # Against float64 truth, the compiled float32 stages err no more than the plain ones.
    x, dy, w, _ = _x(shape, channels_last, dtype=torch.float32, seed=1)
    count = x.numel() // shape[1]
    with kernels.use_backend("torch"):
        truth = _stages(x.double(), dy.double(), w.double(), count)
        plain = _stages(x, dy, w, count)
    with kernels.use_backend("compiled"):
        mine = _stages(x, dy, w, count)
    for name, t in truth.items():
        err_mine = (mine[name].double() - t).abs().max().item()
        err_plain = (plain[name].double() - t).abs().max().item()
        floor = 1e-6 * t.abs().max().item()
        assert err_mine <= 2 * err_plain + floor, (name, err_mine, err_plain)


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("act", ["identity", "relu"])
def test_outputs_larger_than_the_caches_match_the_torch_path(channels_last, act):
    # 16 MiB and more: y and dx are written with non-temporal stores
    x, dy, w, b = _x((64, 64, 32, 33), channels_last, dtype=torch.float32, seed=9)
    outs = []
    for backend in ("compiled", "torch"):
        xg = x.clone().requires_grad_()
        with kernels.use_backend(backend):
            y = F.batch_norm_act(xg, None, None, w, b, training=True, act=act)
            outs.append((y, *torch.autograd.grad(y, xg, dy)))
    (y, dx), (y_ref, dx_ref) = outs
    assert y.stride() == y_ref.stride() and dx.stride() == dx_ref.stride()
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    # where z rounds to the other side of 0 in the two renditions, ReLU's mask differs (a
    # handful of values in 4M); everywhere else the gradients agree
    same_side = (y > 0) == (y_ref > 0)
    assert same_side.float().mean() > 1 - 1e-5
    torch.testing.assert_close(dx[same_side], dx_ref[same_side], rtol=1e-4, atol=1e-4)


@pytest.fixture
def output_cache():
    """The output cache at 256 MiB for the test, emptied before and after, limit restored."""
    previous = kernels.set_output_cache_limit(0)
    kernels.set_output_cache_limit(256)
    yield
    kernels.set_output_cache_limit(0)
    kernels.set_output_cache_limit(previous)


@pytest.mark.usefixtures("compiled", "output_cache")
@pytest.mark.parametrize("channels_last", [False, True])
def test_a_reused_output_block_is_overwritten_whole(channels_last):
    # outputs of 1 MiB and more reuse freed blocks: stale contents (NaN here) must never show
    x, dy, w, b = _x((16, 32, 24, 25), channels_last, dtype=torch.float32, seed=3)  # 1.2 MB
    xg = x.clone().requires_grad_()
    y = F.batch_norm(xg, None, None, w, b, training=True)
    (dx,) = torch.autograd.grad(y, xg, dy)
    pointers = {y.data_ptr(), dx.data_ptr()}
    y.detach().fill_(float("nan"))
    dx.fill_(float("nan"))
    del y, dx
    assert kernels.output_cache_bytes() == 2 * 2**21  # two blocks of one 2 MiB page each
    y = F.batch_norm(xg, None, None, w, b, training=True)
    (dx,) = torch.autograd.grad(y, xg, dy)
    assert {y.data_ptr(), dx.data_ptr()} == pointers  # the same blocks, taken back
    assert kernels.output_cache_bytes() == 0
    with kernels.use_backend("torch"):
        y_ref = F.batch_norm(xg, None, None, w, b, training=True)
        (dx_ref,) = torch.autograd.grad(y_ref, xg, dy)
    torch.testing.assert_close(y, y_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.usefixtures("compiled", "output_cache")
def test_the_output_cache_stays_within_its_limit_and_keeps_the_newest():
    x = torch.randn(64, 64, 64)  # 1 MiB: one 2 MiB block per output
    a, b, c = (F.batch_norm(x, None, None, training=True) for _ in range(3))
    assert kernels.set_output_cache_limit(4) == 256  # 4 MiB: room for two blocks
    pointers = [t.data_ptr() for t in (a, b, c)]
    del a, b, c  # freed in this order: a's block is dropped, c's is taken next
    assert kernels.output_cache_bytes() == 4 * 2**20
    y = F.batch_norm(x, None, None, training=True)
    assert y.data_ptr() == pointers[2]
    del y
    kernels.set_output_cache_limit(0)  # off: gives back what it holds, and holds nothing
    assert kernels.output_cache_bytes() == 0
    y = F.batch_norm(x, None, None, training=True)
    y.untyped_storage().resize_(0)  # a storage of this allocator, resized: torch reallocates
    y.untyped_storage().resize_(3 * 2**20)
    big = F.batch_norm(torch.randn(33, 2**18), None, None, training=True)  # 33 MiB: huge pages
    torch.testing.assert_close(big.mean(0), torch.zeros(2**18), rtol=0, atol=1e-5)
    del y, big
    assert kernels.output_cache_bytes() == 0
    with pytest.raises(ValueError, match="give a size >= 0"):
        kernels.set_output_cache_limit(-1)


@pytest.mark.parametrize("raw", ["lots", "-5", "nan", "inf"])
def test_a_malformed_output_cache_size_is_a_clear_error(monkeypatch, raw):
    monkeypatch.setenv("BNLAB_OUTPUT_CACHE_MB", raw)
    with pytest.raises(ValueError, match=r"BNLAB_OUTPUT_CACHE_MB=.* is not a size in MiB"):
        cpu._output_cache_limit_from_env()
    # loading raises it too, rather than falling back to the plain-torch path as if the
    # kernels could not be built
    monkeypatch.setattr(cpu, "_state", None)
    with pytest.raises(ValueError, match=r"BNLAB_OUTPUT_CACHE_MB=.* is not a size in MiB"):
        cpu.load()
    assert cpu._state is None
    monkeypatch.setenv("BNLAB_OUTPUT_CACHE_MB", "64")
    assert cpu._output_cache_limit_from_env() == 64 * 2**20


@pytest.mark.usefixtures("compiled")
def test_without_a_gradient_to_record_the_operator_builds_no_autograd_node():
    # the no-grad shortcut of torch.ops.bnlab.batch_norm: same output, same running stats
    x, _, w, b = _x((50, 7), False, dtype=torch.float32, seed=4)
    outs = []
    for grad in (False, True):
        rm, rv = torch.zeros(7), torch.ones(7)
        wg = w.clone().requires_grad_(grad)
        with kernels.use_backend("compiled"):
            y = F.batch_norm(x, rm, rv, wg, b, training=True)
        assert (y.grad_fn is not None) == grad
        outs.append((y.detach(), rm, rv))
    with torch.no_grad(), kernels.use_backend("compiled"):
        rm, rv = torch.zeros(7), torch.ones(7)
        y = F.batch_norm(x, rm, rv, w.clone().requires_grad_(), b, training=True)
        assert y.grad_fn is None
        outs.append((y, rm, rv))
    for got in outs[1:]:
        for a, e in zip(got, outs[0], strict=True):
            torch.testing.assert_close(a, e, rtol=0, atol=0)


@pytest.mark.usefixtures("compiled")
def test_one_thread_and_two_threads_agree():
    x, dy, w, b = _x((64, 64, 9, 9), True, dtype=torch.float32)
    outs = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        xg = x.clone().requires_grad_()
        with kernels.use_backend("compiled"):
            y = F.batch_norm(xg, None, None, w, b, training=True)
            outs.append((y, *torch.autograd.grad(y, xg, dy)))
    for one, two in zip(*outs, strict=True):
        torch.testing.assert_close(one, two, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_low_precision_matches_the_torch_path(dtype, channels_last):
    x, dy, w, b = _x((32, 8, 6, 6), channels_last, dtype=torch.float32, seed=4)
    x, dy = (x - 100).to(dtype), dy.to(dtype)
    outs = []
    for backend in ("compiled", "torch"):
        xg, wg, bg = x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone()
        bg.requires_grad_()
        rm, rv = torch.zeros(8), torch.ones(8)
        with kernels.use_backend(backend):
            y = F.batch_norm(xg, rm, rv, wg, bg, training=True)
            outs.append((y, *torch.autograd.grad(y, (xg, wg, bg), dy), rm, rv))
    for mine, plain in zip(*outs, strict=True):
        assert mine.dtype == plain.dtype
        torch.testing.assert_close(mine, plain, rtol=2e-2, atol=2e-2)


@pytest.mark.usefixtures("compiled")
def test_fused_relu_mask_is_the_forward_mask():
    # Backward recomputes z = x * scale + shift; it must see exactly the forward's z.
    x, dy, w, b = _x((50, 40), False, dtype=torch.float32, seed=6)
    xg = x.clone().requires_grad_()
    with kernels.use_backend("compiled"):
        z = F.batch_norm(x, None, None, w, b, training=True)
        y = F.batch_norm_act(xg, None, None, w, b, training=True, act="relu")
        (dx,) = torch.autograd.grad(y, xg, dy)
        xr = x.clone().requires_grad_()
        (dx_ref,) = torch.autograd.grad(F.batch_norm(xr, None, None, w, b, True), xr, dy * (z > 0))
    assert torch.equal(y, z.clamp_min(0))
    torch.testing.assert_close(dx, dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.usefixtures("compiled")
def test_strided_running_stats_are_updated_in_place_like_the_torch_path():
    # running statistics that are views with a stride take the kernels' ATen fallback
    x, _, w, b = _x((16, 5, 3), False, dtype=torch.float32)
    buffers = []
    for backend in ("compiled", "torch"):
        storage = torch.zeros(2, 10)
        storage[1] = 1.0
        rm, rv = storage[0, ::2], storage[1, ::2]
        with kernels.use_backend(backend):
            F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3)
        buffers.append(storage)
    mine, plain = buffers
    torch.testing.assert_close(mine, plain)
    assert (mine[:, 1::2] == torch.tensor([[0.0], [1.0]])).all()  # the gaps are untouched


def test_inputs_the_kernels_do_not_take_run_the_torch_path(monkeypatch):
    # batch_norm copies other layouts into contiguous or channels_last first; the stages take
    # them as they are, on the torch path, as they do empty batches
    def no_kernels() -> None:
        raise AssertionError("dispatched to the compiled kernels")

    monkeypatch.setattr(kernels, "cpu_ops", no_kernels)
    x = torch.randn(6, 8, 5)
    strided = x.transpose(0, 2).contiguous().transpose(0, 2)  # neither contiguous nor CL
    mean, m2 = F.batch_norm_stats(strided)
    torch.testing.assert_close(mean, x.mean((0, 2)))
    torch.testing.assert_close(m2, x.var((0, 2), unbiased=False) * 30)
    empty = torch.randn(0, 8)
    assert F.batch_norm(empty, torch.zeros(8), torch.ones(8)).shape == (0, 8)
    assert F.batch_norm_stats(empty)[0].tolist() == [0.0] * 8


@pytest.mark.usefixtures("compiled")
def test_stages_under_autograd_stay_differentiable_torch_ops():
    # SyncBatchNorm's double backward composes the stages under autograd.
    x = torch.randn(6, 3, 4, dtype=torch.float64, requires_grad=True)
    with kernels.use_backend("compiled"):
        mean, m2 = F.batch_norm_stats(x)
        with torch.no_grad():
            plain = F.batch_norm_stats(x)
    assert mean.grad_fn is not None and m2.grad_fn is not None
    assert plain[0].grad_fn is None
    torch.testing.assert_close(mean.detach(), plain[0])


def test_backend_switch_validates_and_restores():
    before = kernels.get_backend()
    with kernels.use_backend("torch"):
        assert kernels.get_backend() == "torch"
        assert kernels.cpu_ops() is None
    assert kernels.get_backend() == before
    with pytest.raises(ValueError, match=r"'cuda' is not a bnlab backend; choose one of"):
        kernels.set_backend("cuda")


@pytest.mark.slow
@pytest.mark.usefixtures("compiled")
def test_large_channels_last_against_float64_reference_closer_than_torch():
    # (64, 64, 56, 56) float32 channels_last: torch's own CPU kernel is a loose oracle here
    # (its dgamma is off by ~5e-2); the float64 reference decides, and bnlab is held tighter.
    x, dy, w, b = _x((64, 64, 56, 56), True, dtype=torch.float32, seed=7)
    x = x - 100
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    with kernels.use_backend("compiled"):
        y = F.batch_norm(xg, None, None, wg, bg, training=True)
        dx, dw, db = torch.autograd.grad(y, (xg, wg, bg), dy)
    y64, cache = reference.batch_norm_forward(
        x.double().numpy(), w.double().numpy(), b.double().numpy()
    )
    dx64, dw64, db64 = reference.batch_norm_backward(dy.double().numpy(), cache)
    np.testing.assert_allclose(y.detach().numpy(), y64, atol=2e-5)
    np.testing.assert_allclose(dx.numpy(), dx64, atol=2e-6)
    np.testing.assert_allclose(dw.numpy(), dw64, rtol=1e-4, atol=5e-3)
    np.testing.assert_allclose(db.numpy(), db64, rtol=1e-4, atol=5e-3)


@pytest.mark.slow  # dynamo's first compile: seconds
def test_torch_compile_traces_the_torch_formulas():
    # The C++ operator has no fake-tensor kernel; under torch.compile the dispatcher picks the
    # plain-torch path, which dynamo and AOTAutograd trace.
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(8, 4, 3, 3, generator=gen, requires_grad=True)
    w = torch.rand(4, generator=gen).add_(0.5).requires_grad_()

    def loss(x, w):
        return F.batch_norm_act(x, None, None, w, None, True).square().sum()

    compiled = torch.compile(loss, backend="aot_eager")
    got = torch.autograd.grad(compiled(x, w), (x, w))
    want = torch.autograd.grad(loss(x, w), (x, w))
    for g, e in zip(got, want, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-5)


def test_registering_kernels_for_an_unknown_device_is_refused():
    from bnlab import functional

    with pytest.raises(ValueError, match="device type 'tpu'; use 'cpu' or 'cuda'"):
        functional.register_kernels("tpu", lambda: None)


def test_a_device_without_registered_kernels_runs_the_plain_torch_path():
    from bnlab import functional

    x = torch.randn(6, 3, dtype=torch.float64)
    cpu = functional._providers["cpu"]
    expected = functional.batch_norm(x, None, None, training=True)
    functional.register_kernels("cpu", None)
    try:
        assert functional._kernels_for(x) is None
        torch.testing.assert_close(functional.batch_norm(x, None, None, training=True), expected)
    finally:
        functional.register_kernels("cpu", cpu)
