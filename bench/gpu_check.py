"""One GPU session's check of bnlab's Triton kernels: correctness, then speed against cuDNN.

Run once where a CUDA GPU is present (a few minutes on an H100/H200; budget 10):

    python bench/gpu_check.py --out gpu_check.json

1. tests/test_gpu_kernels.py (pytest -m gpu): the Triton path against the plain-torch path in
   float64 and against torch's own (cuDNN) BN in float32 and bfloat16.
2. Parity summary on the benchmark shapes: max |error| of bnlab and of cuDNN against a float64
   computation of the same inputs (float32, training mode).
3. Speed, CUDA events, interleaved round by round: forward and forward+backward of
   bnlab.functional.batch_norm vs torch.nn.functional.batch_norm (cuDNN), and fused BN+ReLU vs
   cuDNN BN followed by in-place ReLU; achieved bandwidth on the large shapes (8 tensor passes
   per forward+backward) against the copy bandwidth measured here.

Prints a Markdown table for the README and writes every number to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as TF

from bnlab import functional as F
from bnlab import kernels

CORE = [(100, 256), (100, 784), (256, 1024), (32, 256, 14, 14), (64, 64, 56, 56)]
RESNET50 = [(32, 64, 112, 112), (32, 2048, 7, 7), (256, 64, 112, 112), (256, 2048, 7, 7)]
PASSES = 8


def _cases() -> list[tuple[tuple[int, ...], bool]]:
    return [(s, cl) for s in CORE + RESNET50 for cl in ([False, True] if len(s) == 4 else [False])]


def _inputs(shape, channels_last, dtype=torch.float32):  # type: ignore[no-untyped-def]
    gen = torch.Generator(device="cuda").manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = (torch.randn(shape, generator=gen, device="cuda") * 2 + 0.5).to(dtype)
    x = x.contiguous(memory_format=fmt)
    c = shape[1]
    return {
        "x": x.requires_grad_(),
        "w": (torch.rand(c, generator=gen, device="cuda") + 0.5).requires_grad_(),
        "b": torch.randn(c, generator=gen, device="cuda").requires_grad_(),
        "rm": torch.zeros(c, device="cuda"),
        "rv": torch.ones(c, device="cuda"),
        "dy": torch.randn(shape, generator=gen, device="cuda")
        .to(dtype)
        .contiguous(memory_format=fmt),
    }


def _bnlab(t, act=None):  # type: ignore[no-untyped-def]
    if act is None:
        return F.batch_norm(t["x"], t["rm"], t["rv"], t["w"], t["b"], True, 0.1, 1e-5)
    return F.batch_norm_act(t["x"], t["rm"], t["rv"], t["w"], t["b"], True, 0.1, 1e-5, act=act)


def _native(t, act=None):  # type: ignore[no-untyped-def]
    y = TF.batch_norm(t["x"], t["rm"], t["rv"], t["w"], t["b"], True, 0.1, 1e-5)
    return TF.relu(y, inplace=True) if act else y


def _step(fn, t, backward, act=None):  # type: ignore[no-untyped-def]
    y = fn(t, act)
    if backward:
        torch.autograd.grad(y, (t["x"], t["w"], t["b"]), t["dy"])


def _time_ms(fn, t, backward, act=None, iters=20) -> float:  # type: ignore[no-untyped-def]
    for _ in range(3):
        _step(fn, t, backward, act)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        _step(fn, t, backward, act)
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def _copy_bandwidth(numel: int) -> float:
    src = torch.randn(numel, device="cuda")
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        dst.copy_(src)
    end.record()
    torch.cuda.synchronize()
    return 2 * numel * 4 / (start.elapsed_time(end) / 20 / 1e3)


def _parity(shape, channels_last) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Max |error| against float64 of bnlab (Triton) and of cuDNN, float32 training mode."""
    t = _inputs(shape, channels_last)
    x64 = t["x"].detach().double().requires_grad_()
    w64 = t["w"].detach().double().requires_grad_()
    b64 = t["b"].detach().double().requires_grad_()
    with kernels.use_backend("torch"):
        y64 = F.batch_norm(x64, None, None, w64, b64, True, 0.1, 1e-5)
        ref = (y64, *torch.autograd.grad(y64, (x64, w64, b64), t["dy"].double()))
    out: dict[str, float] = {}
    for name, fn in (("bnlab", _bnlab), ("cudnn", _native)):
        y = fn(t)
        got = (y, *torch.autograd.grad(y, (t["x"], t["w"], t["b"]), t["dy"]))
        for q, g, r in zip(("y", "dx", "dw", "db"), got, ref, strict=True):
            out[f"{name}_{q}"] = (g.double() - r).abs().max().item()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("gpu_check.json"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--skip-tests", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here")
    kernels.set_backend("compiled")
    from bnlab.kernels import triton_bn

    t0 = time.time()
    report: dict = {
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(),
        **triton_bn.describe(),
    }
    print(f"{report['gpu']}, torch {report['torch']}, triton {report['triton']}", flush=True)
    if not args.skip_tests:
        root = Path(__file__).resolve().parents[1]
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu_kernels.py"],
            cwd=root, capture_output=True, text=True, timeout=400,
        )  # fmt: skip
        report["tests"] = {"returncode": proc.returncode, "tail": proc.stdout[-3000:]}
        print(proc.stdout[-1500:], flush=True)

    report["parity"] = {}
    for shape, cl in _cases():
        key = f"{shape} {'channels_last' if cl else 'contiguous'}"
        report["parity"][key] = p = _parity(shape, cl)
        print(
            f"parity {key:40} " + " ".join(f"{k}={v:.1e}" for k, v in sorted(p.items())),
            flush=True,
        )

    report["speed"] = {}
    copy = _copy_bandwidth(256 * 64 * 112 * 112)
    report["copy_GBps"] = copy / 1e9
    rows = []
    for shape, cl in _cases():
        key = f"{shape} {'channels_last' if cl else 'contiguous'}"
        t = _inputs(shape, cl)
        entry = {}
        for kind, backward, act in (("fwd", False, None), ("fwd+bwd", True, None),
                                    ("bn+relu fwd+bwd", True, "relu")):  # fmt: skip
            mine, native = [], []
            for _ in range(args.rounds):
                native.append(_time_ms(_native, t, backward, act))
                mine.append(_time_ms(_bnlab, t, backward, act))
            m, n = statistics.median(mine), statistics.median(native)
            entry[kind] = {"bnlab_ms": m, "cudnn_ms": n, "ratio": m / n}
        nbytes = PASSES * math.prod(shape) * 4
        entry["bnlab_GBps"] = nbytes / (entry["fwd+bwd"]["bnlab_ms"] / 1e3) / 1e9
        report["speed"][key] = entry
        rows.append((key, entry))
        ratios = "  ".join(f"{k} {v['ratio']:.2f}x" for k, v in entry.items() if k != "bnlab_GBps")
        share = entry["bnlab_GBps"] / (copy / 1e9)
        print(
            f"speed {key:40} {ratios}  {entry['bnlab_GBps']:.0f} GB/s ({share:.0%} of copy)",
            flush=True,
        )
    geo = {
        kind: math.exp(statistics.fmean(math.log(e[kind]["ratio"]) for _, e in rows))
        for kind in ("fwd", "fwd+bwd", "bn+relu fwd+bwd")
    }
    report["geomean_ratio"] = geo
    report["seconds"] = time.time() - t0
    args.out.write_text(json.dumps(report, indent=2))

    print(f"\n{report['gpu']}: bnlab (Triton) / cuDNN, time ratio (< 1 is faster); copy "
          f"bandwidth {copy / 1e9:.0f} GB/s\n")  # fmt: skip
    print("| shape | fwd | fwd+bwd | BN+ReLU fwd+bwd | fwd+bwd GB/s (% of copy) |")
    print("|---|---|---|---|---|")
    for key, e in rows:
        print(
            f"| {key} | {e['fwd']['ratio']:.2f} | {e['fwd+bwd']['ratio']:.2f} | "
            f"{e['bn+relu fwd+bwd']['ratio']:.2f} | {e['bnlab_GBps']:.0f} "
            f"({e['bnlab_GBps'] / (copy / 1e9):.0%}) |"
        )
    print(f"| geomean | {geo['fwd']:.2f} | {geo['fwd+bwd']:.2f} | {geo['bn+relu fwd+bwd']:.2f} | |")
    print(f"\n{report['seconds']:.0f} s; numbers in {args.out}")


if __name__ == "__main__":
    main()
