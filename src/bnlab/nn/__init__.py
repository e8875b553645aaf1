"""bnlab's batch-norm modules: drop-in for torch.nn, plus converters."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.convert import from_torch, to_torch

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d", "from_torch", "to_torch"]
