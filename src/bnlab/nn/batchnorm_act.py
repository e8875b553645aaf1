"""Batch norm fused with its activation: y = act(BN(x)) in one pass each way.

``BatchNormAct2d(64, act="relu")`` computes what ``nn.Sequential(BatchNorm2d(64), nn.ReLU())``
computes (timm's BatchNormAct2d API), with one kernel for forward and one for backward: the
normalized tensor is never written out, and backward recomputes the pre-activation from x
instead of saving it. Parameters, buffers and state_dict are exactly a BatchNorm*d's, so a
checkpoint moves between ``BatchNorm2d``, ``BatchNormAct2d`` and ``torch.nn.BatchNorm2d`` in
every direction; only the activation is extra (a constructor argument, not state).

The arithmetic is :func:`bnlab.functional.batch_norm_act`; the plumbing (buffers, momentum,
checks) is :class:`bnlab.nn.batchnorm._BatchNorm`'s.
"""

from __future__ import annotations

import torch
from torch import Tensor

from bnlab import functional as F
from bnlab.nn.batchnorm import _BatchNorm

__all__ = ["BatchNormAct1d", "BatchNormAct2d", "BatchNormAct3d"]

ACTS = ("relu", "leaky_relu", "identity")


class _BatchNormAct(_BatchNorm):
    act: str
    negative_slope: float

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
        act: str = "relu",
        negative_slope: float = 0.01,
    ) -> None:
        if act not in ACTS:
            raise ValueError(
                f"{type(self).__name__}: act must be one of {ACTS}, got {act!r} (for another "
                f"activation use a BatchNorm{type(self).__name__[-2:]} followed by it)"
            )
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
        )
        self.act = act
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        # _BatchNorm.forward's plumbing, with the fused functional in place of batch_norm.
        use_batch_stats = self.training or self.running_mean is None
        self._check_input_dim(x, use_batch_stats)  # before any state changes
        momentum = self._ema_factor()
        pass_buffers = not self.training or self.track_running_stats
        return F.batch_norm_act(
            x,
            self.running_mean if pass_buffers else None,
            self.running_var if pass_buffers else None,
            self.weight,
            self.bias,
            training=use_batch_stats,
            momentum=momentum,
            eps=self.eps,
            act=self.act,
            negative_slope=self.negative_slope,
        )

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope}" if self.act == "leaky_relu" else ""
        return f"{super().extra_repr()}, act={self.act!r}{slope}"


class BatchNormAct1d(_BatchNormAct):
    """act(BatchNorm1d(x)) over (N, C) or (N, C, L) input, fused; state_dict of a BatchNorm1d."""

    _expected_dims = (2, 3)


class BatchNormAct2d(_BatchNormAct):
    """act(BatchNorm2d(x)) over (N, C, H, W) input, fused; state_dict of a BatchNorm2d."""

    _expected_dims = (4,)


class BatchNormAct3d(_BatchNormAct):
    """act(BatchNorm3d(x)) over (N, C, D, H, W) input, fused; state_dict of a BatchNorm3d."""

    _expected_dims = (5,)
