"""The eval-statistics estimators of `bnlab running-stats`, and the truth they are held to.

- **EMA**: the model's own BN layers, and :class:`ShadowStats` with other momenta;
- **cumulative average**: :class:`ShadowStats` with ``momentum=None``;
- **precise**: :func:`bnlab.nn.recompute_stats` with the final weights;
- **population**: :func:`population_stats`, each BN layer's input over the whole training set.

BN layers are found by :func:`bnlab.nn.batch_norm_layers` (in :func:`_bn_layers` only), the
population statistics computed by :func:`bnlab.functional.batch_norm_stats`.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

import bnlab.nn as bnn
from bnlab import functional as bnf
from bnlab.lab.models.mlp import forward_with_bn

__all__ = [
    "STAT_EPS",
    "ShadowStats",
    "Stats",
    "bn_stats",
    "load_bn_stats",
    "population_stats",
    "stat_errors",
]

# The variance floor BN itself adds (its eps): relative errors divide by var + eps, so a
# channel with (near) zero variance cannot blow them up.
STAT_EPS = 1e-5

Stats = list[tuple[Tensor, Tensor]]  # per BN layer: (mean (C,), var (C,))


def _bn_layers(model: nn.Module) -> list[_BatchNorm]:
    """The BN layers of ``model`` (bnlab's or torch's), in definition order."""
    return [m for _, m in bnn.batch_norm_layers(model)]


@torch.no_grad()
def population_stats(model: nn.Sequential, x: Tensor) -> Stats:
    """Per-channel mean and (unbiased) variance of each BN layer's input over all of ``x``.

    Each BN layer normalizes with the population statistics of its own input, so the input of
    layer l + 1 is what eval mode with these statistics feeds it: one train-mode forward of
    ``x`` as a single batch, on a copy (train mode would move the running statistics). (Train
    mode normalizes with the biased variance, eval mode with the stored unbiased one: they
    differ by a factor N / (N - 1), 1.0001 for 8,000 digits.)

    Args:
        x: (N, 784) the whole training set.
    """
    net = copy.deepcopy(model).train()
    _, io = forward_with_bn(net, x)
    return [_mean_unbiased_var(inp) for inp, _ in io]  # (C,), (C,)


def _mean_unbiased_var(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and unbiased variance of (N, C): what running_var estimates."""
    mean, m2 = bnf.batch_norm_stats(x)
    return mean, m2 / (x.shape[0] - 1)


def bn_stats(model: nn.Module) -> Stats:
    """Copies of the running (mean, var) of every BN layer."""
    out = []
    for m in _bn_layers(model):
        assert isinstance(m.running_mean, Tensor) and isinstance(m.running_var, Tensor)
        out.append((m.running_mean.clone(), m.running_var.clone()))
    return out


@torch.no_grad()
def load_bn_stats(model: nn.Module, stats: Stats) -> nn.Module:
    """An eval-mode copy of ``model`` whose BN layers hold ``stats`` as running statistics."""
    net = copy.deepcopy(model).eval()
    layers = _bn_layers(net)
    if len(layers) != len(stats):
        raise ValueError(f"{len(stats)} statistics for {len(layers)} BN layers")
    for m, (mean, var) in zip(layers, stats, strict=True):
        assert isinstance(m.running_mean, Tensor) and isinstance(m.running_var, Tensor)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    return net


def stat_errors(est: Stats, truth: Stats) -> tuple[list[float], list[float]]:
    """Per layer: mean over channels of |mean - mean*| / std* and of |var - var*| / var*.

    The mean's error is in units of the population standard deviation: that is the shift it
    causes in the normalized value x_hat. Both divide by var* + STAT_EPS.
    """
    mean_err, var_err = [], []
    for (m, v), (mt, vt) in zip(est, truth, strict=True):
        scale = vt + STAT_EPS
        mean_err.append(((m - mt).abs() / scale.sqrt()).mean().item())
        var_err.append(((v - vt).abs() / scale).mean().item())
    return mean_err, var_err


class ShadowStats:
    """Running statistics of every BN layer's input, kept with their own momentum.

    One bnlab ``BatchNorm1d(C, momentum, affine=False)`` per BN layer, always in train mode
    and fed the detached inputs of the model's BN layers: the statistics a BN layer with this
    momentum would hold after the same batches (``None`` = cumulative average), by the
    library's own update rule. The normalized outputs are thrown away.
    """

    def __init__(self, widths: list[int], momentum: float | None) -> None:
        self.layers = [bnn.BatchNorm1d(w, momentum=momentum, affine=False) for w in widths]

    @torch.no_grad()
    def update(self, inputs: list[Tensor]) -> None:
        """inputs: each BN layer's input of this step, (B, C) each."""
        for bn, x in zip(self.layers, inputs, strict=True):
            bn(x)

    def stats(self) -> Stats:
        return [bn_stats(bn)[0] for bn in self.layers]

    def state_dict(self) -> list[dict[str, Any]]:
        """The layers' buffers (running statistics and batch count), for a checkpoint."""
        return [bn.state_dict() for bn in self.layers]

    def load_state_dict(self, state: list[dict[str, Any]]) -> None:
        for bn, s in zip(self.layers, state, strict=True):
            bn.load_state_dict(s)
