"""Datasets: the IDX format, MNIST and Fashion-MNIST in memory, seeded batching.

See :mod:`bnlab.lab.data.datasets` for where files are looked for and how downloads work.
"""

from bnlab.lab.data.datasets import (
    Dataset,
    available_splits,
    batch_indices,
    load_dataset,
    to_unit_range,
)
from bnlab.lab.data.idx import DataError, read_idx, write_idx

__all__ = [
    "DataError",
    "Dataset",
    "available_splits",
    "batch_indices",
    "load_dataset",
    "read_idx",
    "to_unit_range",
    "write_idx",
]
