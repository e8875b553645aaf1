"""bnlab.nn.GhostBatchNorm*: BN per chunk of ghost_batch_size rows (the last may be smaller),
one BN call for the full chunks, running statistics from the chunk-averaged statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bnlab.nn as bnn
from bnlab import functional

pytestmark = pytest.mark.usefixtures("each_backend")

F64 = torch.float64

CASES = [  # class, shape, ghost batch size: divisible, a smaller last chunk, one chunk
    (bnn.GhostBatchNorm1d, (12, 3), 4),
    (bnn.GhostBatchNorm1d, (14, 3), 4),
    (bnn.GhostBatchNorm1d, (10, 3, 5), 3),
    (bnn.GhostBatchNorm2d, (9, 3, 2, 3), 2),
    (bnn.GhostBatchNorm3d, (7, 2, 2, 2, 2), 4),
    (bnn.GhostBatchNorm2d, (3, 3, 2, 2), 8),
]


def ghost_oracle(x, gamma, beta, mu, var, eps, ghost, momentum):
    """NumPy: the output and new running statistics of one training step."""
    axes = (0, *range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    ys, means, variances, rows = [], [], [], []
    for start in range(0, x.shape[0], ghost):
        chunk = x[start : start + ghost]
        m = chunk.mean(axis=axes)
        v = ((chunk - m.reshape(shape)) ** 2).mean(axis=axes)
        ys.append((chunk - m.reshape(shape)) / np.sqrt(v.reshape(shape) + eps))
        count = chunk.size // chunk.shape[1]
        means.append(m)
        variances.append(v * count / (count - 1))
        rows.append(chunk.shape[0])
    w = np.array(rows, dtype=float) / x.shape[0]  # each chunk weighted by its rows
    y = np.concatenate(ys) * gamma.reshape(shape) + beta.reshape(shape)
    new_mu = (1 - momentum) * mu + momentum * (w @ np.stack(means))
    new_var = (1 - momentum) * var + momentum * (w @ np.stack(variances))
    return y, new_mu, new_var


@pytest.mark.parametrize(("cls", "shape", "ghost"), CASES)
def test_training_steps_match_the_formula_in_float64(cls, shape, ghost):
    layer = cls(shape[1], ghost, eps=1e-3, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0, generator=gen)
        layer.bias.normal_(generator=gen)
    for step in range(3):
        x = torch.randn(shape, generator=gen, dtype=F64) * (1 + step) + step
        # rows of different chunks on different scales: a whole-batch BN would differ
        x = x * torch.linspace(0.5, 3, shape[0], dtype=F64).view(-1, *[1] * (len(shape) - 1))
        before = [t.numpy().copy() for t in (layer.running_mean, layer.running_var)]
        gamma, beta = layer.weight.detach().numpy(), layer.bias.detach().numpy()
        y, new_mu, new_var = ghost_oracle(x.numpy(), gamma, beta, *before, 1e-3, ghost, 0.1)
        np.testing.assert_allclose(layer(x).detach().numpy(), y, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.running_mean.numpy(), new_mu, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.running_var.numpy(), new_var, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 3  # one update per call, not per chunk


@pytest.mark.parametrize(("cls", "shape", "ghost"), CASES)
def test_equals_torch_batch_norm_applied_per_chunk_with_gradients(cls, shape, ghost):
    layer = cls(shape[1], ghost, dtype=F64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.normal_()
    x = torch.randn(shape, dtype=F64) * 2 + 1
    dy = torch.randn(shape, dtype=F64)
    xm, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
    gamma = layer.weight.detach().clone().requires_grad_()
    beta = layer.bias.detach().clone().requires_grad_()
    chunks = [
        torch.nn.functional.batch_norm(c, None, None, gamma, beta, training=True)
        for c in xr.split(ghost)
    ]
    y_ref = torch.cat(chunks)
    y = layer(xm)
    torch.testing.assert_close(y, y_ref)
    (y * dy).sum().backward()
    (y_ref * dy).sum().backward()
    torch.testing.assert_close(xm.grad, xr.grad)
    torch.testing.assert_close(layer.weight.grad, gamma.grad)
    torch.testing.assert_close(layer.bias.grad, beta.grad)


@pytest.mark.parametrize(("n", "calls"), [(12, 1), (14, 2), (3, 1)])
def test_one_batch_norm_call_serves_all_full_chunks(monkeypatch, n, calls):
    seen = []
    real = functional._batch_norm

    def counting(x, *args, **kwargs):
        seen.append(tuple(x.shape))
        return real(x, *args, **kwargs)

    monkeypatch.setattr(functional, "_batch_norm", counting)
    bnn.GhostBatchNorm1d(3, 4)(torch.randn(n, 3, 2))
    assert len(seen) == calls
    if n == 12:
        assert seen == [(4, 9, 2)]  # (k * g, C, L) -> (g, k * C, L)


def test_gradcheck_in_float64():
    layer = bnn.GhostBatchNorm2d(2, 3, dtype=F64)
    x = torch.randn(8, 2, 2, 2, dtype=F64, requires_grad=True)  # chunks of 3, 3, 2
    w = torch.rand(2, dtype=F64).add(0.5).requires_grad_()
    b = torch.randn(2, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))


def test_eval_is_batch_norm_eval_and_state_dict_is_torchs():
    layer = bnn.GhostBatchNorm2d(3, 4)
    for _ in range(3):
        layer(torch.randn(16, 3, 2, 2) * 3 + 1)
    ref = nn.BatchNorm2d(3)
    ref.load_state_dict(layer.state_dict())
    layer.eval(), ref.eval()
    x = torch.randn(16, 3, 2, 2)
    torch.testing.assert_close(layer(x), ref(x))
    assert "ghost_batch_size=4" in repr(layer)


def test_without_running_statistics_eval_normalizes_per_chunk_too():
    layer = bnn.GhostBatchNorm1d(3, 2, track_running_stats=False, affine=False).eval()
    x = torch.randn(6, 3, dtype=F64)
    expected = torch.cat([torch.nn.functional.batch_norm(c, None, None, training=True)
                          for c in x.split(2)])  # fmt: skip
    torch.testing.assert_close(layer(x), expected)


def test_channels_last_input_gives_channels_last_output():
    layer = bnn.GhostBatchNorm2d(3, 2)
    x = torch.randn(6, 3, 4, 4).contiguous(memory_format=torch.channels_last)
    y = layer(x)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, bnn.GhostBatchNorm2d(3, 2)(x.contiguous()))


def test_ghost_batch_of_one_is_refused_and_a_last_chunk_of_one_value_named():
    with pytest.raises(ValueError, match=r"ghost_batch_size must be an int >= 2, got 1"):
        bnn.GhostBatchNorm1d(3, 1)
    layer = bnn.GhostBatchNorm1d(3, 4)
    with pytest.raises(ValueError, match=r"last ghost batch has 1 row .* drop_last=True"):
        layer(torch.randn(9, 3))
    assert int(layer.num_batches_tracked) == 0
    layer(torch.randn(9, 3, 2))  # a last chunk of one row but two values per channel: fine
