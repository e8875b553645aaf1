"""Virtual batch normalization (Salimans et al. 2016, "Improved Techniques for Training GANs").

In training mode the first ``reference_size`` rows of the input are the reference batch: the
caller puts the same fixed reference inputs in front of every batch, so the reference statistics
follow the current weights. The reference rows are normalized with the reference statistics
(mu_R, var_R: BN on them), and every other row x_i with the statistics of the reference rows
together with x_i, each row weighted 1 / (R + 1) (R = ``reference_size``). With row i's own mean
and biased variance m_i, v_i over its positions (m_i = x_i, v_i = 0 for (N, C) input):

    mu_i  = (R * mu_R + m_i) / (R + 1)
    var_i = (R * var_R + v_i) / (R + 1) + R / (R + 1)^2 * (m_i - mu_R)^2

(the exact statistics of the union, merged as two parts: no E[x^2] - E[x]^2), and
y_i = gamma * (x_i - mu_i) / sqrt(var_i + eps) + beta. A row's output never depends on the
other non-reference rows. Gradients flow through the reference statistics too (they are
functions of the weights, as in the paper), by autograd over these plain torch ops: the
per-row statistics are not a BN kernel's shape, so both backends run the same code here.

Running statistics track the reference batch as BN tracks a batch (momentum, the unbiased
reference variance into ``running_var``); evaluation mode is BN's with them: every example
alone, no batch dependence, and close to the training output when R is large (a row's own
weight in its statistics is 1 / (R + 1)). With ``track_running_stats=False`` evaluation mode
keeps the training rule (the input must then start with the reference rows).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnlab import functional as F
from bnlab.nn.batchnorm import _BatchNorm, _check_shape, _layer_forward, count_batch

__all__ = ["VirtualBatchNorm1d", "VirtualBatchNorm2d"]


def _per_channel(v: Tensor, ndim: int) -> Tensor:
    return v.view(1, -1, *([1] * (ndim - 2)))


def _virtual_normalize(
    x: Tensor, reference_size: int, weight: Tensor | None, bias: Tensor | None, eps: float
) -> tuple[Tensor, Tensor, Tensor]:
    """``(y, mu_R, var_R)``: the reference rows with the reference statistics, every other row
    with the reference's and its own (see the module docstring), in the statistics dtype."""
    stat = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    x = x.to(stat)
    ref, rest = x[:reference_size], x[reference_size:]  # (R, C, *), (M, C, *)
    mu_r, var_r = F.batch_stats(ref)  # (C,), biased; differentiable
    pc = _per_channel
    y_ref = (ref - pc(mu_r, x.dim())) * pc(torch.rsqrt(var_r + eps), x.dim())
    if rest.shape[0]:
        flat = rest.flatten(2) if rest.dim() > 2 else rest.unsqueeze(-1)  # (M, C, S)
        m_i = flat.mean(-1)  # (M, C): each row's own statistics over its positions
        v_i = (flat - m_i.unsqueeze(-1)).square().mean(-1)
        big_r = float(reference_size)
        mu_i = (big_r * mu_r + m_i) / (big_r + 1)
        var_i = (big_r * var_r + v_i) / (big_r + 1) + big_r / (big_r + 1) ** 2 * (
            m_i - mu_r
        ).square()
        x_hat = (flat - mu_i.unsqueeze(-1)) * torch.rsqrt(var_i + eps).unsqueeze(-1)
        y = torch.cat([y_ref, x_hat.view(rest.shape)])
    else:
        y = y_ref
    if weight is not None:
        y = y * pc(weight.to(stat), x.dim())
    if bias is not None:
        y = y + pc(bias.to(stat), x.dim())
    return y, mu_r, var_r


@torch.fx.wrap  # one node in a traced graph, as bnlab's BatchNorm (the split reads the shape)
def _virtual_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    layer: str,
    expected_dims: tuple[int, ...],
    num_features: int,
    training: bool,
    track_running_stats: bool,
    momentum: float | None,
    eps: float,
    reference_size: int,
) -> Tensor:
    """One forward step: the virtual-BN rule in training (or without running statistics),
    else BN's evaluation with the running statistics of the reference batches."""
    _check_shape(x, layer, expected_dims, num_features)
    if not training and running_mean is not None:
        return _layer_forward(
            x, weight, bias, running_mean, running_var, num_batches_tracked, layer,
            expected_dims, num_features, training, track_running_stats, momentum, eps,
        )  # fmt: skip
    n = x.shape[0]
    spatial = x.numel() // max(n * x.shape[1], 1)
    if n < reference_size or reference_size * spatial < 2:
        raise ValueError(
            f"{layer} got input of shape {tuple(x.shape)}: in training its first "
            f"{reference_size} rows must be the reference batch, with 2 or more values per "
            f"channel; put the reference inputs in front of the batch "
            f"(torch.cat([reference, x])), or call .eval() to use the running statistics"
        )
    F._check(x, running_mean, running_var, weight, bias, True, eps, who=layer)
    y, mu_r, var_r = _virtual_normalize(x, reference_size, weight, bias, eps)
    if training and track_running_stats and running_mean is not None:
        factor = count_batch(training, track_running_stats, momentum, num_batches_tracked)
        F.update_running_stats(
            running_mean, running_var, mu_r.detach(), var_r.detach(), reference_size * spatial,
            factor,
        )  # fmt: skip
    return y.to(x.dtype)


class _VirtualBatchNorm(_BatchNorm):
    """Virtual BN on bnlab's BN base: torch's parameters, buffers and state_dict."""

    def __init__(
        self,
        num_features: int,
        reference_size: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        if not isinstance(reference_size, int) or reference_size < 1:
            raise ValueError(
                f"{type(self).__name__}: reference_size must be an int >= 1 (the rows of the "
                f"reference batch in front of every training input), got {reference_size!r}"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, **factory, bias=bias
        )
        self.reference_size = reference_size

    def values_per_statistic(self, input: Tensor) -> int:
        """The fewest values any statistic of ``input`` is computed from where batch statistics
        are used: the reference batch's values per channel (the doctor's batch-of-one check)."""
        spatial = input.numel() // max(input.shape[0] * input.shape[1], 1)
        return min(self.reference_size, input.shape[0]) * spatial

    def forward(self, input: Tensor) -> Tensor:
        return _virtual_forward(input, *self._step_args(), self.reference_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reference_size={self.reference_size}"


class VirtualBatchNorm1d(_VirtualBatchNorm, nn.BatchNorm1d):
    """Virtual BN over (N, C) or (N, C, L) input, the first ``reference_size`` rows the
    reference batch; a torch.nn.BatchNorm1d's state."""

    _expected_dims = (2, 3)


class VirtualBatchNorm2d(_VirtualBatchNorm, nn.BatchNorm2d):
    """Virtual BN over (N, C, H, W) input, the first ``reference_size`` rows the reference
    batch; a torch.nn.BatchNorm2d's state."""

    _expected_dims = (4,)
