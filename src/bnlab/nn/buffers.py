"""One set of BN running statistics on every rank: ``sync_buffers``.

After DDP training the ranks' BN buffers differ: with ``broadcast_buffers=False`` they were
never synchronized, and with the default ``True`` DDP copies rank 0's buffers *before* each
forward, so the last training forwards still left each rank with its own update. Evaluating
(or saving a checkpoint) on every rank then uses different statistics. ``sync_buffers`` gives
every rank the buffers of one rank, as DDP's broadcast would, in one collective per dtype and
device. (``bnlab.doctor.check_ranks`` reports the difference; SyncBatchNorm avoids it: its
statistics are the same on every rank.)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from bnlab.nn.find import batch_norm_layers

__all__ = ["sync_buffers"]


def sync_buffers(model: nn.Module, src: int = 0, group: Any | None = None) -> nn.Module:
    """Copy rank ``src``'s BN buffers (running_mean, running_var, num_batches_tracked of every
    layer :func:`bnlab.nn.batch_norm_layers` finds) to every rank of ``group``, in place.

    A collective: every rank of the group calls it, with the same model structure. ``src`` is
    a global rank, as in ``torch.distributed.broadcast``. Parameters are not touched (DDP keeps
    them equal).

    Raises:
        RuntimeError: no torch.distributed process group is initialized.

    Returns:
        ``model``.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "sync_buffers broadcasts BN buffers from one rank to the others, and no "
            "torch.distributed process group is initialized: call it on every rank after "
            "torch.distributed.init_process_group (in one process there is nothing to sync)"
        )
    nccl = "nccl" in str(dist.get_backend(group)).lower()
    buckets: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for _, bn in batch_norm_layers(model):
        for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked):
            if isinstance(t, Tensor):
                buckets.setdefault((t.device, t.dtype), []).append(t)
    with torch.no_grad():
        for (device, _), tensors in sorted(buckets.items(), key=lambda kv: str(kv[0])):
            comm = torch.device("cuda", torch.cuda.current_device()) if nccl else device
            flat = torch.cat([t.reshape(-1) for t in tensors]).to(comm)
            dist.broadcast(flat, src, group=group)
            start = 0
            for t in tensors:
                t.copy_(flat[start : start + t.numel()].view_as(t))
                start += t.numel()
    return model
