"""Batch normalization in torch, with the hand-derived backward of :mod:`bnlab.reference`.

``batch_norm`` has the signature and meaning of ``torch.nn.functional.batch_norm``. Its
gradient is not autograd through primitive ops: ``_BatchNormFunction.backward`` applies the
closed form derived in :func:`bnlab.reference.batch_norm_backward`. When a caller asks for a
graph of the backward (``create_graph=True``, e.g. a gradient-penalty GAN), the same formula is
evaluated with differentiable ops on statistics recomputed from the saved input, so gradients
of gradients are exact too.

Numerical decisions, each pinned by a test:

- normalize with the biased variance; store the unbiased one in ``running_var``;
- variance by two passes (mean first, then mean squared deviation), never E[x^2] - E[x]^2;
- float16 / bfloat16 inputs accumulate statistics in float32 and return their own dtype;
- running statistics are updated in place under ``no_grad``: they never carry autograd history;
- contiguous and channels_last inputs; the output keeps the input's memory format.

All arithmetic works on a *canonical view* of the input: ``(M, C)`` with the reduction over
dim 0 for 2D and channels_last inputs (channels_last is exactly a contiguous ``(N*H*W, C)``
matrix), ``(N, C, S)`` with the reduction over dims (0, 2) for contiguous N-d inputs. Faster
kernels (a later backend) plug in at ``_forward_train`` / ``_backward``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["batch_norm", "batch_stats", "update_running_stats"]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


@dataclass(frozen=True)
class _Layout:
    """How to see an (N, C, *) tensor as a canonical view, and back."""

    shape: torch.Size
    channels_last: bool

    @staticmethod
    def of(x: Tensor) -> _Layout:
        channels_last = x.dim() > 2 and not x.is_contiguous() and _is_channels_last(x)
        return _Layout(x.shape, channels_last)

    @property
    def reduce_dims(self) -> tuple[int, ...]:
        return (0,) if len(self.shape) == 2 or self.channels_last else (0, 2)

    @property
    def count(self) -> int:
        """Values per channel, m."""
        c = self.shape[1]
        return self.shape.numel() // c if c else 0

    def view(self, t: Tensor) -> Tensor:
        c = self.shape[1]
        if len(self.shape) == 2:
            return t
        if self.channels_last:
            t = t.contiguous(memory_format=_memory_format(len(self.shape)))
            return t.movedim(1, -1).reshape(-1, c)  # (M, C), a view
        return t.contiguous().view(self.shape[0], c, -1)  # (N, C, S)

    def unview(self, t: Tensor) -> Tensor:
        if len(self.shape) == 2:
            return t
        if self.channels_last:
            n, c, *spatial = self.shape
            return t.view(n, *spatial, c).movedim(-1, 1)
        return t.view(self.shape)

    def per_channel(self, v: Tensor) -> Tensor:
        """(C,) -> broadcastable against the canonical view."""
        return v if len(self.shape) == 2 or self.channels_last else v.view(1, -1, 1)


def _memory_format(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() in (4, 5) and x.is_contiguous(memory_format=_memory_format(x.dim()))


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """t in dtype; free when it already is (Tensor.to costs a dispatch even as a no-op)."""
    return t if t.dtype == dtype else t.to(dtype)


def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of an (N, C, *) tensor, in the statistics dtype.

    Differentiable (plain torch ops); used where autograd must see the statistics.
    """
    layout = _Layout.of(x)
    xv = layout.view(x).to(_stat_dtype(x))
    mean = xv.mean(layout.reduce_dims)
    var = (xv - layout.per_channel(mean)).square().mean(layout.reduce_dims)  # two-pass
    return mean, var


def _batch_stats_into(xv: Tensor, layout: _Layout, scratch: Tensor) -> tuple[Tensor, Tensor]:
    """Two-pass mean and biased variance of the canonical view, no graph, one scratch buffer.

    ``scratch`` (same shape as ``xv``, statistics dtype) receives (x - mean)^2; the caller
    reuses it as the output buffer, so the forward pass allocates one full-size tensor.
    torch.var_mean is avoided on purpose: its CPU Welford kernel is ~30x slower than these
    three vectorized passes here.
    """
    dims = layout.reduce_dims
    mean = xv.sum(dims, dtype=scratch.dtype).div_(layout.count)
    torch.sub(xv, layout.per_channel(mean), out=scratch)
    var = scratch.square_().sum(dims).div_(layout.count)
    return mean, var


