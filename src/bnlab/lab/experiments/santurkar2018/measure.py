"""The measurements of Santurkar, Tsipras, Ilyas & Madry, "How Does Batch Normalization Help
Optimization?" (NeurIPS 2018, arXiv:1805.11604), as pure functions of a loss and parameters.

A network enters these functions as ``loss(params) -> scalar``: a function of a dict of
parameter tensors (name -> tensor, in forward order), e.g. ``torch.func.functional_call`` of a
model on one fixed batch. Nothing here trains or mutates a model.

- :func:`internal_covariate_shift`: the paper's Definition 2.1. For layer i at step t,
  ``G_{t,i} = grad_{W_i} L(W_1^t, ..., W_k^t)`` (the gradient a simultaneous update applies)
  and ``G'_{t,i} = grad_{W_i} L(W_1^{t+1}, ..., W_{i-1}^{t+1}, W_i^t, ..., W_k^t)`` (the same
  gradient after the layers before i took their step, on the same batch);
  ICS = ``||G_{t,i} - G'_{t,i}||_2``, reported with the cosine of the two.
- :func:`along_direction` / :func:`landscape`: the paper's Figure 4. From w, move to
  ``w + eta * d`` for each step size eta (d = -grad: the gradient direction) and record the
  loss there (a: its range is the loss's variation), the l2 change of the gradient
  (b: "gradient predictiveness") and the effective beta-smoothness
  ``max_eta ||grad(w + eta d) - grad(w)|| / ||eta d||`` (c).
- :func:`noise_parameters` / :func:`inject_noise`: the "noisy BatchNorm" of Figure 2: after a
  BN layer, time-varying noise with non-zero mean and non-unit variance per activation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from bnlab.lab.experiments.santurkar2018.config import QUANTILES

__all__ = [
    "Along",
    "Ics",
    "activation_summary",
    "along_direction",
    "expected_scale",
    "inject_noise",
    "internal_covariate_shift",
    "landscape",
    "noise_parameters",
    "sgd_step",
]

Params = Mapping[str, Tensor]
Loss = Callable[[dict[str, Tensor]], Tensor]


def _grads(loss: Loss, params: Params, wrt: Sequence[str]) -> tuple[Tensor, list[Tensor]]:
    """(loss value, gradients of the named params) at ``params``, on fresh leaves."""
    leaves = {n: p.detach().requires_grad_(n in wrt) for n, p in params.items()}
    value = loss(leaves)
    grads = torch.autograd.grad(value, [leaves[n] for n in wrt], allow_unused=True)
    out = [torch.zeros_like(leaves[n]) if g is None else g for n, g in zip(wrt, grads, strict=True)]
    return value.detach(), out


def _norm(tensors: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))  # type: ignore[arg-type]


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x.double() * y.double()).sum() for x, y in zip(a, b, strict=True))  # type: ignore[return-value]


def sgd_step(grads: Mapping[str, Tensor], lr: float) -> dict[str, Tensor]:
    """The update plain SGD applies: ``-lr * grad`` per parameter."""
    return {n: -lr * g for n, g in grads.items()}


@dataclass(frozen=True)
class Ics:
    """Definition 2.1 for one layer: G (simultaneous update) against G' (after the layers
    before it moved)."""

    l2: float  # ||G - G'||_2
    cos: float  # cos(G, G'); 1 when G' = G (nan when a gradient is zero)
    grad_norm: float  # ||G||_2, to put l2 on a scale: l2 / grad_norm is scale-free


def internal_covariate_shift(
    loss: Loss,
    params: Params,
    layers: Sequence[str],
    step: Callable[[dict[str, Tensor]], Mapping[str, Tensor]],
) -> list[Ics]:
    """Santurkar et al.'s Definition 2.1 for each layer's weight in ``layers``.

    Args:
        loss: the loss on one fixed batch as a function of the parameters.
        params: every parameter, name -> tensor, in forward order (``named_parameters()`` of a
            sequential model). "The layers before layer i" are all parameters listed before
            ``layers[i]`` (weights, biases, BN's gamma and beta alike).
        layers: names of the layers' weights W_1..W_k, in forward order.
        step: the update the optimizer would apply, given every gradient (name -> tensor);
            :func:`sgd_step` for plain SGD.

    Returns:
        One :class:`Ics` per layer. The first layer has no layers before it: G' = G, l2 0.
    """
    names = list(params)
    missing = [n for n in layers if n not in params]
    if missing:
        raise ValueError(f"layers not among the parameters: {', '.join(missing)}")
    _, all_grads = _grads(loss, params, names)
    update = step(dict(zip(names, all_grads, strict=True)))
    out = []
    for name in layers:
        g = all_grads[names.index(name)]
        before = set(names[: names.index(name)])
        moved = {n: (p + update[n] if n in before else p) for n, p in params.items()}
        _, (g_after,) = _grads(loss, moved, [name])
        gn, an = _norm([g]), _norm([g_after])
        l2 = _norm([g - g_after])
        cos = _dot([g], [g_after]) / (gn * an) if gn > 0 and an > 0 else torch.tensor(math.nan)
        out.append(Ics(float(l2), float(cos), float(gn)))
    return out


@dataclass(frozen=True)
class Along:
    """Loss and gradient at ``w + eta * d`` for each step size eta, against those at w."""

    etas: tuple[float, ...]
    loss0: float  # L(w)
    grad_norm: float  # ||grad L(w)||
    losses: tuple[float, ...]  # L(w + eta d)
    grad_diffs: tuple[float, ...]  # ||grad L(w + eta d) - grad L(w)||: gradient predictiveness
    betas: tuple[float, ...]  # grad_diff / ||eta d||: beta-smoothness between w and w + eta d
    curvatures: tuple[float, ...]  # <grad diff, eta d> / ||eta d||^2: secant curvature along d

    @property
    def loss_range(self) -> float:
        """max - min of the loss over the step sizes (Figure 4a's shaded band at this step)."""
        return max(self.losses) - min(self.losses)

    @property
    def beta(self) -> float:
        """Effective beta-smoothness (Figure 4c): the largest gradient change per distance."""
        return max(self.betas)


def along_direction(loss: Loss, params: Params, direction: Params, etas: Sequence[float]) -> Along:
    """Loss and gradient along ``w + eta * direction`` (every parameter moves).

    On a quadratic ``L(w) = w^T A w / 2`` the gradient changes by ``eta A d``, so each beta is
    ``||A d|| / ||d||`` (at most the largest |eigenvalue| of A, equal to the eigenvalue when d
    is an eigenvector) and each curvature is the Rayleigh quotient ``d^T A d / d^T d``.
    """
    if not etas or any(e <= 0 for e in etas):
        raise ValueError(f"step sizes must be positive, got {tuple(etas)}")
    names = list(params)
    d = [direction[n].detach() for n in names]
    d_norm = float(_norm(d))
    if d_norm == 0:
        raise ValueError("the direction is zero (a zero gradient): nothing to move along")
    loss0, g0 = _grads(loss, params, names)
    losses, diffs, betas, curvs = [], [], [], []
    for eta in etas:
        moved = {n: params[n].detach() + eta * dn for n, dn in zip(names, d, strict=True)}
        value, g = _grads(loss, moved, names)
        delta = [a - b for a, b in zip(g, g0, strict=True)]
        diff = float(_norm(delta))
        losses.append(float(value))
        diffs.append(diff)
        betas.append(diff / (eta * d_norm))
        curvs.append(float(_dot(delta, d)) / (eta * d_norm**2))
    return Along(
        tuple(float(e) for e in etas),
        float(loss0),
        float(_norm(g0)),
        tuple(losses),
        tuple(diffs),
        tuple(betas),
        tuple(curvs),
    )


def landscape(loss: Loss, params: Params, etas: Sequence[float]) -> Along:
    """:func:`along_direction` along the gradient step, d = -grad L(w): what an SGD step of
    size eta would do (Figure 4: the loss, gradient predictiveness, effective beta)."""
    names = list(params)
    _, g = _grads(loss, params, names)
    return along_direction(loss, params, {n: -gn for n, gn in zip(names, g, strict=True)}, etas)


# ---- noisy BatchNorm (Figure 2) ------------------------------------------------------------------


def noise_parameters(
    num_features: int, n_mean: float, n_std: float, n_scale: float, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """One step's noise distribution per activation: (scale, mean, std), each (C,).

    scale ~ log-uniform on [1 / n_scale, n_scale], mean ~ U(-n_mean, n_mean),
    std ~ U(0, n_std), drawn afresh every step: the noise has non-zero mean and non-unit
    variance, and both change over time.
    """
    if n_scale < 1 or n_mean < 0 or n_std < 0:
        raise ValueError(
            f"noise needs n_scale >= 1, n_mean >= 0, n_std >= 0; got {n_scale}, {n_mean}, {n_std}"
        )
    u = torch.rand(3, num_features, generator=generator)
    scale = torch.exp((2 * u[0] - 1) * math.log(n_scale))
    mean = (2 * u[1] - 1) * n_mean
    std = u[2] * n_std
    return scale, mean, std


def inject_noise(
    y: Tensor, scale: Tensor, mean: Tensor, std: Tensor, generator: torch.Generator
) -> Tensor:
    """``scale_c * y + n`` with ``n ~ N(mean_c, std_c^2)`` i.i.d. for every sample (and
    position) of activation (channel) c, axis 1. Differentiable in y."""
    shape = [1, -1] + [1] * (y.dim() - 2)
    n = torch.randn(y.shape, generator=generator, dtype=y.dtype)
    return y * scale.view(shape) + mean.view(shape) + n * std.view(shape)


def expected_scale(n_scale: float) -> float:
    """E[scale] of the log-uniform on [1/a, a]: (a - 1/a) / (2 ln a); 1 for a = 1. The noisy
    layer applies this (and the mean noise, 0) in eval mode, as dropout applies its mean."""
    if n_scale == 1:
        return 1.0
    return (n_scale - 1 / n_scale) / (2 * math.log(n_scale))


# ---- activation distributions --------------------------------------------------------------------


def activation_summary(x: Tensor, unit: int = 0) -> dict[str, list[float]]:
    """The distribution of one layer's activations over a batch: the quantiles
    (:data:`QUANTILES`) of unit ``unit`` (channel; every sample and position), and every
    unit's mean and std.

    Shape:
        x: (N, C) or (N, C, H, W).
    """
    per_unit = x.detach().transpose(0, 1).reshape(x.shape[1], -1).double()  # (C, N*H*W)
    q = torch.quantile(per_unit[unit], torch.tensor(QUANTILES, dtype=torch.float64))
    return {
        "q": [float(v) for v in q],
        "means": [float(v) for v in per_unit.mean(1)],
        "stds": [float(v) for v in per_unit.std(1, unbiased=False)],
    }
