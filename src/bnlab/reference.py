"""Batch normalization in NumPy, float64: the oracle every other path is checked against.

Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal
Covariate Shift", ICML 2015, Algorithm 1. Channel axis is 1 for every input rank: (N, C),
(N, C, L), (N, C, H, W), (N, C, D, H, W). Statistics are taken per channel over every other
axis, so m = N * L (or N * H * W, ...) values share one mean and one variance.

This module is deliberately plain: no speed tricks, two-pass variance, every quantity named as
in the paper. Do not import torch here; the point of an oracle is independence.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

Array = NDArray[np.float64]


class Cache(NamedTuple):
    """What the backward pass needs from the forward pass, and nothing more."""

    x_hat: Array  # normalized input, same shape as x
    inv_std: Array  # (C,) 1 / sqrt(var + eps)
    gamma: Array  # (C,)


def channel_reduce_axes(x: np.ndarray) -> tuple[int, ...]:
    """Every axis but the channel axis 1."""
    if x.ndim < 2:
        raise ValueError(f"batch norm needs input of shape (N, C, ...), got shape {x.shape}")
    return (0, *range(2, x.ndim))


def per_channel(v: np.ndarray, ndim: int) -> np.ndarray:
    """Reshape a (C,) vector so it broadcasts along axis 1 of an ndim-dimensional array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def batch_stats(x: ArrayLike) -> tuple[Array, Array, int]:
    """Per-channel mean, biased variance (two-pass) and the number of values m per channel."""
    x = np.asarray(x, dtype=np.float64)
    axes = channel_reduce_axes(x)
    m = x.size // x.shape[1]
    mu = x.mean(axis=axes)
    var = ((x - per_channel(mu, x.ndim)) ** 2).mean(axis=axes)  # two passes, never E[x^2]-E[x]^2
    return mu, var, m


def batch_norm_forward(
    x: ArrayLike,
    gamma: ArrayLike | None = None,
    beta: ArrayLike | None = None,
    eps: float = 1e-5,
) -> tuple[Array, Cache]:
    """Training-mode batch normalization (Algorithm 1 of the paper).

        mu      = 1/m sum_i x_i                      (per channel)
        var     = 1/m sum_i (x_i - mu)^2             (biased: this normalizes)
        x_hat_i = (x_i - mu) / sqrt(var + eps)
        y_i     = gamma * x_hat_i + beta

    Args:
        x: input of shape (N, C, *).
        gamma: (C,) scale; None means 1 (``affine=False``).
        beta: (C,) shift; None means 0 (``affine=False``).
        eps: added to the variance for numerical stability.

    Returns:
        ``(y, cache)``; ``cache`` feeds :func:`batch_norm_backward`.
    """
    x = np.asarray(x, dtype=np.float64)
    c = x.shape[1] if x.ndim >= 2 else 0
    gamma = np.ones(c) if gamma is None else np.asarray(gamma, dtype=np.float64)
    beta = np.zeros(c) if beta is None else np.asarray(beta, dtype=np.float64)
    mu, var, _ = batch_stats(x)
    inv_std = 1.0 / np.sqrt(var + eps)
    x_hat = (x - per_channel(mu, x.ndim)) * per_channel(inv_std, x.ndim)
    y = per_channel(gamma, x.ndim) * x_hat + per_channel(beta, x.ndim)
    return y, Cache(x_hat, inv_std, gamma)


def batch_norm_backward(dy: ArrayLike, cache: Cache) -> tuple[Array, Array, Array]:
    """Gradients of training-mode batch normalization, derived by hand.

    With L the loss and every sum over the m values of one channel:

        dL/dbeta  = sum_i dy_i
        dL/dgamma = sum_i dy_i * x_hat_i
        dL/dx_hat_i = gamma * dy_i

    x_i reaches the loss through x_hat_i directly, and through mu and var (which every x_hat_j
    depends on). Using dmu/dx_i = 1/m, dvar/dx_i = 2 (x_i - mu) / m and
    dx_hat_j/dvar = -(x_j - mu) / 2 * (var + eps)^(-3/2):

        dL/dvar = sum_j dL/dx_hat_j * (x_j - mu) * (-1/2) * inv_std^3
        dL/dmu  = -inv_std * sum_j dL/dx_hat_j        (the dvar/dmu term sums to zero)
        dL/dx_i = dL/dx_hat_i * inv_std + dL/dvar * 2 (x_i - mu) / m + dL/dmu / m

    Substituting x_i - mu = x_hat_i / inv_std and collecting terms gives the compact form

        dL/dx_i = gamma * inv_std / m * (m * dy_i - sum_j dy_j - x_hat_i * sum_j dy_j x_hat_j)
                = gamma * inv_std / m * (m * dy_i - dbeta - x_hat_i * dgamma)

    The gradient is orthogonal to the constant vector and to x_hat within each channel: shifting
    or rescaling a channel's input does not change its normalized output.

    Returns:
        ``(dx, dgamma, dbeta)`` with shapes ``(x.shape, (C,), (C,))``.
    """
    dy = np.asarray(dy, dtype=np.float64)
    x_hat, inv_std, gamma = cache
    axes = channel_reduce_axes(dy)
    m = dy.size // dy.shape[1]  # values per channel
    dbeta = dy.sum(axis=axes)
    dgamma = (dy * x_hat).sum(axis=axes)
    dx = per_channel(gamma * inv_std / m, dy.ndim) * (
        m * dy - per_channel(dbeta, dy.ndim) - x_hat * per_channel(dgamma, dy.ndim)
    )
    return dx, dgamma, dbeta


def batch_norm_inference(
    x: ArrayLike,
    running_mean: ArrayLike,
    running_var: ArrayLike,
    gamma: ArrayLike | None = None,
    beta: ArrayLike | None = None,
    eps: float = 1e-5,
) -> Array:
    """Evaluation-mode batch normalization: fixed statistics, so each example stands alone."""
    x = np.asarray(x, dtype=np.float64)
    c = x.shape[1]
    gamma = np.ones(c) if gamma is None else np.asarray(gamma, dtype=np.float64)
    beta = np.zeros(c) if beta is None else np.asarray(beta, dtype=np.float64)
    mean = np.asarray(running_mean, dtype=np.float64)
    inv_std = 1.0 / np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    return per_channel(gamma * inv_std, x.ndim) * (x - per_channel(mean, x.ndim)) + per_channel(
        beta, x.ndim
    )


def update_running_stats(
    running_mean: ArrayLike,
    running_var: ArrayLike,
    x: ArrayLike,
    momentum: float | None = 0.1,
    num_batches_tracked: int = 1,
) -> tuple[Array, Array]:
    """One running-statistics update, PyTorch's convention.

    new = (1 - momentum) * old + momentum * batch, with the **unbiased** batch variance
    (m / (m - 1) times the biased one that normalized the batch). ``momentum=None`` is the
    cumulative average: momentum = 1 / num_batches_tracked, where ``num_batches_tracked`` already
    counts this batch, so after k batches the running mean is the plain average of k batch means.
    """
    mu, var, m = batch_stats(x)
    if m < 2:
        raise ValueError(f"need more than 1 value per channel to estimate a variance, got m={m}")
    factor = 1.0 / num_batches_tracked if momentum is None else momentum
    unbiased_var = var * m / (m - 1)
    new_mean = (1 - factor) * np.asarray(running_mean, dtype=np.float64) + factor * mu
    new_var = (1 - factor) * np.asarray(running_var, dtype=np.float64) + factor * unbiased_var
    return new_mean, new_var
