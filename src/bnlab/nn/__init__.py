"""bnlab's batch-norm modules (subclasses of torch.nn's, drop-in), fused BN + activation,
converters, layer lookup."""

from bnlab.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d
from bnlab.nn.batchnorm_act import BatchNormAct1d, BatchNormAct2d, BatchNormAct3d
from bnlab.nn.convert import from_torch, to_torch
from bnlab.nn.find import batch_norm_layers, is_batch_norm

__all__ = [
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "BatchNormAct1d",
    "BatchNormAct2d",
    "BatchNormAct3d",
    "batch_norm_layers",
    "from_torch",
    "is_batch_norm",
    "to_torch",
]
