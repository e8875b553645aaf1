"""`bnlab doctor`: find batch-norm misuse in a model, from its structure, an example input, or live.

The blog's failed BN GAN (notebook 2) normalized D's single-unit logit and G's output, and
never switched between train() and eval(). Each of those mistakes leaves a trace that can be
checked mechanically:

- :func:`check` looks at the structure (which layers, in which order) and, given an example
  input, runs the model on it to see the execution order, the data flow into each BN layer,
  batches too small for batch statistics, and how far the batch statistics are from the
  running ones (the train/eval gap). It never changes the model: train/eval flags and every
  buffer (running statistics, ``num_batches_tracked``) are restored, and the RNG is forked.
- :func:`check_ranks` (or ``check(..., across_ranks=True)``), on every rank of an initialized
  torch.distributed process group, reports BN layers whose running statistics differ across
  the ranks (:func:`bnlab.nn.sync_buffers` makes them equal).
- :func:`watch` wraps user code and reports BN layers that ran in train mode under
  ``torch.no_grad()`` (evaluation without ``model.eval()``) and running statistics that
  changed there.

Both torch's BN layers (``torch.nn.BatchNorm*``, ``SyncBatchNorm``) and bnlab's are recognized
(:func:`bnlab.nn.is_batch_norm`).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import math
import sys
import textwrap
import traceback
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parameter import is_lazy

from bnlab import functional as bnf
from bnlab.nn import batch_norm_layers, is_batch_norm, values_per_statistic
from bnlab.nn.renorm import _BatchRenorm
from bnlab.nn.virtual import _VirtualBatchNorm

__all__ = [
    "Finding",
    "Severity",
    "check",
    "check_input_shape",
    "check_ranks",
    "format_findings",
    "load_factory",
    "main",
    "watch",
]

# Train/eval gap: how far the batch statistics of a BN layer's input on the example batch may be
# from its running statistics before we call it a gap. Both are averaged over channels.
#
# Standardized mean difference |mu_batch - running_mean| / sqrt(running_var + eps): 0.5 is
# Cohen's "medium" effect size; in eval mode the layer's output is then off by half a (training)
# standard deviation on average, which is large for the layers that follow.
GAP_MEAN_THRESHOLD = 0.5
# |log((var_batch + eps) / (running_var + eps))|: log(2) means the batch variance is more than
# twice, or less than half, the running one, so eval mode scales the output by > 1.41x or < 0.71x.
GAP_LOG_VAR_THRESHOLD = math.log(2.0)
# A small example batch estimates the statistics with noise (a mean to ~1/sqrt(n) standard
# deviations, a log variance to ~sqrt(2/(n-1))): a gap must also exceed this many standard errors,
# so that a batch of 8 does not raise false alarms on a well-trained model.
GAP_NOISE_MULTIPLE = 4.0

# The largest --input-shape (in values) the doctor makes a random example batch of: 2^27, 512 MiB
# in float32, well above an ImageNet batch of 64 (9.6M) or a 3D U-Net batch of 8 at 128^3 (17M);
# a shape beyond it is a typo (or a dataset size), and would only end in an out-of-memory kill.
MAX_EXAMPLE_VALUES = 1 << 27

# Momentum at or above this is read as Keras's convention (the weight of the *old* estimate:
# Keras/TF default 0.99) given to PyTorch (the weight of the *new* batch: default 0.1). In
# PyTorch's reading 0.9 keeps 10% of the history, so the running statistics are nearly the last
# batch's; nobody means that, while 0.9 to 0.999 are Keras's usual values. momentum=1.0 (keep
# exactly the last batch) is a deliberate recalibration setting and is not reported.
KERAS_MOMENTUM_THRESHOLD = 0.9

# A float16 running_var above this (~92% of float16's largest finite value, 65504) is one update
# away from inf: the running value is (1 - m) * old + m * batch_var, and a batch variance a
# little above it overflows when it is stored.
FP16_RUNNING_VAR_LIMIT = 6.0e4

# Buffers that differ across ranks by more than this (relative to their magnitude) are
# reported; bit-identical is what DDP's broadcast_buffers and SyncBatchNorm give, and the
# tolerance only absorbs reductions that are not bit-reproducible across devices.
RANK_BUFFER_RTOL = 1e-5

# Modules that pass their input through without changing what BN cares about: looked through
# when asking "what feeds this layer" (BN -> Dropout -> Tanh is still BN before the output).
_PASS_THROUGH = (nn.Identity, nn.Dropout, nn.Flatten, nn.Unflatten)
# Output activations after which a BN layer is a mistake (DCGAN: no BN on the generator output).
_OUTPUT_ACTIVATIONS = (nn.Tanh, nn.Sigmoid)
# Layers whose bias BN's mean subtraction cancels when they feed it directly.
_AFFINE_LAYERS = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
)


class Severity(str, Enum):
    """How bad a finding is: ERROR breaks training or evaluation, WARNING usually hurts."""

    ERROR = "ERROR"
    WARNING = "WARNING"
    INFO = "INFO"


_RANK = {Severity.ERROR: 0, Severity.WARNING: 1, Severity.INFO: 2}


@dataclass(frozen=True)
class Finding:
    """One batch-norm problem in one module of a model."""

    code: str  # stable id, e.g. "bn-on-single-unit"
    severity: Severity
    module: str  # dotted path in the model ("" for the root), e.g. "net.3"
    message: str  # what is wrong, with numbers where there are any
    fix: str  # one line: what to change


# --------------------------------------------------------------------------------------------
# BN layers (recognized by bnlab.nn.is_batch_norm: torch's, SyncBatchNorm, bnlab's)


def _running_stats(bn: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(running_mean, running_var)``, detached; None without them (or before lazy init)."""
    mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor) or is_lazy(mean):
        return None
    return mean.detach(), var.detach()


