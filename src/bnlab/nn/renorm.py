"""Batch Renormalization (Ioffe 2017): batch statistics corrected toward the running ones.

In training mode, with the batch statistics mu_B, sigma_B = sqrt(var_B + eps) (biased var_B) and
the running ones mu, sigma = sqrt(running_var + eps) as they were *before* this step::

    r = clip(sigma_B / sigma, 1 / r_max, r_max)        d = clip((mu_B - mu) / sigma, -d_max, d_max)
    y = gamma * ((x - mu_B) / sigma_B * r + d) + beta

with r and d constants in the gradient (the paper's stop_gradient). Where the clips do not bind,
y = gamma * (x - mu) / sigma + beta: the training output is the evaluation transform, so train
and eval agree. With r_max = 1 and d_max = 0 it is batch normalization exactly. The running
statistics are updated as BN updates them (the unbiased batch variance into ``running_var``);
evaluation mode is BN's.

The math stays in :func:`bnlab.functional.batch_norm`: batch renorm *is* BN with
weight' = gamma * r and bias' = beta + gamma * d, since
gamma * r * x_hat + beta + gamma * d = gamma * (x_hat * r + d) + beta. The gradients through
weight' and bias' reach gamma and beta by autograd (dgamma = r * sum(dy * x_hat) + d * sum(dy)).

The paper's warm-up: r_max = 1 and d_max = 0 (plain BN) for the first steps, then relaxed. Here
``warmup_start`` steps of BN, then a linear ramp over ``warmup_steps`` steps to ``r_max`` and
``d_max``, counted by ``num_batches_tracked`` (a buffer: a loaded checkpoint resumes the
schedule). The paper (Sec. 4) relaxed r_max 1 -> 3 over steps 5k..40k and d_max 0 -> 5 over
5k..25k; ``warmup_start=5000, warmup_steps=35000`` ramps both over 5k..40k. On a GPU the
schedule is computed on the device from the counter (no host read, no sync per step, one graph
under torch.compile); on the CPU the counter is read, which is free there and lets the steps
before ``warmup_start`` skip r and d's statistics pass (see :func:`limits_now`).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import Tensor, nn

from bnlab import functional as F
from bnlab.nn.batchnorm import _BatchNorm, _check_shape, _layer_forward

__all__ = [
    "HOST_READ_DEVICES",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "limits_now",
    "renorm_affine",
    "renorm_limits",
]


def renorm_limits(
    step: int, r_max: float, d_max: float, warmup_start: int = 0, warmup_steps: int = 0
) -> tuple[float, float]:
    """``(r_max, d_max)`` in force at training step ``step`` (0-based: batches seen before it).

    (1, 0) before ``warmup_start``; then linear to (``r_max``, ``d_max``) over
    ``warmup_steps`` steps; (``r_max``, ``d_max``) from ``warmup_start + warmup_steps`` on.
    """
    if step < warmup_start:
        return 1.0, 0.0
    frac = 1.0 if warmup_steps <= 0 else min((step - warmup_start) / warmup_steps, 1.0)
    return 1.0 + (r_max - 1.0) * frac, d_max * frac


# Devices whose step counter is read on the host for the warm-up (a free read there); on any
# other device the limits are computed on the device instead (see limits_now).
HOST_READ_DEVICES = frozenset({"cpu"})
Limit = float | Tensor  # a clip limit: a number, or a 0-dim tensor computed on the device


def limits_now(
    num_batches_tracked: Tensor,
    limits: tuple[float, float, int, int],
    *,
    on_host: bool | None = None,
) -> tuple[Limit, Limit]:
    """``(r_max, d_max)`` for the training step ``num_batches_tracked`` counts, with ``limits``
    = (r_max, d_max, warmup_start, warmup_steps).

    Without a warm-up the limits do not depend on the step: two numbers, the counter unread.
    With one, on the CPU (``HOST_READ_DEVICES``) the counter is read and the limits are numbers;
    on a GPU reading it would wait for the device (one sync per layer per step), so the limits
    are 0-dim float64 tensors computed there from the counter by the same arithmetic as
    :func:`renorm_limits` (equal to its numbers bit for bit), and the caller clamps with them.
    ``on_host`` forces one way (True: numbers, e.g. for display; False: tensors).
    """
    if limits[2] <= 0 and limits[3] <= 0:
        return renorm_limits(0, *limits)  # the same numbers at every step
    if on_host is None:
        on_host = num_batches_tracked.device.type in HOST_READ_DEVICES
    if on_host:
        return renorm_limits(int(num_batches_tracked), *limits)
    r_max, d_max, start, steps = limits
    past = num_batches_tracked.to(torch.float64) - start  # exact: counts below 2**53
    frac = past.div(steps).clamp(0.0, 1.0) if steps > 0 else (past >= 0).to(torch.float64)
    return 1.0 + (r_max - 1.0) * frac, d_max * frac


def _is_bn(r_max: Limit, d_max: Limit) -> bool:
    """Whether the limits are known, without a device read, to be BN's (1, 0)."""
    return isinstance(r_max, float) and isinstance(d_max, float) and r_max == 1.0 and d_max == 0.0


