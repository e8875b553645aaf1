"""Data-parallel GAN training (torchrun, DDP, SyncBatchNorm): N ranks with SyncBN compute the
single-process run up to float32 reduction order; per-rank ("ghost") BN does not; bnlab gan
--nproc launches torchrun, writes one run directory, and a rank that dies leaves a resumable
run with a message that says how to continue."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp

from bnlab.lab.data import to_unit_range
from bnlab.lab.experiments.gan.experiment import GanTrainer, GanTraining
from bnlab.lab.experiments.gan.train import data_parallel_note, load_gan_data
from bnlab.lab.models.gan import BLOG_VARIANTS
from bnlab.lab.runs import read_jsonl

pytestmark = pytest.mark.distributed

SEED = 777
STEPS = 50
SRC = Path(__file__).resolve().parents[1] / "src"
# float32 sums in another order (two halves of the batch, then an all_reduce) differ in the
# last bits; Adam's first steps move every weight by ~lr whatever the gradient's size, and the
# GAN's two players feed each other, so those bits grow over 50 steps to ~1e-4 relative.
# Per-rank BN normalizes with the statistics of 50 digits instead of 100: percent-level.
SYNC_RTOL = 2e-3
GHOST_MIN_DIFF = 1e-2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def step_losses(
    variant: str,
    training: GanTraining,
    images: torch.Tensor,
    steps: int,
    world_size: int = 1,
    ddp_bn: str = "sync",
) -> list:
    """Per-step [d_loss, g_loss] of the first ``steps`` steps, as train_epoch takes them."""
    trainer = GanTrainer(
        BLOG_VARIANTS[variant], training, SEED, images, torch.device("cpu"), world_size, ddp_bn
    )
    out: list[list[float]] = []
    epoch = 0
    while len(out) < steps:
        order, z = trainer.begin_epoch(epoch)
        for i in range(min(trainer.steps_per_epoch, steps - len(out))):
            d, g, *_ = trainer.step(to_unit_range(images[order[i]]), z[i, 0], z[i, 1])
            out.append([float(d), float(g)])
        epoch += 1
    return out


def _rank(rank, world, port, cases, images, steps, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120)
    )
    try:
        out = {}
        for variant, ddp_bn, batch in cases:  # one launch for every case: start-up is the cost
            training = GanTraining(batch_size=batch)
            out[variant, ddp_bn, batch] = step_losses(
                variant, training, images, steps, world, ddp_bn
            )
        if rank == 0:
            torch.save(out, result)
    finally:
        dist.destroy_process_group()


def _data_parallel(tmp_path, cases, images, world=2):
    """{(variant, ddp_bn, batch): (steps, 2) losses} of ``world`` gloo ranks, in one launch."""
    result = tmp_path / f"losses-{world}.pt"
    args = (world, _free_port(), cases, images, STEPS, result)
    tmp_mp.start_processes(_rank, args=args, nprocs=world, start_method="forkserver")
    return {k: torch.tensor(v) for k, v in torch.load(result).items()}


@pytest.fixture(scope="module")
def images(mnist_root):
    data = load_gan_data(
        "mnist", mnist_root, "any", 2000, 100, False, 1, torch.device("cpu"), lambda _m: None
    )
    return data.images


VARIANTS = ("init-bn", "init-bn-nomode")
ODD_BATCH = 99  # split 50 + 49: the ranks' slices differ in size


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory, images):
    cases = [(v, bn, 100) for v in VARIANTS for bn in ("sync", "local")]
    cases.append(("init-bn", "sync", ODD_BATCH))
    return _data_parallel(tmp_path_factory.mktemp("ddp"), cases, images)


@pytest.mark.parametrize("variant", VARIANTS)
def test_sync_bn_on_two_ranks_gives_the_single_process_losses(two_ranks, images, variant):
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        single = torch.tensor(step_losses(variant, GanTraining(), images, STEPS))
    torch.testing.assert_close(two_ranks[variant, "sync", 100], single, rtol=SYNC_RTOL, atol=1e-5)
    ghost = two_ranks[variant, "local", 100]
    assert (ghost - single).abs().max() > GHOST_MIN_DIFF  # batch statistics over 50, not 100


def test_uneven_slices_of_an_odd_batch_still_match(two_ranks, images):
    """50 + 49 rows: per-rank sums weighted by their counts (SyncBN's merge, DDP's gradient
    average rescaled), not averaged as equals. (SyncBN alone on 3 uneven ranks, zero rows
    included: tests/test_sync_batchnorm.py.)"""
    with torch.random.fork_rng():
        torch.set_num_threads(1)
        single = torch.tensor(
            step_losses("init-bn", GanTraining(batch_size=ODD_BATCH), images, STEPS)
        )
    torch.testing.assert_close(
        two_ranks["init-bn", "sync", ODD_BATCH], single, rtol=SYNC_RTOL, atol=1e-5
    )


@pytest.mark.parametrize(
    ("ddp_bn", "says"),
    [("sync", "2 ranks x 50 rows; SyncBatchNorm"), ("local", "each rank's 33-34 rows")],
)
def test_config_says_what_bn_normalizes_over(ddp_bn, says):
    assert says in data_parallel_note(2 if ddp_bn == "sync" else 3, 100, ddp_bn)


def _errors(err: str) -> str:
    """Every rank's error lines (tracebacks included), not only the launcher's last words."""
    keep = [ln for ln in err.replace("\r", "\n").splitlines() if "step/s" not in ln]
    return "\n".join(keep)[-6000:]


def _bnlab(*args: str, data: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(SRC), "BNLAB_DATA": str(data)}
    cmd = [sys.executable, "-m", "bnlab", *args]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_nproc_trains_one_run_directory_and_a_dead_rank_leaves_it_resumable(tmp_path, mnist_root):
    out = tmp_path / "run"
    args = ["gan", "--nproc", "2", "--variants", "init-bn", "--epochs", "6"]
    args += ["--subset", "1000", "--checkpoint-every", "1", "--no-metrics", "--out", str(out)]
    proc = _bnlab(*args, data=mnist_root)
    deadline = time.monotonic() + 240
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(read_jsonl(metrics)) >= 2:
            break
        time.sleep(0.3)
    assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
    ranks = subprocess.run(
        ["pgrep", "-f", "bnlab gan --variants init-bn"], capture_output=True, text=True
    ).stdout.split()
    assert len(ranks) == 2, ranks  # torchrun's two workers (the launcher's argv has --nproc)
    os.kill(max(int(p) for p in ranks), signal.SIGKILL)  # the later-started rank: rank 1
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, _errors(err)  # stopped, resumable: not "jobs failed" (1)
    assert f"continue with bnlab gan --resume --out {out} --nproc 2" in err
    assert "rank 1 was lost (killed by signal 9)" in err  # one line, no rank's gloo traceback
    assert "Traceback" not in err and "gloo" not in err, _errors(err)
    done = len(read_jsonl(metrics))
    assert 2 <= done < 6
    stored = json.loads((out / "config.json").read_text())
    config = stored["config"]
    assert (config["nproc"], config["ddp_bn"]) == (2, "sync")  # the run says how it ran
    assert "statistics over the global batch of 100" in stored["data_parallel"]
    # A resume trains on at once. (It used to fail when rank 0's collective broke inside the
    # chunk before torchrun's SIGTERM came: that was recorded as the job's failure; see
    # tests/test_ddp_runner.py.)
    resumed = _bnlab("gan", "--resume", "--out", str(out), "--nproc", "2", data=mnist_root)
    _, err = resumed.communicate(timeout=240)
    assert resumed.returncode == 0, _errors(err.decode())
    assert [r["epoch"] for r in read_jsonl(metrics)] == [1, 2, 3, 4, 5, 6]
    assert (out / "report.html").exists() and (out / "samples" / "init-bn").is_dir()


def _wait_for_records(proc: subprocess.Popen, metrics: Path, n: int) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.exists() and len(read_jsonl(metrics)) >= n:
            return
        time.sleep(0.3)
    raise AssertionError(proc.communicate()[1].decode()[-2000:])


def _children(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in found.stdout.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return state != "Z"


@pytest.mark.slow
def test_nproc_sigterm_is_resumable_and_ranks_die_with_their_launcher(tmp_path, mnist_root):
    out = tmp_path / "run"
    args = ["gan", "--nproc", "2", "--variants", "init", "--epochs", "200"]
    args += ["--subset", "200", "--checkpoint-every", "1", "--no-metrics", "--out", str(out)]
    proc = _bnlab(*args, data=mnist_root)
    metrics = out / "metrics.jsonl"
    _wait_for_records(proc, metrics, 2)
    proc.send_signal(signal.SIGTERM)  # as a scheduler does: exit 130, say how to continue
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, _errors(err)
    assert f"interrupted; continue with: bnlab gan --resume --out {out} --nproc 2" in err
    assert "Traceback" not in err and "SignalException" not in err, _errors(err)
    assert not [r for r in read_jsonl(metrics) if r.get("event") == "failed"]
    # the resume line's own --nproc is the run's: without it, config.json says 2 (one process
    # would fail the job: "Default process group has not been initialized")
    done = len(read_jsonl(metrics))
    resumed = _bnlab("gan", "--resume", "--out", str(out), data=mnist_root)
    _wait_for_records(resumed, metrics, done + 1)
    ranks = _children(resumed.pid)
    assert len(ranks) == 2, ranks
    resumed.kill()  # SIGKILL of the launcher: its ranks go with it, the lock too
    resumed.communicate(timeout=60)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_alive(p) for p in ranks):
        time.sleep(0.2)
    assert not any(_alive(p) for p in ranks)
    assert not [r for r in read_jsonl(metrics) if r.get("event") == "failed"]


@pytest.mark.slow
def test_ctrl_c_to_a_data_parallel_run_exits_130_with_the_resume_line(tmp_path, mnist_root):
    """Ctrl-C at a terminal: SIGINT to the whole foreground process group, the launcher and
    every rank at once. Exit 130, the one resume line (with --nproc), no traceback, no job
    marked failed."""
    out = tmp_path / "run"
    args = ["gan", "--nproc", "2", "--variants", "init", "--epochs", "200"]
    args += ["--subset", "200", "--checkpoint-every", "1", "--no-metrics", "--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(SRC), "BNLAB_DATA": str(mnist_root)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnlab", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group, as a terminal's foreground job
    )
    metrics = out / "metrics.jsonl"
    _wait_for_records(proc, metrics, 2)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    text = err.decode()
    assert proc.returncode == 130, _errors(text)
    assert f"interrupted; continue with: bnlab gan --resume --out {out} --nproc 2" in text
    assert "Traceback" not in text, _errors(text)
    assert not [r for r in read_jsonl(metrics) if r.get("event") == "failed"]
