"""The classifier MLPs of the experiments: Linear - (BN) - activation per hidden layer.

One builder serves every classifier experiment: ``activations`` (deep tanh/ReLU nets, four
inits), ``ioffe2015`` (the paper's 3 x 100 sigmoid net, N(0, 0.01²) weights), and
``regularization`` / ``running-stats`` (3 x 100 ReLU, torch's default init). BN sits right
after each hidden Linear, before the activation: the blog's and the paper's placement.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from itertools import pairwise
from typing import Literal

import torch
from torch import Tensor, nn

import bnlab.nn as bnn

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "Init",
    "forward_with_bn",
    "init_linear_",
    "init_std",
    "mlp",
]

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh}
Init = Literal["small", "unit", "xavier", "he"]
INITS: tuple[Init, ...] = typing.get_args(Init)
SMALL_STD = 0.01  # CS231n's "small random numbers": 0.01 * randn


def init_std(scheme: str | float, fan_in: int, fan_out: int) -> float:
    """The std of a Linear's N(0, std²) weights under ``scheme``; a float is the std itself.

    small = 0.01, unit = 1, xavier = sqrt(2 / (fan_in + fan_out)) (Glorot & Bengio 2010,
    normal variant), he = sqrt(2 / fan_in) (He et al. 2015, fan_in mode, ReLU gain).
    """
    if not isinstance(scheme, str):
        return float(scheme)
    if scheme == "small":
        return SMALL_STD
    if scheme == "unit":
        return 1.0
    if scheme == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if scheme == "he":
        return math.sqrt(2.0 / fan_in)
    raise ValueError(f"unknown init {scheme!r}; choose from {', '.join(INITS)}")


@torch.no_grad()
def init_linear_(
    layer: nn.Linear, scheme: str | float, generator: torch.Generator | None = None
) -> None:
    """Weights ~ N(0, init_std(scheme)²) drawn from ``generator``, bias 0 (so the weight scale
    alone sets each layer's scale). In place."""
    fan_out, fan_in = layer.weight.shape
    std = init_std(scheme, fan_in, fan_out)
    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
    if layer.bias is not None:
        layer.bias.zero_()


def mlp(
    sizes: Sequence[int],
    activation: str,
    bn: bool = False,
    init: str | float | None = None,
    generator: torch.Generator | None = None,
    momentum: float | None = 0.1,
) -> nn.Sequential:
    """``sizes[0]`` -> [Linear (-> BN) -> activation] per hidden size -> Linear(``sizes[-1]``).

    The last Linear gives logits (softmax in the loss). The Linear weights never depend on
    ``bn``, so a BN net and its plain twin built alike start from identical weights: every
    Linear is created with torch's default init (drawing from the global RNG, in layer order)
    and, with ``init``, redrawn from ``generator`` layer by layer. The Linear biases stay in
    front of BN, where its mean subtraction cancels them.

    Args:
        sizes: (in_features, hidden_1, ..., hidden_k, out_features); k >= 0.
        activation: relu, sigmoid or tanh.
        bn: bnlab.nn.BatchNorm1d after each hidden Linear, before the activation.
        init: None = torch's default; a scheme of :data:`INITS` or a float std (see
            :func:`init_std`), biases 0.
        generator: where ``init``'s weights come from (None = the global RNG).
        momentum: the BN layers' momentum (None = cumulative average).
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {', '.join(ACTIVATIONS)}")
    if len(sizes) < 2:
        raise ValueError(f"an MLP needs input and output sizes, got {tuple(sizes)}")
    layers: list[nn.Module] = []
    for k, (fan_in, width) in enumerate(pairwise(sizes)):
        linear = nn.Linear(fan_in, width)
        if init is not None:
            init_linear_(linear, init, generator)
        layers.append(linear)
        if k < len(sizes) - 2:  # hidden layer; the last Linear gives the logits
            if bn:
                layers.append(bnn.BatchNorm1d(width, momentum=momentum))
            layers.append(ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


def forward_with_bn(model: nn.Sequential, x: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
    """``model(x)`` and, for each BN layer, its (input, output): (N, C) each."""
    io = []
    for layer in model:
        y = layer(x)
        if bnn.is_batch_norm(layer):
            io.append((x, y))
        x = y
    return x, io
