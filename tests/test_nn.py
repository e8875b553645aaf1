"""bnlab.nn.BatchNorm* against torch.nn.BatchNorm*: every flag, many steps, train and eval."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import bnlab.nn as bnn
from bnlab import reference

# Every claim holds for the compiled kernels and for the plain-torch path.
pytestmark = pytest.mark.usefixtures("each_backend")

PAIRS = [
    (bnn.BatchNorm1d, nn.BatchNorm1d, (8, 5)),
    (bnn.BatchNorm1d, nn.BatchNorm1d, (8, 5, 7)),
    (bnn.BatchNorm2d, nn.BatchNorm2d, (4, 5, 6, 3)),
    (bnn.BatchNorm3d, nn.BatchNorm3d, (3, 5, 2, 3, 4)),
]
FLAGS = [  # momentum, affine, track_running_stats, bias (bias exists only with affine)
    f
    for f in itertools.product([0.1, None], [True, False], [True, False], [True, False])
    if f[1] or not f[3]
]


@pytest.mark.parametrize(("mine_cls", "torch_cls", "shape"), PAIRS)
@pytest.mark.parametrize(("momentum", "affine", "track", "bias"), FLAGS)
def test_parity_with_torch_over_many_steps(
    mine_cls, torch_cls, shape, momentum, affine, track, bias
):
    kwargs = dict(
        momentum=momentum, affine=affine, track_running_stats=track, eps=1e-4, dtype=torch.float64
    )
    if affine and not bias:
        kwargs["bias"] = False
    mine, ref = mine_cls(shape[1], **kwargs), torch_cls(shape[1], **kwargs)
    gen = torch.Generator().manual_seed(1)
    opt_m = torch.optim.SGD(mine.parameters(), lr=0.1) if affine else None
    opt_r = torch.optim.SGD(ref.parameters(), lr=0.1) if affine else None
    for step in range(12):
        training = step % 4 != 3  # mostly train, every 4th step eval
        mine.train(training)
        ref.train(training)
        x = torch.randn(shape, generator=gen, dtype=torch.float64) * (1 + step) + step
        dy = torch.randn(shape, generator=gen, dtype=torch.float64)
        xm, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        ym, yr = mine(xm), ref(xr)
        torch.testing.assert_close(ym, yr)
        (ym * dy).sum().backward()
        (yr * dy).sum().backward()
        torch.testing.assert_close(xm.grad, xr.grad)
        for (name, pm), (_, pr) in zip(
            mine.named_parameters(), ref.named_parameters(), strict=True
        ):
            torch.testing.assert_close(pm.grad, pr.grad, msg=name)
        if opt_m and opt_r:
            opt_m.step()
            opt_r.step()
            opt_m.zero_grad()
            opt_r.zero_grad()
        for (name, bm), (_, br) in zip(mine.named_buffers(), ref.named_buffers(), strict=True):
            torch.testing.assert_close(bm, br, msg=name)
    assert mine.state_dict().keys() == ref.state_dict().keys()


@pytest.mark.parametrize(("mine_cls", "torch_cls", "shape"), PAIRS)
def test_state_dict_loads_into_torch_and_back(mine_cls, torch_cls, shape):
    mine = mine_cls(shape[1])
    for _ in range(3):
        mine(torch.randn(shape) * 2 + 1)
    with torch.no_grad():
        mine.weight.mul_(1.5)
        mine.bias.add_(0.25)
    ref = torch_cls(shape[1])
    ref.load_state_dict(mine.state_dict())  # strict
    back = mine_cls(shape[1])
    back.load_state_dict(ref.state_dict())
    for key, value in mine.state_dict().items():
        torch.testing.assert_close(back.state_dict()[key], value)
        torch.testing.assert_close(ref.state_dict()[key], value)
    assert int(back.num_batches_tracked) == 3
    assert mine.state_dict()._metadata[""]["version"] == ref.state_dict()._metadata[""]["version"]


def test_old_state_dict_without_num_batches_tracked_loads_like_torch():
    sd = nn.BatchNorm1d(4).state_dict()
    del sd["num_batches_tracked"]
    sd._metadata[""]["version"] = 1
    mine = bnn.BatchNorm1d(4)
    mine.load_state_dict(sd)
    assert int(mine.num_batches_tracked) == 0


def test_constructor_signature_matches_torch():
    import inspect

    for mine, ref in [
        (bnn.BatchNorm1d, nn.BatchNorm1d),
        (bnn.BatchNorm2d, nn.BatchNorm2d),
        (bnn.BatchNorm3d, nn.BatchNorm3d),
    ]:
        a = inspect.signature(mine.__init__).parameters
        b = inspect.signature(ref.__init__).parameters
        assert list(a) == list(b)
        assert [p.default for p in a.values()] == [p.default for p in b.values()]
        assert (
            repr(mine(7, momentum=None)).split("(", 1)[1]
            == repr(ref(7, momentum=None)).split("(", 1)[1]
        )


def test_running_var_is_unbiased():
    x = torch.randn(10, 3, dtype=torch.float64)
    bn = bnn.BatchNorm1d(3, momentum=1.0, dtype=torch.float64)
    bn(x)
    torch.testing.assert_close(bn.running_var, x.var(0, unbiased=True))
    torch.testing.assert_close(bn.running_mean, x.mean(0))


def test_normalization_uses_biased_variance():
    x = torch.randn(10, 3, dtype=torch.float64)
    y = bnn.BatchNorm1d(3, affine=False, dtype=torch.float64, eps=0.0 + 1e-12)(x)
    torch.testing.assert_close(y, (x - x.mean(0)) / x.var(0, unbiased=False).sqrt())


@pytest.mark.parametrize("bn", [bnn.BatchNorm2d, nn.BatchNorm2d], ids=["bnlab", "torch"])
def test_biased_variance_normalizes_and_unbiased_goes_into_running_var(bn) -> None:
    """Against the NumPy reference, with m = N*H*W = 24 values per channel (not N = 2): the
    batch is normalized with var * 1, the running estimate gets var * 24/23."""
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64) * 3 + 1
    layer = bn(3, momentum=0.25, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.normal_()
    y = layer(x)
    expected, _ = reference.batch_norm_forward(
        x.numpy(), layer.weight.detach().numpy(), layer.bias.detach().numpy(), eps=layer.eps
    )
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-12, atol=1e-12)
    new_mean, new_var = reference.update_running_stats(np.zeros(3), np.ones(3), x.numpy(), 0.25)
    np.testing.assert_allclose(layer.running_var.numpy(), new_var, rtol=1e-12)
    np.testing.assert_allclose(layer.running_mean.numpy(), new_mean, rtol=1e-12, atol=1e-15)
    _, biased, m = reference.batch_stats(x.numpy())
    assert m == 24
    np.testing.assert_allclose(layer.running_var.numpy(), 0.75 + 0.25 * biased * 24 / 23)


def test_running_stats_update_is_lerp_with_momentum():
    bn = bnn.BatchNorm1d(3, momentum=0.3, dtype=torch.float64)
    old_mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    old_var = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    bn.running_mean.copy_(old_mean)
    bn.running_var.copy_(old_var)
    x = torch.randn(7, 3, dtype=torch.float64)
    bn(x)
    new_mean, new_var = reference.update_running_stats(
        old_mean.numpy(), old_var.numpy(), x.numpy(), 0.3
    )
    torch.testing.assert_close(bn.running_mean.numpy(), new_mean)
    torch.testing.assert_close(bn.running_var.numpy(), new_var)
    torch.testing.assert_close(bn.running_mean, 0.7 * old_mean + 0.3 * x.mean(0))


def test_momentum_none_is_the_plain_average_of_batch_statistics():
    bn = bnn.BatchNorm1d(4, momentum=None, dtype=torch.float64)
    batches = [torch.randn(6, 4, dtype=torch.float64) * (k + 1) + k for k in range(5)]
    for x in batches:
        bn(x)
    torch.testing.assert_close(bn.running_mean, torch.stack([b.mean(0) for b in batches]).mean(0))
    torch.testing.assert_close(bn.running_var, torch.stack([b.var(0) for b in batches]).mean(0))
    assert int(bn.num_batches_tracked) == 5


def test_untracked_module_uses_batch_statistics_in_eval():
    bn = bnn.BatchNorm1d(3, track_running_stats=False).eval()
    assert bn.running_mean is None and bn.num_batches_tracked is None
    x = torch.randn(20, 3) * 4 + 2
    torch.testing.assert_close(bn(x), bnn.BatchNorm1d(3).train()(x))


@pytest.mark.parametrize(
    ("cls", "bad_shape", "match"),
    [
        (bnn.BatchNorm1d, (4, 3, 2, 2), r"BatchNorm1d\(3\) expected 2D or 3D input \(got 4D input"),
        (bnn.BatchNorm2d, (4, 3), r"BatchNorm2d\(3\) expected 4D input \(got 2D input of shape"),
        (bnn.BatchNorm3d, (4, 3, 2, 2), r"BatchNorm3d\(3\) expected 5D input"),
        (bnn.BatchNorm1d, (4, 5), r"BatchNorm1d\(3\) got input of shape \(4, 5\) with 5 channels"),
        (bnn.BatchNorm2d, (4, 5, 2, 2), r"num_features=5"),
        (bnn.BatchNorm1d, (1, 3), r"more than 1 value per channel.*shape \(1, 3\)"),
        (bnn.BatchNorm2d, (1, 3, 1, 1), r"more than 1 value per channel.*call \.eval\(\)"),
    ],
)
def test_bad_input_is_a_value_error_naming_module_and_shape(cls, bad_shape, match):
    bn = cls(3)
    with pytest.raises(ValueError, match=match):
        bn(torch.randn(bad_shape))
    assert int(bn.num_batches_tracked) == 0  # nothing half-updated


def test_batch_of_one_is_fine_in_eval():
    bn = bnn.BatchNorm1d(3).eval()
    assert bn(torch.randn(1, 3)).shape == (1, 3)


def _model(bn1, bn2):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        bn2(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 5),
        bn1(5),
        nn.Sequential(nn.Linear(5, 2), bn1(2)),
    )


def test_from_torch_and_to_torch_keep_state_mode_and_outputs():
    torch.manual_seed(0)
    model = _model(nn.BatchNorm1d, nn.BatchNorm2d)
    for _ in range(3):
        model(torch.randn(8, 3, 6, 6))
    model[5].eval()
    expected = model(torch.randn(8, 3, 6, 6))  # advances running stats once more
    params_before = [id(p) for p in model.parameters()]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(8, 3, 6, 6)
    out_torch = model.eval()(x)
    model.train()
    model[5].eval()

    converted = bnn.from_torch(model)
    assert converted is model
    kinds = [type(m) for m in model.modules() if "BatchNorm" in type(m).__name__]
    assert kinds == [bnn.BatchNorm2d, bnn.BatchNorm1d, bnn.BatchNorm1d]
    assert [id(p) for p in model.parameters()] == params_before  # optimizers stay valid
    assert model[5].training is False and model[1].training is True
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, state[k])
    torch.testing.assert_close(model.eval()(x), out_torch)

    back = bnn.to_torch(model)
    assert all(
        type(m).__module__.startswith("torch.nn")
        for m in back.modules()
        if "BatchNorm" in type(m).__name__
    )
    torch.testing.assert_close(back.eval()(x), out_torch)
    assert expected.shape == (8, 2)


def test_from_torch_on_a_bare_layer_returns_the_new_layer():
    layer = nn.BatchNorm1d(3, momentum=None, affine=False).eval()
    new = bnn.from_torch(layer)
    assert isinstance(new, bnn.BatchNorm1d) and not new.training
    assert new.momentum is None and new.weight is None


# ---- properties (hypothesis) -------------------------------------------------------------

_batch = st.integers(min_value=2, max_value=16)
_chan = st.integers(min_value=1, max_value=6)
_scale = st.floats(min_value=0.1, max_value=100.0)
_shift = st.floats(min_value=-100.0, max_value=100.0)


@settings(max_examples=40, deadline=None)
@given(n=_batch, c=_chan, scale=_scale, shift=_shift, seed=st.integers(0, 2**16))
def test_train_output_has_zero_mean_unit_variance_per_channel(n, c, scale, shift, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, 3, generator=gen, dtype=torch.float64) * scale + shift
    y = bnn.BatchNorm1d(c, eps=1e-12, dtype=torch.float64)(x)
    np.testing.assert_allclose(y.mean((0, 2)).detach(), 0, atol=1e-8)
    np.testing.assert_allclose(y.var((0, 2), unbiased=False).detach(), 1, atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(n=_batch, c=_chan, scale=_scale, shift=_shift, seed=st.integers(0, 2**16))
def test_gamma_beta_can_undo_normalization(n, c, scale, shift, seed):
    # The blog's claim 4: gamma = sqrt(batch var + eps), beta = batch mean gives back x.
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=gen, dtype=torch.float64) * scale + shift
    bn = bnn.BatchNorm1d(c, dtype=torch.float64)
    with torch.no_grad():
        bn.weight.copy_(x.var(0, unbiased=False).add(bn.eps).sqrt())
        bn.bias.copy_(x.mean(0))
    torch.testing.assert_close(bn(x), x, rtol=1e-9, atol=1e-9 * (abs(shift) + scale))


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 16), c=_chan, seed=st.integers(0, 2**16))
def test_eval_output_ignores_the_rest_of_the_batch_train_output_does_not(n, c, seed):
    gen = torch.Generator().manual_seed(seed)
    bn = bnn.BatchNorm1d(c, dtype=torch.float64)
    bn(torch.randn(32, c, generator=gen, dtype=torch.float64))  # some running statistics
    x = torch.randn(n, c, generator=gen, dtype=torch.float64)
    others = torch.randn(n - 1, c, generator=gen, dtype=torch.float64) * 5 + 3
    mixed = torch.cat([x[:1], others])
    bn.eval()
    torch.testing.assert_close(bn(x)[0], bn(mixed)[0])
    bn.train()
    assert not torch.allclose(bn(x)[0], bn(mixed)[0])


# ---- corners: the same input through torch's module ---------------------------------------------

_TORCH_CLS = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
_BNLAB_CLS = {2: bnn.BatchNorm1d, 3: bnn.BatchNorm1d, 4: bnn.BatchNorm2d, 5: bnn.BatchNorm3d}


def _twins(x: torch.Tensor, training: bool, **kwargs) -> tuple[nn.Module, nn.Module]:
    """A bnlab layer and a torch layer for x, with the same non-trivial state."""
    c = x.shape[1]
    mine, ref = _BNLAB_CLS[x.dim()](c, **kwargs), _TORCH_CLS[x.dim()](c, **kwargs)
    for m in (mine, ref):
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            dtype = m.weight.dtype
            m.weight.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
            m.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
            m.running_mean.copy_(torch.randn(c, generator=gen, dtype=dtype))
            m.running_var.copy_(torch.rand(c, generator=gen, dtype=dtype) + 0.5)
        m.train(training)
    return mine, ref


def _run_both(x: torch.Tensor, training: bool, **kwargs):
    """Forward and backward of the same input through both layers: (y, dx, params' grads, layer)
    for bnlab's, then torch's."""
    results = []
    for layer in _twins(x, training, **kwargs):
        xi = x.detach().requires_grad_()  # the very layout under test
        y = layer(xi)
        y.backward(torch.ones_like(y))
        results.append((y, xi.grad, [p.grad for p in layer.parameters()], layer))
        xi.grad = None
    return results


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    "shape", [(0, 3), (0, 3, 5), (0, 3, 4, 4), (0, 3, 2, 2, 2), (2, 3, 0), (4, 3, 0, 5)]
)
def test_empty_batch_behaves_like_torch(shape, training):
    x = torch.randn(shape)
    (y, dx, grads, mine), (y_ref, dx_ref, grads_ref, ref) = _run_both(x, training)
    assert y.shape == y_ref.shape == shape and y.dtype == y_ref.dtype
    assert y.stride() == y_ref.stride()
    assert y.requires_grad and dx.shape == dx_ref.shape == shape
    for g, g_ref in zip(grads, grads_ref, strict=True):  # zero gradients, not None (as torch)
        torch.testing.assert_close(g, g_ref)
        assert not g.any()
    for (name, b), (_, b_ref) in zip(mine.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, msg=name)  # stats untouched, batch counted in train
    assert int(mine.num_batches_tracked) == int(training)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(
        memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d
    )


LAYOUTS = {  # inputs that are neither contiguous nor channels_last, as a pipeline makes them
    "transposed-2d": lambda: torch.randn(5, 8).t(),
    "sliced-2d": lambda: torch.randn(8, 10)[:, ::2],
    "transposed-3d": lambda: torch.randn(8, 6, 5).transpose(1, 2),
    "sliced-channels-4d": lambda: torch.randn(4, 10, 5, 5)[:, ::2],
    "sliced-width-4d": lambda: torch.randn(4, 5, 6, 9)[..., :6],
    "transposed-hw-4d": lambda: torch.randn(4, 5, 6, 7).transpose(2, 3),
    "permuted-4d": lambda: torch.randn(4, 6, 5, 5).permute(0, 3, 2, 1),
    "sliced-channels-last-4d": lambda: _channels_last(torch.randn(4, 5, 6, 6))[:, :, 1:],
    "expanded-4d": lambda: torch.randn(4, 5, 1, 3).expand(4, 5, 2, 3),
    "sliced-channels-last-5d": lambda: _channels_last(torch.randn(3, 5, 3, 4, 4))[..., 1:],
    "nhwc-permuted-4d": lambda: torch.randn(4, 6, 7, 5).permute(0, 3, 1, 2)[:, :, :, 1:],
}


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("layout", LAYOUTS)
def test_any_memory_layout_gives_torchs_output_layout(layout, training):
    torch.manual_seed(0)
    x = LAYOUTS[layout]()
    assert not x.is_contiguous()
    (y, dx, grads, mine), (y_ref, dx_ref, grads_ref, ref) = _run_both(x, training)
    torch.testing.assert_close(y, y_ref)
    assert y.stride() == y_ref.stride()  # so view() accepts exactly what it accepts on torch's
    for shape in [(-1,), (y.shape[0], -1)]:
        try:
            y_ref.view(shape)
        except RuntimeError:
            with pytest.raises(RuntimeError):
                y.view(shape)
        else:
            y.view(shape)
    torch.testing.assert_close(dx, dx_ref, rtol=1e-4, atol=1e-5)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        torch.testing.assert_close(g, g_ref, rtol=1e-4, atol=1e-4)
    for (name, b), (_, b_ref) in zip(mine.named_buffers(), ref.named_buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, msg=name)


_F16, _BF16, _F32, _F64 = torch.float16, torch.bfloat16, torch.float32, torch.float64


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(
    ("x_dtype", "layer_dtype"),
    [(_F64, _F32), (_F32, _F64), (_F32, _F16), (_F16, _BF16), (_BF16, _F64), (_F16, _F64)],
)
def test_input_dtype_other_than_the_layers_raises_like_torch_naming_the_module(
    x_dtype, layer_dtype, training
):
    x = torch.randn(6, 3, 4).to(x_dtype)
    mine, ref = _twins(torch.empty(6, 3, 4), training, dtype=layer_dtype)
    with pytest.raises(RuntimeError):
        ref(x)
    with pytest.raises(RuntimeError, match=r"BatchNorm1d\(3\): input has dtype") as err:
        mine(x)
    assert str(layer_dtype) in str(err.value) and "module.to(" in str(err.value)
    assert int(mine.num_batches_tracked) == 0  # nothing half-updated


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("x_dtype", [_F16, _BF16])
def test_low_precision_input_with_float32_layer_works_like_torch(x_dtype, training):
    x = (torch.randn(16, 4, 5) * 3 + 1).to(x_dtype)
    mine, ref = _twins(torch.empty(16, 4, 5), training)
    y, y_ref = mine(x), ref(x)
    assert y.dtype == y_ref.dtype == x_dtype
    torch.testing.assert_close(y, y_ref, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(mine.running_var, ref.running_var)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("x_dtype", [torch.int64, torch.int32, torch.uint8, torch.bool])
def test_integer_input_is_a_clear_error_naming_the_module(x_dtype, training):
    x = torch.randint(0, 2, (6, 3, 2, 2)).to(x_dtype)
    mine, ref = _twins(torch.empty(6, 3, 2, 2), training)
    with pytest.raises(NotImplementedError):
        ref(x)
    with pytest.raises(NotImplementedError, match=r"BatchNorm2d\(3\): got input of dtype") as err:
        mine(x)
    assert "floating-point" in str(err.value) and "x.float()" in str(err.value)
    assert int(mine.num_batches_tracked) == 0
