"""The data-parallel runner: every job trained by all ranks of a torchrun launch together.

``torchrun --nproc-per-node N -m bnlab gan ...`` (or its shortcut ``bnlab gan --nproc N``,
which calls torchrun's own launcher) starts N processes with RANK / WORLD_SIZE set. Rank 0 is
the driver (:func:`bnlab.experiments.protocol.run_experiment`): it alone writes the run
directory. The other ranks :func:`follow`: they receive the configuration, load the data
after rank 0 did (caches are warm by then), and then run each chunk rank 0 announces, in
lockstep, from the state rank 0 sends (its checkpoint: after a resume the followers start
from it too). Inside a chunk the experiment trains data-parallel (DistributedDataParallel,
SyncBatchNorm); :func:`rank` and :func:`world_size` tell it where it is.

Failure: torchrun's agent stops every rank when one dies. Rank 0 turns the SIGTERM into a
KeyboardInterrupt, so the run ends like a Ctrl-C: the message says how to resume, and every
finished chunk is checkpointed. Collectives time out after ``TIMEOUT`` instead of hanging.
"""

from __future__ import annotations

import datetime
import os
import signal
import sys
import traceback
from typing import Any

import torch
import torch.distributed as dist

from bnlab.experiments.protocol import ChunkResult, JobState, set_sink
from bnlab.runners.local import Train, failure, next_job

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


def _broadcast(obj: Any) -> Any:
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class DistributedRunner:
    """Rank 0's runner: one chunk at a time, announced to the followers, run by all."""

    def __init__(self, threads: int | None) -> None:
        self.threads = threads

    def describe(self, n_jobs: int) -> str:
        return f"data-parallel runner, {world_size()} ranks per job (torch.distributed)"

    def run(
        self,
        states: list[JobState],
        train: Train,
        data: Any,
        chunk: int,
        recorder: Any,
        config: Any = None,
    ) -> None:
        _broadcast(config)  # the followers load and plan with the driver's configuration
        previous_term = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt  # torchrun stops the ranks: end like Ctrl-C

        signal.signal(signal.SIGTERM, on_term)
        previous_sink = set_sink(recorder.progress.event)
        try:
            while (js := next_job(states)) is not None:
                end = min(js.job.total, js.done + chunk)
                index = states.index(js)
                _broadcast((index, js.done, end, js.state))
                js.running = True
                try:
                    result = train(js.job, js.state, js.done, end, data)
                except Exception as exc:  # every rank raises alike: the job fails, not the run
                    result = ChunkResult(js.done, js.state, failed=failure(exc))
                js.running = False
                recorder.chunk_done(js, result)
            _broadcast(None)
        finally:
            set_sink(previous_sink)
            signal.signal(signal.SIGTERM, previous_term)


def follow(exp: Any, log: Any = None) -> None:
    """A rank > 0: train what rank 0 announces until it says it is done."""
    quiet = log if log is not None else (lambda _msg: None)
    cfg = _broadcast(None)
    if cfg is None:  # rank 0 stopped before training (nothing to do)
        return
    loaded = exp.load(cfg, quiet)
    jobs = exp.plan(cfg, loaded.data)
    while (order := _broadcast(None)) is not None:
        index, start, end, state = order
        # rank 0 records a failure; every rank fails the same chunk alike. Say it here too: a
        # failure on this rank alone leaves rank 0 waiting in a collective.
        try:
            exp.train(jobs[index], state, start, end, loaded.data)
        except Exception:
            print(f"rank {dist.get_rank()}: job {index} failed:", file=sys.stderr)
            traceback.print_exc()
