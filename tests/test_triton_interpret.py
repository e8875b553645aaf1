"""bnlab's Triton kernels, run on the CPU by Triton's interpreter (TRITON_INTERPRET=1), against
the plain-torch path (itself checked against the NumPy reference in test_functional.py).

The interpreter executes each kernel with NumPy, program by program, so the shapes are small;
they are chosen to reach every tile shape (channels contiguous or not), masking at both tile
edges, several programs per channel, every activation and dtype. bench/gpu_check.py runs the
same kernels compiled, on a GPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bnlab import functional as F

pytest.importorskip("triton")

# Triton reads TRITON_INTERPRET when it is imported (its own library functions are decorated
# then), so the kernels are tested in a child process that starts with it set.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
in_child = pytest.mark.skipif(not INTERPRETED, reason="runs in the TRITON_INTERPRET=1 child")


def test_triton_kernels_under_the_interpreter():
    if INTERPRETED:
        pytest.skip("this is the child process")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", __file__]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


@pytest.fixture(scope="module")
def tri():  # type: ignore[no-untyped-def]
    from bnlab.kernels import triton_bn

    assert triton_bn.available()
    return triton_bn


CASES = [  # shape, channels_last
    ((6, 5), False),  # (M, C)
    ((70, 40), False),  # two channel tiles, three row tiles
    ((3, 2, 1200), False),  # planes longer than a tile: several programs per channel
    ((4, 3, 5, 6), True),  # channels_last
    ((3, 2, 3, 4, 5), True),  # channels_last_3d
    ((2, 3, 4, 5), False),  # contiguous 4D
]


def _case(shape, channels_last, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=torch.float64) * 3 + 20).to(dtype)
    if channels_last:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    c = shape[1]
    w = torch.linspace(-1.0, 2.0, c, dtype=torch.float64).to(dtype)  # one gamma < 0
    b = torch.randn(c, generator=gen, dtype=torch.float64).to(dtype)
    dy = torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    return x, w, b, dy


ACT_CASES = [(case, 0, 0.0) for case in CASES] + [  # every layout; the activations on two
    (CASES[1], 1, 0.0),
    (CASES[3], 1, 0.0),
    (CASES[2], 2, 0.2),
    (CASES[4], 2, 0.2),
]


@in_child
@pytest.mark.parametrize(("case", "act", "slope"), ACT_CASES)
def test_forward_and_backward_match_the_torch_path_in_float64(tri, case, act, slope):
    shape, channels_last = case
    x, w, b, dy = _case(shape, channels_last, torch.float64)
    for training in (True, False):
        outs = []
        for impl in (F._TorchKernels, tri):
            rm = torch.linspace(19, 21, shape[1], dtype=torch.float64)
            rv = torch.linspace(8, 10, shape[1], dtype=torch.float64)
            y, mean, inv_std = impl.forward(x, w, b, rm, rv, training, 0.3, 1e-5, act, slope)
            grads = impl.backward(
                dy, x, w, b, mean, inv_std, training, act, slope, (True, True, True)
            )
            outs.append((y, mean, inv_std, *grads, rm, rv))
        for name, mine, plain in zip(
            ("y", "mean", "inv_std", "dx", "dw", "db", "rm", "rv"), outs[1], outs[0], strict=True
        ):
            torch.testing.assert_close(mine, plain, rtol=1e-10, atol=1e-10, msg=name)
        assert outs[1][0].stride() == x.stride() and outs[1][3].stride() == x.stride()


@in_child
@pytest.mark.parametrize(("shape", "channels_last"), CASES[1:4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_stages_match_the_torch_path(tri, shape, channels_last, dtype):
    x, w, b, dy = _case(shape, channels_last, dtype, seed=1)
    count = x.numel() // shape[1]
    results = []
    for stages in (F, tri):
        with torch.no_grad():
            mean, m2 = stages.batch_norm_stats(x)
            inv_std = (m2 / count + 1e-5).rsqrt()
            y = stages.batch_norm_elemt(x, mean, inv_std, w, b)
            s0, s1 = stages.batch_norm_backward_reduce(dy, x, mean, inv_std)
            dx = stages.batch_norm_backward_elemt(dy, x, mean, inv_std, w, s0, s1, count)
        results.append((mean, m2 / count, y, s0, s1, dx))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    for name, mine, plain in zip(
        ("mean", "var", "y", "s0", "s1", "dx"), *results[::-1], strict=True
    ):
        assert mine.dtype == plain.dtype, name
        torch.testing.assert_close(mine, plain, rtol=tol, atol=tol, msg=name)


@in_child
def test_autograd_through_the_triton_kernels(tri):
    # The wiring CUDA tensors take: bnlab's autograd.Function with the Triton kernels inside,
    # and a gradient that is an expanded view (y.sum().backward()).
    x, w, b, _ = _case((5, 3, 4), False, torch.float64, seed=2)
    grads = []
    for impl in (F._TorchKernels, tri):
        xi, wi, bi = (t.clone().requires_grad_() for t in (x, w, b))
        for loss in (lambda y: y.sum(), lambda y: (y * y).sum()):  # the first: dy expanded
            y = F._BatchNormFunction.apply(xi, wi, bi, None, None, True, 0.1, 1e-5, 1, 0.0, impl)
            loss(y).backward()
        grads.append((xi.grad, wi.grad, bi.grad))
    for mine, plain in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(mine, plain, rtol=1e-10, atol=1e-10)
