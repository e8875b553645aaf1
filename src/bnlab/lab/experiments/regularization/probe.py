"""The batch-dependence probe: how much one example's output moves with its batch mates.

One fixed digit is put into many random batches; the spread (standard deviation over batches)
of its logits and of its first BN layer's output is measured in train mode (batch statistics)
and in eval mode (running statistics: exactly zero spread). A batch mean of B examples has a
standard error proportional to 1/sqrt(B), so the train-mode spread should fall with a log-log
slope near -1/2 (see :mod:`bnlab.lab.experiments.regularization.analysis` for the fit).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from bnlab.lab.experiments.regularization.config import CI_LEVEL
from bnlab.lab.models.mlp import forward_with_bn

__all__ = ["BOOTSTRAP_RESAMPLES", "probe_batch_dependence"]

BOOTSTRAP_RESAMPLES = 2000  # percentile-bootstrap CIs of a spread: stable to ~0.01 relative


def _rms_std(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Root mean square over the last remaining axis of the std along ``axis``."""
    return np.sqrt((np.std(x, axis=axis, ddof=1) ** 2).mean(axis=-1))


def _spread_ci(outs: np.ndarray, seed: int) -> tuple[float, float]:
    """Percentile-bootstrap CI (over batches) of the RMS spread of (K, C) outputs."""
    from scipy import stats

    if outs.shape[0] < 3 or not np.any(np.std(outs, axis=0) > 0):
        value = float(_rms_std(outs.T)) if outs.shape[0] > 1 else math.nan
        return value, value
    res = stats.bootstrap(
        (outs,),
        lambda x, axis: _rms_std(np.moveaxis(x, axis, -1), axis=-1),
        axis=0,
        confidence_level=CI_LEVEL,
        n_resamples=BOOTSTRAP_RESAMPLES,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


@torch.no_grad()
def probe_batch_dependence(
    model: nn.Sequential,
    x0: Tensor,
    pool: Tensor,
    batch_sizes: tuple[int, ...],
    n_batches: int,
    generator: torch.Generator,
) -> list[dict[str, Any]]:
    """The spread of one example's outputs over random batches, train vs eval mode.

    For each B, ``n_batches`` batches are made of ``x0`` (row 0) and B - 1 distinct random
    rows of ``pool``; each batch goes through a train-mode and an eval-mode copy of ``model``
    (copies: train mode would move the running statistics). Recorded per B: the standard
    deviation over batches of x0's logits and of its first BN layer's output, as the root mean
    square over units, in both modes; a bootstrap CI of the train-mode logit spread; the
    fraction of batches in which x0's predicted class differs from its eval-mode prediction.

    Args:
        x0: (784,) the fixed example. pool: (P, 784), where the others come from; both float
            in [-1, 1].
    """
    train_model = copy.deepcopy(model).train()
    eval_model = copy.deepcopy(model).eval()
    reference = eval_model(x0[None]).argmax(1).item()
    records = []
    for b in batch_sizes:
        logits: dict[str, list[Tensor]] = {"train": [], "eval": []}  # each: K x (10,)
        bn1: dict[str, list[Tensor]] = {"train": [], "eval": []}  # each: K x (C,)
        for _ in range(n_batches):
            others = pool[torch.randperm(pool.shape[0], generator=generator)[: b - 1]]
            batch = torch.cat([x0[None], others])  # (B, 784)
            for mode, net in (("train", train_model), ("eval", eval_model)):
                out, io = forward_with_bn(net, batch)
                logits[mode].append(out[0])
                bn1[mode].append(io[0][1][0])
        lt = torch.stack(logits["train"]).double().numpy()  # (K, 10)
        le = torch.stack(logits["eval"]).double().numpy()
        bt = torch.stack(bn1["train"]).double().numpy()  # (K, C)
        be = torch.stack(bn1["eval"]).double().numpy()
        lo, hi = _spread_ci(lt, seed=b)
        records.append(
            {
                "kind": "probe",
                "batch_size": b,
                "batches": n_batches,
                "logit_std": float(_rms_std(lt.T)),
                "logit_std_lo": lo,
                "logit_std_hi": hi,
                "bn1_std": float(_rms_std(bt.T)),
                "logit_std_eval": float(_rms_std(le.T)),
                "bn1_std_eval": float(_rms_std(be.T)),
                "flip_rate": float((lt.argmax(1) != reference).mean()),
            }
        )
    return records
