"""Drop-in replacements for torch.nn.BatchNorm1d/2d/3d: subclasses of them, with bnlab's forward.

``bnlab.nn.BatchNorm2d`` *is a* ``torch.nn.BatchNorm2d``: same constructor, parameters
(``weight``, ``bias``), buffers (``running_mean``, ``running_var``, ``num_batches_tracked``),
state_dict version and repr, all inherited, so every tool that looks for batch norm with
``isinstance(m, nn.modules.batchnorm._BatchNorm)`` treats it as one (``swa_utils.update_bn``,
fvcore's precise BN, freeze-BN helpers, weight-decay filters, ``fuse_conv_bn_eval``). Only the
forward differs: all arithmetic is in :func:`bnlab.functional.batch_norm`.

Three facts worth knowing, all as in PyTorch:

- ``running_var`` holds the *unbiased* variance estimate: each training batch is normalized
  with its biased variance (sum of squared deviations / m, with m = N * L or N * H * W values
  per channel), and ``running_var`` is updated with m / (m - 1) times it.

- ``momentum=None`` keeps a cumulative average: after k training batches, ``running_mean`` is
  the plain average of the k batch means (what the blog calls "the average of the batch
  statistics seen during training").
- ``track_running_stats=False`` keeps no buffers, and normalizes with batch statistics in
  evaluation mode too.

``torch.fx.symbolic_trace`` traces through these modules (fx keeps only ``torch.nn``'s own
classes as leaves): the whole forward step is one wrapped function, recorded as a single graph
call with the layer's tensors as inputs, so the traced graph checks its input, counts batches
and updates the running statistics at run time exactly as the module does. As for any traced
code, the train/eval flag is the one the module had when it was traced.

``torch.compile`` (``fullgraph=True``), ``torch.export`` and ``torch.onnx.export(...,
dynamo=True)`` trace the plain-torch formulas of :mod:`bnlab.functional` (never the C++ or Triton
operators); ``torch.jit.trace`` works too. ``torch.jit.script`` raises one error naming these
alternatives: TorchScript cannot compile the Python dispatch in the forward.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from bnlab import functional as F

__all__ = ["BatchNorm1d", "BatchNorm2d", "BatchNorm3d"]


def _check_shape(x: Tensor, layer: str, expected_dims: tuple[int, ...], num_features: int) -> None:
    if x.dim() not in expected_dims:
        want = " or ".join(f"{d}D" for d in expected_dims)
        raise ValueError(
            f"{layer} expected {want} input (got {x.dim()}D input of shape {tuple(x.shape)})"
        )
    if x.shape[1] != num_features:
        raise ValueError(
            f"{layer} got input of shape {tuple(x.shape)} with {x.shape[1]} channels in dim 1; "
            f"it normalizes {num_features} (build it with num_features={x.shape[1]})"
        )


def _not_scriptable(layer: str) -> RuntimeError:
    """The error ``torch.jit.script`` of a bnlab layer raises, naming what works instead.

    The forward is Python that dispatches between compiled kernels (C++ operators, Triton) and
    the plain-torch formulas; TorchScript cannot compile that, and PyTorch no longer develops
    TorchScript. The alternatives are tested in tests/test_torch_stack.py.
    """
    return RuntimeError(
        f"{layer} (bnlab.nn) cannot be compiled by torch.jit.script: its forward is Python "
        "that TorchScript does not support. Use torch.compile(model) to compile it, "
        "torch.export.export(model.eval(), (x,)) or torch.onnx.export(model.eval(), (x,), "
        "dynamo=True) to export it, or torch.jit.trace(model.eval(), x) for a TorchScript "
        "module"
    )


def count_batch(
    training: bool,
    track_running_stats: bool,
    momentum: float | None,
    num_batches_tracked: Tensor | None,
) -> float:
    """This step's weight of the batch statistics in the running ones, counting the batch in
    ``num_batches_tracked`` when it is one (training, tracked): ``momentum``, or with
    ``momentum=None`` the cumulative average's 1/n. Every BN layer's step calls it after its
    checks, so a refused input changes no state."""
    factor = 0.0 if momentum is None else momentum
    if training and track_running_stats and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:  # cumulative moving average
            factor = 1.0 / float(num_batches_tracked)
    return factor


@torch.fx.wrap  # one node in a traced graph: its checks and counter run when the graph runs
def _layer_forward(
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
    act: int = 0,
    slope: float = 0.0,
) -> Tensor:
    """One forward step of a BN layer: check the input, count the batch, normalize (and apply
    the activation of code ``act``, for bnlab.nn.BatchNormAct*d).

    Everything is checked before any state changes, so a bad input leaves the layer as it was.
    """
    _check_shape(x, layer, expected_dims, num_features)
    use_batch_stats = training or running_mean is None
    if use_batch_stats and x.numel() > 0 and x.numel() // x.shape[1] <= 1:
        fix = (
            "call .eval() to use the running statistics"
            if track_running_stats
            else "build it with track_running_stats=True to get statistics usable at batch 1"
        )
        raise ValueError(
            f"{layer} needs more than 1 value per channel to compute batch statistics, got "
            f"input of shape {tuple(x.shape)}: use a batch of 2 or more, or {fix}"
        )
    # Buffers go in when they are updated (training, tracked) or used (eval).
    pass_buffers = not training or track_running_stats
    mean_in = running_mean if pass_buffers else None
    var_in = running_var if pass_buffers else None
    F._check(x, mean_in, var_in, weight, bias, use_batch_stats, eps, who=layer)  # named errors
    factor = count_batch(training, track_running_stats, momentum, num_batches_tracked)
    # = F.batch_norm without repeating the check above
    return F._batch_norm(x, mean_in, var_in, weight, bias, use_batch_stats, factor, eps, act, slope)


# A layer's tensors and settings as its forward step takes them (see _BatchNorm._step_args).
StepArgs = tuple[
    Tensor | None,  # weight
    Tensor | None,  # bias
    Tensor | None,  # running_mean
    Tensor | None,  # running_var
    Tensor | None,  # num_batches_tracked
    str,  # the layer's name, for errors
    tuple[int, ...],  # the input dims it accepts
    int,  # num_features
    bool,  # training
    bool,  # track_running_stats
    float | None,  # momentum
    float,  # eps
]


class _BatchNorm(nn.modules.batchnorm._BatchNorm):
    """torch's batch-norm base with bnlab's forward; BatchNorm1d/2d/3d add torch's own class."""

    _expected_dims: tuple[int, ...] = ()

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        *,
        bias: bool = True,
    ) -> None:
        if not isinstance(num_features, int) or num_features < 0:
            raise ValueError(
                f"{type(self).__name__}: num_features must be a non-negative int, "
                f"got {num_features!r}"
            )
        factory: dict[str, Any] = {"device": device, "dtype": dtype}
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, **factory, bias=bias
        )

    def _check_input_dim(self, input: Tensor) -> None:
        # torch's hook for the shape check; bnlab's forward does it inside _layer_forward.
        _check_shape(input, self._layer_name(), self._expected_dims, self.num_features)

    def _layer_name(self) -> str:
        return f"{type(self).__name__}({self.num_features})"

    def __prepare_scriptable__(self) -> nn.Module:
        # torch.jit.script calls this hook on every submodule before compiling: one clear
        # error here instead of TorchScript's complaint about the first Python construct.
        raise _not_scriptable(self._layer_name())

    def _activation(self) -> tuple[int, float]:
        """(code, slope) of the activation fused after the normalization: none here;
        bnlab.nn.BatchNormAct*d override it."""
        return 0, 0.0

    def _step_args(self) -> StepArgs:
        """The layer's tensors and settings in the order its forward step takes them: weight,
        bias, running_mean, running_var, num_batches_tracked, name, expected dims,
        num_features, training, track_running_stats, momentum, eps (``_layer_forward`` and
        the BN variants' steps all start so)."""
        return (
            self.weight,
            self.bias,
            self.running_mean,
            self.running_var,
            self.num_batches_tracked,
            self._layer_name(),
            self._expected_dims,
            self.num_features,
            self.training,
            self.track_running_stats,
            self.momentum,
            self.eps,
        )

    def forward(self, input: Tensor) -> Tensor:
        return _layer_forward(input, *self._step_args(), *self._activation())


class BatchNorm1d(_BatchNorm, nn.BatchNorm1d):
    """Batch normalization over (N, C) or (N, C, L) input; a torch.nn.BatchNorm1d."""

    _expected_dims = (2, 3)


class BatchNorm2d(_BatchNorm, nn.BatchNorm2d):
    """Batch normalization over (N, C, H, W) input; a torch.nn.BatchNorm2d."""

    _expected_dims = (4,)


class BatchNorm3d(_BatchNorm, nn.BatchNorm3d):
    """Batch normalization over (N, C, D, H, W) input; a torch.nn.BatchNorm3d."""

    _expected_dims = (5,)
