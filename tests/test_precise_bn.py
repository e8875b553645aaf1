"""bnlab.nn.recompute_stats (precise BN) against torch's update_bn and float64 formulas; what it
keeps (modes, momenta, step counts, Batch Renorm's limits) and what it refuses."""

from __future__ import annotations

import copy
from typing import ClassVar

import pytest
import torch
from torch import nn
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader, TensorDataset

import bnlab.nn as bnn

pytestmark = pytest.mark.usefixtures("seeded_one_thread")


def _stats(model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [
        (m.running_mean.clone(), m.running_var.clone())  # type: ignore[union-attr]
        for _, m in bnn.batch_norm_layers(model)
    ]


def _conv_net(norm: type[nn.Module] = nn.BatchNorm2d) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), norm(8), nn.ReLU(), nn.Conv2d(8, 4, 3), norm(4), nn.Flatten()
    )


def test_matches_torch_update_bn_on_a_dataloader_of_pairs() -> None:
    """The oracle is torch's own update_bn on torch's own layers; the batches come as
    (input, target) pairs from a DataLoader with a smaller last batch."""
    data = TensorDataset(torch.randn(70, 3, 9, 9) * 2 + 1, torch.randint(0, 3, (70,)))
    loader = DataLoader(data, batch_size=16)
    oracle = _conv_net()
    oracle[1].running_mean.fill_(5.0)  # stale statistics, as after training
    model = bnn.from_torch(copy.deepcopy(oracle))
    assert type(model[1]) is bnn.BatchNorm2d
    update_bn(loader, oracle)
    assert bnn.recompute_stats(model, loader) == 5
    for ours, theirs in zip(_stats(model), _stats(oracle), strict=True):
        torch.testing.assert_close(ours[0], theirs[0])
        torch.testing.assert_close(ours[1], theirs[1])
    assert not torch.allclose(model[1].running_mean, torch.full((8,), 5.0))


def test_is_the_plain_average_of_batch_means_and_unbiased_variances_in_float64() -> None:
    lin = nn.Linear(6, 5)
    model = nn.Sequential(lin, bnn.BatchNorm1d(5))
    batches = [torch.randn(30, 6) + k for k in range(4)]  # different batches, different stats
    bnn.recompute_stats(model, batches)
    with torch.no_grad():
        h = [x.double() @ lin.weight.double().T + lin.bias.double() for x in batches]
    mean = torch.stack([a.mean(0) for a in h]).mean(0)
    var = torch.stack([a.var(0, unbiased=True) for a in h]).mean(0)
    torch.testing.assert_close(model[1].running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model[1].running_var.double(), var, rtol=1e-5, atol=1e-6)


def test_keeps_modes_momenta_step_counts_and_parameters() -> None:
    model = _conv_net()
    model.eval()
    model[1].train()  # a mixed state comes back exactly (update_bn restores the root's only)
    model[4].momentum = 0.3
    model[1].num_batches_tracked.fill_(1234)
    params = {k: v.clone() for k, v in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    bnn.recompute_stats(model, [torch.randn(8, 3, 9, 9)])
    assert {n: m.training for n, m in model.named_modules()} == modes
    assert (model[1].momentum, model[4].momentum) == (0.1, 0.3)
    assert int(model[1].num_batches_tracked) == 1234 and int(model[4].num_batches_tracked) == 0
    for k, v in model.named_parameters():
        assert torch.equal(v, params[k]), k


def test_batch_renorm_recomputes_as_bn_and_keeps_its_warmup_step() -> None:
    """Past its warm-up a renorm layer would compare each batch with the statistics just reset
    (mean 0, var 1) and feed the next layer inputs training never produced: recomputation
    runs it as BN, so its statistics and the next layer's equal a BN model's."""
    plain = nn.Sequential(nn.Linear(6, 8), bnn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))
    plain.append(bnn.BatchNorm1d(4))
    renorm = copy.deepcopy(plain)
    first = bnn.BatchRenorm1d(8, r_max=3.0, d_max=5.0)  # no warm-up: r and d act from step 0
    last = bnn.BatchRenorm1d(4, warmup_start=10, warmup_steps=100)
    renorm[1], renorm[4] = first, last
    renorm.load_state_dict(plain.state_dict())  # torch's state_dict: interchangeable
    last.num_batches_tracked.fill_(500)  # past its warm-up: r_max 3, d_max 5 in force
    assert last.clip_limits() == (3.0, 5.0)
    batches = [torch.randn(20, 6) * 4 + 3 for _ in range(3)]  # far from mean 0, var 1
    bnn.recompute_stats(plain, batches)
    bnn.recompute_stats(renorm, batches)
    for ours, bn in zip(_stats(renorm), _stats(plain), strict=True):
        torch.testing.assert_close(ours[0], bn[0])
        torch.testing.assert_close(ours[1], bn[1])
    assert int(last.num_batches_tracked) == 500 and int(first.num_batches_tracked) == 0
    assert (first.r_max, first.d_max) == (3.0, 5.0) and last.clip_limits() == (3.0, 5.0)


