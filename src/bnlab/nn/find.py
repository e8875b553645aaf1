"""Finding the batch-norm layers of a model, and swapping them: the one definition bnlab's
tools share."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, TypeGuard

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["batch_norm_layers", "is_batch_norm", "replace_modules", "values_per_statistic"]


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


def replace_modules(
    model: nn.Module,
    swap: Callable[[str, Any], nn.Module],  # gets the modules match accepted
    match: Callable[[nn.Module], bool],
) -> nn.Module:
    """Replace every module ``match`` accepts by ``swap(name, module)``, in place; returns
    ``model``, or its replacement where ``model`` itself matches.

    A module registered in several places (``nn.Sequential(bn, act, bn)``) is swapped once and
    the one replacement put in every place, so it stays shared. Hand-written because
    ``named_children`` (which torch's own converters walk) yields a repeated child once: the
    second place kept the old layer.
    """
    done: dict[int, nn.Module] = {}

    def visit(name: str, module: nn.Module) -> nn.Module:
        if match(module):
            if id(module) not in done:
                done[id(module)] = swap(name, module)
            return done[id(module)]
        for child_name, child in list(module._modules.items()):
            if child is None:
                continue
            new = visit(f"{name}.{child_name}" if name else child_name, child)
            if new is not child:
                setattr(module, child_name, new)
        return module

    return visit("", model)
