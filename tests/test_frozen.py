"""Frozen batch norm (bnlab.nn.FrozenBatchNorm*d, freeze, unfreeze). Oracles: the NumPy
reference's evaluation mode, torchvision's FrozenBatchNorm2d forward written out (torchvision is
not a dependency), and the eval-mode original layer."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest
import torch
from torch import Tensor, nn

import bnlab.nn as bnn
from bnlab import doctor, reference
from bnlab.nn.frozen import _FrozenBatchNorm

TORCHVISION_KEYS = ["weight", "bias", "running_mean", "running_var"]


def _torchvision_checkpoint(c: int, with_count: bool = False) -> dict[str, Tensor]:
    """A state_dict as torchvision's FrozenBatchNorm2d (or a BatchNorm2d, with_count) saves."""
    gen = torch.Generator().manual_seed(0)
    sd = {
        "weight": torch.rand(c, generator=gen) + 0.5,
        "bias": torch.randn(c, generator=gen),
        "running_mean": torch.randn(c, generator=gen),
        "running_var": torch.rand(c, generator=gen) + 0.5,
    }
    if with_count:
        sd["num_batches_tracked"] = torch.tensor(100)
    return sd


def _torchvision_forward(sd: dict[str, Tensor], x: Tensor, eps: float = 1e-5) -> Tensor:
    """torchvision.ops.FrozenBatchNorm2d.forward, written out."""
    w, b = sd["weight"].reshape(1, -1, 1, 1), sd["bias"].reshape(1, -1, 1, 1)
    rv, rm = sd["running_var"].reshape(1, -1, 1, 1), sd["running_mean"].reshape(1, -1, 1, 1)
    scale = w * (rv + eps).rsqrt()
    return x * scale + (b - rm * scale)


def _trained(model: nn.Module, shape: tuple[int, ...], steps: int = 3) -> nn.Module:
    """Give every BN layer non-trivial statistics and affine parameters."""
    gen = torch.Generator().manual_seed(1)
    model.train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
        for _ in range(steps):
            model(torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + 1)
    return model


