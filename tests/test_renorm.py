"""bnlab.nn.BatchRenorm*: Ioffe 2017's formula in float64, BN at r_max=1 / d_max=0, the train
output equal to the eval transform where r and d are not clipped, the warm-up, gradcheck."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import bnlab.nn as bnn
from bnlab.nn.renorm import limits_now, renorm_limits

pytestmark = pytest.mark.usefixtures("each_backend")

F64 = torch.float64


def renorm_oracle(x, gamma, beta, mu, var, eps, r_max, d_max, momentum):
    """NumPy: (y, r, d, new running mean, new running var) of one training step."""
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    mu_b = x.mean(axis=axes)
    var_b = ((x - mu_b.reshape(shape)) ** 2).mean(axis=axes)
    sigma_b, sigma = np.sqrt(var_b + eps), np.sqrt(var + eps)
    r = np.clip(sigma_b / sigma, 1 / r_max, r_max)
    d = np.clip((mu_b - mu) / sigma, -d_max, d_max)
    x_hat = (x - mu_b.reshape(shape)) / sigma_b.reshape(shape)
    y = gamma.reshape(shape) * (x_hat * r.reshape(shape) + d.reshape(shape)) + beta.reshape(shape)
    new_mu = (1 - momentum) * mu + momentum * mu_b
    new_var = (1 - momentum) * var + momentum * var_b * m / (m - 1)
    return y, r, d, new_mu, new_var


SHAPES = [(bnn.BatchRenorm1d, (16, 4)), (bnn.BatchRenorm2d, (6, 4, 3, 3)),
          (bnn.BatchRenorm3d, (4, 4, 2, 2, 3))]  # fmt: skip


@pytest.mark.parametrize(("cls", "shape"), SHAPES)
def test_training_steps_match_the_formula_in_float64(cls, shape):
    layer = cls(shape[1], r_max=1.5, d_max=0.5, eps=1e-3, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0, generator=gen)
        layer.bias.normal_(generator=gen)
    clipped_r = clipped_d = 0
    for step in range(6):
        # scale and shift far from the running statistics: the clips bind on the first steps
        x = torch.randn(shape, generator=gen, dtype=F64) * (3 - step * 0.4) + 2.0
        before = [t.detach().numpy().copy() for t in (layer.running_mean, layer.running_var)]
        gamma, beta = layer.weight.detach().numpy(), layer.bias.detach().numpy()
        y, r, d, new_mu, new_var = renorm_oracle(
            x.numpy(), gamma, beta, *before, 1e-3, 1.5, 0.5, 0.1
        )
        clipped_r += int(np.isclose(np.abs(np.log(r)), np.log(1.5)).sum())
        clipped_d += int(np.isclose(np.abs(d), 0.5).sum())
        out = layer(x)
        np.testing.assert_allclose(out.detach().numpy(), y, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.running_mean.numpy(), new_mu, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.running_var.numpy(), new_var, rtol=1e-12)
    assert clipped_r > 0 and clipped_d > 0  # the clipped branches were exercised
    assert int(layer.num_batches_tracked) == 6


@pytest.mark.parametrize(("cls", "shape"), SHAPES[:2])
def test_gradients_treat_r_and_d_as_constants(cls, shape):
    layer = cls(shape[1], r_max=2.0, d_max=1.0, dtype=F64)
    with torch.no_grad():
        layer.running_mean.fill_(0.7)
        layer.running_var.fill_(3.0)
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.normal_()
    x = (torch.randn(shape, dtype=F64) * 2 - 1).requires_grad_()
    dy = torch.randn(shape, dtype=F64)
    # Oracle: the formula in plain torch ops, r and d computed without grad
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    xo = x.detach().clone().requires_grad_()
    dims = [0, *range(2, len(shape))]
    view = (1, -1) + (1,) * (len(shape) - 2)
    mu_b = xo.mean(dims)
    sigma_b = (xo.var(dims, unbiased=False) + layer.eps).sqrt()
    with torch.no_grad():
        sigma = (layer.running_var + layer.eps).sqrt()
        r = (sigma_b / sigma).clamp(0.5, 2.0)
        d = ((mu_b - layer.running_mean) / sigma).clamp(-1.0, 1.0)
    x_hat = (xo - mu_b.view(view)) / sigma_b.view(view)
    y_ref = gamma.view(view) * (x_hat * r.view(view) + d.view(view)) + beta.view(view)
    (y_ref * dy).sum().backward()
    (layer(x) * dy).sum().backward()
    torch.testing.assert_close(x.grad, xo.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.weight.grad, gamma.grad, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(layer.bias.grad, beta.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("affine", [True, False])
def test_gradcheck_in_float64(affine):
    # r and d are constants to the gradient but functions of x: the numerical Jacobian agrees
    # only where both are clipped (locally constant), so the running statistics put them there
    # (sigma_B / sigma ~ 0.1 < 1 / r_max, (mu_B - mu) / sigma ~ -0.5 < -d_max). Momentum 0
    # keeps the running statistics fixed across gradcheck's evaluations.
    layer = bnn.BatchRenorm2d(3, r_max=1.3, d_max=0.2, momentum=0.0, affine=affine, dtype=F64)
    with torch.no_grad():
        layer.running_mean.fill_(5.0)
        layer.running_var.fill_(100.0)
    x = torch.randn(4, 3, 2, 2, dtype=F64, requires_grad=True)
    if not affine:
        assert torch.autograd.gradcheck(layer, (x,))
        return
    w = torch.rand(3, dtype=F64).add(0.5).requires_grad_()
    b = torch.randn(3, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))


@pytest.mark.parametrize(("cls", "torch_cls", "shape"), [
    (bnn.BatchRenorm1d, nn.BatchNorm1d, (8, 5)),
    (bnn.BatchRenorm2d, nn.BatchNorm2d, (4, 5, 3, 2)),
    (bnn.BatchRenorm3d, nn.BatchNorm3d, (3, 5, 2, 2, 2)),
])  # fmt: skip
@pytest.mark.parametrize("momentum", [0.1, None])
def test_r_max_1_and_d_max_0_is_batch_norm_exactly(cls, torch_cls, shape, momentum):
    mine = cls(shape[1], r_max=1.0, d_max=0.0, momentum=momentum, dtype=F64)
    ref = torch_cls(shape[1], momentum=momentum, dtype=F64)
    gen = torch.Generator().manual_seed(3)
    for step in range(5):
        mine.train(step != 3)
        ref.train(step != 3)
        x = torch.randn(shape, generator=gen, dtype=F64) * (1 + step) + step
        xm, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        ym, yr = mine(xm), ref(xr)
        torch.testing.assert_close(ym, yr)
        dy = torch.randn(shape, generator=gen, dtype=F64)
        (ym * dy).sum().backward()
        (yr * dy).sum().backward()
        torch.testing.assert_close(xm.grad, xr.grad)
        torch.testing.assert_close(mine.weight.grad, ref.weight.grad)
        torch.testing.assert_close(mine.bias.grad, ref.bias.grad)
        for (name, bm), (_, br) in zip(mine.named_buffers(), ref.named_buffers(), strict=True):
            torch.testing.assert_close(bm, br, msg=name)


@pytest.mark.parametrize(("cls", "shape"), SHAPES)
def test_unclipped_train_output_equals_the_running_statistics_transform(cls, shape):
    # What makes it Batch Renorm: where r and d are not clipped, training mode normalizes with
    # the running statistics (as they were before the step), i.e. as evaluation mode does.
    layer = cls(shape[1], r_max=1e6, d_max=1e6, dtype=F64)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0, generator=gen)
        layer.bias.normal_(generator=gen)
        for _ in range(3):
            layer(torch.randn(shape, generator=gen, dtype=F64) * 2 + 1)
    x = torch.randn(shape, generator=gen, dtype=F64) * 5 - 3  # far from the running statistics
    frozen = copy.deepcopy(layer).eval()
    torch.testing.assert_close(layer(x), frozen(x), rtol=1e-10, atol=1e-10)
    # ... and BN's output differs: this is not trivially true
    bn = torch.nn.functional.batch_norm(x, None, None, layer.weight, layer.bias, training=True)
    assert (bn - frozen(x)).abs().max() > 0.5


def test_warm_up_ramps_r_max_and_d_max_linearly():
    assert renorm_limits(0, 3.0, 5.0, warmup_start=2, warmup_steps=4) == (1.0, 0.0)
    assert renorm_limits(1, 3.0, 5.0, warmup_start=2, warmup_steps=4) == (1.0, 0.0)
    assert renorm_limits(3, 3.0, 5.0, warmup_start=2, warmup_steps=4) == (1.5, 1.25)
    assert renorm_limits(6, 3.0, 5.0, warmup_start=2, warmup_steps=4) == (3.0, 5.0)
    assert renorm_limits(10**6, 3.0, 5.0, warmup_start=2, warmup_steps=4) == (3.0, 5.0)
    assert renorm_limits(0, 3.0, 5.0) == (3.0, 5.0)  # no warm-up


def test_without_a_warm_up_the_step_counter_is_never_read():
    """Reading the counter's value is a host sync on a GPU. A meta tensor has no value, so
    reading it raises: without a warm-up the limits come without it; with one, off the CPU
    they are computed on the device (tensors), and only a forced host read needs the value."""
    step = torch.zeros((), dtype=torch.long, device="meta")
    assert limits_now(step, (3.0, 5.0, 0, 0)) == (3.0, 5.0) == renorm_limits(7, 3.0, 5.0)
    r_max, d_max = limits_now(step, (3.0, 5.0, 2, 4))
    assert isinstance(r_max, torch.Tensor) and r_max.device.type == "meta"
    assert isinstance(d_max, torch.Tensor)
    with pytest.raises((RuntimeError, NotImplementedError)):
        limits_now(step, (3.0, 5.0, 2, 4), on_host=True)
    layer = bnn.BatchRenorm1d(3, r_max=2.0, d_max=1.0)
    layer.num_batches_tracked = step
    assert layer.clip_limits() == (2.0, 1.0)


@pytest.mark.parametrize("start_steps", [(2, 4), (0, 3), (3, 0), (0, 7)])
def test_device_limits_equal_the_host_numbers_bit_for_bit(start_steps):
    start, steps = start_steps
    for step in range(12):
        counter = torch.tensor(step)
        host = limits_now(counter, (3.0, 5.0, start, steps), on_host=True)
        r_max, d_max = limits_now(counter, (3.0, 5.0, start, steps), on_host=False)
        assert isinstance(r_max, torch.Tensor) and isinstance(d_max, torch.Tensor)
        assert (r_max.item(), d_max.item()) == host == renorm_limits(step, 3.0, 5.0, start, steps)


class _HostReads(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts the ops that copy a tensor's value to the host (a device sync on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("make", [
    lambda: bnn.BatchRenorm1d(3, warmup_start=2, warmup_steps=3, dtype=F64),
    lambda: bnn.GhostBatchRenorm1d(3, 4, warmup_start=2, warmup_steps=3, dtype=F64),
])  # fmt: skip
def test_the_warm_up_on_a_device_reads_nothing_on_the_host_and_trains_the_same(make, monkeypatch):
    """Off the CPU the warm-up's limits are device tensors: no host read per step (the reads
    are counted), and every step's output, gradients and running statistics equal the host
    path's bit for bit (BN before the warm-up starts, then the ramp)."""
    from bnlab.nn import renorm

    host, device = make(), make()
    device.load_state_dict(host.state_dict())
    gen = torch.Generator().manual_seed(0)
    for step in range(7):
        x = torch.randn(12, 3, generator=gen, dtype=F64) * 3 + 2
        outs, grads, reads = [], [], []
        for layer, where in ((host, {"cpu"}), (device, set())):
            monkeypatch.setattr(renorm, "HOST_READ_DEVICES", frozenset(where))
            xi = x.clone().requires_grad_()
            with _HostReads() as mode:
                y = layer(xi)
                y.square().sum().backward()
            outs.append(y.detach())
            grads.append((xi.grad, layer.weight.grad.clone(), layer.bias.grad.clone()))
            reads.append(mode.reads)
            layer.zero_grad()
        assert reads[1] == 0, f"step {step}: the device path read the host {reads[1]} times"
        assert reads[0] >= 1  # the host path reads the counter: the count can fail
        assert torch.equal(outs[0], outs[1]), step
        for a, b in zip(*grads, strict=True):
            assert torch.equal(a, b), step
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            assert torch.equal(getattr(host, name), getattr(device, name)), (step, name)
    assert host.clip_limits() == device.clip_limits() == (3.0, 5.0)  # the ramp is done


