"""Triton kernels for batch norm on CUDA tensors: the four stages, and forward/backward composed.

The same formulas as :mod:`bnlab.functional` (and its C++ rendition), cut the same way:

- statistics: each program reduces a slice of the reduction axis for a block of channels, tile
  by tile (two passes over a tile in registers: tile mean, then squared deviations) and merges
  tiles with Chan's formula into (mean, m2, count) partials; a second kernel merges the
  partials of all programs with the parallel formula (within + between parts);
- normalize + affine (+ ReLU / leaky ReLU) in one elementwise pass;
- backward: partial sums of dz and dz * (x - mean), merged; then dx = a * dz + b * x + c.

Every kernel sees the input as (N, C, S) with strides, so one kernel serves contiguous
(N, C, *), channels_last and (M, C) inputs: the tile is [BLOCK_C, BLOCK_R] over (channels,
reduction index r = n * S + s), shaped per layout so that loads are coalesced along whichever
axis is contiguous. Statistics accumulate in float32 (float64 for float64 inputs).

On the CPU the kernels run in Triton's interpreter (``TRITON_INTERPRET=1`` before this module is
imported), which is how the tests check them against the reference without a GPU;
``bench/gpu_check.py`` checks and times them on a GPU.
"""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is an optional dependency
    triton = None

__all__ = [
    "available",
    "backward",
    "batch_norm_backward_elemt",
    "batch_norm_backward_reduce",
    "batch_norm_elemt",
    "batch_norm_stats",
    "forward",
]

_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _shim_interpreter() -> None:
    """Triton 3.6's interpreter converts a loop bound with int() of a 1-element array, which
    NumPy >= 2.3 refuses; convert through .item() instead. Interpreter mode only (tests)."""
    from triton.runtime import interpreter

    original = getattr(interpreter, "_patch_lang_tensor", None)
    if original is None:  # another triton: nothing to fix, or fixed upstream
        return

    def patched(tensor: Any, scope: Any) -> None:
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.item()))

    interpreter._patch_lang_tensor = patched


if triton is not None and _INTERPRET:
    _shim_interpreter()


def available() -> bool:
    """Triton imports, and there is a GPU to run it (or the interpreter is on)."""
    return triton is not None and (_INTERPRET or torch.cuda.is_available())


