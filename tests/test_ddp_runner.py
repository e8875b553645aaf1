"""The data-parallel runner's chunk outcomes, on two real gloo ranks: a job fails where its code
raised (on any rank); a rank that is gone stops the run resumable (RunStopped) and records
nothing, so a resume trains the job on. The last is the race that made a resume after a
killed rank fail: rank 0's collective broke with "Connection reset by peer" inside the chunk,
and that was recorded as the job's failure."""

from __future__ import annotations

import datetime
import os
import socket
import time
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp

from bnlab.experiments.protocol import ChunkResult, JobState, RunStopped
from bnlab.runners import ddp

pytestmark = pytest.mark.distributed


@dataclass(frozen=True)
class Job:
    key: str
    total: int


def train(job: Job, state: Any, start: int, end: int, data: Any) -> ChunkResult:
    """A chunk with one collective; ``job.key`` says how it goes wrong."""
    me = dist.get_rank()
    if job.key == "raises-on-rank-1" and me == 1:  # before any collective: rank 0 is not held
        raise ValueError("rank 1's own bug")
    if job.key == "rank-1-dies" and me == 1:
        os._exit(0)  # gone without a word, as after SIGKILL or the OOM killer
    if job.key == "rank-1-dies":
        time.sleep(0.5)  # rank 1 is gone by now
    t = torch.ones(3)
    if job.key != "raises-on-rank-1":
        dist.all_reduce(t)
    if job.key == "raises-everywhere":
        raise FloatingPointError("the loss is NaN")
    return ChunkResult(end, {"sum": float(t.sum())}, records=[{"step": end}])


class Experiment:  # the three methods a follower calls
    @staticmethod
    def load(cfg: Any, log: Any) -> Any:
        return SimpleNamespace(data=None)

    @staticmethod
    def plan(cfg: Any, data: Any) -> list[Job]:
        return [Job(cfg, 2)]

    train = staticmethod(train)


class Recorder:
    def __init__(self) -> None:
        self.results: list[tuple[str, ChunkResult]] = []
        self.progress = SimpleNamespace(event=lambda _e: None)

    def chunk_done(self, js: JobState, result: ChunkResult) -> None:
        js.done, js.state, js.failed = result.done, result.state, result.failed
        self.results.append((js.key, result))


def _rank(rank: int, port: int, key: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timeout)
    if rank == 1:
        ddp.follow(Experiment)
        return
    states = [JobState(Job(key, 2))]
    recorder = Recorder()
    try:
        ddp.DistributedRunner(threads=1).run(states, train, None, 1, recorder, config=key)
        raised = None
    except RunStopped as exc:
        raised = str(exc)
    torch.save({"raised": raised, "results": recorder.results, "done": states[0].done}, out)
    if raised is None:
        dist.destroy_process_group()


def _run(tmp_path, key: str) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    out = str(tmp_path / f"{key}.pt")
    ctx = tmp_mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, port, key, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode is not None for p in procs), "a rank hung"
    return torch.load(out, weights_only=False)


def test_a_lost_rank_stops_the_run_and_records_nothing_for_the_chunk(tmp_path):
    got = _run(tmp_path, "rank-1-dies")
    assert got["raised"] is not None and "data-parallel rank was lost" in got["raised"]
    assert got["results"] == [] and got["done"] == 0  # a resume starts this chunk again


def test_a_job_that_raises_on_every_rank_fails_with_its_own_reason(tmp_path):
    got = _run(tmp_path, "raises-everywhere")
    assert got["raised"] is None
    [(_key, result)] = got["results"]  # failed at the first chunk: no second one
    assert result.failed.startswith("FloatingPointError: the loss is NaN")


def test_a_job_that_raises_on_another_rank_fails_and_names_it(tmp_path):
    got = _run(tmp_path, "raises-on-rank-1")
    assert got["raised"] is None
    [(_key, result)] = got["results"]
    assert result.failed == "rank 1: ValueError: rank 1's own bug"


def test_a_clean_job_trains_every_chunk(tmp_path):
    got = _run(tmp_path, "clean")
    assert got["raised"] is None and got["done"] == 2
    assert [r.failed for _, r in got["results"]] == [None, None]