def _has_running_stats(bn: nn.Module) -> bool:
    return _running_stats(bn) is not None


def _uses_batch_stats(bn: nn.Module) -> bool:
    """Whether ``bn`` normalizes with batch statistics in its current mode (as torch decides)."""
    return bn.training or not _has_running_stats(bn)


def _describe(module: nn.Module) -> str:
    if is_batch_norm(module):
        return f"{type(module).__name__}({getattr(module, 'num_features', '?')})"
    return type(module).__name__


def _leaves(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Modules that do the computing, in definition order: those without children, and BN."""
    return [
        (name, m)
        for name, m in model.named_modules()
        if is_batch_norm(m) or next(m.children(), None) is None
    ]


# --------------------------------------------------------------------------------------------
# Static checks: one module (or one adjacent pair) at a time


def _check_single_unit(name: str, bn: nn.Module) -> Finding | None:
    """BN over one feature: every batch comes out with mean beta and std |gamma|.

    Not Virtual BN: it normalizes each example with a fixed reference batch (plus itself), so
    the level of a score survives. Batch Renorm keeps it only through d, clipped (a warning).
    """
    if getattr(bn, "num_features", None) != 1 or isinstance(bn, _VirtualBatchNorm):
        return None
    if isinstance(bn, _BatchRenorm):
        return Finding(
            "bn-on-single-unit",
            Severity.WARNING,
            name,
            f"{_describe(bn)} renormalizes a single feature (a logit or score): a batch's level "
            f"survives only through d, clipped at {bn.d_max:g} running standard deviations "
            "(0 during a warm-up, when it is BN), so a batch far from the running mean is "
            "pulled to it",
            "remove it: a single-unit output needs no normalization",
        )
    return Finding(
        "bn-on-single-unit",
        Severity.ERROR,
        name,
        f"{_describe(bn)} normalizes a single feature (a logit or score): in train mode every "
        "batch comes out with mean beta and std |gamma| whatever the input, so the level of the "
        "score is erased and only the ranking within the batch survives (a D that sees real and "
        "fake as separate batches cannot tell them apart); notebook 2's BatchNorm1d(1) on D's "
        "logit",
        "remove this BN layer: never normalize a single-unit output",
    )


def _check_finite_stats(name: str, bn: nn.Module) -> Finding | None:
    """Running statistics with NaN or inf poison every eval-mode output."""
    stats = _running_stats(bn)
    if stats is None:
        return None
    bad = {
        stat: int((~torch.isfinite(t)).sum())
        for stat, t in zip(("running_mean", "running_var"), stats, strict=True)
    }
    if not any(bad.values()):
        return None
    counts = ", ".join(f"{n} of {bn.num_features} in {stat}" for stat, n in bad.items() if n)
    return Finding(
        "nonfinite-running-stats",
        Severity.ERROR,
        name,
        f"{_describe(bn)} has non-finite running statistics ({counts}): every eval-mode output "
        "through it is NaN or inf",
        "find the step that diverged, then re-estimate them with the model's weights: "
        "bnlab.nn.recompute_stats(model, batches)",
    )


def _check_untracked(name: str, bn: nn.Module) -> Finding | None:
    """Without running statistics, eval mode normalizes with the batch's own statistics."""
    if _has_running_stats(bn) or _is_lazy_bn(bn):
        return None
    return Finding(
        "untracked-stats",
        Severity.WARNING,
        name,
        f"{_describe(bn)} keeps no running statistics (track_running_stats=False): in eval mode "
        "it still normalizes with batch statistics, so an example's output depends on the other "
        "examples in its batch and a batch of 1 fails",
        "keep running statistics (track_running_stats=True), or accept batch-dependent eval "
        "knowingly",
    )


def _check_keras_momentum(name: str, bn: nn.Module) -> Finding | None:
    """momentum=0.99 copied from Keras/TF, where it weights the old estimate; PyTorch's weights
    the new batch, so the running statistics follow the last batch almost alone."""
    m = getattr(bn, "momentum", None)
    if m is None or not KERAS_MOMENTUM_THRESHOLD <= m < 1.0:
        return None
    return Finding(
        "keras-momentum",
        Severity.WARNING,
        name,
        f"{_describe(bn)} has momentum={m:g}, a value in Keras's convention: PyTorch's momentum "
        "is the weight of the new batch (running = (1 - momentum) * running + momentum * "
        f"batch), so the running statistics keep only {1 - m:.3g} of their history at each "
        "step and eval mode normalizes with roughly the last batch's statistics",
        f"momentum={1 - m:.4g} (PyTorch's value for Keras's {m:g} is 1 - m)",
    )


def _check_fp16_running_var(name: str, bn: nn.Module) -> Finding | None:
    """A float16 running_var near float16's maximum overflows to inf at the next update."""
    stats = _running_stats(bn)
    if stats is None or stats[1].dtype != torch.float16:
        return None
    var = stats[1].float()
    bad = ~torch.isfinite(var)
    near = torch.isfinite(var) & (var > FP16_RUNNING_VAR_LIMIT)
    if not bool(bad.any() or near.any()):
        return None
    if bool(bad.any()):
        severity, state = Severity.ERROR, f"{int(bad.sum())} already inf or NaN"
    else:
        severity = Severity.WARNING
        state = f"largest {float(var[near].max()):.5g}, one update from overflowing"
    return Finding(
        "fp16-running-var-overflow",
        severity,
        name,
        f"{_describe(bn)} keeps running_var in float16, and {int((bad | near).sum())} of "
        f"{bn.num_features} channels are above {FP16_RUNNING_VAR_LIMIT:g} or not finite "
        f"({state}; float16's largest value is 65504): an inf running variance flattens the "
        "channel's eval-mode output to beta, a NaN one makes it NaN",
        "keep BN layers in float32 (torch.autocast does; after model.half() call .float() on "
        "the BN layers: they take float16 input with float32 buffers), then re-estimate the "
        "running statistics: bnlab.nn.recompute_stats(model, batches)",
    )


def _is_lazy_bn(bn: nn.Module) -> bool:
    mean = getattr(bn, "running_mean", None)
    return isinstance(mean, Tensor) and is_lazy(mean)


def _bias_before_bn(
    producer_name: str, producer: nn.Module, bn_name: str, bn: nn.Module
) -> Finding | None:
    """A bias feeding BN directly is cancelled by BN's mean subtraction (beta takes its role)."""
    if not isinstance(producer, _AFFINE_LAYERS) or producer.bias is None:
        return None
    out = producer.out_features if isinstance(producer, nn.Linear) else producer.out_channels
    if out != getattr(bn, "num_features", None):
        return None
    return Finding(
        "bias-before-bn",
        Severity.INFO,
        producer_name,
        f"{type(producer).__name__} has bias=True and feeds {_describe(bn)} ('{bn_name}') "
        "directly: the bias is redundant, BN subtracts the mean (its beta plays the bias's role)",
        f"build '{producer_name}' with bias=False",
    )


def _bn_before_output(bn_name: str, bn: nn.Module, act: nn.Module) -> Finding:
    """BN right before the output activation pins the output distribution per batch."""
    return Finding(
        "bn-before-output-activation",
        Severity.WARNING,
        bn_name,
        f"{_describe(bn)} feeds the model's output activation {type(act).__name__}: in train "
        "mode every batch of outputs is forced to the same per-feature mean and spread before "
        "it, whatever the input (notebook 2 put BN before G's Tanh and D's Sigmoid)",
        "remove it (DCGAN guideline: no BN on the generator output)",
    )


def _static_findings(model: nn.Module) -> list[Finding]:
    """Checks that need only the layers: one BN at a time."""
    findings: list[Finding] = []
    for name, m in batch_norm_layers(model):
        for one in (
            _check_single_unit,
            _check_finite_stats,
            _check_untracked,
            _check_keras_momentum,
            _check_fp16_running_var,
        ):
            f = one(name, m)
            if f is not None:
                findings.append(f)
    return findings


def _skip_pass_through(leaves: list[tuple[str, nn.Module]], i: int) -> int:
    """Index of the nearest leaf before ``i`` that is not a pass-through module (-1 if none)."""
    j = i - 1
    while j >= 0 and isinstance(leaves[j][1], _PASS_THROUGH):
        j -= 1
    return j


def _order_findings_from_definition(model: nn.Module) -> list[Finding]:
    """Adjacency checks on definition order: a guess at data flow when nothing ran."""
    leaves = _leaves(model)
    findings: list[Finding] = []
    for i, (name, m) in enumerate(leaves):
        if is_batch_norm(m) and i > 0:
            f = _bias_before_bn(*leaves[i - 1], name, m)
            if f is not None:
                findings.append(f)
    if leaves and isinstance(leaves[-1][1], _OUTPUT_ACTIVATIONS):
        j = _skip_pass_through(leaves, len(leaves) - 1)
        if j >= 0 and is_batch_norm(leaves[j][1]):
            findings.append(_bn_before_output(*leaves[j], leaves[-1][1]))
    return findings


# --------------------------------------------------------------------------------------------
# Running the model on the example input


class _Starved(Exception):
    """A BN layer got at most one value per channel while using batch statistics."""

    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        super().__init__(name)
        self.name = name
        self.shape = shape


@dataclass
class _Call:
    """One forward call of a leaf module during a traced pass."""

    name: str
    module: nn.Module
    source: int | None = None  # index of the call that produced its first input (None: unknown)
    out_dim: int | None = None  # dimensions of its (first) output tensor


@dataclass(frozen=True)
class _Gap:
    """How far the batch statistics of a BN layer's input are from its running statistics."""

    mean_shift: float  # channel mean of |mu_batch - running_mean| / sqrt(running_var + eps)
    max_mean_shift: float
    log_var_ratio: float  # channel mean of |log((var_batch + eps) / (running_var + eps))|
    max_log_var_ratio: float
    n: int  # values per channel in the example batch

    def exceeds(self) -> bool:
        """Whether the gap is beyond the thresholds and beyond sampling noise."""
        mean_limit = max(GAP_MEAN_THRESHOLD, GAP_NOISE_MULTIPLE / math.sqrt(self.n))
        var_limit = max(GAP_LOG_VAR_THRESHOLD, GAP_NOISE_MULTIPLE * math.sqrt(2 / (self.n - 1)))
        return self.mean_shift > mean_limit or self.log_var_ratio > var_limit


@dataclass
class _Trace:
    """What one forward pass showed."""

    calls: list[_Call] = field(default_factory=list)
    output_source: int | None = None  # call that produced the model's output tensor
    output: Any = None
    starved: _Starved | None = None  # set when the pass stopped at a BN with a batch of 1
    gaps: dict[str, _Gap] = field(default_factory=dict)


def _tensor_key(t: Tensor) -> tuple[int, int] | None:
    """Identity of a tensor's data: views share it, an in-place change (new _version) breaks it."""
    if t.numel() == 0 or t.is_sparse:
        return None
    try:
        return (t.untyped_storage().data_ptr(), t._version)
    except (RuntimeError, NotImplementedError):
        return None


def _tensors(obj: Any) -> list[Tensor]:
    """Every tensor in a (nested) output: tensor, tuple, list or dict."""
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _channel_stats(x: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-channel mean and unbiased variance over every axis but 1, in float64, and the count."""
    n = x.numel() // x.shape[1]  # values per channel; >= 2 where this is called
    mean, m2 = bnf.batch_norm_stats(x.detach().double())
    return mean, m2 / (n - 1), n


def _gap(bn: nn.Module, x: Tensor, running_mean: Tensor, running_var: Tensor) -> _Gap:
    mu, var, n = _channel_stats(x)
    r_mean, r_var = running_mean.double(), running_var.double()
    eps = float(getattr(bn, "eps", 1e-5))
    shift = (mu - r_mean).abs() / (r_var + eps).sqrt()
    log_ratio = ((var + eps) / (r_var + eps)).log().abs()
    return _Gap(
        float(shift.mean()),
        float(shift.max()),
        float(log_ratio.mean()),
        float(log_ratio.max()),
        n,
    )


@contextmanager
def _preserved(model: nn.Module) -> Iterator[None]:
    """Restore every module's train/eval flag and every buffer (object and values) on exit."""
    flags = [(m, m.training) for m in model.modules()]
    buffers = [
        (m, name, b, b.detach().clone())
        for m in model.modules()
        for name, b in m._buffers.items()
        if isinstance(b, Tensor) and not is_lazy(b)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, name, b, saved in buffers:
                m._buffers[name] = b
                b.copy_(saved)
        for m, training in flags:
            m.training = training


def _cuda_devices(model: nn.Module, args: tuple[Any, ...]) -> list[int]:
    tensors = [*model.parameters(), *model.buffers(), *_tensors(args)]
    return sorted({t.device.index or 0 for t in tensors if t.device.type == "cuda"})


def _trace(model: nn.Module, args: tuple[Any, ...], train: bool | None) -> _Trace:
    """Run ``model(*args)`` under no_grad with hooks on every leaf; the model is left as it was.

    Args:
        train: True: whole model in train mode; False: eval mode; None: each module as it is.
    """
    trace = _Trace()
    producer: dict[tuple[int, int], int] = {}  # tensor key -> index of the call that made it
    keep: list[Tensor] = []  # outputs stay alive so that storage addresses are not reused
    stats = {}  # before the pass: the pre-hook of a shared BN's 2nd call sees updated ones
    for m in model.modules():
        running = _running_stats(m) if is_batch_norm(m) else None
        if running is not None:
            stats[id(m)] = (running[0].clone(), running[1].clone())

    def pre_hook(name: str, m: nn.Module, inputs: tuple[Any, ...]) -> None:
        first = inputs[0] if inputs else None
        source = None
        if isinstance(first, Tensor):
            key = _tensor_key(first)
            source = producer.get(key) if key is not None else None
        trace.calls.append(_Call(name, m, source))
        if not (is_batch_norm(m) and isinstance(first, Tensor) and first.dim() >= 2):
            return
        n = first.numel() // max(first.shape[1], 1)  # values per channel; 0: empty batch
        if _uses_batch_stats(m) and values_per_statistic(m, first) == 1:  # Ghost BN: per chunk
            raise _Starved(name, tuple(first.shape))
        if id(m) in stats and name not in trace.gaps and n >= 2:
            trace.gaps[name] = _gap(m, first, *stats[id(m)])

    def post_hook(m: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        # A leaf's forward hook fires before any other leaf's pre-hook: the last call is its own.
        index = len(trace.calls) - 1
        outs = _tensors(output)
        trace.calls[index].out_dim = outs[0].dim() if outs else None
        for t in outs:
            key = _tensor_key(t)
            if key is not None:
                producer[key] = index
                keep.append(t)

    handles = []
    for name, m in _leaves(model):
        handles.append(m.register_forward_pre_hook(_bind(pre_hook, name)))
        handles.append(m.register_forward_hook(post_hook))
    try:
        with (
            _preserved(model),
            torch.no_grad(),
            torch.random.fork_rng(devices=_cuda_devices(model, args)),
        ):
            if train is not None:
                model.train(train)
            try:
                trace.output = model(*args)
            except _Starved as starved:
                trace.starved = starved
                return trace
    finally:
        for h in handles:
            h.remove()
    out = _tensors(trace.output)
    if len(out) == 1:
        key = _tensor_key(out[0])
        trace.output_source = producer.get(key) if key is not None else None
    return trace


def _bind(hook: Any, name: str) -> Any:
    return lambda m, inputs: hook(name, m, inputs)


def _resolve(calls: list[_Call], i: int | None) -> int | None:
    """Follow pass-through modules back to the call that really produced a tensor."""
    while i is not None and isinstance(calls[i].module, _PASS_THROUGH):
        i = calls[i].source
    return i


def _order_findings_from_trace(trace: _Trace) -> list[Finding]:
    """Adjacency checks on the recorded data flow: which call produced each BN's input."""
    findings: list[Finding] = []
    calls = trace.calls
    for call in calls:
        if not is_batch_norm(call.module) or call.source is None:
            continue
        src = calls[call.source]
        if isinstance(src.module, nn.Linear) and src.out_dim != 2:
            continue  # Linear on (N, L, F): its bias is along the last axis, BN's channels dim 1
        f = _bias_before_bn(src.name, src.module, call.name, call.module)
        if f is not None:
            findings.append(f)
    last = trace.output_source
    if last is not None and isinstance(calls[last].module, _OUTPUT_ACTIVATIONS):
        before = _resolve(calls, calls[last].source)
        if before is not None and is_batch_norm(calls[before].module):
            findings.append(
                _bn_before_output(calls[before].name, calls[before].module, calls[last].module)
            )
    return findings


def _batch_of_one(starved: _Starved, model: nn.Module) -> Finding:
    bn = model.get_submodule(starved.name)
    ghost = getattr(bn, "ghost_batch_size", None)
    where = "" if ghost is None else f" in its last ghost batch (of {ghost} rows each)"
    return Finding(
        "batch-of-one",
        Severity.ERROR,
        starved.name,
        f"{_describe(bn)} gets input of shape {starved.shape}, one value per channel{where}, and "
        "normalizes it with batch statistics (train mode): the variance is undefined and the "
        "forward pass fails",
        "call model.eval() before running single examples, or use batches of 2 or more",
    )


def _relative_change(a: Any, b: Any) -> float | None:
    """||a - b|| / ||b|| over all output tensors (relative L2), None when not comparable."""
    ta, tb = _tensors(a), _tensors(b)
    if not ta or len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb, strict=True)):
        return None
    diff = math.sqrt(
        sum(float((x.double() - y.double()).square().sum()) for x, y in zip(ta, tb, strict=True))
    )
    norm = math.sqrt(sum(float(y.double().square().sum()) for y in tb))
    return diff / max(norm, 1e-12)


def _at_init(bn: nn.Module) -> bool:
    """Running statistics still at their initial values (mean 0, var 1): never updated."""
    stats = _running_stats(bn)
    return stats is not None and bool((stats[0] == 0).all() and (stats[1] == 1).all())


def _gap_findings(model: nn.Module, args: tuple[Any, ...]) -> list[Finding]:
    """Compare each BN's batch statistics on the example with its running statistics.

    Layers still at their initial statistics are not trained yet (an INFO), unless they are in
    eval mode on an input far from N(0, 1): then eval mode does not normalize, a WARNING.
    """
    tracked = {name: m for name, m in batch_norm_layers(model) if _has_running_stats(m)}
    fresh = [name for name, m in tracked.items() if _at_init(m)]
    fresh_in_eval = [name for name in fresh if not tracked[name].training]
    findings: list[Finding] = []
    warned: set[str] = set()
    if len(fresh) < len(tracked) or fresh_in_eval:
        findings += _measured_gaps(model, args, tracked, fresh, fresh_in_eval, warned)
    quiet = [name for name in fresh if name not in warned]
    if quiet:
        shown = ", ".join(f"'{n}'" for n in quiet[:5]) + (", ..." if len(quiet) > 5 else "")
        findings.insert(
            0,
            Finding(
                "running-stats-at-init",
                Severity.INFO,
                "",
                f"{len(quiet)} of {len(tracked)} BN layers ({shown}) still have their initial "
                "running statistics (mean 0, var 1): the model has not been trained, eval mode "
                "would normalize as if every input were standard normal; train/eval gap not "
                "measured for them",
                "train the model (in train mode) before evaluating it",
            ),
        )
    return findings


def _gap_numbers(bn: nn.Module, gap: _Gap) -> str:
    return (
        f"mean shift {gap.mean_shift:.2f} running std on average over {bn.num_features} "
        f"channels (max {gap.max_mean_shift:.2f}; threshold {GAP_MEAN_THRESHOLD}), |log variance "
        f"ratio| {gap.log_var_ratio:.2f} (max {gap.max_log_var_ratio:.2f}; threshold "
        f"{GAP_LOG_VAR_THRESHOLD:.2f}), {gap.n} values per channel"
    )


def _measured_gaps(
    model: nn.Module,
    args: tuple[Any, ...],
    tracked: Mapping[str, nn.Module],
    fresh: list[str],
    fresh_in_eval: list[str],
    warned: set[str],
) -> list[Finding]:
    """Train-mode and eval-mode passes: a finding per layer whose gap exceeds the thresholds
    (the names of fresh layers reported go into ``warned``)."""
    in_train = _run_for_gaps(model, args, train=True)
    if in_train.starved is not None:
        return [
            Finding(
                "gap-not-measured",
                Severity.INFO,
                in_train.starved.name,
                f"train/eval gap not measured: in train mode this layer would get input of shape "
                f"{in_train.starved.shape}, one value per channel",
                "give an example batch of 2 or more",
            )
        ]
    in_eval = _run_for_gaps(model, args, train=False)
    change = _relative_change(in_train.output, in_eval.output)
    said = (
        f"switching the model from train to eval mode changes its output on this batch by "
        f"{change:.1%} (relative L2)"
        if change is not None
        else "the output change between train and eval mode could not be measured"
    )
    findings = []
    for name, gap in in_train.gaps.items():
        if not gap.exceeds() or (name in fresh and name not in fresh_in_eval):
            continue
        bn = tracked[name]
        if name in fresh:
            warned.add(name)
            findings.append(
                Finding(
                    "eval-with-initial-stats",
                    Severity.WARNING,
                    name,
                    f"{_describe(bn)} is in eval mode with its initial running statistics (mean "
                    "0, var 1): it never ran in train mode, or a checkpoint was loaded without "
                    "its BN buffers. Its input on the example batch is far from N(0, 1), so eval "
                    f"mode does not normalize it: {_gap_numbers(bn, gap)}; {said}",
                    "load the checkpoint with its BN buffers (a strict load_state_dict names "
                    "missing ones), or estimate them (torch.optim.swa_utils.update_bn)",
                )
            )
            continue
        findings.append(
            Finding(
                "train-eval-gap",
                Severity.WARNING,
                name,
                f"{_describe(bn)}: the example batch's statistics are far from the running ones: "
                f"{_gap_numbers(bn, gap)}; {said}",
                "re-estimate the running statistics on data like this "
                "(bnlab.nn.recompute_stats(model, batches)), or check eval data is prepared like "
                "training data",
            )
        )
    return findings


def _run_for_gaps(model: nn.Module, args: tuple[Any, ...], train: bool) -> _Trace:
    try:
        return _trace(model, args, train=train)
    except Exception as e:  # the model's own error, only in this mode
        mode = "train" if train else "eval"
        raise ValueError(
            f"the model ran on the example input {_shapes(args)} as it is, but failed in {mode} "
            f"mode: {type(e).__name__}: {e}"
        ) from e


def _shapes(args: tuple[Any, ...]) -> list[tuple[int, ...]]:
    return [tuple(t.shape) for t in _tensors(args)]


# --------------------------------------------------------------------------------------------
# Across the ranks of a process group


def _comm_device(group: Any) -> torch.device:
    """Where a collective of ``group`` takes its tensors: the current GPU for NCCL, else CPU."""
    if "nccl" in str(dist.get_backend(group)).lower():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_ranks(model: nn.Module, group: Any | None = None) -> list[Finding]:
    """Report BN layers whose running statistics (or ``num_batches_tracked``) differ across the
    ranks of ``group`` (default: the world): each rank then evaluates with its own statistics.

    A collective: every rank of the group must call it, with the same model structure (two
    all_reduces, whatever the number of layers). Ranks whose models have different BN buffers
    get one finding each, rather than a hang. Nothing to report in a group of one.

    Raises:
        RuntimeError: no torch.distributed process group is initialized.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "check_ranks compares BN buffers across the ranks of a torch.distributed process "
            "group, and none is initialized: call it on every rank after "
            "torch.distributed.init_process_group, or use check() in one process"
        )
    world = dist.get_world_size(group)
    if world == 1:
        return []
    device = _comm_device(group)
    layers: list[tuple[str, nn.Module, list[Tensor]]] = []
    for name, bn in batch_norm_layers(model):
        stats = _running_stats(bn)
        if stats is None:
            continue
        count = getattr(bn, "num_batches_tracked", None)
        parts = [*stats] + ([count.detach().reshape(1)] if isinstance(count, Tensor) else [])
        layers.append((name, bn, parts))
    flat = [t.to(device, torch.float64).reshape(-1) for _, _, parts in layers for t in parts]
    values = torch.cat(flat) if flat else torch.zeros(0, dtype=torch.float64, device=device)
    n = values.numel()
    sizes = torch.tensor([n, -n], dtype=torch.float64, device=device)
    dist.all_reduce(sizes, op=dist.ReduceOp.MAX, group=group)
    if int(sizes[0]) != -int(sizes[1]):  # same on every rank: all report, none waits
        return [
            Finding(
                "bn-buffers-differ-across-ranks",
                Severity.ERROR,
                "",
                f"the {world} ranks hold different BN layers ({-int(sizes[1])} to "
                f"{int(sizes[0])} running-statistics values; this rank {n}): they do not run "
                "the same model",
                "build the same model on every rank",
            )
        ]
    values = values.nan_to_num(nan=0.0)  # NaN has its own finding; inf stays comparable
    both = torch.cat([values, -values])
    dist.all_reduce(both, op=dist.ReduceOp.MAX, group=group)
    hi, lo = both[:n], -both[n:]
    spread = (hi - lo).nan_to_num(nan=0.0)  # inf - inf: the same inf on every rank
    limit = RANK_BUFFER_RTOL * torch.maximum(hi.abs(), lo.abs()).nan_to_num(nan=0.0)
    findings = []
    start = 0
    for name, layer, parts in layers:
        lengths = [t.numel() for t in parts]
        end = start + sum(lengths)
        if bool((spread[start:end] > limit[start:end]).any()):
            mean_d = float(spread[start : start + lengths[0]].max()) if lengths[0] else 0.0
            var_at = start + lengths[0]
            var_d = float(spread[var_at : var_at + lengths[1]].max()) if lengths[1] else 0.0
            counts = ""
            if len(parts) == 3:
                counts = f", num_batches_tracked from {int(lo[end - 1])} to {int(hi[end - 1])}"
            findings.append(
                Finding(
                    "bn-buffers-differ-across-ranks",
                    Severity.WARNING,
                    name,
                    f"{_describe(layer)}'s running statistics differ across the {world} ranks "
                    f"(running_mean by up to {mean_d:.3g}, running_var by up to {var_d:.3g}"
                    f"{counts}): each rank evaluates, and may save, its own statistics (DDP "
                    "with broadcast_buffers=False, or the last training forwards after DDP's "
                    "last buffer broadcast updated each rank's copy with its own batch)",
                    "call bnlab.nn.sync_buffers(model) (rank 0's buffers to every rank) before "
                    "evaluating or saving, or use SyncBatchNorm (equal statistics on all ranks)",
                )
            )
        start = end
    return findings


# --------------------------------------------------------------------------------------------
# Public API


def check(
    model: nn.Module,
    example_input: Tensor | tuple[Any, ...] | None = None,
    *,
    across_ranks: bool = False,
) -> list[Finding]:
    """Report batch-norm misuse in ``model``; with an example input, also run it (no state change).

    Args:
        model: any torch model; torch's and bnlab's BN layers are recognized.
        example_input: a tensor, or a tuple of positional arguments, for ``model(*args)``. With
            it, layer order comes from the recorded execution (data flow), not definition
            order; batches of one and the train/eval gap are checked.
        across_ranks: also compare the BN buffers across the ranks of the initialized
            torch.distributed process group (:func:`check_ranks`). Off by default because it
            is a collective: with it, every rank must call check, or the callers wait for the
            others until the group's timeout (code under ``if rank == 0`` must not pass it).

    Returns:
        Findings, errors first, each at most once per (code, module).
    """
    findings = _static_findings(model)
    if across_ranks:
        findings += check_ranks(model)
    if example_input is None:
        findings += _order_findings_from_definition(model)
        return _sorted_unique(findings)
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    try:
        as_is = _trace(model, args, train=None)
    except Exception as e:  # the model's own error, e.g. a wrong input shape
        raise ValueError(f"the model failed on the example input {_shapes(args)}: {e}") from e
    if as_is.starved is not None:
        findings.append(_batch_of_one(as_is.starved, model))
        findings += _order_findings_from_definition(model)  # the trace stopped half-way
        return _sorted_unique(findings)
    findings += _order_findings_from_trace(as_is)
    findings += _gap_findings(model, args)
    return _sorted_unique(findings)


def _sorted_unique(findings: list[Finding]) -> list[Finding]:
    seen: set[tuple[str, str]] = set()
    unique = []
    for f in findings:
        if (f.code, f.module) not in seen:
            seen.add((f.code, f.module))
            unique.append(f)
    return sorted(unique, key=lambda f: _RANK[f.severity])  # stable: model order within a rank


@dataclass
class _Watched:
    """What watch() saw of one BN layer."""

    train_no_grad_calls: int = 0
    changed_calls: int = 0
    max_mean_delta: float = 0.0
    max_var_delta: float = 0.0


@contextmanager
def watch(model: nn.Module) -> Iterator[list[Finding]]:
    """Watch BN layers while the block runs: train mode or running-stat updates under no_grad.

    Yields a list that is filled when the block exits (also on an exception); hooks are removed
    on exit. Intentional recalibration of running statistics (precise BN: train mode under
    no_grad on purpose) is reported too: do not wrap it.

    Example::

        with watch(model) as findings:
            with torch.no_grad():
                evaluate(model)
        assert not findings
    """
    findings: list[Finding] = []
    seen: dict[str, _Watched] = {}
    before: dict[str, tuple[Tensor, Tensor]] = {}

    def pre_hook(name: str, m: nn.Module, inputs: tuple[Any, ...]) -> None:
        if torch.is_grad_enabled():
            return
        w = seen.setdefault(name, _Watched())
        if m.training:
            w.train_no_grad_calls += 1
        running = _running_stats(m)
        if running is not None:
            before[name] = (running[0].clone(), running[1].clone())

    def post_hook(name: str, m: nn.Module) -> None:
        running = _running_stats(m)
        if name not in before or running is None:
            return
        (mean0, var0), (mean1, var1) = before.pop(name), running
        if _same(mean0, mean1) and _same(var0, var1):
            return
        w = seen[name]
        w.changed_calls += 1
        w.max_mean_delta = max(w.max_mean_delta, _max_delta(mean0, mean1))
        w.max_var_delta = max(w.max_var_delta, _max_delta(var0, var1))

    handles = []
    for name, m in batch_norm_layers(model):
        handles.append(m.register_forward_pre_hook(_bind(pre_hook, name)))
        handles.append(m.register_forward_hook(lambda mod, i, o, name=name: post_hook(name, mod)))
    try:
        yield findings
    finally:
        for h in handles:
            h.remove()
        findings.extend(_watch_findings(model, seen))


def _same(a: Tensor, b: Tensor) -> bool:
    """Equal values, NaN counting as equal to NaN."""
    return bool(((a == b) | (a.isnan() & b.isnan())).all())


def _max_delta(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().nan_to_num(nan=math.inf).max()) if a.numel() else 0.0


def _watch_findings(model: nn.Module, seen: dict[str, _Watched]) -> list[Finding]:
    findings: list[Finding] = []
    for name, w in seen.items():
        bn = model.get_submodule(name)
        if w.train_no_grad_calls:
            findings.append(
                Finding(
                    "train-mode-under-no-grad",
                    Severity.WARNING,
                    name,
                    f"{_describe(bn)} ran in train mode under torch.no_grad() in "
                    f"{w.train_no_grad_calls} forward call(s): evaluation with batch statistics, "
                    "so outputs depend on the batch (model.eval() was not called)",
                    "call model.eval() before evaluating, and model.train() before training again",
                )
            )
        if w.changed_calls:
            findings.append(
                Finding(
                    "running-stats-changed-in-eval",
                    Severity.ERROR,
                    name,
                    f"{_describe(bn)}'s running statistics changed under torch.no_grad() in "
                    f"{w.changed_calls} forward call(s) (running_mean by up to "
                    f"{w.max_mean_delta:.3g}, running_var by up to {w.max_var_delta:.3g}): "
                    "evaluation data leaked into the statistics used at eval time",
                    "call model.eval() before evaluating",
                )
            )
    return sorted(findings, key=lambda f: _RANK[f.severity])


def format_findings(findings: list[Finding]) -> str:
    """A readable list of findings for the terminal; "no findings" when there are none."""
    if not findings:
        return "no findings"
    width = max(len(f.code) for f in findings)
    blocks = []
    for f in findings:
        where = f.module or "<root>"
        head = f"{f.severity.value:<7}  {f.code:<{width}}  {where}"
        body = textwrap.fill(
            f.message, width=100, initial_indent=" " * 9, subsequent_indent=" " * 9
        )
        blocks.append(f"{head}\n{body}\n         fix: {f.fix}")
    counts = {s: sum(f.severity is s for f in findings) for s in Severity}
    summary = (
        f"{len(findings)} finding(s): {counts[Severity.ERROR]} error(s), "
        f"{counts[Severity.WARNING]} warning(s), {counts[Severity.INFO]} info"
    )
    return "\n\n".join(blocks) + "\n\n" + summary


def load_factory(spec: str) -> nn.Module:
    """Build a model from ``"path/to/file.py:factory"`` (or ``"package.module:factory"``).

    The file is imported (its folder on ``sys.path`` meanwhile, so it can import its
    neighbours); ``factory`` is called with no arguments, or returned if it already is a module.

    Raises:
        ValueError: naming the file or attribute, when the spec is malformed, the file or
            attribute is missing, importing the file or calling the factory raises, or the
            factory does not give an ``nn.Module``.
    """
    source, sep, attr = spec.rpartition(":")
    if not sep or not source or not attr:
        raise ValueError(f"expected 'path/to/file.py:factory', got {spec!r}")
    namespace = _import_source(source)
    if not hasattr(namespace, attr):
        found = sorted(a for a in vars(namespace) if not a.startswith("_"))
        raise ValueError(
            f"{source} has no attribute {attr!r} (it has: {', '.join(found) or 'nothing public'})"
        )
    obj = getattr(namespace, attr)
    if isinstance(obj, nn.Module):
        return obj
    if not callable(obj):
        raise ValueError(f"{source}:{attr} is neither an nn.Module nor callable: {type(obj)}")
    try:
        model = obj()
    except (Exception, SystemExit) as e:  # the user's code: say where, without a traceback
        raise ValueError(f"{source}:{attr}() raised {type(e).__name__}: {e}") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"{source}:{attr}() returned {type(model).__name__}, not an nn.Module")
    return model


def _import_source(source: str) -> Any:
    path = Path(source)
    if path.suffix != ".py" and not path.exists():
        try:
            return importlib.import_module(source)
        except ImportError as e:
            raise ValueError(f"cannot import module {source!r}: {e}") from e
        except (Exception, SystemExit) as e:  # an error in the module's own code
            raise ValueError(f"importing {source} raised {type(e).__name__}: {e}") from e
    if not path.is_file():
        raise ValueError(f"model file not found: {path}")
    name = f"_bnlab_doctor_{path.stem}_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up there
    folder = str(path.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # an error in the file's own code, or an import in it
        del sys.modules[name]
        raise ValueError(f"importing {path} raised {type(e).__name__}: {e}") from e
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(folder)
    return module


def check_input_shape(shape: tuple[int, ...]) -> None:
    """Refuse an ``--input-shape`` the doctor cannot make a random example batch of.

    Raises:
        ValueError: a size that is zero or negative, or more than MAX_EXAMPLE_VALUES values.
    """
    text = ",".join(str(d) for d in shape)
    bad = [(i, d) for i, d in enumerate(shape) if d <= 0]
    if bad:
        i, d = bad[0]
        raise ValueError(
            f"--input-shape {text}: every size must be positive, got {d} at position {i}; the "
            "doctor runs the model on one random batch, e.g. --input-shape 16,784"
        )
    values = math.prod(shape)
    if values > MAX_EXAMPLE_VALUES:
        raise ValueError(
            f"--input-shape {text}: {values:,} values ({values * 4 / 2**30:,.1f} GiB as "
            f"float32) is more than the {MAX_EXAMPLE_VALUES:,} the doctor allows for its one "
            "random example batch; a batch of 8 to 64 is enough"
        )


def main(spec: str, input_shape: tuple[int, ...] | None = None) -> int:
    """`bnlab doctor FILE.py:factory [--input-shape N,C,...]`: print findings.

    Returns:
        0 when no finding is an ERROR, 1 when one is. When the doctor cannot run (bad spec, the
        import or the factory raises, a bad shape, the model fails on the example input) it
        raises ValueError instead; the CLI turns that into exit status 2.
    """
    if input_shape is not None:
        check_input_shape(input_shape)
    model = load_factory(spec)
    example = None
    if input_shape is not None:
        ref = next(iter([*model.parameters(), *model.buffers()]), None)
        example = torch.randn(
            input_shape,
            device=ref.device if ref is not None else None,
            dtype=ref.dtype if ref is not None and ref.is_floating_point() else None,
        )
    findings = check(model, example)
    n_bn = sum(1 for _ in batch_norm_layers(model))
    shape = f", example input {tuple(input_shape)}" if input_shape is not None else ""
    print(f"bnlab doctor {spec}: {n_bn} batch-norm layer(s){shape}\n")
    print(format_findings(findings))
    return 1 if any(f.severity is Severity.ERROR for f in findings) else 0


USAGE_EPILOG = """Exit status: 0 the doctor ran and found no ERROR (warnings and info may be
listed); 1 it ran and found at least one ERROR; 2 it could not run (malformed spec, the file or
the factory raised or does not exist, a zero, negative or oversized --input-shape, the model
failed on the example input): one line on stderr saying why."""


def _shape(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a comma-separated list of integers, e.g. 64,784"
        ) from None


def cli(argv: list[str] | None = None, prog: str = "bnlab doctor") -> int:
    """``bnlab doctor`` / ``python -m bnlab.doctor``: the library's command line (argparse, so
    it runs with the library alone, no lab extra).

    Returns the exit status (see ``USAGE_EPILOG``).
    """
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Inspect a model for batch-norm misuse: structure, and with --input-shape, "
        "a forward pass.",
        epilog=USAGE_EPILOG,
    )
    parser.add_argument(
        "spec",
        help="the model: path/to/file.py:factory (a function returning an nn.Module, or a module)",
    )
    parser.add_argument(
        "--input-shape",
        type=_shape,
        default=(),
        metavar="INT,INT,...",
        help="shape of a random example input, e.g. 64,784 (enables batch and train/eval-gap "
        "checks)",
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    # "--input-shape -4,8" must reach the shape check (a clear message), not read as an option
    argv = [
        f"--input-shape={argv[i + 1]}" if t == "--input-shape" and i + 1 < len(argv) else t
        for i, t in enumerate(argv)
        if i == 0 or argv[i - 1] != "--input-shape"
    ]
    args = parser.parse_args(argv)
    try:
        return main(args.spec, tuple(args.input_shape) or None)
    except ValueError as exc:  # could not run: the user's spec, file, factory, shape or model
        print(f"{prog}: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug in the doctor itself: keep the traceback, but not status 1
        traceback.print_exc()
        print(
            f"{prog}: internal error (please report it with the traceback above)", file=sys.stderr
        )
        return 2


if __name__ == "__main__":
    sys.exit(cli(prog="python -m bnlab.doctor"))
