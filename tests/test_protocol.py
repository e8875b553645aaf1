"""The experiment protocol's driver and runners, on a toy experiment: one run directory
contract, resume means the same run, locking, exit status, failure isolation, dead workers,
a dead driver, and the Ray runner equal to the local one."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bnlab.lab import cli, configs
from bnlab.lab.data import fingerprint
from bnlab.lab.experiments import driver, protocol
from bnlab.lab.experiments.driver import RunFailed, run_experiment, run_lock
from bnlab.lab.runs import read_jsonl
from toy_experiment import TOY, ToyConfig

TESTS = Path(__file__).resolve().parent
SRC = TESTS.parent / "src"


def _quiet(_msg: str) -> None:
    pass


def _run(out: Path, **kw) -> driver.RunResult:
    return run_experiment(TOY, ToyConfig(out=out, **kw), log=_quiet)


def _numbers(records):
    return sorted((r["job"], r["unit"], r["total"]) for r in records if "event" not in r)


@pytest.fixture
def toy_dir(tmp_path):
    d = tmp_path / "toy"
    d.mkdir()
    return d


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The records of an uninterrupted inline run: every other run must reproduce them."""
    return _numbers(_run(tmp_path_factory.mktemp("ref") / "run", jobs=1).records)


def test_a_run_writes_the_whole_run_directory(tmp_path, reference):
    result = _run(tmp_path / "run", jobs=1)
    run_dir = result.run_dir
    meta = json.loads((run_dir / "config.json").read_text())
    assert list(meta)[:2] == ["experiment", "config"] and meta["config"]["n"] == 3
    assert meta["data"] == "ten numbers" and (run_dir / "toy.txt").read_bytes() == b"toy\n"
    assert _numbers(read_jsonl(run_dir / "metrics.jsonl")) == reference
    assert len(reference) == 18
    for k in range(3):
        assert (run_dir / "checkpoints" / f"job{k}.pt").is_file()
        assert (run_dir / "out" / f"job{k}-6.txt").is_file()
    assert json.loads((run_dir / "summary.json").read_text()) == {"records": 18, "failed": {}}
    assert "18 records" in (run_dir / "report.html").read_text()
    assert not list(run_dir.rglob("*.tmp"))


def test_the_process_pool_gives_the_inline_records(tmp_path, reference):
    assert _numbers(_run(tmp_path / "run", jobs=2).records) == reference


def test_an_interrupted_run_resumes_to_the_same_records(tmp_path, toy_dir, reference):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        _run(out, jobs=1, interrupt="job1", toy_dir=str(toy_dir))
    partial = read_jsonl(out / "metrics.jsonl")
    assert 0 < len(partial) < 18
    resumed = run_experiment(TOY, ToyConfig(out=out, resume=True), log=_quiet)
    assert _numbers(resumed.records) == reference
    assert _numbers(read_jsonl(out / "metrics.jsonl")) == reference


def test_resume_keeps_the_stored_settings_when_flags_are_left_out(tmp_path):
    out = tmp_path / "run"
    _run(out, jobs=1, n=2)
    resumed = run_experiment(TOY, ToyConfig(out=out, resume=True), log=_quiet)
    assert {r["job"] for r in resumed.records} == {"job0", "job1"}  # not the default n=3
    assert json.loads((out / "config.json").read_text())["config"]["n"] == 2


def test_resume_refuses_a_different_setting_naming_the_flag(tmp_path):
    out = tmp_path / "run"
    _run(out, jobs=1, n=2)
    with pytest.raises(ValueError, match=r"started with --chunk 2, not 3; drop --chunk"):
        run_experiment(TOY, ToyConfig(out=out, resume=True, chunk=3), log=_quiet)
    with pytest.raises(ValueError, match=r"--steps 6, not 4 \(it may only grow"):
        run_experiment(TOY, ToyConfig(out=out, resume=True, steps=4), log=_quiet)


