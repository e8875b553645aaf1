"""Finding the batch-norm layers of a model: the one definition bnlab's tools share."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypeGuard

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_norm_layers", "is_batch_norm", "values_per_statistic"]


def is_batch_norm(module: nn.Module) -> TypeGuard[_BatchNorm]:
    """Whether ``module`` is a batch-norm layer: torch's BatchNorm1d/2d/3d, SyncBatchNorm and
    LazyBatchNorm*, bnlab's (subclasses of torch's), or any other subclass of torch's base.

    The same test torch's and fvcore's tools apply (``isinstance(m, _BatchNorm)``), so bnlab
    and they always agree on which layers are batch norm. InstanceNorm is not, and neither is a
    frozen layer (bnlab.nn.FrozenBatchNorm*d, torchvision's FrozenBatchNorm2d): it computes no
    batch statistics and keeps no running ones, so it is a fixed per-channel affine map, which
    the doctor's rules and the tools that re-estimate statistics must leave alone. Test for it
    with ``isinstance(m, bnlab.nn.FROZEN_BATCH_NORMS)``.
    """
    return isinstance(module, _BatchNorm)


def batch_norm_layers(model: nn.Module) -> Iterator[tuple[str, _BatchNorm]]:
    """``(name, layer)`` for every batch-norm layer of ``model`` (itself included, as ""), in
    definition order; a layer shared by several parents comes once."""
    for name, module in model.named_modules():
        if is_batch_norm(module):
            yield name, module


def values_per_statistic(layer: nn.Module, input: Tensor) -> int:
    """The fewest values a batch statistic of ``layer`` is computed from on ``input`` (N, C, *):
    N * prod(*) for BN; a layer that normalizes by parts says so with its own
    ``values_per_statistic(input)`` (Ghost BN: its smallest ghost batch; Virtual BN: its
    reference batch). At 1 the variance is undefined."""
    own = getattr(layer, "values_per_statistic", None)
    if callable(own):
        return int(own(input))
    return input.numel() // max(input.shape[1], 1)
