"""bnlab.functional against its oracles: the NumPy reference, torch native, gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from bnlab import reference
from bnlab.functional import batch_norm

# Every claim holds for the compiled kernels and for the plain-torch path.
pytestmark = pytest.mark.usefixtures("each_backend")

SHAPES = [(6, 5), (8, 4, 7), (4, 3, 5, 6), (3, 2, 3, 4, 5)]


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    return x.contiguous(memory_format=fmt)


def _case(shape, dtype=torch.float64, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=dtype) * 3 + 1.5
    if channels_last:
        x = _channels_last(x)
    c = shape[1]
    w = torch.rand(c, generator=gen, dtype=dtype) + 0.5
    b = torch.randn(c, generator=gen, dtype=dtype)
    dy = torch.randn(shape, generator=gen, dtype=dtype)
    return x, w, b, dy


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_backward_match_numpy_reference(shape):
    x, w, b, dy = _case(shape)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    y = batch_norm(x, None, None, w, b, training=True, eps=1e-5)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), dy)
    y_ref, cache = reference.batch_norm_forward(
        x.detach().numpy(), w.detach().numpy(), b.detach().numpy(), eps=1e-5
    )
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(dy.numpy(), cache)
    np.testing.assert_allclose(y.detach().numpy(), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx.numpy(), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dw.numpy(), dw_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db.numpy(), db_ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_mode_matches_numpy_reference(shape):
    x, w, b, _ = _case(shape)
    rm, rv = torch.randn(shape[1], dtype=torch.float64), torch.rand(shape[1], dtype=torch.float64)
    y = batch_norm(x, rm, rv, w, b, training=False, eps=1e-3)
    y_ref = reference.batch_norm_inference(
        x.numpy(), rm.numpy(), rv.numpy(), w.numpy(), b.numpy(), eps=1e-3
    )
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-12, atol=1e-12)


def test_reference_backward_matches_finite_differences():
    # The oracle itself checked by an independent method: central differences of sum(y * dy).
    rng = np.random.default_rng(0)
    x, g, bt, dy = (
        rng.normal(size=(5, 3)),
        rng.normal(size=3),
        rng.normal(size=3),
        rng.normal(size=(5, 3)),
    )
    _, cache = reference.batch_norm_forward(x, g, bt)
    dx, dg, db = reference.batch_norm_backward(dy, cache)

    def loss(x_, g_, b_):
        return float((reference.batch_norm_forward(x_, g_, b_)[0] * dy).sum())

    h = 1e-6
    for arr, grad, idx in ((x, dx, (2, 1)), (g, dg, (1,)), (bt, db, (0,))):
        args = [x.copy(), g.copy(), bt.copy()]
        which = next(i for i, a in enumerate((x, g, bt)) if a is arr)
        plus, minus = [a.copy() for a in args], [a.copy() for a in args]
        plus[which][idx] += h
        minus[which][idx] -= h
        assert (loss(*plus) - loss(*minus)) / (2 * h) == pytest.approx(grad[idx], rel=1e-6)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_and_gradgradcheck(shape, training, affine):
    x, w, b, _ = _case(shape, channels_last=len(shape) > 3)
    x = x.detach().requires_grad_()
    params = (w.requires_grad_(), b.requires_grad_()) if affine else (None, None)
    rm, rv = torch.randn(shape[1], dtype=torch.float64), torch.rand(shape[1], dtype=torch.float64)

    def f(x, *wb):
        weight, bias = wb if affine else (None, None)
        return batch_norm(x, rm.clone(), rv.clone(), weight, bias, training=training)

    inputs = (x, *params) if affine else (x,)
    assert torch.autograd.gradcheck(f, inputs)
    assert torch.autograd.gradgradcheck(f, inputs)


def test_double_backward_gradient_penalty_matches_native():
    # WGAN-GP style: penalty on ||d out / d x||, then its gradient w.r.t. the parameters.
    x, w, b, _ = _case((16, 6), seed=3)
    grads = []
    for fn in (batch_norm, TF.batch_norm):
        xi, wi, bi = (t.detach().clone().requires_grad_() for t in (x, w, b))
        out = fn(xi, None, None, wi, bi, True, 0.1, 1e-5).tanh().sum()
        (gx,) = torch.autograd.grad(out, xi, create_graph=True)
        penalty = (gx.norm(dim=1) - 1).square().mean()
        grads.append(torch.autograd.grad(penalty, (xi, wi, bi)))
    for mine, native in zip(*grads, strict=True):
        torch.testing.assert_close(mine, native)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("training", [True, False])
def test_matches_torch_native_float32(channels_last, training):
    x, w, b, dy = _case((8, 6, 5, 4), dtype=torch.float32, channels_last=channels_last)
    outs = []
    for fn in (batch_norm, TF.batch_norm):
        xi, wi, bi = (t.detach().clone().requires_grad_() for t in (x, w, b))
        if channels_last:
            xi = _channels_last(xi.detach()).requires_grad_()
        rm, rv = torch.full((6,), 0.3), torch.full((6,), 2.0)
        y = fn(xi, rm, rv, wi, bi, training, 0.1, 1e-5)
        outs.append((y, *torch.autograd.grad(y, (xi, wi, bi), dy), rm, rv))
    for mine, native in zip(*outs, strict=True):
        torch.testing.assert_close(mine, native, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["contiguous", "channels_last"])
def test_output_and_grad_keep_memory_format(fmt):
    x, w, b, dy = _case((4, 3, 5, 6), dtype=torch.float32, channels_last=fmt == "channels_last")
    x.requires_grad_()
    y = batch_norm(x, None, None, w, b, training=True)
    (dx,) = torch.autograd.grad(y, x, dy)
    memory_format = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
    assert y.is_contiguous(memory_format=memory_format)
    assert dx.is_contiguous(memory_format=memory_format)


def test_large_channels_last_float32_against_float64_reference():
    # torch's own CPU kernel is a loose oracle here (its dgamma is off by ~5e-2 on this
    # shape), so the float64 reference decides.
    x, w, b, dy = _case((16, 32, 28, 28), dtype=torch.float32, channels_last=True, seed=7)
    x.requires_grad_()
    w.requires_grad_()
    b.requires_grad_()
    y = batch_norm(x, None, None, w, b, training=True)
    dx, dw, db = torch.autograd.grad(y, (x, w, b), dy)
    y64, cache = reference.batch_norm_forward(
        x.detach().double().numpy(), w.detach().double().numpy(), b.detach().double().numpy()
    )
    dx64, dw64, db64 = reference.batch_norm_backward(dy.double().numpy(), cache)
    np.testing.assert_allclose(y.detach().numpy(), y64, atol=2e-5)
    np.testing.assert_allclose(dx.numpy(), dx64, atol=2e-6)
    np.testing.assert_allclose(dw.numpy(), dw64, rtol=1e-4, atol=5e-3)
    np.testing.assert_allclose(db.numpy(), db64, rtol=1e-4, atol=5e-3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_accumulates_statistics_in_float32(dtype):
    # A channel with a large mean and a small spread: float16 sums would lose the spread.
    gen = torch.Generator().manual_seed(0)
    x32 = (torch.randn(512, 4, generator=gen) * 0.05 + 50).to(dtype).float()
    x = x32.to(dtype).requires_grad_()
    rm, rv = torch.zeros(4), torch.ones(4)
    y = batch_norm(x, rm, rv, None, None, training=True, momentum=1.0)
    assert y.dtype == dtype
    y_ref, _ = reference.batch_norm_forward(x32.double().numpy())
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    np.testing.assert_allclose(y.float().detach().numpy(), y_ref, atol=tol)
    assert rm.dtype == torch.float32
    np.testing.assert_allclose(rm.numpy(), x32.double().mean(0).numpy(), rtol=1e-6)
    (dx,) = torch.autograd.grad(y.float().square().sum(), x)
    assert dx.dtype == dtype and torch.isfinite(dx).all()


def test_running_stats_carry_no_autograd_history():
    x = torch.randn(10, 3, requires_grad=True)
    rm, rv = torch.zeros(3), torch.ones(3)
    batch_norm(x * 2, rm, rv, None, None, training=True)
    assert rm.grad_fn is None and rv.grad_fn is None
    assert not rm.requires_grad and not rv.requires_grad


def test_one_value_per_channel_in_training_is_an_error_like_torch():
    x = torch.randn(1, 10)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel") as mine:
        batch_norm(x, None, None, training=True)
    with pytest.raises(ValueError) as native:
        TF.batch_norm(x, None, None, training=True)
    assert str(mine.value) == str(native.value)
    batch_norm(torch.randn(1, 10), torch.zeros(10), torch.ones(10), training=False)  # eval: fine


def test_parameter_of_wrong_size_names_it():
    with pytest.raises(ValueError, match=r"weight has shape \(4,\).*3 channels"):
        batch_norm(torch.randn(5, 3), None, None, torch.ones(4), None, training=True)


def test_eval_without_running_stats_is_a_clear_error():
    with pytest.raises(ValueError, match="needs running_mean and running_var"):
        batch_norm(torch.randn(5, 3), None, None, training=False)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_stages_compose_to_the_reference(shape, channels_last):
    # stats -> elemt and backward_reduce -> backward_elemt: the cut a distributed BN uses.
    from bnlab import functional as F

    if channels_last and len(shape) < 4:
        pytest.skip("channels_last needs 4D or 5D")
    x, w, b, dy = _case(shape, channels_last=channels_last)
    mean, m2 = F.batch_norm_stats(x)
    m = x.numel() // shape[1]
    inv_std = (m2 / m + 1e-5).rsqrt()
    y = F.batch_norm_elemt(x, mean, inv_std, w, b)
    s0, s1 = F.batch_norm_backward_reduce(dy, x, mean, inv_std)
    dx = F.batch_norm_backward_elemt(dy, x, mean, inv_std, w, s0, s1, m)
    y_ref, cache = reference.batch_norm_forward(x.numpy(), w.numpy(), b.numpy(), eps=1e-5)
    dx_ref, dw_ref, db_ref = reference.batch_norm_backward(dy.numpy(), cache)
    np.testing.assert_allclose(y.numpy(), y_ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx.numpy(), dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s1.numpy(), dw_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(s0.numpy(), db_ref, rtol=1e-10, atol=1e-12)
    assert (
        y.is_contiguous(memory_format=torch.channels_last) == (channels_last and len(shape) == 4)
        or len(shape) != 4
    )


_ODD_INPUTS = {
    "empty-batch-4d": lambda: torch.randn(0, 3, 4, 4),
    "empty-spatial-3d": lambda: torch.randn(2, 3, 0),
    "transposed-2d": lambda: torch.randn(3, 8).t(),
    "sliced-channels-last-4d": lambda: _channels_last(torch.randn(4, 6, 5, 5))[:, ::2],
    "permuted-5d": lambda: torch.randn(3, 4, 2, 3, 5).permute(0, 4, 1, 2, 3),
}


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", _ODD_INPUTS)
def test_empty_and_strided_inputs_match_native_with_its_strides(case, training):
    x = _ODD_INPUTS[case]()
    c = x.shape[1]
    outs = []
    for fn in (batch_norm, TF.batch_norm):
        rm, rv = torch.full((c,), 0.3), torch.full((c,), 2.0)
        w = torch.linspace(0.5, 1.5, c, requires_grad=True)
        y = fn(x, rm, rv, w, None, training, 0.1, 1e-5)
        y.sum().backward()
        outs.append((y, w.grad, rm, rv))
    (y, dw, rm, rv), (y_ref, dw_ref, rm_ref, rv_ref) = outs
    torch.testing.assert_close(y, y_ref)
    assert y.stride() == y_ref.stride()
    torch.testing.assert_close(dw, dw_ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close((rm, rv), (rm_ref, rv_ref))


def test_dtype_errors_name_batch_norm_and_match_native_types():
    x = torch.randn(4, 3, dtype=torch.float64)
    for args in [(torch.zeros(3), torch.ones(3)), (None, None, torch.ones(3))]:
        with pytest.raises(RuntimeError):
            TF.batch_norm(x, *args, training=True)
        with pytest.raises(RuntimeError, match=r"^batch_norm: input has dtype torch.float64"):
            batch_norm(x, *args, training=True)
    with pytest.raises(NotImplementedError, match=r"batch_norm: got input of dtype torch\.int64"):
        batch_norm(torch.ones(4, 3, dtype=torch.long), None, None, training=True)


def test_stats_of_an_empty_input_are_zero():
    from bnlab import functional as F

    for x in (torch.randn(0, 3), torch.randn(0, 3, 4), torch.randn(2, 3, 0, 4)):
        mean, m2 = F.batch_norm_stats(x)
        assert mean.shape == m2.shape == (3,) and not mean.any() and not m2.any()


@pytest.mark.parametrize("shape", [(0, 3), (0, 3, 4), (0, 3, 4, 5), (0, 3, 2, 2, 2)])
def test_stages_accept_an_empty_batch(shape):
    # A SyncBatchNorm rank may hold zero samples: its stages must give empty outputs and zero
    # sums, not fail on an ambiguous reshape.
    from bnlab import functional as F

    x = torch.randn(shape, dtype=torch.float64)
    mean, m2 = F.batch_norm_stats(x)
    inv_std = torch.ones(3, dtype=torch.float64)
    y = F.batch_norm_elemt(x, mean, inv_std, None, None)
    s0, s1 = F.batch_norm_backward_reduce(x, x, mean, inv_std)
    dx = F.batch_norm_backward_elemt(x, x, mean, inv_std, None, s0, s1, 10)
    assert y.shape == dx.shape == x.shape
    for t in (mean, m2, s0, s1):
        assert t.tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("sizes", [(50, 50), (70, 30), (1, 99), (0, 100), (34, 0, 66), (0, 0, 7)])
def test_merged_stats_of_parts_equal_stats_of_the_whole(sizes):
    from bnlab import functional as F

    gen = torch.Generator().manual_seed(1)
    # a large common offset: a sum-of-squares merge would lose the variance to cancellation
    x = torch.randn(sum(sizes), 4, 3, generator=gen, dtype=torch.float64) * 1e-3 + 1e4
    parts = torch.split(x, list(sizes))
    stats = [F.batch_norm_stats(p) for p in parts]
    count = torch.tensor([p.numel() // 4 for p in parts])
    mean, m2 = F.batch_norm_merge_stats(
        count, torch.stack([s[0] for s in stats]), torch.stack([s[1] for s in stats])
    )
    xn = x.numpy().transpose(1, 0, 2).reshape(4, -1)
    want_mean = xn.mean(1) if xn.size else np.zeros(4)
    want_m2 = ((xn - want_mean[:, None]) ** 2).sum(1)
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-14, atol=0)
    np.testing.assert_allclose(m2.numpy(), want_m2, rtol=1e-9, atol=1e-30)


def test_stages_are_twice_differentiable_under_grad_mode():
    # The contract SyncBatchNorm's double backward relies on: with autograd on, the stages
    # (merge included) are differentiable ops, so gradgradcheck passes through their composition.
    from bnlab import functional as F

    x, w, _, dy = _case((6, 3, 4))
    x.requires_grad_()
    dy.requires_grad_()
    w.requires_grad_()

    def dx_of(x, dy, w):
        parts = (x[:2], x[2:])
        stats = [F.batch_norm_stats(p) for p in parts]
        count = torch.tensor([8, 16])
        mean, m2 = F.batch_norm_merge_stats(
            count, torch.stack([s[0] for s in stats]), torch.stack([s[1] for s in stats])
        )
        inv_std = (m2 / 24 + 1e-5).rsqrt()
        s0, s1 = F.batch_norm_backward_reduce(dy, x, mean, inv_std)
        y = F.batch_norm_elemt(x, mean, inv_std, w, None)
        return F.batch_norm_backward_elemt(dy, x, mean, inv_std, w, s0, s1, 24), y

    assert torch.autograd.gradcheck(dx_of, (x, dy, w))
    assert torch.autograd.gradgradcheck(dx_of, (x, dy, w))


def test_stats_of_an_empty_batch_stay_in_the_autograd_graph():
    # An empty rank must build the same graph as the others, or SyncBatchNorm's double backward
    # would run a collective on some ranks only.
    from bnlab import functional as F

    x = torch.randn(0, 3, 4, dtype=torch.float64, requires_grad=True)
    mean, m2 = F.batch_norm_stats(x)
    assert mean.requires_grad and m2.requires_grad
    assert mean.tolist() == m2.tolist() == [0.0, 0.0, 0.0]
