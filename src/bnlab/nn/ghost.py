"""Ghost batch normalization (Hoffer, Hubara and Soudry 2017): BN over small virtual batches.

In training mode the batch is cut into consecutive chunks of ``ghost_batch_size`` rows (the last
chunk may be smaller) and each chunk is normalized with its own statistics, as if it were a
batch of its own: the noise of small-batch BN at any SGD batch size. Evaluation mode is BN's.

Ghost Batch Renorm (:class:`GhostBatchRenorm2d` ...) is batch renormalization (Ioffe 2017,
:mod:`bnlab.nn.renorm`) per chunk: each chunk's r and d from its own statistics against the
layer's running statistics before the step, so that training sees chunk-sized statistics
corrected toward the population ones; running statistics as Ghost BN's.

One BN call serves all the full chunks: (k * g, C, *) is rearranged to (g, k * C, *), chunk j's
channel c becoming channel j * C + c, and normalized with gamma and beta repeated k times, so
the compiled kernels run once (the rearrangement is one copy each way). A smaller last chunk is
a second call.

Running statistics: one update per forward call (``num_batches_tracked`` counts calls, not
chunks), with the chunks' statistics averaged, each chunk weighted by its rows: the mean of the
chunk means (the batch mean) and the mean of the chunks' unbiased variances. That is the
expectation of what per-chunk BN with momentum would track (the variance a chunk-sized BN
normalizes with, not the whole batch's, which also holds the spread between chunk means), with
the same horizon in batches for the same momentum.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnlab import functional as F
from bnlab.nn.batchnorm import _BatchNorm, _check_shape, _layer_forward, count_batch
from bnlab.nn.renorm import Limit, _BatchRenorm, _is_bn, _renorm_forward, limits_now, renorm_affine

__all__ = [
    "GhostBatchNorm1d",
    "GhostBatchNorm2d",
    "GhostBatchNorm3d",
    "GhostBatchRenorm1d",
    "GhostBatchRenorm2d",
    "GhostBatchRenorm3d",
]

# Batch renorm's inputs to one chunked BN call: running mean, running var, r_max, d_max.
Renorm = tuple[Tensor, Tensor, Limit, Limit]


def _chunk_rows(n: int, ghost: int) -> tuple[int, int]:
    """(number of full chunks, rows of the smaller last chunk or 0)."""
    return n // ghost, n % ghost


def _ghost_values(x: Tensor, ghost: int) -> int:
    """Values per channel of the smallest chunk of ``x``."""
    n = x.shape[0]
    spatial = x.numel() // max(n * x.shape[1], 1)
    rest = _chunk_rows(n, ghost)[1]
    return (rest if rest else min(n, ghost)) * spatial


def _chunked(
    x: Tensor,
    chunks: int,
    weight: Tensor | None,
    bias: Tensor | None,
    stats: tuple[Tensor, Tensor] | None,
    eps: float,
    renorm: Renorm | None = None,
) -> Tensor:
    """BN of each of ``chunks`` consecutive equal chunks of ``x`` in one call; ``stats``, if
    given, are zeroed (chunks * C,) buffers that receive the chunks' mean and unbiased var.
    With ``renorm`` (running mean, running var, r_max, d_max): batch renorm of each chunk, its
    own r and d against the running statistics (:func:`~bnlab.nn.renorm.renorm_affine`)."""
    mean, var = stats if stats is not None else (None, None)
    n, c, *spatial = x.shape
    g = n // chunks
    xs = x
    if chunks > 1:
        xs = x.reshape(chunks, g, c, *spatial).transpose(0, 1).reshape(g, chunks * c, *spatial)
    w: Tensor | None
    b: Tensor | None
    if renorm is not None:
        w, b = renorm_affine(xs, weight, bias, renorm[0], renorm[1], eps, renorm[2], renorm[3])
    else:
        w = None if weight is None else weight.repeat(chunks)
        b = None if bias is None else bias.repeat(chunks)
    if chunks == 1:
        return F._batch_norm(x, mean, var, w, b, True, 1.0, eps)
    ys = F._batch_norm(xs, mean, var, w, b, True, 1.0, eps)  # momentum 1: the buffers = stats
    return ys.reshape(g, chunks, c, *spatial).transpose(0, 1).reshape(x.shape)


@torch.fx.wrap  # one node in a traced graph, as bnlab's BatchNorm (chunking reads the shape)
def _ghost_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    running_mean: Tensor | None,
    running_var: Tensor | None,
    num_batches_tracked: Tensor | None,
    layer: str,
    expected_dims: tuple[int, ...],
    num_features: int,
    training: bool,
    track_running_stats: bool,
    momentum: float | None,
    eps: float,
    ghost: int,
    limits: tuple[float, float, int, int] | None = None,
) -> Tensor:
    """One forward step: BN per chunk in training (or without running statistics), else BN.
    With ``limits`` (Ghost Batch Renorm's r_max, d_max, warm-up start and steps): batch
    renorm per chunk in training, each chunk's r and d against the running statistics as they
    were before the step."""
    _check_shape(x, layer, expected_dims, num_features)
    use_batch_stats = training or running_mean is None
    n = x.shape[0]
    if limits is not None and training and n <= ghost:  # a single chunk: batch renorm
        return _renorm_forward(
            x, weight, bias, running_mean, running_var, num_batches_tracked, layer,
            expected_dims, num_features, training, track_running_stats, momentum, eps, limits,
        )  # fmt: skip
    if not use_batch_stats or x.numel() == 0 or n <= ghost:  # evaluation, or a single chunk: BN
        return _layer_forward(
            x, weight, bias, running_mean, running_var, num_batches_tracked, layer,
            expected_dims, num_features, training, track_running_stats, momentum, eps,
        )  # fmt: skip
    if _ghost_values(x, ghost) <= 1:
        raise ValueError(
            f"{layer} got input of shape {tuple(x.shape)}: its last ghost batch has "
            f"{n % ghost} row and so one value per channel, too few for batch statistics: "
            f"use a batch size that leaves a remainder other than 1 after dividing by "
            f"{ghost} (e.g. drop_last=True), or call .eval()"
        )
    update = training and track_running_stats and running_mean is not None
    F._check(x, running_mean, running_var, weight, bias, True, eps, who=layer)
    renorm: Renorm | None = None
    if limits is not None and training:
        assert running_mean is not None and running_var is not None  # a renorm layer tracks
        assert num_batches_tracked is not None
        r_max, d_max = limits_now(num_batches_tracked, limits)
        if not _is_bn(r_max, d_max):  # else plain Ghost BN during the warm-up
            renorm = (running_mean, running_var, r_max, d_max)
    factor = count_batch(training, track_running_stats, momentum, num_batches_tracked)
    full, rest = _chunk_rows(n, ghost)
    parts = [(x[: full * ghost], full)] + ([(x[full * ghost :], 1)] if rest else [])
    ys: list[Tensor] = []
    batch_mean: Tensor | None = None  # the chunks' statistics, each weighted by its rows
    batch_var: Tensor | None = None
    for part, chunks in parts:
        stats = None
        if update:
            assert running_mean is not None
            zeros = running_mean.new_zeros(chunks * num_features)
            stats = (zeros, zeros.clone())
        ys.append(_chunked(part, chunks, weight, bias, stats, eps, renorm))
        if stats is not None:
            # a part's chunks have equal rows: its weight is its share of the batch, a Python
            # number (no host-to-device copy per step)
            share = part.shape[0] / n
            m = stats[0].view(chunks, num_features).mean(0) * share
            v = stats[1].view(chunks, num_features).mean(0) * share
            batch_mean = m if batch_mean is None else batch_mean + m
            batch_var = v if batch_var is None else batch_var + v
    if update:
        assert running_mean is not None and running_var is not None
        assert batch_mean is not None and batch_var is not None
        with torch.no_grad():
            running_mean.mul_(1.0 - factor).add_(batch_mean, alpha=factor)
            running_var.mul_(1.0 - factor).add_(batch_var, alpha=factor)
    y = ys[0] if len(ys) == 1 else torch.cat(ys)
    return y.contiguous(memory_format=F._output_memory_format(x))  # as BN's output


class _GhostBatchNorm(_BatchNorm):
    """Ghost BN on bnlab's BN base: torch's parameters, buffers and state_dict."""

    def __init__(
        self,
        num_features: int,
        ghost_batch_size: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        _check_ghost(type(self).__name__, ghost_batch_size)
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, **factory, bias=bias
        )
        self.ghost_batch_size = ghost_batch_size

    def values_per_statistic(self, input: Tensor) -> int:
        """The fewest values any statistic of ``input`` is computed from: its smallest ghost
        batch's values per channel (the doctor's batch-of-one check)."""
        return _ghost_values(input, self.ghost_batch_size)

    def forward(self, input: Tensor) -> Tensor:
        return _ghost_forward(input, *self._step_args(), self.ghost_batch_size)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"


class GhostBatchNorm1d(_GhostBatchNorm, nn.BatchNorm1d):
    """Ghost BN over (N, C) or (N, C, L) input; a torch.nn.BatchNorm1d's state."""

    _expected_dims = (2, 3)


