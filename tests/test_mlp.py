"""The experiments' MLP builder: layer order, init scales, plain/BN twins, BN helpers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab.nn as bnn
from bnlab.lab.models.mlp import forward_with_bn, init_std, mlp


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for _, m in bnn.batch_norm_layers(model)]


def test_bn_sits_after_each_hidden_linear_before_the_activation() -> None:
    net = mlp((784, 100, 100, 10), "sigmoid", bn=True, momentum=None)
    assert [type(m) for m in net] == [nn.Linear, bnn.BatchNorm1d, nn.Sigmoid] * 2 + [nn.Linear]
    assert [tuple(m.weight.shape) for m in net if isinstance(m, nn.Linear)] == [
        (100, 784),
        (100, 100),
        (10, 100),
    ]
    assert all(m.momentum is None for m in bn_layers(net))
    plain = mlp((784, 100, 10), "tanh")
    assert [type(m) for m in plain] == [nn.Linear, nn.Tanh, nn.Linear]


def test_plain_and_bn_twins_start_from_the_same_linear_weights() -> None:
    for init in (None, "xavier", 0.01):
        nets = []
        for bn in (False, True):
            torch.manual_seed(3)  # torch's default init draws from the global RNG
            nets.append(mlp((20, 8, 8, 3), "relu", bn, init, torch.Generator().manual_seed(4)))
        lin = [[m for m in net if isinstance(m, nn.Linear)] for net in nets]
        for a, b in zip(*lin, strict=True):
            torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
            torch.testing.assert_close(a.bias, b.bias, rtol=0, atol=0)
    assert len(bn_layers(nets[1])) == 2 and not bn_layers(nets[0])


def test_init_scales_follow_their_definitions() -> None:
    gen = torch.Generator().manual_seed(0)
    for init, expected in (
        ("small", 0.01),
        ("unit", 1.0),
        ("xavier", (2 / 600) ** 0.5),
        ("he", (2 / 300) ** 0.5),
        (0.05, 0.05),
    ):
        net = mlp((784, 300, 300, 10), "relu", init=init, generator=gen)
        w = net[2].weight.detach()  # 300 -> 300, the second hidden Linear
        assert float(w.std()) == pytest.approx(expected, rel=0.02)
        assert init_std(init, 300, 300) == pytest.approx(expected)
        assert float(net[2].bias.detach().abs().max()) == 0.0


def test_unknown_names_are_value_errors() -> None:
    with pytest.raises(ValueError, match="activation 'gelu'"):
        mlp((4, 3), "gelu")
    with pytest.raises(ValueError, match="init 'orthogonal'"):
        mlp((4, 3, 2), "relu", init="orthogonal")


def test_forward_with_bn_returns_each_bn_layers_input_and_output() -> None:
    model = mlp((4, 6, 5, 3), "relu", bn=True)
    x = torch.randn(10, 4)
    out, io = forward_with_bn(model, x)
    torch.testing.assert_close(out, model(x))
    assert [tuple(i.shape) for i, _ in io] == [(10, 6), (10, 5)]
    torch.testing.assert_close(io[0][0], model[0](x))
    torch.testing.assert_close(io[0][1], model[1](model[0](x)))