if triton is not None:

    @triton.jit
    def _load_tile(ptr, c, r, C, R, S, s_n, s_c, s_s):
        """The [BLOCK_C, BLOCK_R] tile of channels c and reduction indices r, in float32/64."""
        n = r // S
        s = r - n * S
        offs = c[:, None] * s_c + n[None, :] * s_n + s[None, :] * s_s
        mask = (c[:, None] < C) & (r[None, :] < R)
        return offs, mask

    @triton.jit
    def _stats_partial_kernel(
        x_ptr, mean_ptr, m2_ptr, count_ptr,
        C, R, S, s_n, s_c, s_s, r_per_prog,
        ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        pid_c = tl.program_id(0)
        pid_r = tl.program_id(1)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        # shifted data: x - K, K the first value of the channel (see the C++ kernels' notes)
        shift = tl.load(x_ptr + c * s_c, mask=c < C, other=0.0).to(ACC)
        r_start = pid_r * r_per_prog
        r_stop = tl.minimum(r_start + r_per_prog, R)
        mean = tl.zeros([BLOCK_C], dtype=ACC)
        m2 = tl.zeros([BLOCK_C], dtype=ACC)
        count = tl.zeros([BLOCK_C], dtype=ACC)
        for r0 in range(0, r_per_prog, BLOCK_R):
            r = r_start + r0 + tl.arange(0, BLOCK_R)
            offs, mask = _load_tile(x_ptr, c, r, C, r_stop, S, s_n, s_c, s_s)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(ACC)
            x = tl.where(mask, x - shift[:, None], 0.0)
            n_t = tl.sum(mask.to(ACC), axis=1)  # values in this tile, per channel
            mean_t = tl.sum(x, axis=1) / tl.maximum(n_t, 1.0)
            d = tl.where(mask, x - mean_t[:, None], 0.0)
            m2_t = tl.sum(d * d, axis=1)
            # Chan's merge of (mean, m2, count) with the tile's
            n_ab = count + n_t
            delta = mean_t - mean
            frac = n_t / tl.maximum(n_ab, 1.0)
            mean = mean + delta * frac
            m2 = m2 + m2_t + delta * delta * count * frac
            count = n_ab
        out = pid_r * C + c
        keep = c < C
        tl.store(mean_ptr + out, mean, mask=keep)
        tl.store(m2_ptr + out, m2, mask=keep)
        tl.store(count_ptr + out, count, mask=keep)

    @triton.jit
    def _merge_partials_kernel(
        x_ptr, s_c, mean_ptr, m2_ptr, count_ptr, mean_out, m2_out, C, P,
        ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr,
    ):  # fmt: skip
        """mean = sum(n_p mean_p) / n; m2 = sum(m2_p) + sum(n_p (mean_p - mean)^2); the
        partial means are of x - K, so K is added back."""
        c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        total = tl.zeros([BLOCK_C], dtype=ACC)
        weighted = tl.zeros([BLOCK_C], dtype=ACC)
        for p0 in range(0, P, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            offs = p[:, None] * C + c[None, :]
            mask = (p[:, None] < P) & (c[None, :] < C)
            n = tl.load(count_ptr + offs, mask=mask, other=0.0)
            m = tl.load(mean_ptr + offs, mask=mask, other=0.0)
            total += tl.sum(n, axis=0)
            weighted += tl.sum(n * m, axis=0)
        mean = weighted / tl.maximum(total, 1.0)
        m2 = tl.zeros([BLOCK_C], dtype=ACC)
        for p0 in range(0, P, BLOCK_P):
            p = p0 + tl.arange(0, BLOCK_P)
            offs = p[:, None] * C + c[None, :]
            mask = (p[:, None] < P) & (c[None, :] < C)
            n = tl.load(count_ptr + offs, mask=mask, other=0.0)
            m = tl.load(mean_ptr + offs, mask=mask, other=0.0)
            q = tl.load(m2_ptr + offs, mask=mask, other=0.0)
            d = m - mean[None, :]
            m2 += tl.sum(q + n * d * d, axis=0)
        keep = c < C
        shift = tl.load(x_ptr + c * s_c, mask=keep, other=0.0).to(ACC)
        tl.store(mean_out + c, shift + mean, mask=keep)
        tl.store(m2_out + c, m2, mask=keep)

    @triton.jit
    def _coefficients(mean_ptr, inv_std_ptr, w_ptr, b_ptr, c, keep, HAS_W: tl.constexpr,
                      HAS_B: tl.constexpr):  # fmt: skip
        """scale = gamma * inv_std, shift = beta - mean * scale (per channel)."""
        mean = tl.load(mean_ptr + c, mask=keep, other=0.0)
        scale = tl.load(inv_std_ptr + c, mask=keep, other=0.0)
        if HAS_W:
            scale = scale * tl.load(w_ptr + c, mask=keep, other=0.0).to(scale.dtype)
        shift = -mean * scale
        if HAS_B:
            shift = shift + tl.load(b_ptr + c, mask=keep, other=0.0).to(scale.dtype)
        return mean, scale, shift

    @triton.jit
    def _act_grad(z, dy, slope, ACT: tl.constexpr):
        """dz = dy * act'(z): act'(z) = 1 for z > 0, else slope (0 for ReLU)."""
        if ACT == 0:
            return dy
        elif ACT == 1:
            return tl.where(z > 0, dy, 0.0)
        else:
            return tl.where(z > 0, dy, dy * slope)

    @triton.jit
    def _elemt_kernel(
        x_ptr, y_ptr, mean_ptr, inv_std_ptr, w_ptr, b_ptr, slope,
        C, R, S, s_n, s_c, s_s,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        # the long axis on grid axis 0 (up to 2**31 - 1 programs; axis 1 stops at 65535)
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        keep = c < C
        _, scale, shift = _coefficients(mean_ptr, inv_std_ptr, w_ptr, b_ptr, c, keep, HAS_W, HAS_B)
        offs, mask = _load_tile(x_ptr, c, r, C, R, S, s_n, s_c, s_s)
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        z = x.to(scale.dtype) * scale[:, None] + shift[:, None]
        if ACT == 1:
            z = tl.where(z < 0, 0.0, z)
        elif ACT == 2:
            z = tl.where(z < 0, z * slope, z)
        tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def _reduce_partial_kernel(
        dy_ptr, x_ptr, mean_ptr, inv_std_ptr, w_ptr, b_ptr, slope, s0_ptr, s1_ptr,
        C, R, S, s_n, s_c, s_s, d_n, d_c, d_s, r_per_prog,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        pid_c = tl.program_id(0)
        pid_r = tl.program_id(1)
        c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        keep = c < C
        mean, scale, shift = _coefficients(
            mean_ptr, inv_std_ptr, w_ptr, b_ptr, c, keep, HAS_W, HAS_B
        )
        r_start = pid_r * r_per_prog
        r_stop = tl.minimum(r_start + r_per_prog, R)
        s0 = tl.zeros([BLOCK_C], dtype=mean.dtype)
        s1 = tl.zeros([BLOCK_C], dtype=mean.dtype)
        for r0 in range(0, r_per_prog, BLOCK_R):
            r = r_start + r0 + tl.arange(0, BLOCK_R)
            offs, mask = _load_tile(x_ptr, c, r, C, r_stop, S, s_n, s_c, s_s)
            d_offs, _ = _load_tile(dy_ptr, c, r, C, r_stop, S, d_n, d_c, d_s)
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(mean.dtype)
            dy = tl.load(dy_ptr + d_offs, mask=mask, other=0.0).to(mean.dtype)
            z = x * scale[:, None] + shift[:, None]
            dz = _act_grad(z, dy, slope, ACT)
            s0 += tl.sum(dz, axis=1)
            s1 += tl.sum(tl.where(mask, dz * (x - mean[:, None]), 0.0), axis=1)
        out = pid_r * C + c
        tl.store(s0_ptr + out, s0, mask=keep)
        tl.store(s1_ptr + out, s1, mask=keep)

    @triton.jit
    def _backward_elemt_kernel(
        dy_ptr, x_ptr, dx_ptr, mean_ptr, inv_std_ptr, w_ptr, b_ptr, slope,
        s0_ptr, s1_ptr, neg_inv_m,
        C, R, S, s_n, s_c, s_s, d_n, d_c, d_s,
        HAS_W: tl.constexpr, HAS_B: tl.constexpr, ACT: tl.constexpr, STATS: tl.constexpr,
        READ_X: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_R: tl.constexpr,
    ):  # fmt: skip
        """dx = a * dz + b * x + c; a = gamma * inv_std, b = -a * inv_std * S1 / m,
        c = -a * S0 / m - b * mean (STATS), or dx = a * dz (evaluation mode)."""
        # the long axis on grid axis 0 (up to 2**31 - 1 programs; axis 1 stops at 65535)
        r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        keep = c < C
        mean, scale, shift = _coefficients(
            mean_ptr, inv_std_ptr, w_ptr, b_ptr, c, keep, HAS_W, HAS_B
        )
        a = scale  # gamma * inv_std
        offs, mask = _load_tile(x_ptr, c, r, C, R, S, s_n, s_c, s_s)
        d_offs, _ = _load_tile(dy_ptr, c, r, C, R, S, d_n, d_c, d_s)
        dy = tl.load(dy_ptr + d_offs, mask=mask, other=0.0).to(mean.dtype)
        if READ_X:  # STATS or ACT != 0
            x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(mean.dtype)
            dz = _act_grad(x * scale[:, None] + shift[:, None], dy, slope, ACT)
        else:
            x = dy
            dz = dy
        if STATS:
            inv_std = tl.load(inv_std_ptr + c, mask=keep, other=0.0)
            s0 = tl.load(s0_ptr + c, mask=keep, other=0.0).to(mean.dtype)
            s1 = tl.load(s1_ptr + c, mask=keep, other=0.0).to(mean.dtype)
            b = a * s1 * inv_std * neg_inv_m
            k = a * s0 * neg_inv_m - b * mean
            dx = a[:, None] * dz + b[:, None] * x + k[:, None]
        else:
            dx = a[:, None] * dz
        tl.store(dx_ptr + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


# ---- launchers -----------------------------------------------------------------------------------

_ACC = {torch.float64: torch.float64}  # everything else accumulates in float32


def _acc_dtype(x: Tensor) -> torch.dtype:
    return _ACC.get(x.dtype, torch.float32)


def _geometry(x: Tensor) -> tuple[int, int, int, int, int, int]:
    """(C, R, S, stride_n, stride_c, stride_s) of x seen as (N, C, S), r = n * S + s."""
    n, c = x.shape[0], x.shape[1]
    s = math.prod(x.shape[2:]) if x.dim() > 2 else 1
    if x.dim() == 2:
        return c, n * s, s, x.stride(0), x.stride(1), 1
    # contiguous: spatial stride 1; channels_last: spatial stride C (the last spatial dim's)
    return c, n * s, s, x.stride(0), x.stride(1), x.stride(-1)


def _tiles(x: Tensor) -> tuple[int, int]:
    """[BLOCK_C, BLOCK_R]: long along whichever axis is contiguous in memory."""
    if x.dim() > 2 and x.stride(-1) == 1 and x.stride(1) != 1:  # contiguous (N, C, S)
        return 1, 1024
    return 32, 32  # channels contiguous: (M, C) and channels_last


def _dy_strides(dy: Tensor) -> tuple[int, int, int]:
    _, _, _, d_n, d_c, d_s = _geometry(dy)
    return d_n, d_c, d_s


def _split(c_blocks: int, r_blocks: int) -> int:
    """Programs along the reduction axis: enough to fill the GPU (about 4 per SM)."""
    sms = 1 if _INTERPRET else torch.cuda.get_device_properties().multi_processor_count
    return max(1, min(r_blocks, (4 * sms) // max(c_blocks, 1)))


def _per_channel(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    return None if t is None else t.to(dtype).contiguous()


def _stats_with_count(x: Tensor) -> tuple[Tensor, Tensor]:
    c, r, s, s_n, s_c, s_s = _geometry(x)
    block_c, block_r = _tiles(x)
    acc = _acc_dtype(x)
    c_blocks = triton.cdiv(c, block_c)
    parts = _split(c_blocks, triton.cdiv(r, block_r))
    r_per_prog = triton.cdiv(triton.cdiv(r, parts), block_r) * block_r
    parts = triton.cdiv(r, r_per_prog)
    partial = torch.empty(3, parts, c, dtype=acc, device=x.device)
    _stats_partial_kernel[(c_blocks, parts)](
        x, partial[0], partial[1], partial[2], c, r, s, s_n, s_c, s_s, r_per_prog,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK_C=block_c, BLOCK_R=block_r,
    )  # fmt: skip
    mean, m2 = torch.empty(2, c, dtype=acc, device=x.device)
    _merge_partials_kernel[(triton.cdiv(c, 32),)](
        x, s_c, partial[0], partial[1], partial[2], mean, m2, c, parts,
        ACC=tl.float64 if acc == torch.float64 else tl.float32, BLOCK_C=32, BLOCK_P=32,
    )  # fmt: skip
    return mean, m2


def batch_norm_stats(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel (mean, m2) in the statistics dtype (m2: sum of squared deviations)."""
    return _stats_with_count(x)


def _elemt(
    x: Tensor,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    act: int,
    slope: float,
) -> Tensor:
    c, r, s, s_n, s_c, s_s = _geometry(x)
    y = torch.empty_like(x)  # same strides as x (dense inputs only reach here)
    block_c, block_r = _tiles(x)
    w, b = _per_channel(weight, mean.dtype), _per_channel(bias, mean.dtype)
    _elemt_kernel[(triton.cdiv(r, block_r), triton.cdiv(c, block_c))](
        x, y, mean, inv_std, w if w is not None else mean, b if b is not None else mean, slope,
        c, r, s, s_n, s_c, s_s,
        HAS_W=w is not None, HAS_B=b is not None, ACT=act, BLOCK_C=block_c, BLOCK_R=block_r,
    )  # fmt: skip
    return y


def batch_norm_elemt(
    x: Tensor, mean: Tensor, inv_std: Tensor, weight: Tensor | None, bias: Tensor | None
) -> Tensor:
    return _elemt(x, mean.contiguous(), inv_std.contiguous(), weight, bias, 0, 0.0)


def _reduce(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    act: int,
    slope: float,
) -> tuple[Tensor, Tensor]:
    c, r, s, s_n, s_c, s_s = _geometry(x)
    block_c, block_r = _tiles(x)
    c_blocks = triton.cdiv(c, block_c)
    parts = _split(c_blocks, triton.cdiv(r, block_r))
    r_per_prog = triton.cdiv(triton.cdiv(r, parts), block_r) * block_r
    parts = triton.cdiv(r, r_per_prog)
    partial = torch.empty(2, parts, c, dtype=mean.dtype, device=x.device)
    w, b = _per_channel(weight, mean.dtype), _per_channel(bias, mean.dtype)
    _reduce_partial_kernel[(c_blocks, parts)](
        dy, x, mean, inv_std, w if w is not None else mean, b if b is not None else mean, slope,
        partial[0], partial[1], c, r, s, s_n, s_c, s_s, *_dy_strides(dy), r_per_prog,
        HAS_W=w is not None, HAS_B=b is not None, ACT=act, BLOCK_C=block_c, BLOCK_R=block_r,
    )  # fmt: skip
    sums = partial.sum(1)  # (2, C): a few hundred partials per channel at most
    return sums[0], sums[1].mul_(inv_std)


def batch_norm_backward_reduce(
    dy: Tensor, x: Tensor, mean: Tensor, inv_std: Tensor
) -> tuple[Tensor, Tensor]:
    """Per-channel (sum dy, sum dy * x_hat)."""
    return _reduce(_like(dy, x), x, mean.contiguous(), inv_std.contiguous(), None, None, 0, 0.0)


def _backward_elemt(
    dy: Tensor,
    x: Tensor,
    mean: Tensor,
    inv_std: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    sums: tuple[Tensor, Tensor] | None,
    count: int,
    act: int,
    slope: float,
) -> Tensor:
    c, r, s, s_n, s_c, s_s = _geometry(x)
    dx = torch.empty_like(x)
    block_c, block_r = _tiles(x)
    w, b = _per_channel(weight, mean.dtype), _per_channel(bias, mean.dtype)
    s0, s1 = sums if sums is not None else (mean, mean)
    _backward_elemt_kernel[(triton.cdiv(r, block_r), triton.cdiv(c, block_c))](
        dy, x, dx, mean, inv_std, w if w is not None else mean, b if b is not None else mean,
        slope, s0.contiguous(), s1.contiguous(), -1.0 / max(count, 1),
        c, r, s, s_n, s_c, s_s, *_dy_strides(dy),
        HAS_W=w is not None, HAS_B=b is not None, ACT=act, STATS=sums is not None,
        READ_X=sums is not None or act != 0, BLOCK_C=block_c, BLOCK_R=block_r,
    )  # fmt: skip
    return dx


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
    return _backward_elemt(
        _like(dy, x), x, mean.contiguous(), inv_std.contiguous(), weight, None,
        (sum_dy, sum_dy_xhat), count, 0, 0.0,
    )  # fmt: skip


def _like(dy: Tensor, x: Tensor) -> Tensor:
    """dy with x's dtype, contiguous or with x's strides (the kernels take dy's own strides, as
    (N, C, S) with a spatial stride: that covers these two, not every layout)."""
    dy = dy if dy.dtype == x.dtype else dy.to(x.dtype)
    return dy if dy.is_contiguous() or dy.stride() == x.stride() else dy.contiguous(
        memory_format=torch.channels_last if x.dim() == 4 and not x.is_contiguous() else
        torch.channels_last_3d if x.dim() == 5 and not x.is_contiguous() else
        torch.contiguous_format
    )  # fmt: skip


# ---- one process: the stages composed (the signatures of torch.ops.bnlab's kernels) ----------


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
    from bnlab.functional import update_running_stats

    acc = _acc_dtype(x)
    if training:
        count = x.numel() // x.shape[1]
        mean, var = _stats_with_count(x)
        var.div_(count)
        update_running_stats(running_mean, running_var, mean, var, count, momentum)
        inv_std = var.add_(eps).rsqrt_()
    else:
        assert running_mean is not None and running_var is not None
        mean = running_mean.to(acc, copy=True)
        inv_std = running_var.to(acc, copy=True).add_(eps).rsqrt_()
    return _elemt(x, mean, inv_std, weight, bias, act, slope), mean, inv_std


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
    need_dx, need_dw, need_db = needs
    dy = _like(dy, x)
    sums = None
    if need_dw or need_db or (training and need_dx):
        sums = _reduce(dy, x, mean, inv_std, weight, bias, act, slope)
    dx = None
    if need_dx:
        count = x.numel() // x.shape[1]
        dx = _backward_elemt(
            dy, x, mean, inv_std, weight, bias, sums if training else None, count, act, slope
        )
    s0, s1 = sums if sums is not None else (None, None)
    dw = s1.to(weight.dtype) if need_dw and weight is not None and s1 is not None else None
    db = s0.to(bias.dtype) if need_db and bias is not None and s0 is not None else None
    return dx, dw, db


def describe() -> dict[str, Any]:
    """What runs: for bench/gpu_check.py's report."""
    return {"triton": getattr(triton, "__version__", None), "interpret": _INTERPRET}
