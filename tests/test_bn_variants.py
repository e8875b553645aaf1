"""Batch Renorm, Ghost BN and Virtual BN as batch-norm layers: the doctor knows them, their
state_dicts are torch's, fx traces them, and they run on a CUDA device where there is one."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import bnlab.nn as bnn
from bnlab.doctor import Severity, check

LAYERS = [
    lambda c: bnn.BatchRenorm1d(c),
    lambda c: bnn.GhostBatchNorm1d(c, 4),
    lambda c: bnn.VirtualBatchNorm1d(c, 4),
]
IDS = ["renorm", "ghost", "virtual"]


@pytest.mark.parametrize("make", LAYERS, ids=IDS)
def test_they_are_batch_norm_layers_with_torchs_state_dict(make):
    layer = make(3)
    assert bnn.is_batch_norm(layer) and isinstance(layer, nn.BatchNorm1d)
    assert list(layer.state_dict()) == list(nn.BatchNorm1d(3).state_dict())
    model = nn.Sequential(nn.Linear(4, 3, bias=False), layer, nn.ReLU())
    assert [name for name, _ in bnn.batch_norm_layers(model)] == ["1"]
    findings = check(model, torch.randn(16, 4))
    assert [f.code for f in findings if f.severity is not Severity.INFO] == []


def test_virtual_bn_on_a_single_unit_is_fine_batch_renorm_is_a_warning_ghost_an_error():
    def head(layer):
        return nn.Sequential(nn.Linear(8, 1, bias=False), layer)

    assert check(head(bnn.VirtualBatchNorm1d(1, 4))) == []  # normalized with the reference
    (renorm,) = check(head(bnn.BatchRenorm1d(1, d_max=5.0)))
    assert (renorm.code, renorm.severity) == ("bn-on-single-unit", Severity.WARNING)
    assert "clipped at 5 running standard deviations" in renorm.message
    (ghost,) = check(head(bnn.GhostBatchNorm1d(1, 4)))
    assert (ghost.code, ghost.severity) == ("bn-on-single-unit", Severity.ERROR)


def test_doctor_sees_a_ghost_batch_of_one_value():
    model = nn.Sequential(nn.Linear(4, 3, bias=False), bnn.GhostBatchNorm1d(3, 4))
    (f,) = [f for f in check(model, torch.randn(9, 4)) if f.code == "batch-of-one"]
    assert f.severity is Severity.ERROR and "in its last ghost batch (of 4 rows" in f.message
    assert [f for f in check(model, torch.randn(10, 4)) if f.code == "batch-of-one"] == []
    assert bnn.values_per_statistic(model[1], torch.randn(10, 3, 5)) == 10  # 2 rows x 5
    assert bnn.values_per_statistic(bnn.BatchNorm1d(3), torch.randn(10, 3, 5)) == 50


@pytest.mark.parametrize("make", LAYERS, ids=IDS)
def test_fx_traces_them_as_one_step(make):
    model = nn.Sequential(nn.Linear(4, 3, bias=False), make(3))
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(10, 4)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    expected = model(x)
    after = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(state)  # the traced graph shares the layer's buffers
    torch.testing.assert_close(traced(x), expected)
    for k, v in traced.state_dict().items():
        torch.testing.assert_close(v, after[k], msg=k)  # the step ran in the graph


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("make", LAYERS, ids=IDS)
def test_cuda_matches_cpu(make):
    torch.manual_seed(0)
    cpu = make(3)
    gpu = make(3).cuda()
    x = torch.randn(14, 3, 5) * 2 + 1
    for _ in range(2):
        xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
        yc, yg = cpu(xc), gpu(xg)
        torch.testing.assert_close(yg.cpu(), yc, rtol=1e-4, atol=1e-4)
        yc.square().sum().backward()
        yg.square().sum().backward()
        torch.testing.assert_close(xg.grad.cpu(), xc.grad, rtol=1e-4, atol=1e-4)
    for name, t in cpu.state_dict().items():
        torch.testing.assert_close(gpu.state_dict()[name].cpu(), t, msg=name)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("make", [
    lambda: bnn.BatchRenorm1d(3, warmup_start=1, warmup_steps=2),
    lambda: bnn.GhostBatchRenorm1d(3, 4, warmup_start=1, warmup_steps=2),
])  # fmt: skip
def test_cuda_renorm_warm_up_steps_without_a_host_sync(make):
    layer = make().cuda()
    x = torch.randn(12, 3, device="cuda") * 2 + 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")  # a device-to-host read raises
    try:
        for _ in range(4):  # before, during and after the ramp
            layer(x.requires_grad_()).square().sum().backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert layer.clip_limits() == (3.0, 5.0)
