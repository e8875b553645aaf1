"""bnlab's Triton kernels on a CUDA GPU, against the plain-torch path and torch's own (cuDNN) BN.
Skipped where there is no GPU; bench/gpu_check.py runs these first."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF

from bnlab import functional as F
from bnlab import kernels

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

CASES = [
    ((100, 256), False),
    ((32, 256, 14, 14), False),
    ((32, 256, 14, 14), True),
    ((8, 64, 56, 56), True),
    ((16, 2048, 7, 7), False),
    ((4, 3, 5, 6, 7), True),
    ((3, 5, 20000), False),
]


def _case(shape, channels_last, dtype, seed=0):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = (torch.randn(shape, generator=gen, device="cuda") * 3 + 10).to(dtype)
    if channels_last:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    c = shape[1]
    # parameters and running statistics share one dtype: x's, or float32 for half precision
    pdtype = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    w = torch.linspace(-1.0, 2.0, c, device="cuda").to(pdtype)
    b = torch.randn(c, generator=gen, device="cuda").to(pdtype)
    dy = torch.randn(shape, generator=gen, device="cuda").to(dtype)
    return x, w, b, dy


def _run(backend, x, w, b, dy, act=None, training=True):
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    stat = torch.float64 if x.dtype == torch.float64 else torch.float32
    rm = torch.zeros(x.shape[1], device="cuda", dtype=stat)
    rv = torch.ones(x.shape[1], device="cuda", dtype=stat)
    with kernels.use_backend(backend):
        if act is None:
            y = F.batch_norm(xg, rm, rv, wg, bg, training, 0.1, 1e-5)
        else:
            y = F.batch_norm_act(xg, rm, rv, wg, bg, training, 0.1, 1e-5, act=act)
        grads = torch.autograd.grad(y, (xg, wg, bg), dy)
    return (y, *grads, rm, rv)


@pytest.mark.parametrize(("shape", "channels_last"), CASES)
@pytest.mark.parametrize("act", [None, "relu", "leaky_relu"])
def test_triton_matches_the_torch_path_in_float64(shape, channels_last, act):
    x, w, b, dy = _case(shape, channels_last, torch.float64)
    for training in (True, False):
        mine = _run("compiled", x, w, b, dy, act, training)
        plain = _run("torch", x, w, b, dy, act, training)
        for name, m, p in zip(("y", "dx", "dw", "db", "rm", "rv"), mine, plain, strict=True):
            torch.testing.assert_close(m, p, rtol=1e-9, atol=1e-9, msg=name)
        assert mine[0].stride() == x.stride() and mine[1].stride() == x.stride()


@pytest.mark.parametrize(("shape", "channels_last"), CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_matches_cudnn(shape, channels_last, dtype):
    x, w, b, dy = _case(shape, channels_last, dtype, seed=1)
    mine = _run("compiled", x, w, b, dy)
    xg, wg, bg = (t.clone().requires_grad_() for t in (x, w, b))
    rm = torch.zeros(shape[1], device="cuda")
    rv = torch.ones(shape[1], device="cuda")
    y = TF.batch_norm(xg, rm, rv, wg, bg, True, 0.1, 1e-5)
    native = (y, *torch.autograd.grad(y, (xg, wg, bg), dy), rm, rv)
    tol = 1e-3 if dtype == torch.float32 else 3e-2
    for name, m, n in zip(("y", "dx", "dw", "db", "rm", "rv"), mine, native, strict=True):
        scale = max(1.0, n.abs().max().item())
        torch.testing.assert_close(m.float(), n.float(), rtol=tol, atol=tol * scale, msg=name)


def test_stages_match_the_torch_path_on_cuda():
    x, w, _, dy = _case((16, 32, 9, 9), True, torch.float32, seed=2)
    count = x.numel() // 32
    results = []
    for backend in ("compiled", "torch"):
        with kernels.use_backend(backend), torch.no_grad():
            mean, m2 = F.batch_norm_stats(x)
            inv_std = (m2 / count + 1e-5).rsqrt()
            y = F.batch_norm_elemt(x, mean, inv_std, w, None)
            s0, s1 = F.batch_norm_backward_reduce(dy, x, mean, inv_std)
            dx = F.batch_norm_backward_elemt(dy, x, mean, inv_std, w, s0, s1, count)
        results.append((mean, m2, y, s0, s1, dx))
    for m, p in zip(*results, strict=True):
        torch.testing.assert_close(m, p, rtol=1e-4, atol=1e-4)
