"""Drop-in replacements for torch.nn.BatchNorm1d/2d/3d: parameters, buffers and plumbing only.

Same constructor arguments, same parameter and buffer names (``weight``, ``bias``,
``running_mean``, ``running_var``, ``num_batches_tracked``), same state_dict version, so a
state_dict moves between these modules and torch's in both directions unchanged. All arithmetic
is in :func:`bnlab.functional.batch_norm`.

Two facts worth knowing, both as in PyTorch:

- ``momentum=None`` keeps a cumulative average: after k training batches, ``running_mean`` is
  the plain average of the k batch means (what the blog calls "the average of the batch
  statistics seen during training").
- ``track_running_stats=False`` keeps no buffers, and normalizes with batch statistics in
  evaluation mode too.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnlab import functional as F

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


class _BatchNorm(nn.Module):
    _version = 2  # torch's: version 2 added num_batches_tracked
    _expected_dims: tuple[int, ...] = ()
    num_features: int
    eps: float
    momentum: float | None
    affine: bool
    track_running_stats: bool
    running_mean: Tensor | None
    running_var: Tensor | None
    num_batches_tracked: Tensor | None

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(num_features, int) or num_features < 0:
            raise ValueError(
                f"{type(self).__name__}: num_features must be a non-negative int, "
                f"got {num_features!r}"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        if affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory))
            if bias:
                self.bias = nn.Parameter(torch.empty(num_features, **factory))
            else:
                self.register_parameter("bias", None)
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer(
                "num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device)
            )
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self) -> None:
        if self.running_mean is not None:
            self.running_mean.zero_()
        if self.running_var is not None:
            self.running_var.fill_(1)
        if self.num_batches_tracked is not None:
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        self.reset_running_stats()
        if self.weight is not None:
            nn.init.ones_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def _check_input_dim(self, x: Tensor, use_batch_stats: bool) -> None:
        if x.dim() not in self._expected_dims:
            want = " or ".join(f"{d}D" for d in self._expected_dims)
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) expected {want} input "
                f"(got {x.dim()}D input of shape {tuple(x.shape)})"
            )
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) got input of shape "
                f"{tuple(x.shape)} with {x.shape[1]} channels in dim 1; it normalizes "
                f"{self.num_features} (build it with num_features={x.shape[1]})"
            )
        if use_batch_stats and x.numel() > 0 and x.numel() // x.shape[1] <= 1:
            fix = (
                "call .eval() to use the running statistics"
                if self.track_running_stats
                else ("build it with track_running_stats=True to get statistics usable at batch 1")
            )
            raise ValueError(
                f"{type(self).__name__}({self.num_features}) needs more than 1 value per channel "
                f"to compute batch statistics, got input of shape {tuple(x.shape)}: use a batch "
                f"of 2 or more, or {fix}"
            )

    def _ema_factor(self) -> float:
        """This step's weight of the batch statistics in the running ones (counts the batch)."""
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                return 1.0 / float(self.num_batches_tracked)
        return 0.0 if self.momentum is None else self.momentum

    def forward(self, x: Tensor) -> Tensor:
        use_batch_stats = self.training or self.running_mean is None
        self._check_input_dim(x, use_batch_stats)  # before any state changes
        momentum = self._ema_factor()
        # Buffers go in when they are updated (training, tracked) or used (eval).
        pass_buffers = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            training=use_batch_stats,
            momentum=momentum,
            eps=self.eps,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
            f"affine={self.affine}, bias={self.bias is not None}, "
            f"track_running_stats={self.track_running_stats}"
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
        # As torch does: state_dicts older than version 2 have no num_batches_tracked.
        version = local_metadata.get("version")
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            state_dict[key] = torch.tensor(0, dtype=torch.long)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


class BatchNorm1d(_BatchNorm):
    """Batch normalization over (N, C) or (N, C, L) input; drop-in for torch.nn.BatchNorm1d."""

    _expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalization over (N, C, H, W) input; drop-in for torch.nn.BatchNorm2d."""

    _expected_dims = (4,)


class BatchNorm3d(_BatchNorm):
    """Batch normalization over (N, C, D, H, W) input; drop-in for torch.nn.BatchNorm3d."""

    _expected_dims = (5,)
