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
- contiguous and channels_last inputs; the output keeps the input's memory format. Any other
  layout (transposed, sliced, expanded) is first copied into the format torch's own batch norm
  gives its output for it (``Tensor.suggest_memory_format``), so the output strides match
  torch's and ``view`` accepts what it accepts on torch's;
- an empty input (N = 0, or any zero-size dimension) gives an empty output that is still in the
  autograd graph (weight and bias get zero gradients) and leaves the running statistics alone,
  as torch does;
- the input must be floating point; weight, bias and running statistics share one dtype, the
  input's, or float32 for a float16 / bfloat16 input (torch's rule, and its exception types).

All arithmetic works on a *canonical view* of the input: ``(M, C)`` with the reduction over
dim 0 for 2D and channels_last inputs (channels_last is exactly a contiguous ``(N*H*W, C)``
matrix), ``(N, C, S)`` with the reduction over dims (0, 2) for contiguous N-d inputs.

The math is written once, here, in plain torch, as four stages (statistics, normalize;
backward sums, dx) that one process composes and a distributed BN cuts apart. Per-channel
coefficients are folded so that y = x * scale + shift and dx = a * dy + b * x + c are single
fused passes. Compiled renditions of the same stages (:mod:`bnlab.kernels`: C++ on CPU, Triton
on CUDA) run where they apply and the backend allows (``BNLAB_BACKEND``); this plain-torch path
serves every other input and every double backward. ``batch_norm_act`` fuses a ReLU or leaky
ReLU after the affine map.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "batch_norm",
    "batch_norm_act",
    "batch_norm_backward_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_elemt",
    "batch_norm_merge_stats",
    "batch_norm_stats",
    "batch_stats",
    "register_kernels",
    "update_running_stats",
]

_LOW_PRECISION = (torch.float16, torch.bfloat16)


class _Layout:
    """How an (N, C, *) tensor is seen as its canonical view, and back."""

    __slots__ = ("channels_last", "count", "dims", "ndim", "shape", "spatial")

    def __init__(self, x: Tensor, channels_last: bool | None = None) -> None:
        """``channels_last`` None: read from x's strides; False: see x as contiguous (under
        torch.func, where a sample's strides cannot be queried)."""
        self.shape = x.shape
        self.ndim = x.dim()
        if channels_last is None:
            channels_last = _output_memory_format(x) is not torch.contiguous_format
        self.channels_last = channels_last
        self.dims: int | tuple[int, int] = 0 if self.ndim == 2 or self.channels_last else (0, 2)
        self.spatial = math.prod(self.shape[2:])  # S; explicit, so that empty inputs view too
        self.count = self.shape[0] * self.spatial  # values per channel, m

    def view(self, t: Tensor) -> Tensor:
        c = self.shape[1]
        if self.ndim == 2:
            return t.contiguous()  # (M, C); a transposed input would give transposed outputs
        if self.channels_last:
            t = t.contiguous(memory_format=_memory_format(self.ndim))
            return t.movedim(1, -1).reshape(self.count, c)  # (M, C), a view
        return t.contiguous().view(self.shape[0], c, self.spatial)  # (N, C, S)

    def unview(self, t: Tensor) -> Tensor:
        if self.ndim == 2:
            return t
        if self.channels_last:
            n, c, *spatial = self.shape
            return t.view(n, *spatial, c).movedim(-1, 1)
        return t.view(self.shape)

    def pc(self, v: Tensor) -> Tensor:
        """(C,) -> broadcastable against the canonical view."""
        return v if self.dims == 0 else v.view(1, -1, 1)


def _memory_format(ndim: int) -> torch.memory_format:
    return torch.channels_last if ndim == 4 else torch.channels_last_3d


def _is_channels_last(x: Tensor) -> bool:
    return x.dim() in (4, 5) and x.is_contiguous(memory_format=_memory_format(x.dim()))


def _output_memory_format(x: Tensor) -> torch.memory_format:
    """The memory format of torch's batch-norm output for ``x``: ``x.suggest_memory_format()``.

    Contiguous and channels_last inputs keep their format; any other 4D/5D layout counts as
    channels_last when its strides are ordered like it (C fastest, then W, H, (D), N), as in a
    sliced channels_last tensor.
    """
    if x.dim() not in (4, 5) or x.is_contiguous():
        return torch.contiguous_format
    if _is_channels_last(x) or _strides_like_channels_last(x.shape, x.stride()):
        return _memory_format(x.dim())
    return torch.contiguous_format