class GhostBatchNorm2d(_GhostBatchNorm, nn.BatchNorm2d):
    """Ghost BN over (N, C, H, W) input; a torch.nn.BatchNorm2d's state."""

    _expected_dims = (4,)


class GhostBatchNorm3d(_GhostBatchNorm, nn.BatchNorm3d):
    """Ghost BN over (N, C, D, H, W) input; a torch.nn.BatchNorm3d's state."""

    _expected_dims = (5,)


def _check_ghost(name: str, ghost_batch_size: int) -> None:
    if not isinstance(ghost_batch_size, int) or ghost_batch_size < 2:
        raise ValueError(
            f"{name}: ghost_batch_size must be an int >= 2, got {ghost_batch_size!r} (a "
            f"ghost batch of 1 normalizes each example alone: BN on one value per channel "
            f"for (N, C) input; for images that is InstanceNorm{name[-2:]}(affine=True))"
        )


class _GhostBatchRenorm(_BatchRenorm):
    """Batch renorm per ghost batch on bnlab's BN base: torch's parameters, buffers and
    state_dict (a BatchRenorm's arguments, plus ``ghost_batch_size``)."""

    def __init__(self, num_features: int, ghost_batch_size: int, *args: Any, **kwargs: Any) -> None:
        _check_ghost(type(self).__name__, ghost_batch_size)
        super().__init__(num_features, *args, **kwargs)
        self.ghost_batch_size = ghost_batch_size

    def values_per_statistic(self, input: Tensor) -> int:
        """The fewest values any statistic of ``input`` is computed from: its smallest ghost
        batch's values per channel (the doctor's batch-of-one check)."""
        return _ghost_values(input, self.ghost_batch_size)

    def forward(self, input: Tensor) -> Tensor:
        return _ghost_forward(input, *self._step_args(), self.ghost_batch_size, self._limits())

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, ghost_batch_size={self.ghost_batch_size}"


class GhostBatchRenorm1d(_GhostBatchRenorm, nn.BatchNorm1d):
    """Batch renorm per ghost batch over (N, C) or (N, C, L) input; a torch.nn.BatchNorm1d's
    state."""

    _expected_dims = (2, 3)


class GhostBatchRenorm2d(_GhostBatchRenorm, nn.BatchNorm2d):
    """Batch renorm per ghost batch over (N, C, H, W) input; a torch.nn.BatchNorm2d's state."""

    _expected_dims = (4,)


class GhostBatchRenorm3d(_GhostBatchRenorm, nn.BatchNorm3d):
    """Batch renorm per ghost batch over (N, C, D, H, W) input; a torch.nn.BatchNorm3d's
    state."""

    _expected_dims = (5,)