def test_resume_refuses_other_data_but_not_a_moved_directory(tmp_path):
    out = tmp_path / "run"
    toy = dataclasses.replace(TOY, load=_toy_load("mnist test split, 10 from /a"))
    run_experiment(toy, ToyConfig(out=out, jobs=1, n=1), log=_quiet)
    moved = dataclasses.replace(TOY, load=_toy_load("mnist test split, 10 from /b"))
    run_experiment(moved, ToyConfig(out=out, resume=True), log=_quiet)  # same data, moved
    other = dataclasses.replace(TOY, load=_toy_load("mnist train split, 60 from /b", 60))
    with pytest.raises(
        ValueError,
        match=r"trained on mnist test split, 10 from /b, but this resume found mnist train",
    ):
        run_experiment(other, ToyConfig(out=out, resume=True), log=_quiet)
    # the same description over other numbers (a re-downloaded, changed file): the data's
    # fingerprint tells
    changed = dataclasses.replace(TOY, load=_toy_load("mnist test split, 10 from /b", 10, 1.0))
    said = r"this resume found mnist test split, 10 from /b, but its contents differ"
    with pytest.raises(ValueError, match=said):  # (one description, not the same one twice)
        run_experiment(changed, ToyConfig(out=out, resume=True), log=_quiet)
    missing = dataclasses.replace(TOY, load=_toy_load(None))
    with pytest.raises(ValueError, match=r"no data here\n\(this run was trained on mnist test"):
        run_experiment(missing, ToyConfig(out=out, resume=True), log=_quiet)
    # a run from before fingerprints: compared by description, without the path
    stored = json.loads((out / "config.json").read_text())
    del stored["data_fingerprint"]
    (out / "config.json").write_text(json.dumps(stored))
    run_experiment(changed, ToyConfig(out=out, resume=True), log=_quiet)
    with pytest.raises(ValueError, match=r"but this resume found mnist train"):
        run_experiment(other, ToyConfig(out=out, resume=True), log=_quiet)


def test_the_data_fingerprint_sees_values_shapes_and_dtypes_not_descriptions():
    @dataclasses.dataclass
    class Data:
        x: torch.Tensor
        y: torch.Tensor
        description: str = fingerprint.not_data()

    @dataclasses.dataclass
    class Unmarked:  # a string field not marked not_data is part of the data
        x: torch.Tensor
        y: torch.Tensor
        description: str

    x, y = torch.rand(5, 3), torch.arange(5)
    base = fingerprint.data_fingerprint(Data(x, y, "from /a"))
    assert fingerprint.data_fingerprint(Data(x.clone(), y.clone(), "from /b")) == base
    changed = x.clone()
    changed[4, 2] += 1e-6
    for other in (
        Data(changed, y, "from /a"),
        Data(x.reshape(3, 5), y, "from /a"),
        Data(x.double(), y, "from /a"),
        Data(x, y[:4], "from /a"),
        (x, y),
    ):
        assert fingerprint.data_fingerprint(other) != base
    unmarked = fingerprint.data_fingerprint(Unmarked(x, y, "from /a"))
    assert fingerprint.data_fingerprint(Unmarked(x, y, "from /b")) != unmarked


def _toy_load(data, n=10, shift=0.0):
    def load(cfg, log):
        if data is None:
            raise ValueError("no data here")
        return protocol.Loaded(torch.arange(float(n)) + shift, {"data": data})

    return load


def test_resume_may_grow_a_growable_setting_and_records_it(tmp_path, reference, monkeypatch):
    from bnlab.lab.experiments import registry

    monkeypatch.setitem(registry.EXPERIMENTS, "toy", TOY)
    out = tmp_path / "run"
    _run(out, jobs=1, steps=4)
    # --steps 6 is also the default: the CLI knows it was given all the same
    assert cli.main(["toy", "--resume", "--out", str(out), "--steps", "6", "--jobs", "1"]) == 0
    assert _numbers(read_jsonl(out / "metrics.jsonl")) == reference
    meta = json.loads((out / "config.json").read_text())
    assert meta["config"]["steps"] == 6 and meta["resumed_with"] == ["--steps 4 -> 6"]


