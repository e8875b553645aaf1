"""The data-parallel runner: every job trained by all ranks of a torchrun launch together.

``torchrun --nproc-per-node N -m bnlab gan ...`` (or its shortcut ``bnlab gan --nproc N``,
which calls torchrun's own launcher) starts N processes with RANK / WORLD_SIZE set. Rank 0 is
the driver (:func:`bnlab.lab.experiments.protocol.run_experiment`): it alone writes the run
directory. The other ranks :func:`follow`: they receive the configuration, load the data
after rank 0 did (caches are warm by then), and then run each chunk rank 0 announces, in
lockstep, from the state rank 0 sends (its checkpoint: after a resume the followers start
from it too). Inside a chunk the experiment trains data-parallel (DistributedDataParallel,
SyncBatchNorm); :func:`rank` and :func:`world_size` tell it where it is.

Failure: every chunk ends with all ranks exchanging how it went (:func:`_outcomes`). A job
fails only where its code raised; a rank that died or stopped answering is not the job's
fault: rank 0 records nothing for that chunk and raises
:class:`~bnlab.lab.experiments.protocol.RunStopped`, so the run ends like a Ctrl-C (resumable, every
finished chunk checkpointed) and a resume trains the job on (rank 0's own collective fails
first, with "Connection reset by peer": that is not the job's failure). torchrun's agent stops
every rank when one dies; rank 0 turns the SIGTERM into a KeyboardInterrupt, to the same end.
Collectives time out after ``TIMEOUT`` instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from bnlab.lab.jobs import (
    Chunk,
    ChunkResult,
    InlineExecutor,
    JobState,
    Lost,
    RunStopped,
    Train,
    chunk_loop,
    set_sink,
)

__all__ = [
    "DistributedRunner",
    "follow",
    "init_from_env",
    "launched_by_torchrun",
    "rank",
    "world_size",
]

TIMEOUT = datetime.timedelta(minutes=10)  # a collective waits this long for a dead peer


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def init_from_env(device: str) -> None:
    """Join the process group torchrun set up (gloo on CPU, NCCL on CUDA); loopback only."""
    if dist.is_initialized():
        return
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # gloo: stay on the loopback device
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=TIMEOUT)


LOST = "a data-parallel rank was lost (killed? out of memory?)"


def _broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank.

    Raises:
        RunStopped: a rank is gone (the collective itself failed).
    """
    box = [obj]
    try:
        dist.broadcast_object_list(box, src=0)
    except RuntimeError as exc:  # gloo: "Connection reset by peer"; any backend: the timeout
        raise RunStopped(LOST) from exc
    return box[0]


def _outcomes(failed: str | None) -> list[str | None]:
    """Every rank's outcome of the chunk just run (None = trained), gathered on every rank.

    Raises:
        RunStopped: a rank is gone or stopped answering (the exchange itself failed).
    """
    box: list[str | None] = [None] * world_size()
    try:
        dist.all_gather_object(box, failed)
    except RuntimeError as exc:  # gloo: "Connection closed by peer"; any backend: the timeout
        raise RunStopped(LOST) from exc
    return box


class DistributedRunner:
    """Rank 0's runner: one chunk at a time, announced to the followers, run by all.

    Args:
        announce: what the followers receive before the first chunk (the run's configuration:
            they load the data and plan the jobs with it).
    """

    def __init__(self, announce: Any = None) -> None:
        # threads: each rank's fixed share, OMP_NUM_THREADS from the launcher (cli)
        self.announce = announce

    def describe(self, n_jobs: int) -> str:
        return f"data-parallel runner, {world_size()} ranks per job (torch.distributed)"

    def run(
        self, states: list[JobState], train: Train, data: Any, chunk: int, recorder: Any
    ) -> None:
        _broadcast(self.announce)  # the followers load and plan with the driver's configuration
        previous_sink = set_sink(recorder.progress.event)
        try:
            chunk_loop(states, chunk, recorder, _AllRanks(states, train, data))
            _broadcast(None)
        finally:
            set_sink(previous_sink)


class _AllRanks(InlineExecutor):
    """Each chunk announced to the followers, then run on this rank in step with them."""

    def __init__(self, states: list[JobState], train: Train, data: Any) -> None:
        super().__init__(train, data)
        self.states = states

    def run(self, chunk: Chunk) -> ChunkResult | Lost:
        _broadcast((self.states.index(chunk.js), chunk.start, chunk.end, chunk.js.state))
        result, raised = _train_quietly(self.train, *chunk.args(), self.data)
        # Raises RunStopped if a peer is gone: then a collective inside the chunk failed for
        # that reason, not for the job's, and nothing is recorded (and no gloo traceback
        # printed: the launcher names the lost rank in one line).
        outcomes = _outcomes(result.failed)
        if raised is not None:  # the job's own failure: its traceback, for whoever debugs it
            traceback.print_exception(raised, file=sys.stderr)
        if result.failed is None and any(outcomes):  # another rank's code raised
            r, why = next((r, m) for r, m in enumerate(outcomes) if m)
            result = ChunkResult(chunk.start, chunk.js.state, failed=f"rank {r}: {why}")
        return result


def _train_quietly(
    train: Train, job: Any, state: Any, start: int, end: int, data: Any
) -> tuple[ChunkResult, BaseException | None]:
    """:func:`~bnlab.lab.jobs.run_chunk` without printing the traceback yet: whether a raise
    was the job's fault or a lost peer's is known only after the outcomes are exchanged."""
    try:
        return train(job, state, start, end, data), None
    except Exception as exc:
        return ChunkResult(start, state, failed=f"{type(exc).__name__}: {exc}"), exc


def follow(load_and_plan: Callable[[Any], tuple[list[Any], Any]], train: Train) -> None:
    """A rank > 0: train what rank 0 announces until it says it is done.

    Args:
        load_and_plan: the run's configuration (as rank 0 announces it) -> (jobs, data), the
            same jobs, in the same order, as rank 0 planned.
        train: the experiment's training function.
    """
    cfg = _broadcast(None)
    if cfg is None:  # rank 0 stopped before training (nothing to do)
        return
    jobs, data = load_and_plan(cfg)
    while (order := _broadcast(None)) is not None:
        index, start, end, state = order
        # rank 0 records the failure; say it here too, with the traceback. (A failure on this
        # rank alone, mid-chunk, leaves rank 0 waiting in a collective until TIMEOUT.)
        result, raised = _train_quietly(train, jobs[index], state, start, end, data)
        _outcomes(result.failed)  # raises RunStopped when rank 0 is gone
        if raised is not None:
            print(f"rank {dist.get_rank()}: job {index} failed", file=sys.stderr)
            traceback.print_exception(raised, file=sys.stderr)
