"""Batch norm fused with its activation: y = act(BN(x)) in one pass each way.

``BatchNormAct2d(64, act="relu")`` computes what ``nn.Sequential(BatchNorm2d(64), nn.ReLU())``
computes (timm's BatchNormAct2d API), with one kernel for forward and one for backward: the
normalized tensor is never written out, and backward recomputes the pre-activation from x
instead of saving it. Parameters, buffers and state_dict are exactly a BatchNorm*d's, so a
checkpoint moves between ``BatchNorm2d``, ``BatchNormAct2d`` and ``torch.nn.BatchNorm2d`` in
every direction; only the activation is extra (a constructor argument, not state).

The arithmetic is :func:`bnlab.functional.batch_norm_act`'s; the module is a BatchNorm*d of
bnlab's (so a torch.nn.BatchNorm*d, as timm's BatchNormAct2d is) whose forward step passes the
activation along. Tools that fold a BN into the preceding convolution would drop the
activation: fold a BatchNorm*d, or keep the activation after the folded convolution.
"""

from __future__ import annotations

import torch
from torch import nn

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

    def _activation(self) -> tuple[int, float]:
        return F._act_code(self.act, self.negative_slope)

    def extra_repr(self) -> str:
        slope = f", negative_slope={self.negative_slope}" if self.act == "leaky_relu" else ""
        return f"{super().extra_repr()}, act={self.act!r}{slope}"


class BatchNormAct1d(_BatchNormAct, nn.BatchNorm1d):
    """act(BatchNorm1d(x)) over (N, C) or (N, C, L) input, fused; a torch.nn.BatchNorm1d with
    its state_dict."""

    _expected_dims = (2, 3)


class BatchNormAct2d(_BatchNormAct, nn.BatchNorm2d):
    """act(BatchNorm2d(x)) over (N, C, H, W) input, fused; a torch.nn.BatchNorm2d with its
    state_dict."""

    _expected_dims = (4,)


class BatchNormAct3d(_BatchNormAct, nn.BatchNorm3d):
    """act(BatchNorm3d(x)) over (N, C, D, H, W) input, fused; a torch.nn.BatchNorm3d with its
    state_dict."""

    _expected_dims = (5,)
