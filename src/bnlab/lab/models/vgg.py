"""A small VGG-style CNN: 3x3 convolutions in pairs, each pair closed by 2x2 max pooling.

The shape of Simonyan & Zisserman's VGG (the network Santurkar et al. 2018 study on CIFAR-10)
at CPU scale: ``widths`` gives each convolution's channels. BN sits right after each
convolution, before the ReLU, as in VGG-BN and the paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

import bnlab.nn as bnn

__all__ = ["vgg_small"]


@torch.no_grad()
def _he_(layer: nn.Conv2d | nn.Linear, generator: torch.Generator | None) -> None:
    """Weights ~ N(0, 2 / fan_in) (He et al. 2015), bias 0; drawn from ``generator``."""
    fan_in = layer.weight[0].numel()
    layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * math.sqrt(2 / fan_in))
    if layer.bias is not None:
        layer.bias.zero_()


def vgg_small(
    widths: Sequence[int] = (16, 16, 32, 32),
    in_channels: int = 1,
    in_size: int = 14,
    classes: int = 10,
    bn: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """[Conv3x3 (-> BN) -> ReLU] per width, a 2x2 max pool after every second one, then one
    Linear to the logits.

    The weights never depend on ``bn``: a BN net and its plain twin built with generators in
    the same state start from identical weights (He-normal, biases 0; the conv biases stay in
    front of BN, where its mean subtraction cancels them).

    Args:
        widths: output channels of each convolution (an even count keeps the VGG pairs).
        in_size: height = width of the input images; each pooling halves it (rounding down),
            and it must survive them (14 -> 7 -> 3 for four convolutions).
        bn: bnlab.nn.BatchNorm2d after each convolution.
        generator: where the weights come from (None = the global RNG).

    Shape:
        input (N, in_channels, in_size, in_size) -> logits (N, classes).
    """
    if not widths:
        raise ValueError("vgg_small needs at least one convolution width")
    if in_size >> (len(widths) // 2) < 1:
        raise ValueError(f"in_size {in_size} does not survive {len(widths) // 2} 2x2 poolings")
    layers: list[nn.Module] = []
    c, size = in_channels, in_size
    for k, w in enumerate(widths):
        conv = nn.Conv2d(c, w, 3, padding=1)
        _he_(conv, generator)
        layers.append(conv)
        if bn:
            layers.append(bnn.BatchNorm2d(w))
        layers.append(nn.ReLU())
        if k % 2 == 1:
            layers.append(nn.MaxPool2d(2))
            size //= 2
        c = w
    head = nn.Linear(c * size * size, classes)
    _he_(head, generator)
    layers += [nn.Flatten(), head]
    return nn.Sequential(*layers)
