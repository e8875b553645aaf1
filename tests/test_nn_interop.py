"""bnlab.nn's layers are torch's classes: tools that look for batch norm by isinstance find them.

Each tool runs on a model holding bnlab layers and on its torch twin (``to_torch`` of a copy);
the two must end in the same state, and that state must differ from the start (so a tool that
silently skipped bnlab's layers fails the test).
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

import bnlab.nn as bnn

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def convnet(bn1d: type[nn.Module] = bnn.BatchNorm1d, bn2d: type[nn.Module] = bnn.BatchNorm2d):
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),
        bn2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 6, bias=False),
        bn1d(6, momentum=None),
        nn.ReLU(),
        nn.Linear(6, 2),
    )


def trained(model: nn.Module, steps: int = 4) -> nn.Module:
    """Weights and running statistics moved away from init."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(steps):
        model(torch.randn(8, 3, 6, 6) * 2 + 1).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return model


def bn_state(model: nn.Module) -> dict[str, Tensor]:
    return {
        f"{name}.{k}": v.detach().clone()
        for name, m in bnn.batch_norm_layers(model)
        for k, v in [*m.named_buffers(), *m.named_parameters()]
    }


def assert_same_state(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], msg=k)


def assert_moved(before: dict[str, Tensor], after: dict[str, Tensor], keys: list[str]) -> None:
    for k in keys:
        assert not torch.equal(before[k], after[k]), f"{k} did not change"


def twins() -> tuple[nn.Module, nn.Module]:
    """A trained model with bnlab layers and its exact torch twin."""
    mine = trained(convnet())
    return mine, bnn.to_torch(copy.deepcopy(mine))


BATCHES = [torch.randn(10, 3, 6, 6) * 3 - 1 for _ in range(5)]
STATS = ["1.running_mean", "1.running_var", "5.running_mean", "5.running_var"]


# ---- what the layers are ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mine", "theirs"),
    [
        (bnn.BatchNorm1d, nn.BatchNorm1d),
        (bnn.BatchNorm2d, nn.BatchNorm2d),
        (bnn.BatchNorm3d, nn.BatchNorm3d),
    ],
)
def test_bnlab_layers_are_instances_of_torchs_classes(mine, theirs) -> None:
    layer = mine(3)
    assert isinstance(layer, theirs) and isinstance(layer, _BatchNorm)
    assert type(layer) is not theirs
    assert bnn.is_batch_norm(layer)
    assert layer.state_dict()._metadata[""]["version"] == 2


def test_is_batch_norm_and_the_layer_iterator() -> None:
    shared = bnn.BatchNorm1d(4)
    model = nn.Sequential(
        nn.Linear(4, 4),
        shared,
        nn.Sequential(nn.BatchNorm1d(4), shared),
        nn.SyncBatchNorm(4),
        nn.LazyBatchNorm1d(),
        nn.InstanceNorm1d(4),
        nn.LayerNorm(4),
        nn.GroupNorm(2, 4),
    )
    found = [(name, type(m).__name__) for name, m in bnn.batch_norm_layers(model)]
    assert found == [
        ("1", "BatchNorm1d"),
        ("2.0", "BatchNorm1d"),
        ("3", "SyncBatchNorm"),
        ("4", "LazyBatchNorm1d"),
    ]  # the shared layer once; InstanceNorm, LayerNorm, GroupNorm are not batch norm
    assert [name for name, _ in bnn.batch_norm_layers(shared)] == [""]


# ---- tools that find batch norm by isinstance ---------------------------------------------------


def test_swa_update_bn_recomputes_bnlab_statistics_like_torchs() -> None:
    mine, theirs = twins()
    before = bn_state(mine)
    for model in (mine, theirs):
        torch.optim.swa_utils.update_bn(BATCHES, model)
    assert_moved(before, bn_state(mine), STATS)
    assert_same_state(bn_state(mine), bn_state(theirs))
    assert int(mine[1].num_batches_tracked) == len(BATCHES)
    assert mine[5].momentum is None and mine[1].momentum == 0.1  # restored


def test_fvcore_precise_bn_updates_bnlab_statistics_like_torchs() -> None:
    precise_bn = pytest.importorskip("fvcore.nn.precise_bn", reason="pip install 'bnlab[test]'")
    mine, theirs = twins()
    before = bn_state(mine)
    assert len(precise_bn.get_bn_modules(mine)) == 2
    for model in (mine, theirs):
        precise_bn.update_bn_stats(model, BATCHES, num_iters=len(BATCHES), progress=None)
    assert_moved(before, bn_state(mine), STATS)
    assert_same_state(bn_state(mine), bn_state(theirs))


def freeze_bn(model: nn.Module) -> None:
    """The common fine-tuning helper: BN layers in eval mode with frozen affine parameters."""
    for m in model.modules():
        if isinstance(m, _BatchNorm):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(False)


def test_freeze_bn_helper_freezes_bnlab_layers() -> None:
    model = trained(convnet())
    model.train()
    freeze_bn(model)
    before = bn_state(model)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    trained_conv = model[0].weight.detach().clone()
    for x in BATCHES:
        model(x).square().mean().backward()
        opt.step()
        opt.zero_grad()
    assert_same_state(before, bn_state(model))  # statistics and gamma, beta all frozen
    assert all(m.weight.grad is None for _, m in bnn.batch_norm_layers(model))
    assert not torch.equal(model[0].weight, trained_conv)  # the rest did train


