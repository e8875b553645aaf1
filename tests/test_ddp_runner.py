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

from bnlab.lab.jobs import ChunkResult, JobState, RunStopped
from bnlab.lab.runners import ddp

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


# One launch runs every case, each a job, in this order (longest-remaining first, then list
# order): process start-up is the cost. The lost rank goes last: it ends the launch.
JOBS = [
    Job("clean", 2),
    Job("raises-everywhere", 1),
    Job("raises-on-rank-1", 1),
    Job("rank-1-dies", 1),
    Job("never-reached", 1),
]


def load_and_plan(cfg: Any) -> tuple[list[Job], Any]:  # what a follower calls first
    assert cfg == "cfg"  # what rank 0 announced
    return JOBS, None


class Recorder:
    def __init__(self) -> None:
        self.results: list[tuple[str, ChunkResult]] = []
        self.progress = SimpleNamespace(event=lambda _e: None)

    def chunk_done(self, js: JobState, result: ChunkResult) -> None:
        js.done, js.state, js.failed = result.done, result.state, result.failed
        self.results.append((js.key, result))


def _rank(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    timeout = datetime.timedelta(seconds=60)
    dist.init_process_group("gloo", rank=rank, world_size=2, timeout=timeout)
    if rank == 1:
        ddp.follow(load_and_plan, train)
        return
    states = [JobState(job) for job in JOBS]
    recorder = Recorder()
    try:
        ddp.DistributedRunner(announce="cfg").run(states, train, None, 1, recorder)
        raised = None
    except RunStopped as exc:
        raised = str(exc)
    done = {js.key: js.done for js in states}
    torch.save({"raised": raised, "results": recorder.results, "done": done}, out)


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> dict[str, Any]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    out = str(tmp_path_factory.mktemp("ddp-runner") / "out.pt")
    ctx = tmp_mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode is not None for p in procs), "a rank hung"
    got = torch.load(out, weights_only=False)
    results: dict[str, list[ChunkResult]] = {}
    for key, result in got["results"]:
        results.setdefault(key, []).append(result)
    return {**got, "results": results}


def test_a_clean_job_trains_every_chunk(launch):
    assert [r.failed for r in launch["results"]["clean"]] == [None, None]
    assert launch["done"]["clean"] == 2


def test_a_job_that_raises_on_every_rank_fails_with_its_own_reason(launch):
    [result] = launch["results"]["raises-everywhere"]
    assert result.failed.startswith("FloatingPointError: the loss is NaN")


def test_a_job_that_raises_on_another_rank_fails_and_names_it(launch):
    [result] = launch["results"]["raises-on-rank-1"]
    assert result.failed == "rank 1: ValueError: rank 1's own bug"


def test_a_lost_rank_stops_the_run_and_records_nothing_for_the_chunk(launch):
    assert launch["raised"] is not None and "data-parallel rank was lost" in launch["raised"]
    assert "rank-1-dies" not in launch["results"]  # nothing recorded: a resume runs it again
    assert launch["done"]["rank-1-dies"] == 0 and "never-reached" not in launch["results"]
