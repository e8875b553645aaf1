"""Frozen batch norm: fixed statistics and affine, the eval-mode transform in every mode.

Fine-tuning detection and segmentation models (small per-GPU batches) freezes the backbone's
batch norm: ``model.eval()`` on the BN layers does it only until the next ``model.train()``
(pytorch #66073). A ``FrozenBatchNorm2d`` has no training mode to return to:

    y = (x - running_mean) / sqrt(running_var + eps) * weight + bias

in train and eval mode alike, with no running-statistics updates. Its state_dict is
torchvision's ``FrozenBatchNorm2d``'s (``weight``, ``bias``, ``running_mean``, ``running_var``,
no ``num_batches_tracked``, which loading drops as torchvision does), so torchvision and
detectron2 checkpoints load into it and a BatchNorm2d checkpoint does too.

``freeze(model)`` swaps every batch-norm layer for a frozen one with its numbers (eval-mode
outputs unchanged); ``freeze(model, trainable_affine=True)`` keeps ``weight`` and ``bias``
trainable (``nn.Parameter``, the original objects), statistics still fixed. ``unfreeze(model)``
swaps back to a trainable layer of the original class.

A frozen layer is not a ``torch.nn.modules.batchnorm._BatchNorm``, so
:func:`bnlab.nn.is_batch_norm` is False for it, as for torchvision's: it computes no batch
statistics, so the doctor's batch-statistics rules do not apply, and torch's tools that reset
or re-estimate running statistics of every ``_BatchNorm`` (``swa_utils.update_bn``, precise BN)
leave it alone. Find frozen layers with ``isinstance(m, FROZEN_BATCH_NORMS)``.

The arithmetic is :func:`bnlab.functional.batch_norm`'s evaluation mode (the forward step of
bnlab.nn.BatchNorm*d with ``training=False``); a layer frozen from a ``BatchNormAct*d`` keeps
its fused activation (``act``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parameter import is_lazy

from bnlab import functional as F
from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d, _layer_forward
from bnlab.nn.batchnorm_act import ACTS, BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from bnlab.nn.find import replace_modules
from bnlab.nn.sync_batchnorm import SyncBatchNorm

__all__ = [
    "FROZEN_BATCH_NORMS",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "freeze",
    "unfreeze",
]


@dataclass(frozen=True)
class _Origin:
    """What ``unfreeze`` needs to rebuild the layer ``freeze`` replaced (not state: the numbers
    live in the frozen layer)."""

    cls: type[nn.Module]
    momentum: float | None
    affine: bool
    has_bias: bool
    training: bool
    num_batches_tracked: int
    extra: dict[str, Any] = field(default_factory=dict)  # act, process_group, ...


class _FrozenBatchNorm(nn.Module):
    """The frozen layer; FrozenBatchNorm1d/2d/3d fix the input ranks it takes."""

    _expected_dims: tuple[int, ...] = ()
    _dim_name = ""
    weight: Tensor
    bias: Tensor
    running_mean: Tensor
    running_var: Tensor

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        *,
        trainable_affine: bool = False,
        act: str = "identity",
        negative_slope: float = 0.01,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        """Args:
        num_features: C, the channels of an (N, C, *) input.
        eps: added to ``running_var`` before the square root (torchvision's default 1e-5).
        trainable_affine: ``weight`` and ``bias`` as ``nn.Parameter`` (trained by an
            optimizer) instead of buffers; the statistics stay fixed either way.
        act, negative_slope: an activation fused after the affine map, as in
            bnlab.nn.BatchNormAct*d ("identity", "relu", "leaky_relu").
        device, dtype: of the four (C,) tensors.
        """
        super().__init__()
        name = type(self).__name__
        if not isinstance(num_features, int) or num_features < 0:
            raise ValueError(
                f"{name}: num_features must be a non-negative int, got {num_features!r}"
            )
        if act not in ACTS:
            raise ValueError(f"{name}: act must be one of {ACTS}, got {act!r}")
        self.num_features = num_features
        self.eps = eps
        self.act = act
        self.negative_slope = negative_slope
        self.trainable_affine = trainable_affine
        self._origin: _Origin | None = None
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        for key, init in (("weight", torch.ones), ("bias", torch.zeros)):
            t = init(num_features, **factory)
            if trainable_affine:
                self.register_parameter(key, nn.Parameter(t))
            else:
                self.register_buffer(key, t)
        self.register_buffer("running_mean", torch.zeros(num_features, **factory))
        self.register_buffer("running_var", torch.ones(num_features, **factory))

    def forward(self, input: Tensor) -> Tensor:
        return _layer_forward(
            input,
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            None,  # nothing to count
            f"{type(self).__name__}({self.num_features})",
            self._expected_dims,
            self.num_features,
            False,  # evaluation mode whatever self.training says: that is the point
            True,
            0.0,
            self.eps,
            *F._act_code(self.act, self.negative_slope),
        )

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # A BatchNorm*d checkpoint has num_batches_tracked; a frozen layer has no use for it
        # (torchvision drops it the same way).
        state_dict.pop(prefix + "num_batches_tracked", None)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def extra_repr(self) -> str:
        text = f"{self.num_features}, eps={self.eps}"
        if self.act != "identity":
            text += f", act={self.act!r}"
            if self.act == "leaky_relu":
                text += f", negative_slope={self.negative_slope}"
        if self.trainable_affine:
            text += ", trainable_affine=True"
        return text


class FrozenBatchNorm1d(_FrozenBatchNorm):
    """Frozen batch norm over (N, C) or (N, C, L) input (see the module docstring)."""

    _expected_dims = (2, 3)
    _dim_name = "1d"


class FrozenBatchNorm2d(_FrozenBatchNorm):
    """Frozen batch norm over (N, C, H, W) input; torchvision's FrozenBatchNorm2d's state_dict
    (see the module docstring)."""

    _expected_dims = (4,)
    _dim_name = "2d"


class FrozenBatchNorm3d(_FrozenBatchNorm):
    """Frozen batch norm over (N, C, D, H, W) input (see the module docstring)."""

    _expected_dims = (5,)
    _dim_name = "3d"


FROZEN_BATCH_NORMS = (FrozenBatchNorm1d, FrozenBatchNorm2d, FrozenBatchNorm3d)
"""The frozen layer classes, for ``isinstance(m, FROZEN_BATCH_NORMS)``."""

_FROZEN_BY_DIM: dict[str, type[_FrozenBatchNorm]] = {c._dim_name: c for c in FROZEN_BATCH_NORMS}
_BNLAB_BY_DIM: dict[str, tuple[type[nn.Module], type[nn.Module]]] = {
    "1d": (BatchNorm1d, BatchNormAct1d),
    "2d": (BatchNorm2d, BatchNormAct2d),
    "3d": (BatchNorm3d, BatchNormAct3d),
}
# The layers freeze knows compute the standard transform (exact types: a user's subclass may
# change the forward, and freezing it would change the numbers).
_KNOWN: tuple[type[nn.Module], ...] = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    BatchNormAct1d,
    BatchNormAct2d,
    BatchNormAct3d,
    nn.SyncBatchNorm,
    SyncBatchNorm,
)


def _check_freezable(name: str, bn: _BatchNorm) -> str:
    """Refuse a layer freeze cannot freeze, naming it; else its "1d", "2d" or "3d" (from the
    class or, for a SyncBatchNorm, from the layer it was converted from or its first input)."""
    where = f"'{name}'" if name else "the model itself"
    if any(is_lazy(t) for t in (*bn.parameters(recurse=False), *bn.buffers(recurse=False))):
        raise ValueError(
            f"freeze: {type(bn).__name__} at {where} is not initialized yet (a lazy layer): run "
            "one forward first, so that it knows its channels and has statistics to freeze"
        )
    if type(bn) not in _KNOWN:
        raise ValueError(
            f"freeze: {type(bn).__name__} at {where} is a subclass of torch's batch norm that "
            "freeze does not know: its forward may differ from the standard transform, so a "
            "frozen layer could change the outputs. Replace it by a torch.nn or bnlab.nn "
            "BatchNorm*d first, or freeze it by hand (bnlab.nn.FrozenBatchNorm*d + "
            "load_state_dict)"
        )
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            f"freeze: {type(bn).__name__}({bn.num_features}) at {where} keeps no running "
            "statistics (track_running_stats=False): it normalizes with batch statistics in "
            "every mode, so there are no numbers to freeze. Build it with "
            "track_running_stats=True and estimate them (train mode, or "
            "torch.optim.swa_utils.update_bn) before freezing"
        )
    cls: type[nn.Module] = type(bn)
    if isinstance(bn, (nn.SyncBatchNorm, SyncBatchNorm)):
        revert = getattr(bn, "_revert_cls", None)
        if revert is None:
            raise ValueError(
                f"freeze: cannot tell whether {type(bn).__name__}({bn.num_features}) at {where} "
                "normalizes (N, C[, L]), (N, C, H, W) or (N, C, D, H, W) input: it was not "
                "converted from a BatchNorm*d and has seen no input. Run one forward first, or "
                "revert it (SyncBatchNorm.revert_sync_batchnorm) before freezing"
            )
        cls = revert
    for torch_cls, dim in ((nn.BatchNorm1d, "1d"), (nn.BatchNorm2d, "2d"), (nn.BatchNorm3d, "3d")):
        if issubclass(cls, torch_cls):
            return dim
    raise AssertionError(f"no dimensionality for {type(bn).__name__}")  # _KNOWN covers all


def _frozen_from(name: str, bn: _BatchNorm, trainable_affine: bool) -> _FrozenBatchNorm:
    dim = _check_freezable(name, bn)
    act = getattr(bn, "act", "identity")
    slope = getattr(bn, "negative_slope", 0.01)
    stat = bn.running_mean
    assert stat is not None and bn.running_var is not None  # checked above
    frozen = _FROZEN_BY_DIM[dim](
        bn.num_features,
        bn.eps,
        trainable_affine=trainable_affine,
        act=act,
        negative_slope=slope,
        device="meta",  # placeholders, replaced below
    )
    for key, default in (("weight", 1.0), ("bias", 0.0)):
        old: Tensor | None = getattr(bn, key)
        t = torch.full_like(stat, default) if old is None else old
        if trainable_affine:  # the original Parameter where there is one
            p = t if isinstance(t, nn.Parameter) else nn.Parameter(t.detach())
            setattr(frozen, key, p.requires_grad_(True))
        else:
            frozen.register_buffer(key, t.detach())
    frozen.register_buffer("running_mean", stat)  # the same tensors
    frozen.register_buffer("running_var", bn.running_var)
    extra: dict[str, Any] = {}
    if isinstance(bn, (BatchNormAct1d, BatchNormAct2d, BatchNormAct3d)):
        extra = {"act": act, "negative_slope": slope}
    if isinstance(bn, (nn.SyncBatchNorm, SyncBatchNorm)):
        extra = {"process_group": bn.process_group, "_revert_cls": bn._revert_cls}
    count = bn.num_batches_tracked
    frozen._origin = _Origin(
        cls=type(bn),
        momentum=bn.momentum,
        affine=bn.affine,
        has_bias=bn.bias is not None or not bn.affine,
        training=bn.training,
        num_batches_tracked=0 if count is None else int(count),
        extra=extra,
    )
    frozen.train(bn.training)
    return frozen


def _unfrozen_from(frozen: _FrozenBatchNorm) -> nn.Module:
    origin = frozen._origin
    dim = frozen._dim_name
    if origin is None:  # built directly (e.g. from a torchvision checkpoint): bnlab's class
        plain, fused = _BNLAB_BY_DIM[dim]
        cls = plain if frozen.act == "identity" else fused
        act = {} if cls is plain else {"act": frozen.act, "negative_slope": frozen.negative_slope}
        origin = _Origin(cls, 0.1, True, True, frozen.training, 0, act)
    weight, bias = frozen.weight, frozen.bias
    # An affine=False layer comes back affine=False only while weight and bias are the
    # identity: trained ones (trainable_affine) are kept, so the numbers stay.
    identity = bool((weight == 1).all() and (bias == 0).all())
    affine = origin.affine or not identity
    ctor: dict[str, Any] = {k: v for k, v in origin.extra.items() if not k.startswith("_")}
    if origin.affine and not origin.has_bias and bool((bias == 0).all()):
        ctor["bias"] = False  # torch >= 2.6's BatchNorm*d(bias=False), while the bias is 0
    new = origin.cls(
        frozen.num_features,
        eps=frozen.eps,
        momentum=origin.momentum,
        affine=affine,
        track_running_stats=True,
        device="meta",  # placeholders, replaced by the frozen layer's tensors
        **ctor,
    )
    assert isinstance(new, _BatchNorm)
    for key, t in (("weight", weight), ("bias", bias)):
        if getattr(new, key) is None:
            continue
        setattr(new, key, t if isinstance(t, nn.Parameter) else nn.Parameter(t))
    new.register_buffer("running_mean", frozen.running_mean)
    new.register_buffer("running_var", frozen.running_var)
    new.register_buffer(
        "num_batches_tracked",
        torch.tensor(origin.num_batches_tracked, dtype=torch.long, device=weight.device),
    )
    for k, v in origin.extra.items():
        if k.startswith("_"):
            setattr(new, k, v)
    new.train(frozen.training)
    return new


def freeze(model: nn.Module, trainable_affine: bool = False) -> nn.Module:
    """Replace every batch-norm layer of ``model`` (in place) with a frozen one.

    Freezes torch.nn.BatchNorm1d/2d/3d and SyncBatchNorm and bnlab.nn's BatchNorm*d,
    BatchNormAct*d (the activation kept) and SyncBatchNorm: each becomes a
    FrozenBatchNorm1d/2d/3d computing its evaluation-mode output (bnlab's layers: bit for bit)
    in every mode; a parent's ``.train()`` does not change it. The running statistics are the
    same tensor objects; with ``trainable_affine`` the weight and bias are the original
    Parameters (an optimizer built before still trains them), otherwise buffers. ``unfreeze``
    reverses it. Everything is checked before anything is swapped.

    Raises:
        ValueError: naming the layer, for one without running statistics
            (track_running_stats=False), an uninitialized lazy one, a SyncBatchNorm of unknown
            dimensionality, or a subclass of torch's batch norm freeze does not know.

    Returns:
        ``model``, or the frozen layer when ``model`` itself is a batch-norm layer.
    """
    for name, m in model.named_modules():  # refuse before changing anything
        if isinstance(m, _BatchNorm):
            _check_freezable(name, m)
    return replace_modules(
        model,
        lambda name, m: _frozen_from(name, m, trainable_affine),
        lambda m: isinstance(m, _BatchNorm),
    )


def unfreeze(model: nn.Module) -> nn.Module:
    """Replace every frozen batch-norm layer of ``model`` (in place) with a trainable one.

    A layer ``freeze`` made becomes its original class again, with its momentum, affine,
    ``num_batches_tracked``, train/eval flag (and activation, process group) and the frozen
    layer's current numbers; one built directly (a loaded torchvision checkpoint) becomes
    bnlab.nn.BatchNorm*d (BatchNormAct*d where it has an activation) with momentum 0.1. The
    running statistics are the same tensors; weight and bias become Parameters (the same
    objects where they already were: ``trainable_affine``). Build the optimizer afterwards.

    Returns:
        ``model``, or the new layer when ``model`` itself is a frozen layer.
    """
    return replace_modules(
        model, lambda name, m: _unfrozen_from(m), lambda m: isinstance(m, _FrozenBatchNorm)
    )
