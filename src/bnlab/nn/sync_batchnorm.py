"""SyncBatchNorm: batch statistics over every rank of a process group, on any backend.

A drop-in for ``torch.nn.SyncBatchNorm`` (same constructor, same parameter and buffer names)
that also runs on CPU tensors with the gloo backend, where torch's raises "expected input tensor
to be on GPU". Collectives run on the input's device, so the same code serves gloo (CPU) and
NCCL (GPU). It subclasses torch's ``_BatchNorm`` (as BatchNorm2d and torch's SyncBatchNorm do,
so ``isinstance(m, torch.nn.modules.batchnorm._BatchNorm)`` holds) but deliberately not
``torch.nn.SyncBatchNorm``: DistributedDataParallel refuses a CPU model holding one ("SyncBatchNorm
layers only work with GPU modules").

N ranks holding per-rank batches x_1..x_N compute exactly what one process computes on the
concatenated batch, whatever the split (uneven, or a rank with zero samples). The math is
:mod:`bnlab.functional`'s stages; this module only inserts the communication:

    forward:  batch_norm_stats -> ONE all_gather of (count, mean, m2) -> batch_norm_merge_stats
              -> batch_norm_elemt
    backward: batch_norm_backward_reduce -> ONE all_reduce of (sum dy, sum dy * x_hat)
              -> batch_norm_backward_elemt

Why all_gather of (count, mean, m2) and Chan's merge rather than an all_reduce of
(count, sum x, sum x^2): the merge adds squared deviations of the rank means from the global
mean, so the variance keeps its precision when |mean| >> std, where sum x^2 - n * mean^2
cancels (the E[x^2] - E[x]^2 that bnlab never uses); the rank counts weight the merge, so
uneven batches are exact and a rank with no samples has weight 0. The gathered rows travel in
float64: counts stay exact beyond 2^24 values per channel and the merge adds no rounding of its
own. The price over an all_reduce is a (world_size, 2C + 1) buffer instead of (2C + 1,): a few
kB, where the latency of the one collective is what costs.

Eval mode, and training in a process group of one, do no communication and give the numbers of
bnlab.nn.BatchNorm*d. Running statistics are updated from the global mean and the unbiased
global variance (m2 / (n - 1), n over all ranks), so they are identical on every rank.

Parameter gradients are each rank's own share (sum over its samples): DistributedDataParallel
all-reduces them, as it does for torch's SyncBatchNorm. Backward with ``create_graph=True``
(gradient penalties) recomputes the statistics with autograd on and torch's differentiable
collectives, so gradients of gradients see the other ranks too; the first such backward in a
process imports torch._dynamo (those collectives need it), a one-time cost of seconds.

DDP pitfalls with batch norm, and what this module does about them:

- Every training-mode forward is a collective: all ranks must run the same BN layers the same
  number of times, in the same order (a forward on rank 0 alone, e.g. to draw samples, hangs
  until the process group's timeout). Such forwards belong in eval mode: no communication.
- Every training-mode forward updates the running statistics: a discriminator's forward on a
  fake batch or on gradient-penalty interpolates mixes them into the statistics used in eval.
  Use eval mode for forwards that should not count.
- DDP syncs buffers from rank 0 before each forward (``broadcast_buffers=True``, in torch 2.13
  ``forward_sync_buffers``). Here the running statistics are equal on every rank anyway, so
  turning it off only saves a collective. The in-place buffer copy is what breaks two D forwards
  before one backward with torch's BN on GPU ("modified by an inplace operation": its backward
  saved the buffers); this backward saves its own statistics, never the buffers.
- Convert with ``convert_sync_batchnorm`` before wrapping in DDP. DDP averages the ranks'
  gradients with equal weights: with uneven per-rank batches, scale each rank's mean loss by
  (its batch / global batch) * world size to get the gradient of the global mean loss.

Debug mode (``BNLAB_SYNCBN_DEBUG=1``, or ``TORCH_DISTRIBUTED_DEBUG=DETAIL``) adds one small
all_reduce per training forward so that every rank raises when the ranks' channel counts differ;
without it gloo aborts the process ("Received data size doesn't match expected size").
"""

from __future__ import annotations

import os
from typing import Any, TypeVar, overload

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bnlab import functional as F
from bnlab.nn.batchnorm import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    _not_scriptable,
    count_batch,
)
from bnlab.nn.convert import _swap_one
from bnlab.nn.find import is_batch_norm, replace_modules

__all__ = ["SyncBatchNorm"]

_M = TypeVar("_M", bound=nn.Module)

DEBUG_ENV = "BNLAB_SYNCBN_DEBUG"

