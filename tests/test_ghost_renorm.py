"""Ghost Batch Renorm (bnlab.nn.GhostBatchRenorm1d/2d/3d): batch renorm per ghost batch, against
a float64 per-chunk formula; gradients, state_dict, and the limits where it is another layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.test_renorm import renorm_oracle
from torch import nn

import bnlab.nn as bnn

pytestmark = pytest.mark.usefixtures("each_backend")

F64 = torch.float64
SHAPES = [(bnn.GhostBatchRenorm1d, (14, 4)), (bnn.GhostBatchRenorm2d, (14, 4, 3, 3)),
          (bnn.GhostBatchRenorm3d, (8, 4, 2, 2, 3))]  # fmt: skip


def ghost_renorm_oracle(x, ghost, gamma, beta, mu, var, eps, r_max, d_max, momentum):
    """NumPy: (y, new running mean, new running var): each chunk of ``ghost`` rows (the last
    one smaller) batch-renormalized against the same running statistics; the running update
    with the chunks' means and unbiased variances averaged, weighted by rows."""
    n = x.shape[0]
    ys, means, variances, rows = [], [], [], []
    for start in range(0, n, ghost):
        chunk = x[start : start + ghost]
        y, _, _, _, _ = renorm_oracle(chunk, gamma, beta, mu, var, eps, r_max, d_max, momentum)
        axes = (0, *range(2, x.ndim))
        ys.append(y)
        means.append(chunk.mean(axis=axes))
        variances.append(chunk.var(axis=axes, ddof=1))
        rows.append(chunk.shape[0])
    w = np.array(rows) / n
    new_mu = (1 - momentum) * mu + momentum * (w @ np.array(means))
    new_var = (1 - momentum) * var + momentum * (w @ np.array(variances))
    return np.concatenate(ys), new_mu, new_var


@pytest.mark.parametrize(("cls", "shape"), SHAPES)
@pytest.mark.parametrize("ghost", [4, 3])  # 3: a smaller last chunk
def test_training_steps_match_the_per_chunk_formula_in_float64(cls, shape, ghost):
    layer = cls(shape[1], ghost, r_max=1.5, d_max=0.5, eps=1e-3, dtype=F64)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0, generator=gen)
        layer.bias.normal_(generator=gen)
    for step in range(4):
        x = torch.randn(shape, generator=gen, dtype=F64) * (3 - step * 0.5) + 2.0
        before = [t.detach().numpy().copy() for t in (layer.running_mean, layer.running_var)]
        gamma, beta = layer.weight.detach().numpy(), layer.bias.detach().numpy()
        y, new_mu, new_var = ghost_renorm_oracle(
            x.numpy(), ghost, gamma, beta, *before, 1e-3, 1.5, 0.5, 0.1
        )
        out = layer(x)
        np.testing.assert_allclose(out.detach().numpy(), y, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(layer.running_mean.numpy(), new_mu, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(layer.running_var.numpy(), new_var, rtol=1e-12)
    assert int(layer.num_batches_tracked) == 4


def test_gradcheck_in_float64():
    # as test_renorm's gradcheck: running statistics far from the chunks' put r and d in their
    # clips (locally constant), momentum 0 keeps them fixed across gradcheck's evaluations
    layer = bnn.GhostBatchRenorm2d(3, 2, r_max=1.3, d_max=0.2, momentum=0.0, dtype=F64)
    with torch.no_grad():
        layer.running_mean.fill_(5.0)
        layer.running_var.fill_(100.0)
    x = torch.randn(6, 3, 2, 2, dtype=F64, requires_grad=True)
    w = torch.rand(3, dtype=F64).add(0.5).requires_grad_()
    b = torch.randn(3, dtype=F64, requires_grad=True)

    def f(x, w, b):
        return torch.func.functional_call(layer, {"weight": w, "bias": b}, (x,))

    assert torch.autograd.gradcheck(f, (x, w, b))


def test_limits_1_and_0_are_ghost_bn_and_a_whole_batch_ghost_is_batch_renorm():
    x = torch.randn(12, 5, 3, 3, dtype=F64) * 2 + 1
    plain = bnn.GhostBatchRenorm2d(5, 4, r_max=1.0, d_max=0.0, dtype=F64)
    ghost = bnn.GhostBatchNorm2d(5, 4, dtype=F64)
    torch.testing.assert_close(plain(x), ghost(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(plain.running_var, ghost.running_var, rtol=1e-12, atol=1e-14)
    whole = bnn.GhostBatchRenorm2d(5, 12, r_max=1.5, d_max=0.5, dtype=F64)
    renorm = bnn.BatchRenorm2d(5, r_max=1.5, d_max=0.5, dtype=F64)
    torch.testing.assert_close(whole(x), renorm(x), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole.running_var, renorm.running_var, rtol=1e-12, atol=1e-14)


def test_state_dict_is_batch_norms_and_eval_is_batch_norm_eval():
    layer = bnn.GhostBatchRenorm2d(4, 2)
    ref = nn.BatchNorm2d(4)
    assert layer.state_dict().keys() == ref.state_dict().keys()
    layer(torch.randn(8, 4, 3, 3))
    ref.load_state_dict(layer.state_dict())
    x = torch.randn(8, 4, 3, 3)
    torch.testing.assert_close(layer.eval()(x), ref.eval()(x))
    assert "ghost_batch_size=2" in repr(layer) and "r_max=3.0" in repr(layer)


def test_bad_ghost_size_names_the_fix():
    with pytest.raises(ValueError, match="ghost_batch_size must be an int >= 2"):
        bnn.GhostBatchRenorm2d(4, 1)
    with pytest.raises(ValueError, match="track_running_stats=False"):
        bnn.GhostBatchRenorm2d(4, 2, track_running_stats=False)


def test_doctor_reads_its_ghost_batches():
    from bnlab.doctor import check

    model = nn.Sequential(nn.Linear(3, 3, bias=False), bnn.GhostBatchRenorm1d(3, 4))
    assert "batch-of-one" in {f.code for f in check(model, torch.randn(5, 3))}  # last chunk: 1
    assert "batch-of-one" not in {f.code for f in check(model, torch.randn(6, 3))}
