"""A deep linear network: Linear layers with nothing in between (or BN only).

Santurkar et al. 2018 (Section 2.2) measure internal covariate shift on a 25-layer deep linear
network on synthetic data: without activations its loss landscape is simple, so a difference
that BN makes there is BN's own.
"""

from __future__ import annotations

import math

import torch
from torch import nn

import bnlab.nn as bnn

__all__ = ["deep_linear"]


def deep_linear(
    depth: int,
    width: int,
    in_features: int,
    out_features: int,
    bn: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Sequential:
    """``depth`` bias-free Linear layers (in -> width -> ... -> width -> out), with
    bnlab.nn.BatchNorm1d after each hidden one when ``bn``.

    Weights ~ N(0, 1 / fan_in) (LeCun normal: a linear map that keeps the input's scale in
    expectation), drawn layer by layer from ``generator``, identical with and without BN.
    """
    if depth < 1 or width < 1:
        raise ValueError(f"deep_linear needs depth >= 1 and width >= 1, got {depth}, {width}")
    sizes = [in_features] + [width] * (depth - 1) + [out_features]
    layers: list[nn.Module] = []
    for k in range(depth):
        linear = nn.Linear(sizes[k], sizes[k + 1], bias=False)
        with torch.no_grad():
            linear.weight.copy_(
                torch.randn(linear.weight.shape, generator=generator) / math.sqrt(sizes[k])
            )
        layers.append(linear)
        if bn and k < depth - 1:
            layers.append(bnn.BatchNorm1d(sizes[k + 1]))
    return nn.Sequential(*layers)
