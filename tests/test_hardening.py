"""Interruptions, full disks, moved data and resumes that change what a run is: each ends in
one line and the exit status the README's "Reliability" promises. (Bad input alone, one row
per case, is tests/test_corpus.py; the data-parallel launches themselves are slow tests at
the end.)"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import bnlab
from bnlab.lab import cli
from bnlab.lab.experiments import driver
from bnlab.lab.runs import read_jsonl

SRC = Path(bnlab.__file__).resolve().parents[1]  # the bnlab under test, for subprocesses
TINY = ["--variants", "init", "--epochs", "2", "--subset", "200", "--no-metrics", "--jobs", "1"]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A finished 2-epoch `bnlab gan --variants init` run; tests work on copies of it."""
    mnist_root = request.getfixturevalue("mnist_root")
    out = tmp_path_factory.mktemp("hardening") / "run"
    assert cli.main(["gan", "--data", str(mnist_root), *TINY, "--out", str(out)]) == 0
    return out


def _copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to)
    return to


def _edit_config(run: Path, **config: object) -> None:
    meta = json.loads((run / "config.json").read_text())
    meta["config"].update(config)
    (run / "config.json").write_text(json.dumps(meta))


# ---- the command's own process ------------------------------------------------------------------


def test_a_bad_backend_variable_is_one_line_and_exit_2():
    # bnlab doctor's 1 means "errors found": a setting it cannot run with is 2, as elsewhere
    got = subprocess.run(
        [sys.executable, "-m", "bnlab", "doctor", "--help"],
        env=_env(BNLAB_BACKEND="foo"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 2, got.stderr
    assert got.stderr.splitlines() == [
        "bnlab: error: BNLAB_BACKEND='foo' is not a bnlab backend; choose one of "
        "('auto', 'compiled', 'torch')"
    ]


def test_ctrl_c_while_importing_exits_130_quietly(tmp_path):
    # The console script imports bnlab (torch: a second) before main() runs; a Ctrl-C then
    # is simulated by the torch import raising KeyboardInterrupt.
    script = tmp_path / "bnlab"
    script.write_text(
        "import builtins, sys\n"
        "real = builtins.__import__\n"
        "def interrupted(name, *args, **kwargs):\n"
        "    if name == 'torch':\n"
        "        raise KeyboardInterrupt\n"
        "    return real(name, *args, **kwargs)\n"
        "builtins.__import__ = interrupted\n"
        "from bnlab.lab.cli import main\n"
        "sys.exit(main())\n"
    )
    got = subprocess.run(
        [sys.executable, str(script), "gan", "--help"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (got.returncode, got.stderr) == (130, "")


def test_ctrl_c_while_the_command_imports_its_experiment_exits_130(monkeypatch, capsys):
    def interrupted(name: str, argv: list[str]) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "run_main", interrupted)
    try:
        got = cli.main(["gan", "--quick"])
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped bnlab's main()")
    assert got == 130
    assert capsys.readouterr().err == ""


def test_help_states_the_budget_limit(capsys):
    with pytest.raises(SystemExit):
        cli.main(["gan", "--help"])
    out = capsys.readouterr().out.translate({ord(c): " " for c in "│╭╮╰╯─"})  # the box
    assert "--epochs INT passes over the training split (the blog: 200; at most 2147483647" in (
        " ".join(out.split())
    )


# ---- interruptions and full disks of a one-process run ------------------------------------------


class TermReached(Exception):
    """SIGTERM arrived with no bnlab handler in place (the test's own guard)."""


@pytest.fixture
def sigterm_guard():
    """A SIGTERM the code under test does not handle raises here instead of killing pytest."""

    def guard(signum, frame):
        raise TermReached

    previous = signal.signal(signal.SIGTERM, guard)
    yield
    signal.signal(signal.SIGTERM, previous)


@pytest.mark.usefixtures("sigterm_guard")
def test_sigterm_on_a_one_job_run_exits_130_with_the_resume_line(
    monkeypatch, capsys, tmp_path, mnist_root
):
    # SIGTERM outside the chunk loop (here: while the report is written) ends the run as a
    # Ctrl-C does, with the line that continues it
    def term(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(1)  # the handler runs here

    monkeypatch.setattr(driver, "write_report", term)
    out = tmp_path / "run"
    assert cli.main(["gan", "--data", str(mnist_root), *TINY, "--out", str(out)]) == 130
    assert (
        f"interrupted; continue with: bnlab gan --resume --out {out}\n" in capsys.readouterr().out
    )


def test_a_full_disk_stops_the_run_resumably_naming_the_path(
    monkeypatch, capsys, tmp_path, mnist_root
):
    def full(path, state):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(driver, "save_checkpoint", full)
    out = tmp_path / "run"
    assert cli.main(["gan", "--data", str(mnist_root), *TINY, "--out", str(out)]) == 130
    said = capsys.readouterr()
    assert "Traceback" not in said.err
    line = [ln for ln in said.out.splitlines() if "no space" in ln]
    assert line == [
        f"stopped: no space left on the device writing {out / 'checkpoints/s777/init.pt'}; "
        f"free space; continue with: bnlab gan --resume --out {out}"
    ]


def test_a_full_disk_after_training_stops_resumably_and_the_resume_writes_the_report(
    monkeypatch, capsys, tmp_path, mnist_root
):
    """Training done and checkpointed, the disk fills while summary.json is written: the same
    one line and exit 130; the resume trains nothing and writes summary and report."""
    from bnlab.lab.runs import atomic_write_json

    def full(path, data):
        if Path(path).name == "summary.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        atomic_write_json(path, data)

    monkeypatch.setattr(driver, "atomic_write_json", full)
    out = tmp_path / "run"
    assert cli.main(["gan", "--data", str(mnist_root), *TINY, "--out", str(out)]) == 130
    said = capsys.readouterr()
    assert "Traceback" not in said.err
    assert [ln for ln in said.out.splitlines() if "no space" in ln] == [
        f"stopped: no space left on the device writing {out / 'summary.json'}; "
        f"free space; continue with: bnlab gan --resume --out {out}"
    ]
    monkeypatch.setattr(driver, "atomic_write_json", atomic_write_json)
    records = read_jsonl(out / "metrics.jsonl")
    assert cli.main(["gan", "--resume", "--out", str(out)]) == 0
    assert (out / "summary.json").exists() and (out / "report.html").exists()
    assert read_jsonl(out / "metrics.jsonl") == records  # nothing trained again


def test_a_full_disk_before_training_is_one_line_and_the_same_command_runs_again(
    monkeypatch, capsys, tmp_path, mnist_root
):
    from bnlab.lab.runs import atomic_write_json

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(driver, "atomic_write_json", full)
    out = tmp_path / "run"
    command = ["gan", "--data", str(mnist_root), *TINY, "--out", str(out)]
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"bnlab gan: error: no space left on the device writing {out / 'config.json'}: "
        "nothing was trained; free space and run the command again"
    ]
    monkeypatch.setattr(driver, "atomic_write_json", atomic_write_json)
    assert cli.main(command) == 0  # space freed: the same command, the same directory


def test_two_runs_started_in_the_same_second_get_two_directories(monkeypatch, tmp_path, mnist_root):
    # Without --out the run directory is named by the second. Another run that took the name
    # while this one loaded its data (before its directory existed) makes it take the next.
    import dataclasses
    from datetime import datetime

    from bnlab.lab import runs
    from bnlab.lab.experiments import EXPERIMENTS

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 12, 6, 19, 30, 0)

    mnist_root = Path(mnist_root).resolve()  # CI gives ../shared/data: the test moves below
    monkeypatch.setattr(runs, "datetime", Frozen)
    monkeypatch.chdir(tmp_path)
    other = tmp_path / "runs" / "gan-20261206-193000"
    gan = EXPERIMENTS["gan"]

    def load_while_another_run_starts(cfg, log):
        other.mkdir(parents=True)
        (other / "config.json").write_text("{}")  # the other run's
        return gan.load(cfg, log)

    monkeypatch.setitem(
        EXPERIMENTS, "gan", dataclasses.replace(gan, load=load_while_another_run_starts)
    )
    assert cli.main(["gan", "--data", str(mnist_root), *TINY]) == 0
    ours = tmp_path / "runs" / "gan-20261206-193000-2"
    assert sorted((tmp_path / "runs").iterdir()) == [other, ours]
    assert (other / "config.json").read_text() == "{}"
    assert json.loads((ours / "config.json").read_text())["experiment"] == "gan"


# ---- resume -------------------------------------------------------------------------------------


def test_resume_with_more_seeds_trains_them(finished_run, tmp_path, capsys, mnist_root):
    # README: "those meant to grow (more epochs, more seeds) are applied and recorded"
    run = _copy(finished_run, tmp_path / "run")
    argv = ["gan", "--resume", "--out", str(run), "--data", str(mnist_root), "--seeds", "777,1"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    records = read_jsonl(run / "metrics.jsonl")
    assert sorted({(r["seed"], r["epoch"]) for r in records}) == [
        (1, 1),
        (1, 2),
        (777, 1),
        (777, 2),
    ]
    before = [r for r in read_jsonl(finished_run / "metrics.jsonl") if r.get("seed") == 777]
    assert [r for r in records if r["seed"] == 777] == before  # the first seed is untouched
    meta = json.loads((run / "config.json").read_text())
    assert meta["config"]["seeds"] == [777, 1]
    assert meta["resumed_with"] == ["--seeds 777 -> 777,1"]


def test_resume_finds_a_moved_data_directory_through_bnlab_data(
    finished_run, tmp_path, capsys, monkeypatch, mnist_root
):
    # the stored --data is a hint: gone, the data is looked up as a run without --data does,
    # and the fingerprint decides
    run = _copy(finished_run, tmp_path / "run")
    _edit_config(run, data=str(tmp_path / "moved-away"))
    monkeypatch.setenv("BNLAB_DATA", str(mnist_root))
    assert cli.main(["gan", "--resume", "--out", str(run)]) == 0, capsys.readouterr().err
    assert f"the run's data directory {tmp_path / 'moved-away'} is gone" in capsys.readouterr().out


def test_a_changed_data_file_is_named_as_changed_contents(tmp_path):
    # same description (same files, sizes): the message says the bytes differ
    stored = {"data": "mnist test split, 200 images", "data_fingerprint": "a" * 32}
    found = {"data": "mnist test split, 200 images", "data_fingerprint": "b" * 32}
    said = "this resume found mnist test split, 200 images, but its contents differ"
    with pytest.raises(ValueError, match=said) as exc:
        driver._same_data(tmp_path, stored, found)
    assert str(exc.value).count("mnist test split") == 1
    assert "(data fingerprint bbbbbbbbbbbb, not aaaaaaaaaaaa): a file changed" in str(exc.value)


def test_the_run_records_its_bn_backend(finished_run):
    meta = json.loads((finished_run / "config.json").read_text())
    assert meta["bn_backend"] == driver.bn_backend() in ("compiled", "torch")


# ---- --nproc: decided in the launcher -----------------------------------------------------------


def test_resume_takes_nproc_from_the_run(finished_run, tmp_path, monkeypatch, capsys):
    # `bnlab gan --resume --out RUN` of a 2-process run launches 2 processes (before: one,
    # which failed the job with "Default process group has not been initialized")
    run = _copy(finished_run, tmp_path / "run")
    _edit_config(run, nproc=2)
    launched = []
    monkeypatch.setattr(cli, "_launch_torchrun", lambda name, cfg, argv: launched.append(cfg) or 0)
    assert cli.main(["gan", "--resume", "--out", str(run)]) == 0
    assert [cfg.nproc for cfg in launched] == [2]


def test_a_data_parallel_run_never_trains_in_one_process(finished_run, tmp_path):
    # the driver itself refuses (before any work, no job marked failed)
    from bnlab.lab.configs import build
    from bnlab.lab.experiments.gan.config import GanConfig
    from bnlab.lab.experiments.gan.experiment import EXPERIMENT

    run = _copy(finished_run, tmp_path / "run")
    _edit_config(run, nproc=2)
    cfg = build(GanConfig, resume=True, out=run)
    with pytest.raises(ValueError, match="trains data-parallel on 2 processes: run it with"):
        driver.run_experiment(EXPERIMENT, cfg, log=lambda _m: None)
    assert not [r for r in read_jsonl(run / "metrics.jsonl") if r.get("event") == "failed"]


def test_nproc_launch_rejects_bad_input_without_launching(monkeypatch, tmp_path, capsys):
    def no_launch(*args):
        raise AssertionError("a rank was launched")

    monkeypatch.setattr(cli, "_launch_torchrun", no_launch)
    out = tmp_path / "r"
    assert cli.main(["gan", "--nproc", "2", "--epochs", "0", "--out", str(out)]) == 2
    assert capsys.readouterr().err == "bnlab gan: error: --epochs must be at least 1, got 0\n"
    assert not out.exists()


# ---- Ray ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "says"),
    [
        ("127.0.0.1:1", "no Ray cluster at 127.0.0.1:1 (Connection refused within 5 s)"),
        ("ray://127.0.0.1:1", "no Ray cluster at 127.0.0.1:1 (Connection refused within 5 s)"),
        ("auto", "--ray-address auto: no Ray cluster runs on this machine"),
    ],
)
def test_an_unreachable_ray_address_is_one_line_before_anything_starts(
    address, says, monkeypatch, tmp_path, capsys
):
    pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_TMPDIR", str(tmp_path / "ray"))  # no cluster of this machine's
    out = tmp_path / "run"
    started = time.monotonic()
    code = cli.main(["gan", "--runner", "ray", "--ray-address", address, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert says in err and "ray start --head --node-ip-address=127.0.0.1" in err
    assert len(err.splitlines()) == 1 and not out.exists()
    assert time.monotonic() - started < 10  # not Ray's minutes of "Failed to connect to GCS"


@pytest.mark.slow
def test_a_local_ray_run_starts_its_own_ray_beside_a_clusters_address_file(tmp_path, mnist_root):
    """`ray start` leaves the cluster's address in <tmp>/ray/ray_current_cluster, which a bare
    ray.init() joins (and then refuses num_cpus); --runner ray alone starts a Ray of its own."""
    pytest.importorskip("ray")
    ray_tmp = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths
    try:
        (ray_tmp / "ray").mkdir()
        (ray_tmp / "ray" / "ray_current_cluster").write_text("127.0.0.1:1")  # nothing there
        env = {k: v for k, v in _env(RAY_TMPDIR=str(ray_tmp)).items() if k != "RAY_ADDRESS"}
        args = [sys.executable, "-m", "bnlab", "gan", "--runner", "ray", *TINY]
        args += ["--data", str(mnist_root), "--out", str(tmp_path / "run")]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert "on the local Ray" in done.stdout + done.stderr
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_ray_address_in_the_environment_is_taken_and_named(monkeypatch, tmp_path, capsys):
    """Without --ray-address, RAY_ADDRESS (set by `ray job submit`) names the cluster, and an
    unreachable one is refused in one line that names RAY_ADDRESS."""
    pytest.importorskip("ray")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    out = tmp_path / "run"
    assert cli.main(["gan", "--runner", "ray", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "RAY_ADDRESS=127.0.0.1:1: no Ray cluster at 127.0.0.1:1" in err, err
    assert len(err.splitlines()) == 1 and not out.exists()


def _descendants(pid: int) -> list[int]:
    children = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    found = [int(p) for p in children.split()]
    return found + [d for c in found for d in _descendants(c)]


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.slow
def test_a_ray_run_ends_130_on_sigterm_and_its_local_ray_dies_with_it(tmp_path, mnist_root):
    pytest.importorskip("ray")
    out = tmp_path / "run"
    args = [sys.executable, "-m", "bnlab", "gan", "--runner", "ray", "--jobs", "1"]
    args += ["--variants", "init", "--epochs", "300", "--subset", "200", "--no-metrics"]
    args += ["--checkpoint-every", "1", "--data", str(mnist_root), "--out", str(out)]
    metrics = out / "metrics.jsonl"

    def started(argv: list[str]) -> subprocess.Popen:
        """``argv`` running, once it has recorded a chunk."""
        before = len(read_jsonl(metrics)) if metrics.exists() else 0
        proc = subprocess.Popen(argv, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if metrics.exists() and len(read_jsonl(metrics)) > before:
                return proc
            time.sleep(0.3)
        raise AssertionError(proc.communicate()[1].decode()[-2000:])

    proc = started(args)
    proc.send_signal(signal.SIGTERM)
    said, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert f"interrupted; continue with: bnlab gan --resume --out {out}" in said.decode()
    # SIGKILL of the driver: the local Ray it started (GCS, raylet, agents, workers) goes too
    proc = started([*args[:8], "--resume", "--out", str(out)])
    # a resume rewrites metrics.jsonl from the checkpoints before Ray starts: wait for Ray
    deadline = time.monotonic() + 60
    while len(ray_processes := _descendants(proc.pid)) < 3 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert len(ray_processes) >= 3, ray_processes
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_running(p) for p in ray_processes):
        time.sleep(0.5)
    assert not [p for p in ray_processes if _running(p)]