def _strides_like_channels_last(shape: tuple[int, ...], strides: tuple[int, ...]) -> bool:
    """c10's ``is_channels_last_strides_2d/3d``, the rule behind ``suggest_memory_format``.

    By hand because Python has it only as ``torch._prims_common.suggest_memory_format``, which
    is private and imports torch's symbolic-shapes machinery on first use; a test pins our
    output strides to torch's on transposed, permuted, sliced and expanded inputs.
    """
    if strides[1] == 0:  # a broadcast channel dim: ambiguous, torch says contiguous
        return False
    order = (1, 3, 2, 0) if len(shape) == 4 else (1, 4, 3, 2, 0)  # C, W, H, (D,) N
    least = 0
    for d in order:
        if shape[d] == 0 or strides[d] < least:
            return False
        if d == 0 and least == strides[1]:  # N111-like: ambiguous, torch says contiguous
            return False
        least = strides[d] * shape[d]
    return True


def _stat_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in _LOW_PRECISION else x.dtype


def batch_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance of an (N, C, *) tensor, in the statistics dtype.

    Differentiable (plain torch ops, two passes); used where autograd must see the statistics.
    """
    layout = _Layout(x)
    return _differentiable_stats(layout.view(x).to(_stat_dtype(x)), layout)


def _differentiable_stats(xv: Tensor, layout: _Layout) -> tuple[Tensor, Tensor]:
    """(mean, biased var) of a canonical view, out-of-place ops only (autograd, torch.func)."""
    mean = xv.mean(layout.dims)
    var = (xv - layout.pc(mean)).square().mean(layout.dims)
    return mean, var


def update_running_stats(
    running_mean: Tensor | None,
    running_var: Tensor | None,
    mean: Tensor,
    var: Tensor,
    count: int,
    momentum: float,
) -> None:
    """new = (1 - momentum) * old + momentum * batch, with the unbiased batch variance
    (``count / (count - 1)`` times the biased ``var`` that normalized the batch). In place,
    never with autograd history."""
    if torch.is_grad_enabled():  # from user code; inside Function.forward grad is off already
        with torch.no_grad():
            update_running_stats(running_mean, running_var, mean, var, count, momentum)
        return
    if running_mean is not None:
        running_mean.mul_(1.0 - momentum).add_(mean, alpha=momentum)
    if running_var is not None:
        unbias = count / max(count - 1, 1)
        running_var.mul_(1.0 - momentum).add_(var, alpha=momentum * unbias)


# ---- the math in plain torch, as stages ---------------------------------------------------------
#
# One process:   stats -> elemt            and   backward_reduce -> backward_elemt
# Several ranks: stats -> [all_gather] -> merge_stats -> elemt, and backward_reduce ->
# [all_reduce] -> backward_elemt. bnlab.nn.SyncBatchNorm inserts the communication;
# _TorchKernels composes the same stages for one process. The compiled kernels (bnlab.kernels)
# implement these formulas, cut the same way; the core tests run against both.
#
# An optional activation is fused after the affine map (bnlab.nn.BatchNormAct*d):
# y = act(z), z = gamma * x_hat + beta. Backward recomputes z from x (not saved) and uses
# dz = dy * act'(z) in place of dy.
#
# Contract: called with grad mode on and an input that requires grad (a backward with
# create_graph=True), the stages are plain differentiable torch ops: SyncBatchNorm's double
# backward composes them under autograd. The compiled kernels serve them otherwise.

_ACTS = {"identity": 0, "relu": 1, "leaky_relu": 2}  # the codes of bnlab::batch_norm


def _stats(xv: Tensor, layout: _Layout) -> tuple[Tensor, Tensor]:
    """Per-channel (mean, m2) of a canonical view in the statistics dtype; two passes."""
    mean = xv.sum(layout.dims).div_(max(layout.count, 1))  # an empty batch: mean 0, m2 0
    m2 = torch.sub(xv, layout.pc(mean)).square_().sum(layout.dims)
    return mean, m2


def _affine(
    mean: Tensor, inv_std: Tensor, weight: Tensor | None, bias: Tensor | None
) -> tuple[Tensor, Tensor]:
    """scale = gamma * inv_std, shift = beta - mean * scale, so that z = x * scale + shift."""
    stat = mean.dtype
    scale = inv_std if weight is None else weight.to(stat) * inv_std
    if bias is None:
        shift = torch.mul(mean, scale).neg_()
    else:
        shift = torch.addcmul(bias.to(stat), mean, scale, value=-1)
    return scale, shift


def _elemt(
    xv: Tensor,
    layout: _Layout,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    act: int = 0,
    slope: float = 0.0,
) -> Tensor:
    """y = act(x * scale + shift) from a canonical view, in the statistics dtype, returned in
    x's shape and output memory format.

    Computed on x's shape (the canonical view viewed back, (C,) factors broadcast as
    (1, C, 1, ...)), so that y is a fresh tensor, never a view: an autograd.Function (ours,
    SyncBatchNorm's) must not return a view of its own temporary, else an in-place op after it
    (``nn.ReLU(inplace=True)`` after the BN, as in torchvision's ResNet) raises "Output 0 of
    ... is a view and is being modified inplace", eagerly and under torch.compile.
    """
    scale, shift = _affine(mean, inv_std, weight, bias)
    per_channel = (1, layout.shape[1]) + (1,) * (layout.ndim - 2)
    z = torch.addcmul(shift.view(per_channel), layout.unview(xv), scale.view(per_channel))
    if act == 0:
        return z
    return torch.nn.functional.leaky_relu_(z, slope) if act == 2 else z.relu_()


def _act_grad(
    dyv: Tensor,
    xv: Tensor,
    layout: _Layout,
    scale_shift: tuple[Tensor, Tensor],
    act: int,
    slope: float,
) -> Tensor:
    """dz = dy * act'(z), z recomputed from x exactly as in forward (act'(0) = slope, as torch)."""
    if act == 0:
        return dyv
    scale, shift = scale_shift
    positive = torch.addcmul(layout.pc(shift), xv, layout.pc(scale)) > 0
    if act == 1 or slope == 0.0:
        return dyv.where(positive, 0.0)
    return dyv.where(positive, dyv * slope)


def _backward_reduce(
    dyv: Tensor,
    xv: Tensor,
    layout: _Layout,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    act: int = 0,
    slope: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Per-channel (S0, S1) = (sum dz, sum dz * x_hat): dbeta and dgamma."""
    if act:
        dyv = _act_grad(dyv, xv, layout, _affine(mean, inv_std, weight, bias), act, slope)
    s0 = dyv.sum(layout.dims)
    s1 = torch.sub(xv, layout.pc(mean)).mul_(dyv).sum(layout.dims).mul_(inv_std)
    return s0, s1


def _backward_elemt(
    dyv: Tensor,
    xv: Tensor,
    layout: _Layout,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    sums: tuple[Tensor, Tensor] | None,
    count: int,
    bias: Tensor | None = None,
    act: int = 0,
    slope: float = 0.0,
) -> Tensor:
    """dx on a canonical view, from the sums (S0, S1) over all ``count`` values of a channel.

    With a = gamma * inv_std and m = count:
        dx = a / m * (m * dz - S0 - x_hat * S1) = a * dz + b * x + c,
        b = -a * inv_std * S1 / m,   c = -a * S0 / m - b * mean:
    two fused passes. ``sums=None`` is evaluation mode (fixed statistics): dx = a * dz.
    """
    if act:
        dyv = _act_grad(dyv, xv, layout, _affine(mean, inv_std, weight, bias), act, slope)
    a = inv_std if weight is None else weight.to(mean.dtype) * inv_std
    pc = layout.pc
    if sums is None:
        return dyv * pc(a)
    s0, s1 = sums
    neg_inv_m = -1.0 / max(count, 1)
    b = (a * s1).mul_(inv_std).mul_(neg_inv_m)
    c = torch.addcmul(torch.mul(a, s0).mul_(neg_inv_m), b, mean, value=-1)
    return torch.addcmul(pc(c), xv, pc(b)).addcmul_(dyv, pc(a))


def _canonical(t: Tensor, layout: _Layout, stat: torch.dtype) -> Tensor:
    tv = layout.view(t)
    return tv if tv.dtype == stat else tv.to(stat)


def _to(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


class _TorchKernels:
    """The single-process forward and backward composed from the stages above; the same
    signatures as the compiled kernels (``torch.ops.bnlab``, ``bnlab.kernels.triton_bn``)."""

    @staticmethod
    def forward(
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        training: bool,
        momentum: float,
        eps: float,
        act: int = 0,
        slope: float = 0.0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Returns ``(y, mean, inv_std)``: the (C,) statistics backward needs. No graph."""
        layout = _Layout(x)
        stat = _stat_dtype(x)
        xv = _canonical(x, layout, stat)
        if training:
            mean, var = _stats(xv, layout)
            var.div_(layout.count)  # biased: normalizes the batch
            update_running_stats(running_mean, running_var, mean, var, layout.count, momentum)
            inv_std = var.add_(eps).rsqrt_()
        else:
            assert running_mean is not None and running_var is not None
            mean = running_mean.to(stat, copy=True)  # a copy: the buffer may change later
            inv_std = running_var.to(stat, copy=True).add_(eps).rsqrt_()
        y = _elemt(xv, layout, mean, inv_std, weight, bias, act, slope)
        return _to(y, x.dtype), mean, inv_std

    @staticmethod
    def backward(
        dy: Tensor,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor,
        inv_std: Tensor,
        training: bool,
        act: int,
        slope: float,
        needs: tuple[bool, bool, bool],
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        """Returns ``(dx, dweight, dbias)``, None where not needed. No graph."""
        need_dx, need_dw, need_db = needs
        layout = _Layout(x)
        xv, dyv = _canonical(x, layout, mean.dtype), _canonical(dy, layout, mean.dtype)
        sums = None
        if need_dw or need_db or (training and need_dx):
            sums = _backward_reduce(dyv, xv, layout, mean, inv_std, weight, bias, act, slope)
        dx = None
        if need_dx:
            dxv = _backward_elemt(
                dyv,
                xv,
                layout,
                mean,
                inv_std,
                weight,
                sums if training else None,
                layout.count,
                bias,
                act,
                slope,
            )
            dx = _to(layout.unview(dxv), x.dtype)
        s0, s1 = sums if sums is not None else (None, None)
        dweight = (
            _to(s1, weight.dtype) if need_dw and weight is not None and s1 is not None else None
        )
        dbias = _to(s0, bias.dtype) if need_db and bias is not None and s0 is not None else None
        return dx, dweight, dbias


# ---- dispatch: which rendition runs an input ----------------------------------------------------

_FAST_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

# Compiled renditions register themselves here (bnlab.kernels does when bnlab is imported): the
# math never imports them. Each provider returns its kernels, or None where the backend says
# plain torch (or the kernels cannot be built); it is called on every dispatch, so it caches.
Provider = Callable[[], Any]
_providers: dict[str, Provider] = {}


def register_kernels(device_type: str, provider: Provider | None) -> None:
    """Let ``provider()`` serve inputs on ``device_type`` ("cpu": ``torch.ops.bnlab``-like
    operators with their own autograd; "cuda": a module with the stage functions, see
    :mod:`bnlab.kernels.triton_bn`). None removes it: that device runs plain torch."""
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"register_kernels: device type {device_type!r}; use 'cpu' or 'cuda'")
    if provider is None:
        _providers.pop(device_type, None)
    else:
        _providers[device_type] = provider


def _compiled_takes(x: Tensor, params: tuple[Tensor | None, ...]) -> bool:
    """Whether the compiled kernels handle these tensors: a float dtype, a non-empty input that
    is contiguous or channels_last, (C,) parameters of a float dtype on the same device. Anything
    else (other strides, empty batches, ...) runs the plain-torch path. (Written for speed: an
    MLP's batch norm calls this every step.)"""
    if x.dtype not in _FAST_DTYPES or x.numel() == 0:
        return False
    if not (x.is_contiguous() or _is_channels_last(x)):
        return False
    device = x.device
    for p in params:
        if p is not None and (not p.is_floating_point() or p.device != device):
            return False
    return True


def _kernels_for(x: Tensor, *params: Tensor | None) -> Any:
    """torch.ops.bnlab for CPU, the Triton module for CUDA, or None (plain torch)."""
    if torch.compiler.is_compiling():  # torch.compile traces the plain-torch formulas
        return None
    if x.is_cpu:  # _compiled_takes, unrolled for the CPU: the per-step cost of an MLP's BN
        if x.dtype not in _FAST_DTYPES or x.numel() == 0:
            return None
        if not (x.is_contiguous() or _is_channels_last(x)):
            return None
        for p in params:
            if p is not None and not (p.is_cpu and p.is_floating_point()):
                return None
        cpu = _providers.get("cpu")
        return None if cpu is None else cpu()
    if x.is_cuda and _compiled_takes(x, params):
        cuda = _providers.get("cuda")
        return None if cuda is None else cuda()
    return None


def _stage_kernels_for(x: Tensor, *tensors: Tensor | None) -> Any:
    """As _kernels_for, but None under autograd: with grad mode on and an input that requires
    grad, the stages must be differentiable torch ops (SyncBatchNorm's double backward composes
    them), which the compiled kernels are not."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, *tensors)):
        return None
    return _kernels_for(x, *tensors)


# ---- stages: the same math cut where a distributed BN communicates ------------------------------
#
# (The merge across ranks, batch_norm_merge_stats, is a stage of its own; see the notes on the
# math in plain torch above for the cut and the contract under autograd.)


def batch_norm_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel ``(mean, m2)`` of an (N, C, *) tensor in the statistics dtype, where m2 is
    the sum of squared deviations from the mean (var = m2 / count).

    ``(mean, m2, count)`` triples merge exactly across ranks with Chan et al.'s parallel
    formula; a channel of an empty input has mean 0 and m2 0, computed by the same ops (sums
    over nothing), so that under autograd an empty rank's graph has the same shape as the
    others' (SyncBatchNorm's double backward runs the same collectives on every rank).
    """
    fast = _stage_kernels_for(x)
    if fast is not None:
        return fast.batch_norm_stats(x)
    layout = _Layout(x)
    # an empty batch goes through the same ops (sums over nothing: mean 0, m2 0)
    return _stats(_canonical(x, layout, _stat_dtype(x)), layout)


def batch_norm_merge_stats(count: Tensor, mean: Tensor, m2: Tensor) -> tuple[Tensor, Tensor]:
    """Merge per-part ``(count, mean, m2)`` into the ``(mean, m2)`` of all parts together.

    Chan, Golub and LeVeque's parallel formula, all parts at once: with n = sum(n_i),

        mean = sum(n_i * mean_i) / n
        m2   = sum(m2_i) + sum(n_i * (mean_i - mean)^2)      (within + between parts)

    Exact in real arithmetic for any counts, and stable in floating point: it adds squared
    deviations of means, never subtracts squares. A part with n_i = 0 has no weight; if every
    part is empty the result is mean 0, m2 0 (no division by zero).

    Args:
        count: (P,) values per channel in each part.
        mean: (P, C) per-part means from :func:`batch_norm_stats`.
        m2: (P, C) per-part sums of squared deviations from :func:`batch_norm_stats`.

    Returns:
        (C,) mean and m2 in the dtype of ``mean``. Differentiable (out-of-place ops).
    """
    count = count.to(mean.dtype)
    weight = count / count.sum().clamp(min=1)  # (P,)
    merged = (weight[:, None] * mean).sum(0)
    between = (count[:, None] * (mean - merged).square()).sum(0)
    return merged, m2.sum(0) + between


def batch_norm_elemt(
    x: Tensor, mean: Tensor, inv_std: Tensor, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    """y = gamma * (x - mean) * inv_std + beta with given (C,) statistics; x's dtype and
    memory format."""
    fast = _stage_kernels_for(x, mean, inv_std, weight, bias)
    if fast is not None:
        return fast.batch_norm_elemt(x, mean, inv_std, weight, bias)
    layout = _Layout(x)
    y = _elemt(_canonical(x, layout, mean.dtype), layout, mean, inv_std, weight, bias)
    return _to(y, x.dtype)


def batch_norm_backward_reduce(
    dy: Tensor, x: Tensor, mean: Tensor, inv_std: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-channel ``(sum dy, sum dy * x_hat)`` with x_hat = (x - mean) * inv_std: dbeta and
    dgamma of one process, and what ranks all_reduce before ``batch_norm_backward_elemt``."""
    fast = _stage_kernels_for(x, dy, mean, inv_std)
    if fast is not None:
        return fast.batch_norm_backward_reduce(dy, x, mean, inv_std)
    layout = _Layout(x)
    stat = mean.dtype
    return _backward_reduce(
        _canonical(dy, layout, stat), _canonical(x, layout, stat), layout, mean, inv_std
    )


def batch_norm_backward_elemt(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    sum_dy: Tensor,
    sum_dy_xhat: Tensor,
    count: int,
) -> Tensor:
    """dx = gamma * inv_std / m * (m * dy - sum(dy) - x_hat * sum(dy * x_hat)), with the sums
    and m = ``count`` over every value of a channel (all ranks' together)."""
    fast = _stage_kernels_for(x, dy, mean, inv_std, weight, sum_dy, sum_dy_xhat)
    if fast is not None:
        return fast.batch_norm_backward_elemt(
            dy, x, mean, inv_std, weight, sum_dy, sum_dy_xhat, count
        )
    layout = _Layout(x)
    stat = mean.dtype
    dxv = _backward_elemt(
        _canonical(dy, layout, stat),
        _canonical(x, layout, stat),
        layout,
        mean,
        inv_std,
        weight,
        (sum_dy, sum_dy_xhat),
        count,
    )
    return _to(layout.unview(dxv), x.dtype)


# ---- autograd ---------------------------------------------------------------------------------


def _differentiable_backward(
    dy: Tensor,
    x: Tensor,
    saved_mean: Tensor,
    saved_inv_std: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    eps: float,
    training: bool,
    act: int = 0,
    slope: float = 0.0,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The same formula, written plainly with out-of-place differentiable ops.

    Used when the caller builds a graph of the backward (``create_graph=True``: double
    backward), by every backend. In training mode the batch statistics are functions of x, so
    they are recomputed from x with autograd on, and the formula's dependence on them is
    differentiated too. The fused kernels cannot serve here: their in-place passes would hide
    values that autograd needs. The activation's derivative is piecewise constant, so its mask
    enters as a constant.
    """
    layout = _Layout(x)
    stat = saved_mean.dtype
    xv, dyv = layout.view(x).to(stat), layout.view(dy).to(stat)
    pc = layout.pc
    dims = layout.dims
    if training:
        mean, var = batch_stats(x)
        inv_std = torch.rsqrt(var + eps)
    else:
        mean, inv_std = saved_mean, saved_inv_std
    if act:
        with torch.no_grad():
            affine = _affine(saved_mean, saved_inv_std, weight, bias)
            mask = _act_grad(torch.ones_like(xv), xv, layout, affine, act, slope)
        dyv = dyv * mask
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


def _graph_backward_op(
    dy: Tensor,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    mean: Tensor,
    inv_std: Tensor,
    training: bool,
    eps: float,
    act: int,
    slope: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """The ``bnlab::batch_norm_backward_graph`` operator that the C++ autograd calls under
    ``create_graph=True`` (an operator returns tensors: an empty one stands for None)."""
    dx, dw, db = _differentiable_backward(
        dy, x, mean, inv_std, weight, bias, eps, training, act, slope
    )
    return dx, (dx.new_empty(0) if dw is None else dw), db


class _BatchNormFunction(torch.autograd.Function):
    """Autograd for the plain-torch kernels and the Triton ones (``impl``); the C++ kernels
    carry their own autograd, in C++."""

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
        act: int,
        slope: float,
        impl: Any,
    ) -> Tensor:
        y, mean, inv_std = impl.forward(
            x, weight, bias, running_mean, running_var, training, momentum, eps, act, slope
        )
        # x is saved as is (no copy); mean and inv_std are fresh (C,) tensors, never the
        # running buffers, which later steps update in place.
        ctx.save_for_backward(x, weight, bias, mean, inv_std)
        ctx.settings = (training, eps, act, slope, impl)
        return y

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, bias, mean, inv_std = ctx.saved_tensors
        training, eps, act, slope, impl = ctx.settings
        needs = ctx.needs_input_grad[:3]
        grads: tuple[Tensor | None, Tensor | None, Tensor | None]
        if torch.is_grad_enabled():  # create_graph=True: keep the backward differentiable
            grads = _differentiable_backward(
                dy, x, mean, inv_std, weight, bias, eps, training, act, slope
            )
        else:
            grads = impl.backward(dy, x, weight, bias, mean, inv_std, training, act, slope, needs)
        grads = tuple(g if n else None for g, n in zip(grads, needs, strict=True))  # type: ignore[assignment]
        return (*grads, None, None, None, None, None, None, None, None)


def _check(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    eps: float,
    who: str = "batch_norm",
) -> None:
    """Raise on input batch_norm cannot take, as torch would (same exception types).

    ``who`` names the caller in the dtype errors (bnlab.nn passes e.g. "BatchNorm1d(3)").
    """
    # Written for speed (an MLP's batch norm runs this every step): one pass over the four
    # (C,) tensors, names and dtypes looked at only when something is wrong.
    shape = input.shape
    if len(shape) < 2:
        raise ValueError(f"batch_norm expects input of shape (N, C, *), got shape {tuple(shape)}")
    c = shape[1]
    dtype = input.dtype
    same_dtype = True
    params = (running_mean, running_var, weight, bias)
    for t in params:
        if t is None:
            continue
        if t.shape != (c,):
            name = next(n for n, p in zip(_PARAM_NAMES, params, strict=True) if p is t)
            raise ValueError(
                f"batch_norm: {name} has shape {tuple(t.shape)} but the input "
                f"{tuple(shape)} has {c} channels; expected ({c},)"
            )
        if t.dtype != dtype:
            same_dtype = False
    if not same_dtype or not input.is_floating_point():  # the common case skips this
        _check_dtypes(input, tuple(zip(_PARAM_NAMES, params, strict=True)), who)
    if training:
        n = input.numel()
        if n > 0 and n // max(c, 1) <= 1:
            # Same condition and wording as torch.nn.functional.batch_norm.
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size "
                f"{input.shape}"
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


_PARAM_NAMES = ("running_mean", "running_var", "weight", "bias")


def _check_dtypes(input: Tensor, named: tuple[tuple[str, Tensor | None], ...], who: str) -> None:
    """Floating-point input; parameters and running statistics of one dtype, the input's or,
    for a float16 / bfloat16 input, float32. torch's rule and exception types (on CPU it raises
    NotImplementedError for integer input, RuntimeError for mixed dtypes)."""
    if not input.is_floating_point():
        raise NotImplementedError(
            f"{who}: got input of dtype {input.dtype}; batch norm needs floating-point input "
            "(float32, float64, float16 or bfloat16): convert it first, e.g. x.float()"
        )
    given = [(name, t.dtype) for name, t in named if t is not None]
    dtypes = {d for _, d in given}
    allowed = {input.dtype, torch.float32} if input.dtype in _LOW_PRECISION else {input.dtype}
    if len(dtypes) <= 1 and dtypes <= allowed:
        return
    have = ", ".join(f"{name} {d}" for name, d in given)
    want = f"{input.dtype}" + (" (or all float32)" if input.dtype in _LOW_PRECISION else "")
    target = next(d for _, d in given if d != input.dtype)
    raise RuntimeError(
        f"{who}: input has dtype {input.dtype} but {have}; they must all be {want}: convert "
        f"the input (x.to({target})) or the parameters and buffers (module.to({input.dtype}))"
    )


def _empty_batch_norm(input: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """Nothing to normalize: an empty output of the input's shape, dtype and layout that is
    still in the graph (as torch's, so weight and bias get zero gradients, not None). Running
    statistics are left alone."""
    per_channel = (1, input.shape[1]) + (1,) * (input.dim() - 2)  # no -1: zero sizes are exact
    out = input.clone()
    if weight is not None:
        out = out * weight.view(per_channel)
    if bias is not None:
        out = out + bias.view(per_channel)
    return out if out.dtype == input.dtype else out.to(input.dtype)


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
        input: (N, C, *) floating-point tensor in any memory layout (contiguous and
            channels_last are used as they are; others are copied first, into the format of
            torch's output for them). Empty inputs give empty outputs.
        running_mean: (C,) buffer, or None. Used for normalization when ``training`` is
            False; updated in place (without autograd history) when ``training`` is True.
        running_var: (C,) buffer, or None, used and updated as ``running_mean``.
            Biased or unbiased? As in torch, both: a training batch is normalized with its
            *biased* variance (divided by m, the values per channel: N * H * W), while
            ``running_var`` accumulates the *unbiased* one (divided by m - 1), the estimate
            of the population variance that evaluation mode then normalizes with.
        weight: (C,) gamma, or None (1).
        bias: (C,) beta, or None (0).
        training: normalize with batch statistics (and update the running ones).
        momentum: new = (1 - momentum) * old + momentum * batch.
        eps: added to the variance before the square root.

    Returns:
        Tensor of the input's shape and dtype, in torch's output memory format for it.
    """
    _check(input, running_mean, running_var, weight, bias, training, eps)
    return _batch_norm(input, running_mean, running_var, weight, bias, training, momentum, eps)


def batch_norm_act(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None = None,
    bias: Tensor | None = None,
    training: bool = False,
    momentum: float = 0.1,
    eps: float = 1e-5,
    act: str = "relu",
    negative_slope: float = 0.01,
) -> Tensor:
    """``act(batch_norm(...))`` in one fused pass each way, for ``act`` in "relu",
    "leaky_relu" (with ``negative_slope``, as torch.nn.functional.leaky_relu) and "identity".

    Same arguments and numbers as :func:`batch_norm` followed by the activation; backward
    recomputes the pre-activation from the input instead of saving it.
    """
    code, slope = _act_code(act, negative_slope)
    _check(input, running_mean, running_var, weight, bias, training, eps)
    return _batch_norm(
        input, running_mean, running_var, weight, bias, training, momentum, eps, code, slope
    )


def _act_code(act: str, negative_slope: float = 0.01) -> tuple[int, float]:
    """``(code, slope)`` of an activation name for ``_batch_norm`` (the C++ operator's codes)."""
    code = _ACTS.get(act)
    if code is None:
        raise ValueError(f"batch_norm_act: unknown act {act!r}; choose one of {tuple(_ACTS)}")
    return code, (float(negative_slope) if code == 2 else 0.0)


def _batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    act: int = 0,
    slope: float = 0.0,
) -> Tensor:
    """batch_norm (+ the activation of code ``act``) after ``_check`` (bnlab.nn runs the check
    itself first, to name the layer)."""
    if input.numel() == 0:
        return _empty_batch_norm(input, weight, bias)
    if not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack():
        return _transformed_batch_norm(
            input, running_mean, running_var, weight, bias, training, momentum, eps, act, slope
        )
    if not input.is_contiguous() and not _is_channels_last(input):
        input = input.contiguous(memory_format=_output_memory_format(input))
    fast = _kernels_for(input, weight, bias, running_mean, running_var)
    out: Tensor
    if fast is not None and input.is_cpu:  # torch.ops.bnlab: autograd in C++
        out = fast.batch_norm(
            input, weight, bias, running_mean, running_var, training, momentum, eps, act, slope
        )
    else:  # autograd here, over the Triton kernels or the plain-torch ones
        out = _BatchNormFunction.apply(
            input, weight, bias, running_mean, running_var, training, momentum, eps, act, slope,
            _TorchKernels if fast is None else fast,
        )  # fmt: skip
    return out


def _transformed_batch_norm(
    input: Tensor,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    weight: Tensor | None,
    bias: Tensor | None,
    training: bool,
    momentum: float,
    eps: float,
    act: int,
    slope: float,
) -> Tensor:
    """``_batch_norm`` inside a torch.func transform (vmap, grad, jacrev, ...): the same stages
    (statistics, ``update_running_stats``, ``_elemt``), composed with out-of-place ops where
    autograd needs them (``batch_stats``'s), so that the transforms' batching rules apply.

    Why a path of its own rather than teaching the fast paths the transforms: a transform sees
    one sample's tensor, whose memory format cannot be queried (vmap raises on
    ``is_contiguous(memory_format=channels_last)``); the compiled operators have no batching
    rules; and ``_BatchNormFunction`` updates the running statistics in place inside forward,
    which functorch's generated vmap rule forbids (a hand-written vmap rule and
    ``setup_context`` would duplicate this dispatch). Here the transforms differentiate and
    batch torch's own ops, as they do for torch's batch norm; the gradient is autograd's of the
    same formula, which the hand-derived backward equals (tests/test_func.py). Running
    statistics are updated in place as torch's batch norm does under vmap: stacked buffers
    (``torch.func.stack_module_state``) each get their own model's update.
    """
    layout = _Layout(input, channels_last=False)
    stat = _stat_dtype(input)
    shape = input.shape
    xv = input if layout.ndim == 2 else input.reshape(shape[0], shape[1], layout.spatial)
    xv = _to(xv, stat)
    if training:
        level = torch._C._functorch.maybe_get_level(input)  # -1: a plain tensor
        for buf in (running_mean, running_var):
            if buf is not None and torch._C._functorch.maybe_get_level(buf) < level:
                raise RuntimeError(
                    "batch_norm in training mode inside a torch.func transform updates "
                    "running_mean and running_var in place, but they come from outside the "
                    "transform (not batched or wrapped like the input), so they cannot take "
                    "this batch's statistics. For an ensemble pass the buffers stacked "
                    "(torch.func.stack_module_state) to functional_call; otherwise use eval "
                    "mode, or track_running_stats=False (torch.func.replace_all_batch_norm_"
                    "modules_ patches a model)"
                )
        mean, var = _differentiable_stats(xv, layout)  # biased: normalizes the batch
        update_running_stats(running_mean, running_var, mean, var, layout.count, momentum)
        inv_std = torch.rsqrt(var + eps)
    else:
        assert running_mean is not None and running_var is not None
        mean, inv_std = running_mean.to(stat), torch.rsqrt(running_var.to(stat) + eps)
    y = _elemt(xv, layout, mean, inv_std, weight, bias, act, slope)
    return _to(y.reshape(shape), input.dtype)