def _net() -> nn.Sequential:
    """bnlab's BN layers of each kind, and torch's, between convolutions."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        bnn.BatchNorm2d(4),
        nn.Conv2d(4, 4, 1),
        bnn.BatchNormAct2d(4, act="leaky_relu", negative_slope=0.2),
        bnn.BatchNorm2d(4, affine=False, momentum=None),
        nn.Flatten(2),
        bnn.BatchNorm1d(4),
    ).double()


@pytest.mark.parametrize("trainable_affine", [False, True])
@pytest.mark.parametrize("with_count", [False, True])
def test_torchvision_state_dict_loads_and_gives_torchvisions_output(
    trainable_affine: bool, with_count: bool
) -> None:
    sd = _torchvision_checkpoint(5, with_count)
    layer = bnn.FrozenBatchNorm2d(5, trainable_affine=trainable_affine)
    layer.load_state_dict(sd)  # strict: num_batches_tracked is dropped, as torchvision does
    assert list(layer.state_dict()) == TORCHVISION_KEYS
    affine = {"weight", "bias"}
    assert {n for n, _ in layer.named_parameters()} == (affine if trainable_affine else set())
    x = torch.randn(2, 5, 3, 3)
    y = layer(x)
    torch.testing.assert_close(y, _torchvision_forward(sd, x))
    expected = reference.batch_norm_inference(
        x.numpy(), *(sd[k].numpy() for k in ("running_mean", "running_var", "weight", "bias"))
    )
    np.testing.assert_allclose(y.detach().numpy(), expected, rtol=1e-5, atol=1e-5)
    assert repr(bnn.FrozenBatchNorm2d(5, eps=0.0)) == "FrozenBatchNorm2d(5, eps=0.0)"  # tv's


def test_same_output_in_train_and_eval_mode_and_no_state_change() -> None:
    layer = bnn.FrozenBatchNorm1d(3)
    layer.load_state_dict(_torchvision_checkpoint(3))
    before = {k: v.clone() for k, v in layer.state_dict().items()}
    x = torch.randn(4, 3, 6)
    y_train = layer.train()(x)
    y_eval = layer.eval()(x)
    assert torch.equal(y_train, y_eval)
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert torch.equal(layer.train()(x[:1, :, :1]), y_eval[:1, :, :1])  # one value: fine
    with pytest.raises(ValueError, match=r"FrozenBatchNorm1d\(3\) expected 2D or 3D input"):
        layer(torch.randn(2, 3, 4, 4))


def test_freeze_keeps_every_output_exactly_and_train_cannot_unfreeze() -> None:
    model = _trained(_net(), (6, 3, 6, 6))
    x = torch.randn(5, 3, 6, 6, dtype=torch.float64)
    expected = model.eval()(x)
    buffers = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    bnn.freeze(model)
    assert [type(m).__name__ for m in model if isinstance(m, bnn.FROZEN_BATCH_NORMS)] == [
        "FrozenBatchNorm2d",
        "FrozenBatchNorm2d",
        "FrozenBatchNorm2d",
        "FrozenBatchNorm1d",
    ]
    assert model[3].act == "leaky_relu" and model[3].negative_slope == 0.2
    assert torch.equal(model(x), expected)  # bit for bit: the same eval-mode forward step
    model.train()  # a parent's .train()
    assert torch.equal(model(x), expected)
    for k, v in model.state_dict().items():
        if "running" in k:
            assert torch.equal(v, buffers[k]), k
    assert not list(bnn.batch_norm_layers(model))  # frozen layers are not batch norm (see find)


def test_freeze_torch_layers_keeps_their_eval_output() -> None:
    torch.manual_seed(0)
    model = _trained(
        nn.Sequential(
            nn.Conv3d(2, 3, 1), nn.BatchNorm3d(3), nn.Flatten(2), nn.BatchNorm1d(3)
        ).double(),
        (4, 2, 3, 3, 3),
    )
    x = torch.randn(2, 2, 3, 3, 3, dtype=torch.float64)
    expected = model.eval()(x)
    bnn.freeze(model).train()
    assert isinstance(model[1], bnn.FrozenBatchNorm3d)
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize("trainable_affine", [False, True])
def test_gradients_reach_the_input_and_the_affine_only_when_trainable(
    trainable_affine: bool,
) -> None:
    original = _trained(_net(), (6, 3, 6, 6)).eval()
    frozen = bnn.freeze(copy.deepcopy(original), trainable_affine=trainable_affine).train()
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    dy = torch.randn_like(original(x))
    (dx_ref,) = torch.autograd.grad(original(x), x, dy)
    frozen(x).backward(dy)
    assert x.grad is not None
    torch.testing.assert_close(x.grad, dx_ref)  # eval-mode BN's gradient: a * dy
    frozen_layer = frozen[1]
    if trainable_affine:
        ref_grads = torch.autograd.grad(original(x), [original[1].weight, original[1].bias], dy)
        assert frozen_layer.weight.grad is not None and frozen_layer.bias.grad is not None
        torch.testing.assert_close(frozen_layer.weight.grad, ref_grads[0])
        torch.testing.assert_close(frozen_layer.bias.grad, ref_grads[1])
        assert frozen[4].weight.requires_grad  # affine=False original: trainable identity
    else:
        assert not list(frozen_layer.parameters())
        assert not frozen_layer.weight.requires_grad and frozen_layer.weight.grad is None


def test_trainable_affine_keeps_the_original_parameters_and_fixed_statistics() -> None:
    model = _trained(_net(), (6, 3, 6, 6))
    weight = model[1].weight
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before freezing
    bnn.freeze(model, trainable_affine=True)
    assert model[1].weight is weight
    stats = model[1].running_var.clone()
    before = weight.detach().clone()
    model.train()(torch.randn(4, 3, 6, 6, dtype=torch.float64)).square().mean().backward()
    opt.step()
    assert not torch.equal(model[1].weight, before)
    assert torch.equal(model[1].running_var, stats)


@pytest.mark.parametrize("trainable_affine", [False, True])
def test_unfreeze_restores_class_state_and_training_behaviour(trainable_affine: bool) -> None:
    model = _trained(_net(), (6, 3, 6, 6))
    model[3].eval()  # a flag of its own, restored too
    twin = copy.deepcopy(model)
    bnn.unfreeze(bnn.freeze(model, trainable_affine=trainable_affine))
    assert [type(m) for m in model] == [type(m) for m in twin]
    assert model[4].affine is False and model[4].momentum is None
    assert model[3].act == "leaky_relu" and not model[3].training
    assert model.state_dict().keys() == twin.state_dict().keys()
    for k, v in twin.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    assert torch.equal(model(x), twin(x))  # training again: batch statistics, updates
    for k, v in twin.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
    assert all(p.requires_grad for p in model.parameters())


def test_unfreeze_a_loaded_torchvision_layer_gives_bnlab_batchnorm() -> None:
    layer = bnn.FrozenBatchNorm2d(4)
    layer.load_state_dict(_torchvision_checkpoint(4))
    x = torch.randn(2, 4, 3, 3)
    expected = layer(x)
    bn = bnn.unfreeze(layer)
    assert type(bn) is bnn.BatchNorm2d and bn.momentum == 0.1
    assert isinstance(bn.weight, nn.Parameter)
    assert torch.equal(bn.eval()(x), expected)
    fused = bnn.unfreeze(bnn.FrozenBatchNorm1d(4, act="relu"))
    assert type(fused) is bnn.BatchNormAct1d and fused.act == "relu"


def test_freeze_refuses_what_it_cannot_freeze_and_changes_nothing() -> None:
    class MyBN(nn.BatchNorm2d):
        pass

    cases = [
        (nn.BatchNorm2d(3, track_running_stats=False), "keeps no running statistics"),
        (MyBN(3), "MyBN at '1' is a subclass of torch's batch norm that freeze does not know"),
        (nn.LazyBatchNorm2d(), "not initialized yet"),
        (nn.SyncBatchNorm(3), "cannot tell whether SyncBatchNorm"),
    ]
    for bad, message in cases:
        model = nn.Sequential(bnn.BatchNorm2d(3), bad)
        with pytest.raises(ValueError, match=message):
            bnn.freeze(model)
        assert type(model[0]) is bnn.BatchNorm2d  # checked before anything was swapped


def test_sync_batchnorm_freezes_to_its_dimensionality_and_back() -> None:
    model = bnn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(nn.BatchNorm1d(3)))
    bnn.freeze(model)
    assert type(model[0]) is bnn.FrozenBatchNorm1d
    bnn.unfreeze(model)
    assert type(model[0]) is bnn.SyncBatchNorm and model[0]._revert_cls is bnn.BatchNorm1d


def test_shared_layers_stay_shared_and_copies_keep_state() -> None:
    bn = _trained(nn.Sequential(bnn.BatchNorm1d(3)).double(), (5, 3))[0]
    model = nn.Sequential(bn, nn.ReLU(), bn)
    bnn.freeze(model)
    assert model[0] is model[2]
    x = torch.randn(2, 3, dtype=torch.float64)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), model(x))
        assert type(bnn.unfreeze(clone)[0]) is bnn.BatchNorm1d


def test_doctor_does_not_treat_frozen_layers_as_batch_norm() -> None:
    """The notebook's D (BN on the single logit, before Sigmoid) is all findings; frozen, its
    BN is a fixed affine map: no batch statistics, so no finding, even at batch 1."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 1), bnn.BatchNorm1d(1), nn.Sigmoid())
    _trained(model.double(), (8, 4))
    codes = {f.code for f in doctor.check(model, torch.randn(8, 4, dtype=torch.float64))}
    assert {"bn-on-single-unit", "bn-before-output-activation"} <= codes
    bnn.freeze(model).train()
    assert doctor.check(model, torch.randn(1, 4, dtype=torch.float64)) == []
    assert doctor.check(model) == []
    assert not bnn.is_batch_norm(model[1]) and isinstance(model[1], _FrozenBatchNorm)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_features": -1}, "num_features must be a non-negative int, got -1"),
        ({"num_features": 2.5}, "num_features must be a non-negative int, got 2.5"),
        ({"num_features": 4, "act": "gelu"}, "act must be one of"),
    ],
)
def test_frozen_layers_refuse_bad_arguments_naming_them(kwargs, message) -> None:
    with pytest.raises(ValueError, match=f"FrozenBatchNorm2d: {message}"):
        bnn.FrozenBatchNorm2d(**kwargs)