@pytest.mark.parametrize("kind", ["file", "foreign"])
def test_out_never_writes_into_a_file_or_a_foreign_directory(tmp_path, kind):
    out = tmp_path / "target"
    if kind == "file":
        out.write_text("precious")
        match = "is a file"
    else:
        out.mkdir()
        (out / "thesis.tex").write_text("precious")
        match = "not a bnlab run"
    with pytest.raises(ValueError, match=match):
        _run(out, jobs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]
    if kind == "foreign":
        assert [p.name for p in out.iterdir()] == ["thesis.tex"]


def test_a_locked_run_refuses_a_second_writer_with_its_pid(tmp_path):
    out = tmp_path / "run"
    _run(out, jobs=1, n=1)
    with (
        run_lock(out),
        pytest.raises(ValueError, match=rf"another bnlab process \(PID {os.getpid()}\)"),
    ):
        run_experiment(TOY, ToyConfig(out=out, resume=True), log=_quiet)
    (out / ".lock").write_text("999999\n")  # stale: its process is gone, the OS lock with it
    run_experiment(TOY, ToyConfig(out=out, resume=True), log=_quiet)


def test_a_failing_job_fails_alone_and_the_run_exits_non_zero(tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    with pytest.raises(RunFailed) as exc:
        _run(out, jobs=2, fail="job1")
    result = exc.value.result
    assert list(result.failed) == ["job1"] and "told to fail" in result.failed["job1"]
    assert {r["job"] for r in result.records} == {"job0", "job2"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == result.failed and (out / "report.html").exists()
    from bnlab.lab.experiments import registry

    monkeypatch.setitem(registry.EXPERIMENTS, "toy", TOY)
    code = cli.main(["toy", "--fail", "job0", "--jobs", "1", "--out", str(tmp_path / "cli")])
    assert code == 1
    assert "1 job(s) failed: job0 (RuntimeError: job0 was told to fail)" in capsys.readouterr().err


def test_a_chunk_whose_worker_dies_runs_again_from_the_last_state(tmp_path, toy_dir, reference):
    result = _run(tmp_path / "run", jobs=2, crash="job0", toy_dir=str(toy_dir))
    assert (toy_dir / "crashed-job0").exists()  # it did die once
    assert _numbers(result.records) == reference and result.failed == {}


def test_a_pool_that_breaks_before_a_submit_is_rebuilt_and_loses_nothing(
    tmp_path, monkeypatch, reference
):
    """A worker that dies between one chunk's result and the next submit breaks the pool at
    submit() (BrokenProcessPool), not at a future: the runner drains what is in flight, builds
    a new pool and queues the chunk there. Simulated: the third submit breaks its pool, and
    every later submit to that pool raises as a broken pool's does."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    real_submit = ProcessPoolExecutor.submit
    calls, broken, pools = [0], set(), set()

    def submit(self, *args, **kwargs):
        pools.add(id(self))
        calls[0] += 1
        if calls[0] == 3:
            broken.add(id(self))
        if id(self) in broken:
            raise BrokenProcessPool("a child process terminated abruptly")
        return real_submit(self, *args, **kwargs)

    monkeypatch.setattr(ProcessPoolExecutor, "submit", submit)
    result = _run(tmp_path / "run", jobs=2)
    assert _numbers(result.records) == reference and result.failed == {}
    assert len(pools) == 2  # the broken pool and the one that replaced it


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by its reparented parent) counts as gone
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "zombie" not in status.read_text()


def test_workers_exit_promptly_when_the_driver_is_killed(tmp_path, toy_dir):
    code = (
        "from toy_experiment import TOY, ToyConfig\n"
        "from bnlab.lab.experiments.driver import run_experiment\n"
        f"run_experiment(TOY, ToyConfig(out={str(tmp_path / 'run')!r}, jobs=2, n=2, "
        f"steps=400, chunk=400, sleep=0.05, toy_dir={str(toy_dir)!r}), log=print)\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{TESTS}:{SRC}"}
    driver = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while len(list(toy_dir.glob("pid-*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    workers = [int(p.name[4:]) for p in toy_dir.glob("pid-*")]
    assert len(workers) == 2, "the workers never started"
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    # The watchdog polls every second; 12 s leaves room for a loaded machine and is still well
    # short of the 20 s the chunk would take (400 x 0.05 s) if the workers finished it.
    deadline = time.monotonic() + 12
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(pid) for pid in workers), "workers outlived their driver"
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing written after the fact


def test_quick_fills_in_only_the_fields_left_at_their_default():
    cfg = driver.apply_quick(TOY, ToyConfig(quick=True, n=5))
    assert (cfg.n, cfg.steps) == (5, 2)
    assert driver.apply_quick(TOY, ToyConfig(n=5)).steps == 6  # no --quick, no change


def test_a_config_round_trips_through_config_json(tmp_path):
    from bnlab.lab.configs import config_to_dict
    from bnlab.lab.experiments.gan.experiment import GanConfig
    from bnlab.lab.models.gan import parse_variant

    cfg = GanConfig(
        variants=(parse_variant("init-bn"), parse_variant("mine=init-bn:modes=tidy:d_norm=010")),
        seeds=(0, 3),
        data=tmp_path,
        out=tmp_path / "out",
    )
    text = json.dumps(config_to_dict(cfg))
    assert configs.config_from_dict(GanConfig, json.loads(text)) == cfg
    with pytest.raises(ValueError, match="does not know: color"):
        configs.config_from_dict(GanConfig, {**json.loads(text), "color": "red"})


def test_ray_runner_without_ray_names_the_extra(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    with pytest.raises(ValueError, match=r"pip install 'bnlab\[ray\]'"):
        _run(tmp_path / "run", runner="ray")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ray_runner_equals_the_local_one_and_retries_a_dead_worker(
    tmp_path, toy_dir, monkeypatch, reference
):
    pytest.importorskip("ray")
    monkeypatch.setenv("PYTHONPATH", f"{TESTS}:{SRC}")  # Ray's workers import the toy
    result = _run(tmp_path / "run", runner="ray", jobs=2, crash="job0", toy_dir=str(toy_dir))
    assert (toy_dir / "crashed-job0").exists()
    assert _numbers(result.records) == reference and result.failed == {}
    ckpt = dataclasses.asdict(ToyConfig())
    assert json.loads((result.run_dir / "config.json").read_text())["config"]["n"] == ckpt["n"]


def test_a_cuda_device_resolved_from_auto_runs_every_job_in_this_process(monkeypatch, tmp_path):
    """--device auto on a GPU machine must not build a process pool (processes would queue on
    the one GPU): the driver resolves the device before it picks the runner."""
    from bnlab.lab import runners
    from bnlab.lab.configs import build
    from bnlab.lab.experiments.gan.config import GanConfig
    from bnlab.lab.experiments.gan.experiment import EXPERIMENT

    class Picked(Exception):
        pass

    def make_runner(kind, jobs, threads, ray_address=None, one_process=False, announce=None):
        raise Picked(one_process)

    monkeypatch.setattr(runners, "make_runner", make_runner)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(Picked) as picked:
        run_experiment(EXPERIMENT, build(GanConfig, device="auto", out=tmp_path / "r"))
    assert picked.value.args == (True,)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(Picked) as picked:
        run_experiment(EXPERIMENT, build(GanConfig, device="auto", out=tmp_path / "r"))
    assert picked.value.args == (False,)


@pytest.mark.parametrize(
    ("jobs", "given", "env", "expected"),
    [
        (1, 3, None, {3}),  # --threads, fixed
        (2, 2, "4", {2}),  # --threads wins over $OMP_NUM_THREADS
        (1, 0, "1", {1}),  # $OMP_NUM_THREADS, the user's own choice, when --threads is not given
        (2, 0, None, {1}),  # a pool of 2 on <= 3 cores: one each
        (1, 0, None, set(range(1, len(os.sched_getaffinity(0)) + 1))),  # adaptive, <= cores
    ],
)
def test_every_process_that_trains_has_the_threads_of_the_policy(
    tmp_path, monkeypatch, jobs, given, env, expected
):
    """The fix for runs collapsing when they share cores (issue 21): a training process takes
    its threads from thread_budget(--threads, processes) before each chunk, inline and in pool
    workers alike, and this process gets its own count back afterwards."""
    if jobs == 2 and len(os.sched_getaffinity(0)) > 3:
        pytest.skip("the pool case assumes at most 3 cores (one thread per worker)")
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    before = torch.get_num_threads()
    result = _run(tmp_path / "run", jobs=jobs, threads=given, n=2)
    assert {r["threads"] for r in result.records} <= expected
    if jobs == 2:
        assert len({r["pid"] for r in result.records} - {os.getpid()}) >= 1  # in workers
    assert torch.get_num_threads() == before


def test_the_thread_budget_leaves_to_others_the_cores_they_used(monkeypatch):
    """Adaptive: all of its share while the cores are free; one core fewer per core other
    processes kept busy over the last chunk (measured from /proc/stat minus its own CPU time);
    never below one; fixed budgets never move."""
    from bnlab.lab import jobs

    monkeypatch.setattr(jobs.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3}, raising=False)
    budget = jobs.ThreadBudget(4)
    assert budget.decide(0.0) == 4 and budget.decide(0.2) == 4  # daemons: free
    assert budget.decide(1.0) == 3 and budget.decide(1.6) == 2 and budget.decide(9.0) == 1
    # over an interval in which the machine was busy 3 s per second and this process 1 s:
    # others used 2 cores, so 2 threads are left; until an interval has passed, no change
    busy_own = {0.0: (0.0, 0.0), 0.5: (1.5, 0.5), 1.0: (3.0, 1.0), 3.0: (3.2, 3.0)}
    now = [0.0]
    monkeypatch.setattr(jobs.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(jobs, "_cpu_seconds", lambda: (now[0], *busy_own[now[0]]))
    before = torch.get_num_threads()
    try:
        budget.start()
        assert torch.get_num_threads() == 4
        now[0] = 0.5
        assert budget.tick() == 4  # half an interval: not yet
        now[0] = 1.0
        assert budget.tick() == 2 and torch.get_num_threads() == 2
        now[0] = 3.0
        assert budget.tick() == 4  # the others are gone: all four again
        fixed = jobs.ThreadBudget(3, adaptive=False)
        fixed.start()
        assert fixed.tick() == 3 and torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_threads_policy_and_flag(monkeypatch):
    from bnlab.lab.jobs import thread_budget

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert (thread_budget(5, 1).most, thread_budget(5, 1).adaptive) == (5, False)
    cores = len(os.sched_getaffinity(0))
    assert thread_budget(0, 1).most == cores and thread_budget(0, 1).adaptive
    assert thread_budget(0, cores + 1).most == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert (thread_budget(0, 1).most, thread_budget(0, 1).adaptive) == (3, False)
    with pytest.raises(ValueError, match="--threads must be 0"):
        ToyConfig(threads=-1).validate()


def test_runs_without_claims_or_settings_apart_get_no_compare_and_folder_labels(tmp_path):
    from bnlab.lab.results import Claim, Run

    a = Run(tmp_path / "first", "toy", ToyConfig(n=2), {}, [])
    b = Run(tmp_path / "second", "toy", ToyConfig(n=2), {}, [])
    c = Run(tmp_path / "third", "toy", ToyConfig(n=5), {}, [])
    assert protocol.run_labels([a, b]) == ["first", "second"]  # the same settings
    assert protocol.run_labels([a, c]) == ["n=2", "n=5"]
    assert TOY.reading.compare_sections([a, b], [object(), object()]) == []  # no claims
    claim = Claim("C1", "s", "q", "1.0", "holds", "r")
    [section] = TOY.reading.compare_sections(
        [a, c], [type("A", (), {"claims": (claim,)})(), type("A", (), {"claims": ()})()]
    )
    [table] = section.tables
    assert table.header == ["claim", "statement", "measured", "n=2", "n=5"]
    assert table.rows == [["C1", "s", "q", "1.0: holds", "-"]]  # a claim the run lacks: "-"
