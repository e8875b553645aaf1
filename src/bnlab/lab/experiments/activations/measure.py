"""`bnlab activations`' measurements: distribution statistics of every hidden layer's values.

- *pre* = the input of the nonlinearity (the BN output in BN nets), *post* = its output. C5 is
  judged on *pre*: that is what BN normalizes and what decides saturation (tanh) or dead units
  (ReLU); *post* of a ReLU is never Gaussian (half of it is exactly 0), whatever the init.
- ``ks`` compares the raw values with N(0, 1): scale *and* shape. A layer whose values have
  collapsed to 1e-7 or exploded to 1e12 is far from N(0, 1) even when its histogram is
  bell-shaped, and "every layer has a similar, Gaussian-like distribution" (the blog) is
  exactly "every layer is close to one fixed N(0, 1)". ``ks_shape`` compares the values
  standardized by their own mean and std: shape only (the CLT makes wide random layers
  bell-shaped whatever their scale, so this one separates the two effects).
- Activations come from one fixed evaluation batch of held-out digits through forward hooks,
  on a copy of the net (so recording never changes running statistics). BN layers are in
  *train* mode for both stages: at init the running statistics are still (0, 1), so eval
  mode would show an un-normalized net; batch statistics over the evaluation batch show what
  BN does while training.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import Tensor, nn

from bnlab.lab.models.mlp import ACTIVATIONS as ACTIVATION_TYPES

__all__ = [
    "HIST_BINS",
    "HIST_TAIL",
    "QUANTILES",
    "SATURATED_TANH",
    "finite_or_none",
    "layer_stats",
    "record_layers",
]

QUANTILES = (0.15, 0.50, 0.85)  # the percentiles Ioffe & Szegedy plot in their Figure 1
HIST_BINS = 40  # enough to see shape in a 1-inch panel, few enough to stay smooth at 500k values
HIST_TAIL = 0.005  # pre-activation panels span the 0.5th..99.5th percentile (tails would
# otherwise squeeze the bulk into one bin when values explode)
SATURATED_TANH = 0.99  # |tanh| above this counts as saturated (gradient < 0.02)


def finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _ks_to_normal(sorted_z: Tensor) -> float:
    """sup |F_n - Phi| of sorted float64 values against the standard normal CDF."""
    n = sorted_z.numel()
    cdf = torch.special.ndtr(sorted_z)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    d_plus = (i / n - cdf).max()
    d_minus = (cdf - (i - 1) / n).max()
    return float(torch.maximum(d_plus, d_minus))


def _quantile(sorted_x: Tensor, q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default method)."""
    pos = q * (sorted_x.numel() - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, sorted_x.numel() - 1)
    frac = pos - lo
    return float(sorted_x[lo] * (1 - frac) + sorted_x[hi] * frac)


def layer_stats(
    values: Tensor, hist_range: tuple[float, float] | None = None, bins: int = HIST_BINS
) -> dict[str, Any]:
    """Distribution statistics of all values of one layer (every unit, every example).

    Args:
        values: any shape, e.g. (B, width); non-finite values are counted and left out.
        hist_range: histogram range; None = the HIST_TAIL..1-HIST_TAIL quantiles.

    Returns:
        mean, std (biased), p15, p50, p85, skew, kurtosis (excess: 0 for a Gaussian),
        ks (raw values vs N(0, 1)), ks_shape (standardized values vs N(0, 1)), finite (share
        of finite values) and hist = {lo, hi, counts}. Undefined values are None.
    """
    x = values.detach().reshape(-1).to(torch.float64)
    total = x.numel()
    x = x[torch.isfinite(x)]
    n = x.numel()
    out: dict[str, Any] = {"n": n, "finite": n / total if total else 0.0}
    if n < 2:
        empty = {k: None for k in ("mean", "std", "p15", "p50", "p85", "skew", "kurtosis")}
        return {**out, **empty, "ks": None, "ks_shape": None, "hist": None}
    xs, _ = torch.sort(x)
    mean = float(xs.mean())
    d = xs - mean
    m2 = float(d.square().mean())  # two-pass: deviations from the mean first
    std = math.sqrt(m2)
    out.update(mean=mean, std=std)
    for q in QUANTILES:
        out[f"p{round(q * 100)}"] = _quantile(xs, q)
    if m2 > 0:
        out["skew"] = finite_or_none(float(d.pow(3).mean()) / m2**1.5)
        out["kurtosis"] = finite_or_none(float(d.pow(4).mean()) / m2**2 - 3.0)
        out["ks_shape"] = _ks_to_normal(d / std)
    else:
        out.update(skew=None, kurtosis=None, ks_shape=None)
    out["ks"] = _ks_to_normal(xs)
    if hist_range is None:
        lo, hi = _quantile(xs, HIST_TAIL), _quantile(xs, 1 - HIST_TAIL)
    else:
        lo, hi = hist_range
    if not hi > lo:  # a constant layer (all ReLUs dead): one narrow bin around the value
        pad = max(abs(lo) * 1e-6, 1e-12)
        lo, hi = lo - pad, hi + pad
    counts = torch.histc(xs, bins=bins, min=lo, max=hi)
    out["hist"] = {"lo": lo, "hi": hi, "counts": [int(c) for c in counts.tolist()]}
    return out


def _post_range(activation: str) -> tuple[float, float] | None:
    return (-1.0, 1.0) if activation == "tanh" else None  # tanh: the CS231n figure's range


def _saturated(activation: str, post: Tensor) -> float:
    """Share of units in the flat part: |tanh| > SATURATED_TANH, or ReLU output exactly 0."""
    flat = post.abs() > SATURATED_TANH if activation == "tanh" else post == 0
    return float(flat.float().mean())


@torch.no_grad()
def record_layers(model: nn.Module, x: Tensor, activation: str) -> list[dict[str, Any]]:
    """Statistics of every hidden layer's pre- and post-activations on the batch ``x``.

    Runs a copy of ``model`` in train mode (BN normalizes with the statistics of ``x``; the
    original's running statistics are left untouched).
    """
    twin = copy.deepcopy(model).train()
    twin_acts = [m for m in twin.modules() if isinstance(m, ACTIVATION_TYPES[activation])]
    seen: list[tuple[Tensor, Tensor]] = []

    def hook(_m: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        seen.append((inputs[0], output))  # (B, width) each

    handles = [a.register_forward_hook(hook) for a in twin_acts]
    try:
        twin(x)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for layer, (pre, post) in enumerate(seen, start=1):
        rows.append({"layer": layer, "kind": "pre", **layer_stats(pre)})
        post_stats = layer_stats(post, _post_range(activation))
        rows.append(
            {
                "layer": layer,
                "kind": "post",
                **post_stats,
                "saturated": _saturated(activation, post),
            }
        )
    return rows
