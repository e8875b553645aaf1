"""The library installs and runs alone: `pip install bnlab` is torch + numpy, the lab an extra.

Two levels: in this environment, importing and running the library loads none of the lab's
dependencies (a subprocess, so nothing imported by other tests counts); and, slow, the real
thing: `python -m build`, a fresh venv with only the wheel (and the pinned torch), where
BatchNorm2d runs the C++ kernels compiled from the installed sources, SyncBatchNorm trains on
two gloo processes, the doctor runs, `pip list` shows no lab dependency and the `bnlab`
command names the extra to install.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB_MODULES = ("matplotlib", "scipy", "tyro", "tqdm", "PIL")  # import names of bnlab[lab]
LAB_DISTRIBUTIONS = {"matplotlib", "scipy", "tyro", "tqdm", "pillow"}
TORCH = os.environ.get("TORCH", "torch==2.13.0")  # the pin the Makefile installs
# A model file with torch alone (examples/blog_models.py builds the blog's nets with the lab).
MODEL_FILE = """
from torch import nn

def discriminator():  # notebook 2's mistake: BN on the single-unit logit
    return nn.Sequential(nn.Linear(784, 64), nn.LeakyReLU(0.2), nn.Linear(64, 1),
                         nn.BatchNorm1d(1), nn.Sigmoid())