def test_ghost_bn_averages_its_chunks_statistics() -> None:
    ghost = bnn.GhostBatchNorm1d(5, ghost_batch_size=4)
    batches = [torch.randn(12, 5) * (k + 1) for k in range(2)]
    bnn.recompute_stats(ghost, batches)
    chunks = [c.double() for x in batches for c in x.split(4)]
    mean = torch.stack([c.mean(0) for c in chunks]).mean(0)
    var = torch.stack([c.var(0, unbiased=True) for c in chunks]).mean(0)
    torch.testing.assert_close(ghost.running_mean.double(), mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ghost.running_var.double(), var, rtol=1e-5, atol=1e-6)


def test_frozen_layers_and_layers_without_running_statistics_are_left_alone() -> None:
    model = nn.Sequential(
        nn.Linear(6, 5), bnn.BatchNorm1d(5, track_running_stats=False), nn.Linear(5, 4)
    )
    model.append(bnn.FrozenBatchNorm1d(4))
    frozen = {k: v.clone() for k, v in model[3].state_dict().items()}
    assert bnn.recompute_stats(model, [torch.randn(8, 6)]) == 0
    assert all(torch.equal(v, frozen[k]) for k, v in model[3].state_dict().items())
    assert bnn.recompute_stats(nn.Linear(3, 2), [torch.randn(4, 3)]) == 0


def test_no_batches_and_a_failing_batch_leave_the_statistics_as_they_were() -> None:
    model = _conv_net()
    model[1].running_mean.fill_(2.0)
    model[1].running_var.fill_(3.0)
    model[1].num_batches_tracked.fill_(7)
    model.eval()
    before = _stats(model)
    with pytest.raises(ValueError, match="no batch to forward"):
        bnn.recompute_stats(model, [])
    with pytest.raises(ValueError, match="an empty tuple in batches"):
        bnn.recompute_stats(model, [()])
    good, bad = torch.randn(8, 3, 9, 9), torch.randn(8, 5, 9, 9)  # 5 channels: the conv refuses
    with pytest.raises(RuntimeError):
        bnn.recompute_stats(model, [good, bad])
    for ours, was in zip(_stats(model), before, strict=True):
        assert torch.equal(ours[0], was[0]) and torch.equal(ours[1], was[1])
    assert int(model[1].num_batches_tracked) == 7 and model[1].momentum == 0.1
    assert not model.training and not model[1].training


class _Moves(torch.Tensor):
    """An input that records each ``.to`` call (this machine has one device, so the move itself
    cannot be seen from where the tensor ends up)."""

    seen: ClassVar[list[object]] = []

    def to(self, *args, **kwargs):
        _Moves.seen.append(args[0] if args else kwargs.get("device"))
        return super().to(*args, **kwargs)


def test_moves_each_input_to_the_device_given() -> None:
    model = nn.Sequential(nn.Linear(4, 3), bnn.BatchNorm1d(3))
    batches = [(torch.randn(6, 4).as_subclass(_Moves), torch.zeros(6)) for _ in range(2)]
    _Moves.seen.clear()
    assert bnn.recompute_stats(model, batches) == 2
    assert _Moves.seen == []  # no device given: inputs stay where they are
    assert bnn.recompute_stats(model, batches, device="cpu") == 2
    assert _Moves.seen == ["cpu", "cpu"]
