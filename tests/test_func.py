"""torch.func over bnlab's BN: vmap ensembles (train and eval, running statistics included),
per-sample gradients, jacrev. Oracles: each model run alone (bnlab's usual path, hand-derived
backward) and torch.nn's BN under the same transform."""

from __future__ import annotations

import copy
from collections.abc import Callable

import pytest
import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jacrev, stack_module_state, vmap

import bnlab.nn as bnn

# (BN class, torch's class, member input shape without the ensemble dim)
CASES = [
    (bnn.BatchNorm1d, nn.BatchNorm1d, (6, 3)),
    (bnn.BatchNorm1d, nn.BatchNorm1d, (6, 3, 5)),
    (bnn.BatchNorm2d, nn.BatchNorm2d, (4, 3, 5, 5)),
    (bnn.BatchNormAct2d, None, (4, 3, 5, 5)),
]


def _members(bn: Callable[[int], nn.Module], n: int = 3) -> list[nn.Module]:
    """n small models that differ in weights and running statistics."""
    models = []
    for k in range(n):
        torch.manual_seed(k)
        layer = bn(3)
        with torch.no_grad():
            layer.weight.uniform_(0.5, 2.0)
            layer.bias.normal_()
            layer.running_mean.normal_()
            layer.running_var.uniform_(0.5, 2.0)
        models.append(nn.Sequential(nn.Identity(), layer).double())
    return models


def _ensemble(models: list[nn.Module], x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """vmap(functional_call) over stacked parameters and buffers: (outputs, buffers after)."""
    params, buffers = stack_module_state(models)  # type: ignore[arg-type]
    base = copy.deepcopy(models[0]).to("meta")

    def call(p: dict[str, Tensor], b: dict[str, Tensor], xi: Tensor) -> Tensor:
        return functional_call(base, (p, b), (xi,))

    return vmap(call)(params, buffers, x), buffers


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize(("mine", "theirs", "shape"), CASES)
def test_vmap_ensemble_equals_each_model_alone(
    mine: type[nn.Module], theirs: type[nn.Module] | None, shape: tuple[int, ...], training: bool
) -> None:
    models = [m.train(training) for m in _members(mine)]
    alone = [copy.deepcopy(m) for m in models]
    x = torch.randn(len(models), *shape, dtype=torch.float64)
    y, buffers = _ensemble(models, x)
    for k, model in enumerate(alone):
        torch.testing.assert_close(y[k], model(x[k]))
        for name, buf in model.named_buffers():  # updated in place, as torch's BN is
            torch.testing.assert_close(buffers[name][k], buf, msg=f"{name} of member {k}")
    if training:
        assert int(buffers["1.num_batches_tracked"][0]) == 1
        assert not torch.equal(buffers["1.running_mean"], torch.stack(
            [m[1].running_mean for m in models]
        ))  # fmt: skip
    if theirs is not None:  # the same ensemble of torch's BN gives the same numbers
        twins = [m.train(training) for m in _members(theirs)]
        y_torch, buffers_torch = _ensemble(twins, x)
        torch.testing.assert_close(y, y_torch)
        for name, buf in buffers_torch.items():
            torch.testing.assert_close(buffers[name], buf, msg=name)


def test_vmap_over_a_batch_of_batches_with_shared_eval_state() -> None:
    """vmap over inputs only (parameters and buffers not batched), eval mode: each slice is
    the layer applied to it."""
    bn = _members(bnn.BatchNorm2d, 1)[0].eval()
    x = torch.randn(4, 2, 3, 5, 5, dtype=torch.float64)
    torch.testing.assert_close(vmap(bn)(x), torch.stack([bn(xi) for xi in x]))


def test_train_mode_with_buffers_from_outside_the_transform_says_what_to_do() -> None:
    """torch's BN refuses too (vmap: "running_mean ... were not batched"); bnlab's says how to
    stack the buffers, before they change. (Under grad, both raise torch's "mutate a captured
    Tensor" at the batch counter.)"""
    bn = bnn.BatchNorm1d(3).train()
    with pytest.raises(RuntimeError, match="stack_module_state"):
        vmap(bn)(torch.randn(2, 4, 3))
    with pytest.raises(RuntimeError, match="captured Tensor"):
        grad(lambda t: bn(t).sum())(torch.randn(4, 3))
    assert torch.equal(bn.running_mean, torch.zeros(3))
    assert torch.equal(bn.running_var, torch.ones(3))


def test_per_sample_gradients_in_eval_mode_equal_a_loop() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3), bnn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(27, 2)
    ).double()
    with torch.no_grad():
        model[1].running_mean.normal_()
        model[1].running_var.uniform_(0.5, 2.0)
        model[1].weight.uniform_(0.5, 2.0)
    model.eval()
    params = {k: v.detach() for k, v in model.named_parameters()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}
    x = torch.randn(5, 2, 5, 5, dtype=torch.float64)
    target = torch.randn(5, 2, dtype=torch.float64)

    def loss(p: dict[str, Tensor], xi: Tensor, ti: Tensor) -> Tensor:
        out = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return (out.squeeze(0) - ti).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, target)
    for i in range(len(x)):
        model.zero_grad()
        (model(x[i : i + 1]).squeeze(0) - target[i]).square().sum().backward()
        for name, p in model.named_parameters():
            assert p.grad is not None
            torch.testing.assert_close(per_sample[name][i], p.grad, msg=f"{name}, sample {i}")
    assert per_sample["1.weight"].abs().sum() > 0  # the BN's own parameters get gradients


@pytest.mark.parametrize("training", [False, True], ids=["eval", "train-untracked"])
def test_jacrev_equals_autograd_jacobian_and_torch(training: bool) -> None:
    bn = _members(bnn.BatchNorm2d, 1)[0][1]
    ref = nn.BatchNorm2d(3).double()
    if training:  # batch statistics, no state to change: a pure function of x
        bn = bnn.BatchNorm2d(3, track_running_stats=False).double()
        ref = nn.BatchNorm2d(3, track_running_stats=False).double()
    ref.load_state_dict(bn.state_dict())
    bn.train(training)
    ref.train(training)
    x = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    jac = jacrev(bn)(x)
    torch.testing.assert_close(jac, torch.autograd.functional.jacobian(bn, x))  # hand backward
    torch.testing.assert_close(jac, jacrev(ref)(x))
    assert jac.shape == (*x.shape, *x.shape)
