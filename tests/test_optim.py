"""ExactAdam: bit for bit torch.optim.Adam's default update, with its own state and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bnlab.lab.optim import ExactAdam


def _net(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))


def _grads(net: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.autograd.grad(net(x).square().mean(), list(net.parameters()))


def test_matches_torch_adam_bit_for_bit():
    mine, ref = _net(0), _net(0)
    exact = ExactAdam(list(mine.parameters()), lr=2e-4)
    adam = torch.optim.Adam(ref.parameters(), lr=2e-4)
    gen = torch.Generator().manual_seed(1)
    for _ in range(25):
        x = torch.randn(32, 20, generator=gen)
        exact.step(_grads(mine, x))
        for p, g in zip(ref.parameters(), _grads(ref, x), strict=True):
            p.grad = g
        adam.step()
    for a, b in zip(mine.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)  # bitwise, not approximately


def test_parameters_stay_the_same_objects_and_shapes():
    net = _net(0)
    before = [(id(p), p.shape) for p in net.parameters()]
    ExactAdam(list(net.parameters()))
    assert [(id(p), p.shape) for p in net.parameters()] == before


def test_state_dict_round_trip_continues_identically():
    a, b = _net(0), _net(0)
    opt_a, opt_b = (
        ExactAdam(list(a.parameters()), lr=1e-3),
        ExactAdam(list(b.parameters()), lr=1e-3),
    )
    x = torch.randn(8, 20)
    for _ in range(3):
        opt_a.step(_grads(a, x))
    b.load_state_dict(a.state_dict())
    opt_b.load_state_dict(opt_a.state_dict())
    opt_a.step(_grads(a, x))
    opt_b.step(_grads(b, x))
    for p, q in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(p, q)


def test_state_of_another_model_is_a_clear_error():
    small = ExactAdam(list(nn.Linear(3, 2).parameters()))
    with pytest.raises(ValueError, match="belongs to another model"):
        ExactAdam(list(nn.Linear(5, 2).parameters())).load_state_dict(small.state_dict())


def test_no_parameters_is_a_clear_error():
    with pytest.raises(ValueError, match="no parameters"):
        ExactAdam([])
