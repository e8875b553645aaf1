"""The networks of `bnlab santurkar2018`: a VGG-style CNN and an MLP on images, a 25-layer deep
linear network on synthetic data; each standard, with BN, or with noisy BN.

Every net is a flat ``nn.Sequential`` so that its ``named_parameters()`` come in forward order
(what Definition 2.1's "the layers before layer i" needs). The noisy variant is the BN net with
a :class:`NoisyShift` after every BN layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

import bnlab.nn as bnn
from bnlab.lab.experiments.santurkar2018.config import NETS, VARIANTS, Net, Variant
from bnlab.lab.experiments.santurkar2018.measure import (
    expected_scale,
    inject_noise,
    noise_parameters,
)
from bnlab.lab.models.linear import deep_linear
from bnlab.lab.models.mlp import mlp
from bnlab.lab.models.vgg import vgg_small

__all__ = [
    "NETS",
    "VARIANTS",
    "Net",
    "NoisyShift",
    "Variant",
    "build",
    "layer_names",
    "reseed_noise",
]


class NoisyShift(nn.Module):
    """Figure 2's injected "covariate shift": after a BN layer, ``scale * y + n`` with a new
    noise distribution (per activation: scale, mean, std; see
    :func:`~bnlab.lab.experiments.santurkar2018.measure.noise_parameters`) every training step.

    Draws from ``self.generator``, which the trainer reseeds every step (:func:`reseed_noise`),
    so a resumed run draws what an uninterrupted one draws. In eval mode it applies the noise's
    expectation (``E[scale] * y``), as dropout does.
    """

    def __init__(self, num_features: int, n_mean: float, n_std: float, n_scale: float) -> None:
        super().__init__()
        self.num_features = num_features
        self.n_mean, self.n_std, self.n_scale = n_mean, n_std, n_scale
        self.generator = torch.Generator()

    def forward(self, y: Tensor) -> Tensor:
        if not self.training:
            return y * expected_scale(self.n_scale)
        scale, mean, std = noise_parameters(
            self.num_features, self.n_mean, self.n_std, self.n_scale, self.generator
        )
        return inject_noise(y, scale, mean, std, self.generator)

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, n_mean={self.n_mean}, n_std={self.n_std}, n_scale={self.n_scale}"
        )


def reseed_noise(model: nn.Module, seeds: Callable[[int], int]) -> None:
    """Seed the k-th :class:`NoisyShift` of ``model`` with ``seeds(k)``."""
    for k, m in enumerate(m for m in model.modules() if isinstance(m, NoisyShift)):
        m.generator.manual_seed(seeds(k))


def _with_noise(model: nn.Sequential, noise: tuple[float, float, float]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for m in model:
        layers.append(m)
        if bnn.is_batch_norm(m):
            layers.append(NoisyShift(m.num_features, *noise))
    return nn.Sequential(*layers)


def build(
    net: Net,
    variant: Variant,
    generator: torch.Generator,
    noise: tuple[float, float, float] = (0.5, 0.5, 2.0),
    widths: tuple[int, ...] = (16, 16, 32, 32),
    in_size: int = 14,
    hidden: tuple[int, ...] = (256, 256, 256),
    dln: tuple[int, int, int] = (25, 20, 20),
) -> nn.Sequential:
    """One net. Variants of a net built from generators in the same state share their weights.

    Args:
        generator: where the weights come from.
        noise: (n_mean, n_std, n_scale) of the noisy-bn variant's :class:`NoisyShift`.
        widths, in_size: the CNN's convolution widths and input size.
        hidden: the MLP's hidden widths (ReLU, He init).
        dln: the deep linear network's (depth, width, in/out features).
    """
    bn = variant != "standard"
    if net == "cnn":
        model = vgg_small(widths, 1, in_size, 10, bn=bn, generator=generator)
    elif net == "mlp":
        pixels = in_size * in_size
        model = nn.Sequential(
            nn.Flatten(), *mlp((pixels, *hidden, 10), "relu", bn=bn, init="he", generator=generator)
        )
    elif net == "dln":
        depth, width, features = dln
        if variant == "noisy-bn":
            raise ValueError("the deep linear network has no noisy-bn variant (Figure 2 is VGG's)")
        model = deep_linear(depth, width, features, features, bn=bn, generator=generator)
    else:
        raise ValueError(f"unknown net {net!r}; choose from {', '.join(NETS)}")
    return _with_noise(model, noise) if variant == "noisy-bn" else model


def layer_names(model: nn.Sequential) -> list[str]:
    """Names of the weights of the net's Linear and Conv2d layers, in forward order: the
    "layers" of Definition 2.1 (BN's gamma and beta belong to the layer before them)."""
    return [
        f"{name}.weight"
        for name, m in model.named_children()
        if isinstance(m, nn.Linear | nn.Conv2d)
    ]