@torch.no_grad()
def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float,
) -> None:
    """new = (1 - momentum) * old + momentum * batch, with the unbiased batch variance."""
    if running_mean is not None:
        running_mean.lerp_(_as(mean, running_mean.dtype), momentum)
    if running_var is not None:
        unbiased = var * (count / max(count - 1, 1))
        running_var.lerp_(_as(unbiased, running_var.dtype), momentum)


def _affine_coefficients(
    mean: Tensor, inv_std: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor]:
    """y = x * scale + shift with scale = gamma * inv_std, shift = beta - mean * scale."""
    scale = inv_std if weight is None else _as(weight, inv_std.dtype) * inv_std
    shift = -mean * scale
    if bias is not None:
        shift = shift + _as(bias, shift.dtype)
    return scale, shift


def _forward_kernel(
    x: Tensor,
    layout: _Layout,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """y = gamma * (x - mean) * inv_std + beta, evaluated as y = x * scale + shift.

    Returns ``(y, mean, inv_std)``; the (C,) statistics are what backward needs. No graph.
    """
    stat = _stat_dtype(x)
    xv = layout.view(x)
    if xv.dtype != stat:
        xv = xv.to(stat)
    out = torch.empty_like(xv, dtype=stat)  # the only full-size allocation
    if training:
        mean, var = _batch_stats_into(xv, layout, scratch=out)
        update_running_stats(running_mean, running_var, mean, var, layout.count, momentum)
    else:
        assert running_mean is not None and running_var is not None
        mean = running_mean.to(stat, copy=True)  # a copy: the buffer may change before backward
        var = running_var.to(stat)
    inv_std = torch.rsqrt(var + eps)
    scale, shift = _affine_coefficients(mean, inv_std, weight, bias)
    torch.addcmul(layout.per_channel(shift), xv, layout.per_channel(scale), out=out)
    return layout.unview(_as(out, x.dtype)), mean, inv_std


def _backward_kernel(
    dy: Tensor,
    x: Tensor,
    layout: _Layout,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    training: bool,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The hand-derived gradients of reference.batch_norm_backward, on the canonical view.

    With S0 = sum(dy), S1 = sum(dy * (x - mean)) per channel, m values per channel and
    a = gamma * inv_std:
        dbeta  = S0
        dgamma = inv_std * S1
        dx     = a * dy - a / m * (S0 + inv_std^2 * S1 * (x - mean))     (training)
        dx     = a * dy                                                 (eval: fixed stats)
    The training dx is evaluated as a * dy + b * x + c with per-channel b, c: two fused passes
    into one buffer, which also served as scratch for S1. No graph.
    """
    need_dx, need_dw, need_db = needs
    stat = mean.dtype
    pc = layout.per_channel
    dims = layout.reduce_dims
    xv, dyv = layout.view(x), layout.view(dy)
    if xv.dtype != stat:
        xv, dyv = xv.to(stat), dyv.to(stat)
    a = inv_std if weight is None else _as(weight, stat) * inv_std

    need_stats = training and need_dx
    s0 = dyv.sum(dims) if (need_db or need_stats) else None
    buf = None
    s1 = None
    if need_dw or need_stats:
        buf = torch.sub(xv, pc(mean))
        s1 = buf.mul_(dyv).sum(dims)

    dx = None
    if need_dx:
        if training:
            assert s0 is not None and s1 is not None and buf is not None
            m = layout.count
            b = a * inv_std * inv_std * s1 / -m
            c = a * s0 / -m - b * mean
            torch.addcmul(pc(c), xv, pc(b), out=buf).addcmul_(dyv, pc(a))
            dxv = buf
        else:
            dxv = dyv * pc(a)
        dx = layout.unview(_as(dxv, x.dtype))
    dweight = None
    if need_dw and weight is not None and s1 is not None:
        dweight = _as(s1 * inv_std, weight.dtype)
    dbias = s0 if need_db else None
    return dx, dweight, dbias


def _differentiable_backward(
    dy: Tensor,
    x: Tensor,
    layout: _Layout,
    saved_mean: Tensor,
    saved_inv_std: Tensor,
    weight: Tensor | None,
    eps: float,
    training: bool,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The same formula, written plainly with out-of-place differentiable ops.

    Used when the caller builds a graph of the backward (``create_graph=True``: double
    backward). In training mode the batch statistics are functions of x, so they are
    recomputed from x with autograd on, and the formula's dependence on them is differentiated
    too. The fast kernel above cannot serve here: its in-place passes would hide values that
    autograd needs.
    """
    stat = saved_mean.dtype
    xv, dyv = layout.view(x).to(stat), layout.view(dy).to(stat)
    pc = layout.per_channel
    dims = layout.reduce_dims
    if training:
        mean, var = batch_stats(x)
        inv_std = torch.rsqrt(var + eps)
    else:
        mean, inv_std = saved_mean, saved_inv_std
    gamma = torch.ones_like(inv_std) if weight is None else weight.to(stat)
    x_hat = (xv - pc(mean)) * pc(inv_std)
    dbeta = dyv.sum(dims)
    dgamma = (dyv * x_hat).sum(dims)
    if training:
        m = layout.count
        dxv = pc(gamma * inv_std / m) * (m * dyv - pc(dbeta) - x_hat * pc(dgamma))
    else:
        dxv = dyv * pc(gamma * inv_std)
    dx = layout.unview(dxv).to(x.dtype)
    return dx, (None if weight is None else dgamma.to(weight.dtype)), dbeta


class _BatchNormFunction(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
    ) -> Tensor:
        layout = _Layout.of(x)
        y, mean, inv_std = _forward_kernel(
            x, layout, weight, bias, running_mean, running_var, training, momentum, eps
        )
        # x is saved as is (no copy); mean and inv_std are fresh (C,) tensors, never the
        # running buffers, which later steps update in place.
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.layout = layout
        ctx.training = training
        ctx.eps = eps
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, inv_std = ctx.saved_tensors
        layout: _Layout = ctx.layout
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        if layout.channels_last:
            dy = dy.contiguous(memory_format=_memory_format(dy.dim()))
        grads: tuple[Tensor | None, Tensor | None, Tensor | None]
        if torch.is_grad_enabled():  # create_graph=True: keep the backward differentiable
            grads = _differentiable_backward(
                dy, x, layout, mean, inv_std, weight, ctx.eps, ctx.training
            )
        else:
            grads = _backward_kernel(
                dy, x, layout, mean, inv_std, weight, ctx.training, (need_dx, need_dw, need_db)
            )
        dx, dweight, dbias = grads
        return (
            dx if need_dx else None,
            dweight if need_dw else None,
            dbias if need_db else None,
            None,
            None,
            None,
            None,
            None,
        )


def _check(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
) -> None:
    if input.dim() < 2:
        raise ValueError(
            f"batch_norm expects input of shape (N, C, *), got shape {tuple(input.shape)}"
        )
    c = input.shape[1]
    for name, t in (
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
        ("bias", bias),
    ):
        if t is not None and t.shape != (c,):
            raise ValueError(
                f"batch_norm: {name} has shape {tuple(t.shape)} but the input "
                f"{tuple(input.shape)} has {c} channels; expected ({c},)"
            )
    if training:
        size = input.shape
        if size.numel() // max(c, 1) <= 1 and size.numel() > 0:
            # Same condition and wording as torch.nn.functional.batch_norm.
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size {size}"
            )
        if eps <= 0.0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    else:
        if eps < 0.0:
            raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")
        if running_mean is None or running_var is None:
            raise ValueError(
                "batch_norm in evaluation mode (training=False) needs running_mean and "
                "running_var; pass training=True to normalize with batch statistics"
            )


def batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
) -> Tensor:
    """Batch normalization over channel dim 1; same signature and meaning as
    ``torch.nn.functional.batch_norm``.

    Args:
        input: (N, C, *) tensor, contiguous or channels_last.
        running_mean, running_var: (C,) buffers. Used for normalization when ``training`` is
            False; updated in place (without autograd history) when ``training`` is True.
        weight, bias: (C,) gamma and beta, or None.
        training: normalize with batch statistics (and update the running ones).
        momentum: new = (1 - momentum) * old + momentum * batch.
        eps: added to the variance before the square root.

    Returns:
        Tensor of the input's shape, dtype and memory format.
    """
    _check(input, running_mean, running_var, weight, bias, training, eps)
    out: Tensor = _BatchNormFunction.apply(
        input, weight, bias, running_mean, running_var, training, momentum, eps
    )
    return out
