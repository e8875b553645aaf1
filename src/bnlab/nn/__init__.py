"""bnlab's batch-norm modules (subclasses of torch.nn's, drop-in; SyncBatchNorm on every
torch.distributed backend; fused BN + activation; frozen BN; Batch Renorm, Ghost BN, Ghost Batch
Renorm, Virtual BN), converters, layer lookup, precise BN statistics."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.batchnorm_act import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from bnlab.nn.buffers import sync_buffers
from bnlab.nn.convert import from_torch, to_torch
from bnlab.nn.find import batch_norm_layers, is_batch_norm, values_per_statistic
from bnlab.nn.frozen import (
    FROZEN_BATCH_NORMS,
    FrozenBatchNorm1d,
    FrozenBatchNorm2d,
    FrozenBatchNorm3d,
    freeze,
    unfreeze,
)
from bnlab.nn.ghost import (
    GhostBatchNorm1d,
    GhostBatchNorm2d,
    GhostBatchNorm3d,
    GhostBatchRenorm1d,
    GhostBatchRenorm2d,
    GhostBatchRenorm3d,
)
from bnlab.nn.precise import recompute_stats
from bnlab.nn.renorm import BatchRenorm1d, BatchRenorm2d, BatchRenorm3d
from bnlab.nn.sync_batchnorm import SyncBatchNorm
from bnlab.nn.virtual import VirtualBatchNorm1d, VirtualBatchNorm2d

__all__ = [
    "FROZEN_BATCH_NORMS",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "BatchRenorm1d",
    "BatchRenorm2d",
    "BatchRenorm3d",
    "FrozenBatchNorm1d",
    "FrozenBatchNorm2d",
    "FrozenBatchNorm3d",
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "GhostBatchRenorm1d",
    "GhostBatchRenorm2d",
    "GhostBatchRenorm3d",
    "SyncBatchNorm",
    "VirtualBatchNorm1d",
    "VirtualBatchNorm2d",
    "batch_norm_layers",
    "freeze",
    "from_torch",
    "is_batch_norm",
    "recompute_stats",
    "sync_buffers",
    "to_torch",
    "unfreeze",
    "values_per_statistic",
]
