"""bnlab's batch-norm modules: drop-in for torch.nn (SyncBatchNorm on every backend), plus
converters."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.convert import from_torch, to_torch
from bnlab.nn.sync_batchnorm import SyncBatchNorm

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "SyncBatchNorm", "from_torch", "to_torch"]
