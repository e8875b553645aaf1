"""bnlab.nn.VirtualBatchNorm*: the reference rows with their own statistics, every other row
with the reference's plus its own (Salimans et al. 2016); rows independent of each other."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import bnlab.nn as bnn

pytestmark = pytest.mark.usefixtures("each_backend")

F64 = torch.float64

CASES = [  # class, shape, reference size
    (bnn.VirtualBatchNorm1d, (7, 3), 4),
    (bnn.VirtualBatchNorm1d, (6, 3, 5), 2),
    (bnn.VirtualBatchNorm2d, (5, 2, 3, 2), 3),
    (bnn.VirtualBatchNorm2d, (3, 2, 2, 2), 3),  # the reference alone
]


def virtual_oracle(x, gamma, beta, mu, var, eps, ref_size, momentum):
    """NumPy: each output row from the statistics of the set it is normalized with, computed
    directly over that set's values (no merging formula)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)

    def normalize(rows, group):
        axes = (0, *range(2, group.ndim))
        m, v = group.mean(axis=axes), group.var(axis=axes)  # biased
        return (rows - m.reshape(shape)) / np.sqrt(v.reshape(shape) + eps)

    ref = x[:ref_size]
    out = [normalize(ref, ref)]
    for i in range(ref_size, x.shape[0]):
        out.append(normalize(x[i : i + 1], np.concatenate([ref, x[i : i + 1]])))
    y = np.concatenate(out) * gamma.reshape(shape) + beta.reshape(shape)
    axes = (0, *range(2, x.ndim))
    count = ref.size // ref.shape[1]
    new_mu = (1 - momentum) * mu + momentum * ref.mean(axis=axes)
    new_var = (1 - momentum) * var + momentum * ref.var(axis=axes) * count / (count - 1)
    return y, new_mu, new_var


@pytest.mark.parametrize(("cls", "shape", "ref"), CASES)
def test_training_steps_match_the_formula_in_float64(cls, shape, ref):
    layer = cls(shape[1], ref, eps=1e-3, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0, generator=gen)
        layer.bias.normal_(generator=gen)
    for step in range(3):
        x = torch.randn(shape, generator=gen, dtype=F64) * (1 + step) + step
        x[ref:] = x[ref:] * 3 - 2  # other rows far from the reference: their own weight shows
        before = [t.numpy().copy() for t in (layer.running_mean, layer.running_var)]
        gamma, beta = layer.weight.detach().numpy(), layer.bias.detach().numpy()
        y, new_mu, new_var = virtual_oracle(x.numpy(), gamma, beta, *before, 1e-3, ref, 0.1)
        np.testing.assert_allclose(layer(x).detach().numpy(), y, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.running_mean.numpy(), new_mu, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.running_var.numpy(), new_var, rtol=1e-12)


@pytest.mark.parametrize(("cls", "shape", "ref"), CASES[:3])
def test_a_row_depends_only_on_itself_and_the_reference(cls, shape, ref):
    layer = cls(shape[1], ref, dtype=F64)
    x = torch.randn(shape, dtype=F64)
    y = layer(x)
    for i in range(ref, shape[0]):
        x2 = x.clone()
        x2[i] = x2[i] * 5 + 7  # perturb one non-reference row
        y2 = layer(x2)
        changed = (y2 - y).flatten(1).abs().amax(1) > 1e-12
        assert changed.tolist() == [j == i for j in range(shape[0])]
    x3 = x.clone()
    x3[0] += 1.0  # a reference row moves every row's statistics
    assert ((layer(x3) - y).flatten(1).abs().amax(1) > 1e-6).all()
    # a row's output is the same in any company: alone with the reference, or in the batch
    alone = layer(torch.cat([x[:ref], x[-1:]]))
    torch.testing.assert_close(alone[-1], y[-1])


def test_gradients_flow_through_the_reference_statistics_gradcheck_float64():
    layer = bnn.VirtualBatchNorm1d(2, 3, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64, requires_grad=True)
    w = torch.rand(2, dtype=F64).add(0.5).requires_grad_()
    b = torch.randn(2, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))
    plain = bnn.VirtualBatchNorm1d(2, 3, affine=False, dtype=F64)
    assert torch.autograd.gradcheck(plain, (torch.randn(6, 2, dtype=F64, requires_grad=True),))
    # a non-reference row's loss reaches the reference rows
    y = layer(x)
    (g,) = torch.autograd.grad(y[-1].sum() + (y[-1] ** 2).sum(), x)
    assert g[:3].abs().sum() > 0 and g[3].abs().sum() == 0


def test_eval_uses_the_running_reference_statistics_row_by_row():
    layer = bnn.VirtualBatchNorm2d(3, 4)
    for _ in range(3):
        layer(torch.randn(6, 3, 2, 2) * 2 + 1)
    ref = nn.BatchNorm2d(3)
    ref.load_state_dict(layer.state_dict())
    assert list(layer.state_dict()) == list(ref.state_dict())
    layer.eval(), ref.eval()
    x = torch.randn(5, 3, 2, 2)
    torch.testing.assert_close(layer(x), ref(x))
    torch.testing.assert_close(layer(x[:1]), layer(x)[:1])  # a batch of one is fine in eval
    assert "reference_size=4" in repr(layer)


def test_without_running_statistics_eval_keeps_the_training_rule():
    layer = bnn.VirtualBatchNorm1d(3, 4, track_running_stats=False)
    x = torch.randn(7, 3)
    torch.testing.assert_close(layer.eval()(x), layer.train()(x))


def test_bad_settings_and_inputs_name_the_fix():
    with pytest.raises(ValueError, match=r"reference_size must be an int >= 1 .*, got 0"):
        bnn.VirtualBatchNorm1d(3, 0)
    layer = bnn.VirtualBatchNorm1d(3, 4)
    with pytest.raises(ValueError, match=r"first 4 rows must be the reference.*torch.cat"):
        layer(torch.randn(3, 3))
    with pytest.raises(ValueError, match=r"2 or more values per channel"):
        bnn.VirtualBatchNorm1d(3, 1)(torch.randn(4, 3))
    bnn.VirtualBatchNorm1d(3, 1)(torch.randn(4, 3, 2))  # one reference row of 2 values: fine
    assert int(layer.num_batches_tracked) == 0