# The bnlab class a converted layer reverts to, by the layer it came from (1d covers 2D and 3D).
_REVERT_BY_DIM: dict[int, type[nn.Module]] = {
    2: BatchNorm1d,
    3: BatchNorm1d,
    4: BatchNorm2d,
    5: BatchNorm3d,
}
_SOURCE_TO_REVERT: tuple[tuple[type[nn.Module], type[nn.Module]], ...] = (
    (nn.BatchNorm1d, BatchNorm1d),  # bnlab's BatchNorm1d is a subclass: covered
    (nn.BatchNorm2d, BatchNorm2d),
    (nn.BatchNorm3d, BatchNorm3d),
)


def _debug_mode() -> bool:
    if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
        return True
    return dist.get_debug_level() == dist.DebugLevel.DETAIL


def _all_gather(t: Tensor, group: Any, differentiable: bool) -> Tensor:
    """(K,) on every rank -> (world_size, K), row r from rank r."""
    if differentiable:
        # torch's autograd-aware collectives (the replacement its deprecated
        # torch.distributed.nn.functional names); the adjoint is a reduce_scatter.
        from torch.distributed import _functional_collectives as fc

        gather = getattr(fc, "all_gather_single", None) or fc.all_gather_tensor_autograd
        out: Tensor = gather(t.contiguous(), 0, group)
        if t.requires_grad and not out.requires_grad:
            raise RuntimeError(
                "SyncBatchNorm double backward needs autograd through all_gather "
                f"(torch.distributed._functional_collectives); torch {torch.__version__} "
                "does not provide it"
            )
        return out.view(-1, t.numel())
    out = t.new_empty(dist.get_world_size(group) * t.numel())  # flat: what gloo accepts
    # all_gather_into_tensor was renamed all_gather_single in torch 2.13
    gather_into = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    gather_into(out, t.contiguous(), group=group)
    return out.view(-1, t.numel())