def test_warm_up_is_batch_norm_before_it_starts_and_counts_batches(monkeypatch):
    from bnlab import functional

    passes = []  # r and d's statistics pass: skipped while the limits are (1, 0)
    stats = functional.batch_norm_stats
    monkeypatch.setattr(functional, "batch_norm_stats", lambda x: passes.append(1) or stats(x))
    layer = bnn.BatchRenorm1d(3, warmup_start=2, warmup_steps=2, dtype=F64)
    bn = nn.BatchNorm1d(3, dtype=F64)
    limits, counted = [], []
    for _ in range(4):
        limits.append(layer.clip_limits())
        x = torch.randn(8, 3, dtype=F64) * 4 + 3
        y_bn = bn(x)
        y = layer(x)
        counted.append(len(passes))
        if len(limits) <= 2:
            torch.testing.assert_close(y, y_bn)
    assert limits == [(1.0, 0.0), (1.0, 0.0), (1.0, 0.0), (2.0, 2.5)]
    assert counted == [0, 0, 0, 1]
    assert "warmup_start=2, warmup_steps=2" in repr(layer)


def test_state_dict_is_batch_norms_and_eval_is_batch_norm_eval():
    layer = bnn.BatchRenorm2d(4)
    for _ in range(3):
        layer(torch.randn(5, 4, 3, 3) * 2 + 1)
    ref = nn.BatchNorm2d(4)
    ref.load_state_dict(layer.state_dict())
    assert list(layer.state_dict()) == list(ref.state_dict())
    layer.eval(), ref.eval()
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(layer(x), ref(x))
    assert isinstance(layer, nn.BatchNorm2d) and bnn.is_batch_norm(layer)