"""


def _model(tmp_path: Path) -> str:
    (tmp_path / "models.py").write_text(MODEL_FILE)
    return f"{tmp_path / 'models.py'}:discriminator"


# Runs the library end to end; prints one JSON line. Every module it adds to sys.modules
# beyond torch's and numpy's own is bnlab's doing.
LIBRARY_SCRIPT = textwrap.dedent(
    """
    import json, os, socket, sys
    import numpy, torch
    before = set(sys.modules)
    import bnlab.doctor, bnlab.functional, bnlab.kernels, bnlab.nn, bnlab.reference
    from bnlab.kernels import cpu

    def sync_rank(rank, port, x, out):
        import torch.distributed as dist
        os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2
        )
        bn = bnlab.nn.SyncBatchNorm(4).double()
        xr = x[rank * 4 : rank * 4 + 4].clone().requires_grad_()
        y = bn(xr)
        (y * y).sum().backward()
        torch.save({"y": y.detach(), "dx": xr.grad, "mean": bn.running_mean}, f"{out}.{rank}")
        dist.destroy_process_group()

    if __name__ == "__main__":
        bnlab.kernels.set_backend("compiled")  # a failed build is an error, not a fallback
        x = torch.randn(8, 4, 6, 6, dtype=torch.float64)
        mine, ref = bnlab.nn.BatchNorm2d(4).double(), torch.nn.BatchNorm2d(4).double()
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = mine(xa), ref(xb)
        (ya * ya).sum().backward()
        (yb * yb).sum().backward()
        torch.testing.assert_close(ya, yb)
        torch.testing.assert_close(xa.grad, xb.grad)
        torch.testing.assert_close(mine.running_var, ref.running_var)
        compiled = bnlab.kernels.cpu_ops() is not None
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        out = sys.argv[1]
        torch.multiprocessing.spawn(sync_rank, args=(port, x, out), nprocs=2)
        parts = [torch.load(f"{out}.{r}") for r in (0, 1)]
        xc = x.clone().requires_grad_()
        full = torch.nn.BatchNorm2d(4).double()
        yc = full(xc)
        (yc * yc).sum().backward()
        torch.testing.assert_close(torch.cat([p["y"] for p in parts]), yc.detach())
        torch.testing.assert_close(torch.cat([p["dx"] for p in parts]), xc.grad)
        torch.testing.assert_close(parts[0]["mean"], full.running_mean)
        model = torch.nn.Sequential(torch.nn.Linear(8, 1), torch.nn.BatchNorm1d(1))
        findings = [f.code for f in bnlab.doctor.check(model, torch.randn(16, 8))]
        print(json.dumps({
            "compiled": compiled,
            "sources": str(cpu._CSRC),
            "library": str(cpu.library_path()),
            "findings": findings,
            "loaded": sorted(m for m in set(sys.modules) - before
                             if m.split(".")[0] in {LAB} or m.startswith("bnlab.lab")),
        }))
    """
).replace("{LAB}", repr(set(LAB_MODULES)))


def _run_library(python: str, tmp_path: Path, env: dict[str, str]) -> dict[str, object]:
    script = tmp_path / "library_alone.py"
    script.write_text(LIBRARY_SCRIPT)
    done = subprocess.run(
        [python, str(script), str(tmp_path / "syncbn")],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_library_loads_none_of_the_labs_dependencies(tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = _run_library(sys.executable, tmp_path, env)
    assert result["loaded"] == []
    assert "bn-on-single-unit" in result["findings"]


def test_the_bnlab_command_names_the_extra_when_the_lab_is_missing(tmp_path: Path) -> None:
    """Without the lab's packages (hidden here by a module finder that refuses them) the
    command prints one line naming the extra and exits 2; the doctor still runs."""
    hide = tmp_path / "sitecustomize.py"
    hide.write_text(
        textwrap.dedent(
            f"""
            import importlib.abc, sys
            class Hide(importlib.abc.MetaPathFinder):
                def find_spec(self, name, path=None, target=None):
                    if name.split(".")[0] in {LAB_MODULES!r}:
                        raise ModuleNotFoundError(name)
                    return None
            sys.meta_path.insert(0, Hide())
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT / 'src'}"}
    cmd = [sys.executable, "-m", "bnlab"]
    for argv in ([], ["gan", "--quick"], ["report", "x"]):
        done = subprocess.run([*cmd, *argv], env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2, done.stderr
        assert done.stdout == "" and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "pip install 'bnlab[lab]'" in done.stderr
    done = subprocess.run(
        [*cmd, "doctor", _model(tmp_path), "--input-shape", "16,784"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1 and "bn-on-single-unit" in done.stdout, done.stderr


@pytest.mark.slow
def test_the_built_wheel_installs_and_runs_alone(tmp_path: Path) -> None:
    """`python -m build`; a fresh venv with the wheel and the pinned torch; the library runs
    there with its kernels compiled from the installed sources; no lab package is installed."""
    dist = tmp_path / "dist"
    built = subprocess.run(
        [sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    if built.returncode != 0 and "Could not find a version that satisfies" in built.stdout:
        pytest.skip("python -m build needs setuptools from the package index, unreachable here")
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    (wheel,) = dist.glob("bnlab-*.whl")
    (sdist,) = dist.glob("bnlab-*.tar.gz")
    sources = ("kernels/csrc/bn_kernels.cpp", "kernels/csrc/bn_ops.cpp", "kernels/csrc/bn_cpu.h")
    wheel_names = zipfile.ZipFile(wheel).namelist()
    with tarfile.open(sdist) as tar:
        sdist_names = tar.getnames()
    for name in (*sources, "kernels/triton_bn.py"):
        assert f"bnlab/{name}" in wheel_names, name
        assert any(n.endswith(f"src/bnlab/{name}") for n in sdist_names), name

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    installed = subprocess.run(
        [*pip, TORCH, str(wheel)], capture_output=True, text=True, timeout=1200
    )
    assert installed.returncode == 0, installed.stdout[-3000:] + installed.stderr[-3000:]
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
    )
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "bnlab" in names and "torch" in names and "numpy" in names
    assert not names & LAB_DISTRIBUTIONS, names & LAB_DISTRIBUTIONS

    # an empty kernel cache: the C++ kernels compile from the wheel's files, not the checkout's
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(tmp_path),
        "BNLAB_CACHE": str(tmp_path / "cache"),
        "OMP_NUM_THREADS": "1",
    }
    result = _run_library(str(venv / "bin" / "python"), tmp_path, env)
    assert result["compiled"] is True
    assert str(result["sources"]).startswith(str(venv)) and "site-packages" in str(
        result["sources"]
    )
    assert str(result["library"]).startswith(str(tmp_path / "cache"))
    assert result["loaded"] == [] and "bn-on-single-unit" in result["findings"]

    doctor = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-m",
            "bnlab.doctor",
            _model(tmp_path),
            "--input-shape",
            "16,784",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert doctor.returncode == 1 and "bn-on-single-unit" in doctor.stdout, doctor.stderr
    command = subprocess.run(
        [str(venv / "bin" / "bnlab"), "gan"], env=env, capture_output=True, text=True, timeout=300
    )
    assert command.returncode == 2 and "pip install 'bnlab[lab]'" in command.stderr
    assert len(command.stderr.strip().splitlines()) == 1, command.stderr