def renorm_affine(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor,
    running_var: Tensor,
    eps: float,
    r_max: Limit,
    d_max: Limit,
) -> tuple[Tensor, Tensor]:
    """Batch renorm as BN's affine: ``(gamma * r, beta + gamma * d)`` for the batch ``x``
    (N, K, *), r and d from its per-channel statistics and the running ones (no gradient).

    ``weight``, ``bias`` and the running statistics have C channels with K a multiple of C:
    K = k * C is k stacked groups (Ghost Batch Renorm's chunks, each chunk a block of C
    channels), each compared with the same running statistics and scaled by the same gamma.
    """
    k = x.shape[1] // running_mean.shape[0]
    with torch.no_grad():
        mean_b, m2_b = F.batch_norm_stats(x)  # (K,) in the statistics dtype
        count = x.numel() // x.shape[1]
        std_b = (m2_b / count).add_(eps).sqrt_()
        std = running_var.to(std_b.dtype).add(eps).sqrt_().repeat(k)
        # numbers, or (a warm-up off the CPU) float64 device tensors cast to the statistics'
        # dtype; clamp_ takes either (Any: its stubs take one kind per call, not the union)
        low, high, d_high = (
            t.to(std_b.dtype) if isinstance(t, Tensor) else t for t in (1.0 / r_max, r_max, d_max)
        )
        low, high, d_high = cast(Any, low), cast(Any, high), cast(Any, d_high)
        r = (std_b / std).clamp_(low, high)
        d = (mean_b - running_mean.to(mean_b.dtype).repeat(k)).div_(std).clamp_(-d_high, d_high)
        pdtype = running_mean.dtype  # the parameters' dtype (float32 for a half input)
        r, d = r.to(pdtype), d.to(pdtype)
    gamma = None if weight is None else weight.repeat(k)
    weight_r = r if gamma is None else gamma * r
    bias_r = d if gamma is None else gamma * d
    if bias is not None:
        bias_r = bias.repeat(k) + bias_r
    return weight_r, bias_r


@torch.fx.wrap  # one node in a traced graph, as bnlab's BatchNorm (its limits read a buffer)
def _renorm_forward(
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
    track_running_stats: bool,  # always True (refused at construction otherwise)
    momentum: float | None,
    eps: float,
    limits: tuple[float, float, int, int],
) -> Tensor:
    """One forward step: r and d from this batch and the running statistics before the step,
    then bnlab's BN step with weight' = gamma * r, bias' = beta + gamma * d."""
    _check_shape(x, layer, expected_dims, num_features)
    # The limits the warm-up sets for this step (plain BN while they are (1, 0): r = 1, d = 0).
    r_max, d_max = (
        limits_now(num_batches_tracked, limits)
        if training and num_batches_tracked is not None
        else (1.0, 0.0)
    )
    if _is_bn(r_max, d_max) or x.numel() // max(x.shape[1], 1) <= 1:
        # Evaluation, plain BN during warm-up, an empty batch or a batch of 1 (refused by the
        # BN step, naming the layer): no statistics pass for r and d that change nothing
        return _layer_forward(
            x, weight, bias, running_mean, running_var, num_batches_tracked, layer,
            expected_dims, num_features, training, track_running_stats, momentum, eps,
        )  # fmt: skip
    # a renorm layer always tracks running statistics (refused at construction otherwise)
    assert running_mean is not None and running_var is not None
    assert num_batches_tracked is not None
    F._check(x, running_mean, running_var, weight, bias, True, eps, who=layer)
    # r and d need mu_B and sigma_B before the BN step normalizes with them: one extra read of x
    # (a statistics pass, no grad, the compiled kernels where they apply) beside BN's ~4 passes
    # (stats + normalize forward, two backward). Recovering mu_B from the running statistics
    # after the step would save it but loses precision (and is undefined at momentum 0), and
    # composing BN's stages by hand would duplicate its autograd: both cost more than a read.
    weight_r, bias_r = renorm_affine(x, weight, bias, running_mean, running_var, eps, r_max, d_max)
    return _layer_forward(
        x, weight_r, bias_r, running_mean, running_var, num_batches_tracked, layer,
        expected_dims, num_features, training, True, momentum, eps,
    )  # fmt: skip