def weight_decay_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """The common recipe: no weight decay on BN's gamma and beta (and on biases)."""
    decay, no_decay = [], []
    for m in model.modules():
        for name, p in m.named_parameters(recurse=False):
            (no_decay if isinstance(m, _BatchNorm) or name == "bias" else decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0},
    ]


def test_weight_decay_filter_spares_bnlab_parameters() -> None:
    model = trained(convnet())
    groups = weight_decay_groups(model, 0.5)
    bn_params = {id(p) for _, m in bnn.batch_norm_layers(model) for p in m.parameters()}
    assert bn_params and bn_params <= {id(p) for p in groups[1]["params"]}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD(groups, lr=0.1)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)  # only the decay moves anything
    opt.step()
    for name, p in model.named_parameters():
        decayed = name in ("0.weight", "4.weight", "7.weight")
        assert torch.equal(p, before[name]) != decayed, name


def test_fuse_conv_bn_eval_with_a_bnlab_layer() -> None:
    model = trained(convnet()).eval()
    fused = torch.nn.utils.fusion.fuse_conv_bn_eval(model[0], model[1])
    x = torch.randn(5, 3, 6, 6)
    torch.testing.assert_close(fused(x), model[1](model[0](x)), rtol=1e-5, atol=1e-5)
    assert fused.bias is not None  # BN's shift folded in


# ---- torch.fx ---------------------------------------------------------------------------------


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_fx_symbolic_trace_computes_the_same_numbers(training: bool) -> None:
    model = trained(convnet()).train(training)
    reference = copy.deepcopy(model)
    graph = torch.fx.symbolic_trace(model)
    assert not any(isinstance(m, _BatchNorm) for m in graph.modules())  # traced through
    for x in BATCHES[:3]:  # several steps: counter, cumulative average, EMA
        xg, xr = x.clone().requires_grad_(), x.clone().requires_grad_()
        y, y_ref = graph(xg), reference(xr)
        torch.testing.assert_close(y, y_ref)
        y.square().sum().backward()
        y_ref.square().sum().backward()
        torch.testing.assert_close(xg.grad, xr.grad)
    for (name, b), (_, b_ref) in zip(graph.named_buffers(), reference.named_buffers(), strict=True):
        torch.testing.assert_close(b, b_ref, msg=name)
    for (name, p), (_, p_ref) in zip(
        graph.named_parameters(), reference.named_parameters(), strict=True
    ):
        torch.testing.assert_close(p.grad, p_ref.grad, msg=name)
    assert int(reference[5].num_batches_tracked) == 4 + 3 * training


def test_fx_traced_graph_still_checks_its_input() -> None:
    graph = torch.fx.symbolic_trace(nn.Sequential(nn.Flatten(), bnn.BatchNorm1d(6)))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(6\) needs more than 1 value per channel"):
        graph(torch.randn(1, 2, 3))
    with pytest.raises(ValueError, match=r"BatchNorm1d\(6\) got input of shape \(4, 5\)"):
        graph(torch.randn(4, 5, 1))


# ---- converters tell the classes apart -----------------------------------------------------------


class MyTorchBN(nn.BatchNorm2d):
    """A user's subclass of torch's layer."""


class MyBnlabBN(bnn.BatchNorm2d):
    """A user's subclass of bnlab's layer."""


def test_from_torch_and_to_torch_swap_exactly_their_own_classes() -> None:
    def build() -> nn.Sequential:
        return nn.Sequential(
            nn.BatchNorm1d(3), bnn.BatchNorm2d(3), MyTorchBN(3), MyBnlabBN(3), nn.SyncBatchNorm(3)
        )

    def kinds(model: nn.Module) -> list[type]:
        return [type(m) for m in model]

    assert kinds(bnn.from_torch(build())) == [
        bnn.BatchNorm1d, bnn.BatchNorm2d, MyTorchBN, MyBnlabBN, nn.SyncBatchNorm,
    ]  # fmt: skip
    assert kinds(bnn.to_torch(build())) == [
        nn.BatchNorm1d, nn.BatchNorm2d, MyTorchBN, MyBnlabBN, nn.SyncBatchNorm,
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("convert", "start", "want"),
    [
        (bnn.from_torch, nn.BatchNorm1d, bnn.BatchNorm1d),
        (bnn.to_torch, bnn.BatchNorm1d, nn.BatchNorm1d),
        (bnn.SyncBatchNorm.convert_sync_batchnorm, nn.BatchNorm1d, bnn.SyncBatchNorm),
        (bnn.freeze, nn.BatchNorm1d, bnn.FrozenBatchNorm1d),
    ],
)
def test_a_layer_in_two_places_is_converted_in_both_and_stays_shared(
    convert: Any, start: type[nn.Module], want: type[nn.Module]
) -> None:
    # named_children yields a repeated child once: torch's own converters leave the second
    # place with the old layer (two modules where the user had one)
    bn = start(3)
    inner = nn.Sequential(bn, nn.ReLU())
    model = nn.Sequential(bn, nn.Tanh(), bn, inner)
    convert(model)
    assert type(model[0]) is want
    assert model[0] is model[2] is model[3][0]
    if convert is bnn.SyncBatchNorm.convert_sync_batchnorm:
        back = bnn.SyncBatchNorm.revert_sync_batchnorm(model)
        assert type(back[0]) is bnn.BatchNorm1d and back[0] is back[2] is back[3][0]
    if convert is bnn.freeze:
        back = bnn.unfreeze(model)
        assert type(back[0]) is nn.BatchNorm1d and back[0] is back[2] is back[3][0]