def test_bfloat16_input_runs_with_float32_parameters():
    layer = bnn.BatchRenorm1d(3)
    x = torch.randn(16, 3)
    y = layer(x.bfloat16())
    assert y.dtype == torch.bfloat16
    ref = bnn.BatchRenorm1d(3)(x)
    torch.testing.assert_close(y.float(), ref, rtol=0.02, atol=0.02)


def test_bad_settings_and_inputs_name_the_fix():
    with pytest.raises(ValueError, match=r"track_running_stats=False leaves nothing"):
        bnn.BatchRenorm1d(3, track_running_stats=False)
    with pytest.raises(ValueError, match=r"r_max >= 1 and d_max >= 0"):
        bnn.BatchRenorm1d(3, r_max=0.5)
    with pytest.raises(ValueError, match=r"warmup_start and warmup_steps"):
        bnn.BatchRenorm1d(3, warmup_steps=-1)
    layer = bnn.BatchRenorm1d(3)
    with pytest.raises(ValueError, match=r"BatchRenorm1d\(3\) needs more than 1 value"):
        layer(torch.randn(1, 3))
    with pytest.raises(ValueError, match=r"build it with num_features=4"):
        layer(torch.randn(5, 4))
    assert int(layer.num_batches_tracked) == 0  # a refused input leaves the layer as it was