class _BatchRenorm(_BatchNorm):
    """Batch renormalization on bnlab's BN base: torch's parameters, buffers and state_dict."""

    def __init__(
        self,
        num_features: int,
        r_max: float = 3.0,
        d_max: float = 5.0,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
        warmup_start: int = 0,
        warmup_steps: int = 0,
    ) -> None:
        name = type(self).__name__
        if not track_running_stats:
            raise ValueError(
                f"{name}: track_running_stats=False leaves nothing to renormalize toward (r and "
                f"d compare the batch with the running statistics); use "
                f"BatchNorm{name[-2:]}(track_running_stats=False) for batch statistics alone"
            )
        if not r_max >= 1.0 or not d_max >= 0.0:
            raise ValueError(
                f"{name}: needs r_max >= 1 and d_max >= 0 (r is clipped to [1/r_max, r_max], d "
                f"to [-d_max, d_max]; r_max=1, d_max=0 is BN), got r_max={r_max}, d_max={d_max}"
            )
        if warmup_start < 0 or warmup_steps < 0:
            raise ValueError(
                f"{name}: warmup_start and warmup_steps count steps (>= 0), got "
                f"{warmup_start} and {warmup_steps}"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(num_features, eps, momentum, affine, True, **factory, bias=bias)
        self.r_max = float(r_max)
        self.d_max = float(d_max)
        self.warmup_start = int(warmup_start)
        self.warmup_steps = int(warmup_steps)

    def clip_limits(self) -> tuple[float, float]:
        """``(r_max, d_max)`` the next training step uses (the warm-up applied), as numbers
        (a GPU's counter is read: a sync, fine for display, not once per step)."""
        assert self.num_batches_tracked is not None
        r_max, d_max = limits_now(self.num_batches_tracked, self._limits(), on_host=True)
        assert isinstance(r_max, float) and isinstance(d_max, float)
        return r_max, d_max

    def _limits(self) -> tuple[float, float, int, int]:
        return self.r_max, self.d_max, self.warmup_start, self.warmup_steps

    def forward(self, input: Tensor) -> Tensor:
        return _renorm_forward(input, *self._step_args(), self._limits())

    def extra_repr(self) -> str:
        warmup = (
            f", warmup_start={self.warmup_start}, warmup_steps={self.warmup_steps}"
            if self.warmup_start or self.warmup_steps
            else ""
        )
        return f"{super().extra_repr()}, r_max={self.r_max}, d_max={self.d_max}{warmup}"


class BatchRenorm1d(_BatchRenorm, nn.BatchNorm1d):
    """Batch renormalization over (N, C) or (N, C, L) input; a torch.nn.BatchNorm1d's state."""

    _expected_dims = (2, 3)


class BatchRenorm2d(_BatchRenorm, nn.BatchNorm2d):
    """Batch renormalization over (N, C, H, W) input; a torch.nn.BatchNorm2d's state."""

    _expected_dims = (4,)


class BatchRenorm3d(_BatchRenorm, nn.BatchNorm3d):
    """Batch renormalization over (N, C, D, H, W) input; a torch.nn.BatchNorm3d's state."""

    _expected_dims = (5,)
