"""bnlab.nn.BatchNormAct*d: the fused act(BN(x)) against torch's BatchNorm followed by the
activation, and its state_dict against BatchNorm*d's, on every backend."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from torch import nn

import bnlab.nn as bnn
from bnlab.functional import batch_norm_act

pytestmark = pytest.mark.usefixtures("each_backend")

ACTS = [("relu", 0.01), ("leaky_relu", 0.2), ("identity", 0.01)]
CASES = [  # fused class, torch class, shape, channels_last
    (bnn.BatchNormAct1d, nn.BatchNorm1d, (16, 5), False),
    (bnn.BatchNormAct1d, nn.BatchNorm1d, (6, 5, 7), False),
    (bnn.BatchNormAct2d, nn.BatchNorm2d, (4, 5, 6, 3), False),
    (bnn.BatchNormAct2d, nn.BatchNorm2d, (4, 5, 6, 3), True),
    (bnn.BatchNormAct3d, nn.BatchNorm3d, (3, 5, 2, 3, 4), True),
]


def _act(y: torch.Tensor, act: str, slope: float) -> torch.Tensor:
    if act == "relu":
        return TF.relu(y)
    if act == "leaky_relu":
        return TF.leaky_relu(y, slope)
    return y


@pytest.mark.parametrize(("act", "slope"), ACTS)
@pytest.mark.parametrize(("fused_cls", "torch_cls", "shape", "channels_last"), CASES)
def test_fused_equals_torch_batchnorm_then_activation(
    fused_cls, torch_cls, shape, channels_last, act, slope
):
    kwargs = dict(momentum=0.2, eps=1e-4, dtype=torch.float64)
    fused = fused_cls(shape[1], act=act, negative_slope=slope, **kwargs)
    ref = torch_cls(shape[1], **kwargs)
    with torch.no_grad():
        for m in (fused, ref):
            m.weight.copy_(torch.linspace(-1.5, 2.0, shape[1]))  # a negative gamma flips signs
            m.bias.copy_(torch.linspace(0.5, -0.5, shape[1]))
    gen = torch.Generator().manual_seed(2)
    for step in range(6):
        training = step != 4
        fused.train(training)
        ref.train(training)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + step
        if channels_last:
            x = x.contiguous(
                memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d
            )
        dy = torch.randn(shape, generator=gen, dtype=torch.float64)
        xf, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        yf, yr = fused(xf), _act(ref(xr), act, slope)
        torch.testing.assert_close(yf, yr)
        gf = torch.autograd.grad(yf, (xf, fused.weight, fused.bias), dy)
        gr = torch.autograd.grad(yr, (xr, ref.weight, ref.bias), dy)
        for mine, native in zip(gf, gr, strict=True):
            torch.testing.assert_close(mine, native)
        for (name, bf), (_, br) in zip(fused.named_buffers(), ref.named_buffers(), strict=True):
            torch.testing.assert_close(bf, br, msg=name)


@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
@pytest.mark.parametrize("training", [True, False])
def test_fused_gradcheck_and_gradgradcheck(act, training):
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(6, 3, 2, 2, generator=gen, dtype=torch.float64) * 2).requires_grad_()
    w = (torch.rand(3, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, generator=gen, dtype=torch.float64).requires_grad_()
    rm, rv = torch.randn(3, dtype=torch.float64), torch.rand(3, dtype=torch.float64) + 0.5

    def f(x, w, b):
        return batch_norm_act(
            x, rm.clone(), rv.clone(), w, b, training, act=act, negative_slope=0.3
        )

    assert torch.autograd.gradcheck(f, (x, w, b))
    assert torch.autograd.gradgradcheck(f, (x, w, b))


@pytest.mark.parametrize(("fused_cls", "plain_cls", "torch_cls", "shape"), [
    (bnn.BatchNormAct1d, bnn.BatchNorm1d, nn.BatchNorm1d, (8, 4)),
    (bnn.BatchNormAct2d, bnn.BatchNorm2d, nn.BatchNorm2d, (4, 4, 3, 3)),
])  # fmt: skip
def test_checkpoint_loads_into_batchnorm_and_back(fused_cls, plain_cls, torch_cls, shape):
    fused = fused_cls(shape[1], act="leaky_relu", negative_slope=0.1)
    for _ in range(3):
        fused(torch.randn(shape) * 2 + 1)
    with torch.no_grad():
        fused.weight.mul_(1.5)
        fused.bias.add_(0.25)
    sd = fused.state_dict()
    for cls in (plain_cls, torch_cls):
        other = cls(shape[1])
        other.load_state_dict(sd)  # strict: same keys, shapes, version
        assert other.state_dict().keys() == sd.keys()
        assert other.state_dict()._metadata[""]["version"] == sd._metadata[""]["version"]
        back = fused_cls(shape[1], act="relu")
        back.load_state_dict(other.state_dict())
        for key, value in sd.items():
            torch.testing.assert_close(back.state_dict()[key], value)
    x = torch.randn(shape)
    plain = plain_cls(shape[1]).eval()
    plain.load_state_dict(sd)
    torch.testing.assert_close(fused.eval()(x), TF.leaky_relu(plain(x), 0.1))


def test_relu_of_minus_infinity_is_zero_as_in_torch():
    bn = bnn.BatchNormAct1d(3).eval()
    x = torch.tensor([[-float("inf"), 1.0, float("nan")], [2.0, -3.0, 0.5]])
    y = bn(x)
    expected = TF.relu(nn.BatchNorm1d(3).eval()(x))
    torch.testing.assert_close(y, expected, equal_nan=True)


def test_unknown_activation_is_a_clear_error():
    with pytest.raises(ValueError, match=r"act must be one of .*'gelu'"):
        bnn.BatchNormAct2d(4, act="gelu")
    with pytest.raises(ValueError, match="unknown act 'tanh'"):
        batch_norm_act(torch.randn(4, 2), None, None, training=True, act="tanh")


def test_repr_and_constructor_follow_batchnorm():
    fused = bnn.BatchNormAct2d(7, momentum=None, act="leaky_relu", negative_slope=0.2)
    plain = bnn.BatchNorm2d(7, momentum=None)
    assert repr(fused).startswith(repr(plain)[:-1].replace("BatchNorm2d", "BatchNormAct2d"))
    assert "act='leaky_relu', negative_slope=0.2" in repr(fused)
    assert isinstance(fused, type(plain).__mro__[1])  # bnlab's _BatchNorm base


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_fused_matches_float32_within_rounding(dtype):
    gen = torch.Generator().manual_seed(3)
    x32 = torch.randn(64, 8, 4, 4, generator=gen)
    bn = bnn.BatchNormAct2d(8)
    y = bn(x32.to(dtype))
    assert y.dtype == dtype
    ref = TF.relu(TF.batch_norm(x32.to(dtype).float(), None, None, training=True))
    tol = 2e-2 if dtype == torch.bfloat16 else 4e-3
    torch.testing.assert_close(y.float(), ref, atol=tol, rtol=tol)


def test_fx_traces_the_fused_layer_like_a_batchnorm():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), bnn.BatchNormAct2d(4, act="leaky_relu"))
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(5, 3, 6, 6)
    expected = model(x)  # counts a batch and moves the running statistics, as the trace will
    torch.testing.assert_close(traced(x), expected, rtol=1e-4, atol=1e-5)
    assert int(model[1].num_batches_tracked) == 2
    assert isinstance(model[1], nn.BatchNorm2d)