def _global_stats(x: Tensor, group: Any, differentiable: bool) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and biased variance over every rank's x, and the global count.

    One all_gather of each rank's (count, mean, m2) row, merged by Chan's formula.
    """
    c = x.shape[1]
    mean, m2 = F.batch_norm_stats(x)  # (C,), statistics dtype
    count = x.numel() // c
    f64 = torch.float64  # built in float64: a float32 count is inexact beyond 2^24
    row = torch.cat([mean.new_full((1,), count, dtype=f64), mean.to(f64), m2.to(f64)])  # (2C+1,)
    rows = _all_gather(row, group, differentiable)  # (W, 2C + 1)
    counts = rows[:, 0]
    g_mean, g_m2 = F.batch_norm_merge_stats(counts, rows[:, 1 : c + 1], rows[:, c + 1 :])
    total = int(counts.sum().item())
    g_var = g_m2 / max(total, 1)
    return g_mean.to(mean.dtype), g_var.to(mean.dtype), total


class _SyncBatchNormFunction(torch.autograd.Function):
    """y = gamma * x_hat + beta with given global statistics; backward all-reduces the sums."""

    @staticmethod
    def forward(
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        mean: Tensor,
        inv_std: Tensor,
        count: int,
        eps: float,
        group: Any,
    ) -> Tensor:
        ctx.save_for_backward(x, weight, mean, inv_std)
        ctx.count, ctx.eps, ctx.group = count, eps, group
        return F.batch_norm_elemt(x, mean, inv_std, weight, bias)

    @staticmethod
    def backward(ctx: Any, dy: Tensor) -> tuple[Tensor | None, ...]:
        x, weight, mean, inv_std = ctx.saved_tensors
        need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
        c = x.shape[1]
        dx = None
        if torch.is_grad_enabled():
            # create_graph=True: the statistics are functions of every rank's x; recompute them
            # with autograd on, through differentiable collectives (a gathered sum stands in for
            # the all_reduce), so that gradients of this gradient reach the other ranks.
            mean, var, count = _global_stats(x, ctx.group, differentiable=True)
            inv_std = torch.rsqrt(var + ctx.eps)
            s0, s1 = F.batch_norm_backward_reduce(dy, x, mean, inv_std)
            sums = _all_gather(torch.cat([s0, s1]), ctx.group, differentiable=True).sum(0)
            dx = F.batch_norm_backward_elemt(
                dy, x, mean, inv_std, weight, sums[:c], sums[c:], count
            )
        else:
            s0, s1 = F.batch_norm_backward_reduce(dy, x, mean, inv_std)  # this rank's sums
            if need_dx:
                sums = torch.cat([s0, s1])
                dist.all_reduce(sums, group=ctx.group)
                dx = F.batch_norm_backward_elemt(
                    dy, x, mean, inv_std, weight, sums[:c], sums[c:], ctx.count
                )
        # dgamma, dbeta: this rank's share; DDP sums (averages) them over ranks. A bias exists
        # only with a weight (affine), and has its dtype.
        dw = s1.to(weight.dtype) if need_dw else None
        db = s0.to(weight.dtype) if need_db else None
        return dx if need_dx else None, dw, db, None, None, None, None, None


class SyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch normalization with statistics over all ranks of a process group; any backend.

    Same constructor, parameters, buffers and state_dict as ``torch.nn.SyncBatchNorm`` (and as
    ``bnlab.nn.BatchNorm*d`` / ``torch.nn.BatchNorm*d``); accepts (N, C), (N, C, L),
    (N, C, H, W) and (N, C, D, H, W) input, contiguous or channels_last. See the module docstring
    for the merge used, and the DDP pitfalls.

    Args:
        num_features: C.
        eps: as in torch.nn.BatchNorm*d.
        momentum: as in torch.nn.BatchNorm*d.
        affine: as in torch.nn.BatchNorm*d.
        track_running_stats: as in torch.nn.BatchNorm*d.
        process_group: the ranks whose batches form one batch; None = the default (world) group.
        device: of the parameters and buffers.
        dtype: of the parameters and buffers.

    Training mode needs an initialized process group (``torchrun`` +
    ``torch.distributed.init_process_group``). Use :meth:`convert_sync_batchnorm` to swap a
    model's BatchNorm*d layers for this class and :meth:`revert_sync_batchnorm` to swap back.
    """

    process_group: Any

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Any | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        extra: dict[str, Any] = {} if bias else {"bias": False}  # torch >= 2.6 only
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, **extra
        )
        self.process_group = process_group
        # The bnlab BatchNorm*d that revert_sync_batchnorm builds: set by convert_sync_batchnorm
        # from the source layer, else by the first input seen.
        self._revert_cls: type[nn.Module] | None = None

    def _name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def _check_input(self, x: Tensor) -> None:
        if x.dim() not in _REVERT_BY_DIM:
            raise ValueError(
                f"{self._name()} expected 2D, 3D, 4D or 5D input (N, C, *) "
                f"(got {x.dim()}D input of shape {tuple(x.shape)})"
            )
        if x.shape[1] == 0:
            raise ValueError(f"{self._name()}: the input has no channels (shape {tuple(x.shape)})")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{self._name()} got input of shape {tuple(x.shape)} with {x.shape[1]} "
                f"channels in dim 1; it normalizes {self.num_features} (build it with "
                f"num_features={x.shape[1]})"
            )

    def _check_input_dim(self, input: Tensor) -> None:
        self._check_input(input)

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this hook before compiling: one clear error (see batchnorm.py)
        raise _not_scriptable(self._name())

    def _ema_factor(self) -> float:
        """This step's weight of the batch statistics in the running ones (counts the batch)."""
        return count_batch(
            self.training, self.track_running_stats, self.momentum, self.num_batches_tracked
        )

    def _group(self) -> Any | None:
        """The process group to synchronize over, or None when there is nothing to sync."""
        if not (dist.is_available() and dist.is_initialized()):
            raise RuntimeError(
                f"{self._name()} in training mode needs an initialized torch.distributed "
                "process group, and there is none. Start one process per device with "
                "torchrun (`torchrun --nproc-per-node N train.py`) and call "
                "torch.distributed.init_process_group('gloo' on CPU, 'nccl' on GPU) before "
                "the first training forward. In a single process, use bnlab.nn.BatchNorm*d "
                "(SyncBatchNorm.revert_sync_batchnorm(model)) or call .eval()."
            )
        group = self.process_group if self.process_group is not None else dist.group.WORLD
        return group if dist.get_world_size(group) > 1 else None

    def forward(self, input: Tensor) -> Tensor:
        x = input
        use_batch_stats = self.training or self.running_mean is None
        group = self._group() if self.training else None  # eval: never communicates
        if group is not None and _debug_mode():
            _check_same_channels(x, group, self._name())
        self._check_input(x)
        if self._revert_cls is None and not torch.compiler.is_compiling():
            # Not while torch.compile traces: dynamo guards on this attribute, so setting it in
            # the first compiled call would recompile the whole model on the second.
            self._revert_cls = _REVERT_BY_DIM[x.dim()]
        if group is None:  # eval, or a group of one: exactly bnlab's BatchNorm
            momentum = self._ema_factor()
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
        with torch.no_grad():
            mean, var, count = _global_stats(x, group, differentiable=False)
        if count <= 1:  # every rank sees the same count: all raise, none hangs
            raise ValueError(
                f"Expected more than 1 value per channel when training, got input size "
                f"{x.shape} on this rank and {count} value(s) per channel over all "
                f"{dist.get_world_size(group)} ranks: {self._name()} needs a global batch of "
                "2 or more, or call .eval() to use the running statistics"
            )
        momentum = self._ema_factor()  # after the checks: a failed forward changes no state
        if self.track_running_stats:
            F.update_running_stats(self.running_mean, self.running_var, mean, var, count, momentum)
        inv_std = torch.rsqrt(var + self.eps)
        out: Tensor = _SyncBatchNormFunction.apply(
            x, self.weight, self.bias, mean, inv_std, count, self.eps, group
        )
        return out

    @overload
    @classmethod
    def convert_sync_batchnorm(
        cls, module: nn.modules.batchnorm._BatchNorm, process_group: Any | None = None
    ) -> SyncBatchNorm: ...
    @overload
    @classmethod
    def convert_sync_batchnorm(cls, module: _M, process_group: Any | None = None) -> _M: ...
    @classmethod
    def convert_sync_batchnorm(cls, module: Any, process_group: Any | None = None) -> Any:
        """Replace every batch-norm layer in ``module`` (in place) with this class.

        Converts torch.nn.BatchNorm1d/2d/3d, bnlab.nn.BatchNorm1d/2d/3d and
        torch.nn.SyncBatchNorm layers (subclasses included, as torch does). The new layer takes
        over the old one's Parameter and buffer objects (an optimizer built before still
        updates the model) and its train/eval flag. Returns ``module``, or the new layer when
        ``module`` itself is a batch-norm layer. Convert before wrapping the model in DDP.
        """

        def swap(_: str, old: nn.Module) -> nn.Module:
            new = _swap_one(old, cls)
            assert isinstance(new, SyncBatchNorm)
            new.process_group = process_group
            new._revert_cls = getattr(old, "_revert_cls", None)
            for source, target in _SOURCE_TO_REVERT:
                if isinstance(old, source):
                    new._revert_cls = target
            return new

        return replace_modules(module, swap, is_batch_norm)

    @overload
    @classmethod
    def revert_sync_batchnorm(
        cls, module: nn.modules.batchnorm._BatchNorm
    ) -> nn.modules.batchnorm._BatchNorm: ...
    @overload
    @classmethod
    def revert_sync_batchnorm(cls, module: _M) -> _M: ...
    @classmethod
    def revert_sync_batchnorm(cls, module: Any) -> Any:
        """The inverse of :meth:`convert_sync_batchnorm`: replace every SyncBatchNorm in
        ``module`` (in place; torch's too) with bnlab.nn.BatchNorm1d/2d/3d, keeping its
        Parameter and buffer objects and its train/eval flag.

        The dimensionality comes from the layer it was converted from, else from the first
        input it saw in eager mode; a SyncBatchNorm with neither is an error (run one forward
        first).
        """

        def is_sync(m: nn.Module) -> bool:
            return isinstance(m, (SyncBatchNorm, nn.SyncBatchNorm))

        # every layer checked before any is swapped: a refused revert leaves the model whole
        unknown = [
            name or type(m).__name__
            for name, m in module.named_modules()
            if is_sync(m) and getattr(m, "_revert_cls", None) is None
        ]
        if unknown:
            raise ValueError(
                f"revert_sync_batchnorm: cannot tell whether {', '.join(unknown)} normalize(s) "
                "(N, C[, L]), (N, C, H, W) or (N, C, D, H, W) input: not converted from a "
                "BatchNorm*d and no input seen (a torch.compile'd forward does not count). Run "
                "one forward first, or replace it by hand; nothing was reverted."
            )
        return replace_modules(module, lambda _, old: _swap_one(old, old._revert_cls), is_sync)


def _check_same_channels(x: Tensor, group: Any, name: str) -> None:
    """Debug mode: one all_reduce (max of C and of -C) so that every rank raises on a mismatch."""
    c = x.shape[1] if x.dim() >= 2 else -1
    both = torch.tensor([c, -c], dtype=torch.int64, device=x.device)
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    hi, lo = int(both[0]), -int(both[1])
    if hi != lo:
        raise ValueError(
            f"{name}: the ranks pass inputs with different channel counts (from {lo} to {hi}; "
            f"this rank: {c}, input shape {tuple(x.shape)}). Every rank must run the same "
            f"model on inputs with the same number of channels ({DEBUG_ENV} check)"
        )
