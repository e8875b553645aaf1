"""Swap every batch-norm layer of a model between torch.nn and bnlab.nn, keeping its state.

The new layer takes over the old one's Parameter and buffer *objects* (not copies), so an
optimizer built before the swap still updates the model, and its train/eval flag.

Layers are matched by exact type. bnlab's classes subclass torch's (``isinstance`` cannot tell
a bnlab.nn.BatchNorm2d from a torch.nn.BatchNorm2d), so ``from_torch`` leaves bnlab's layers
alone and ``to_torch`` leaves torch's alone; other subclasses (a user's, SyncBatchNorm) are
never touched, as they may change behaviour.
"""

from __future__ import annotations

from torch import nn

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.find import replace_modules

__all__ = ["from_torch", "to_torch"]

_TORCH_TO_BNLAB: dict[type[nn.Module], type[nn.Module]] = {
    nn.BatchNorm1d: BatchNorm1d,
    nn.BatchNorm2d: BatchNorm2d,
    nn.BatchNorm3d: BatchNorm3d,
}
_BNLAB_TO_TORCH = {v: k for k, v in _TORCH_TO_BNLAB.items()}


def _swap_one(old: nn.Module, new_cls: type[nn.Module]) -> nn.Module:
    assert isinstance(old, nn.modules.batchnorm._BatchNorm)
    extra: dict[str, bool] = (
        {"bias": False} if old.affine and old.bias is None else {}
    )  # torch >= 2.6 only
    new = new_cls(
        old.num_features,
        eps=old.eps,
        momentum=old.momentum,
        affine=old.affine,
        track_running_stats=old.track_running_stats,
        device="meta",  # placeholders, replaced below by the old tensors themselves
        **extra,
    )
    for name in ("weight", "bias"):
        setattr(new, name, getattr(old, name))  # same Parameter objects (or None)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        new.register_buffer(name, getattr(old, name))
    new.train(old.training)
    return new


def _convert(model: nn.Module, mapping: dict[type[nn.Module], type[nn.Module]]) -> nn.Module:
    # exact type match (see the module docstring): isinstance would match both directions
    return replace_modules(
        model, lambda _, m: _swap_one(m, mapping[type(m)]), lambda m: type(m) in mapping
    )


def from_torch(model: nn.Module) -> nn.Module:
    """Replace each torch.nn.BatchNorm1d/2d/3d in ``model`` (in place) with bnlab's.

    Returns the model (a new module only when ``model`` itself is a batch-norm layer).
    """
    return _convert(model, _TORCH_TO_BNLAB)


def to_torch(model: nn.Module) -> nn.Module:
    """Replace each bnlab.nn.BatchNorm1d/2d/3d in ``model`` (in place) with torch's."""
    return _convert(model, _BNLAB_TO_TORCH)
