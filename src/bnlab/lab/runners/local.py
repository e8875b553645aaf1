"""The local runner: jobs on this machine, one single-threaded process per core.

Why processes and not threads: on a 2-core machine two single-threaded processes train the
lab's small MLPs ~1.4x faster than one process with two threads, because small GEMMs do not
split well across threads while independent jobs do. Jobs are cut into chunks; between
chunks a job may move to another process, so the load stays balanced (5 jobs on 2 processes
finish in ~2.5 job-times, not 3).

Workers receive the experiment's data once (pool initializer), then only (job, state, start,
end) per chunk; they return the chunk's result and write nothing. A worker whose driver dies
(even by SIGKILL) exits within a second instead of finishing its chunk. A chunk whose worker
process dies (killed, out of memory) runs again from the job's last state, once.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from bnlab.lab.jobs import (
    Chunk,
    ChunkResult,
    InlineExecutor,
    JobState,
    Lost,
    ThreadBudget,
    Train,
    chunk_loop,
    cpu_count,
    exit_when_gone,
    failure,
    run_chunk,
    set_sink,
    set_threads,
    thread_budget,
)

__all__ = ["LocalRunner", "cpu_count"]

WORKER_DIED = (
    "its worker process died on every try (killed? out of memory? called from a script without "
    'an `if __name__ == "__main__":` guard, which worker processes re-run?)'
)


class LocalRunner:
    def __init__(self, jobs: int, threads: int, one_process: bool = False) -> None:
        self.jobs, self.threads, self.one_process = jobs, threads, one_process

    def processes(self, n_jobs: int) -> int:
        if self.one_process:  # one GPU: processes would only queue on it
            return 1
        return max(1, min(self.jobs or cpu_count(), n_jobs))

    def describe(self, n_jobs: int) -> str:
        n = self.processes(n_jobs)
        return "local runner, in this process" if n == 1 else f"local runner, {n} processes"

    def run(
        self, states: list[JobState], train: Train, data: Any, chunk: int, recorder: Any
    ) -> None:
        n = self.processes(len(states))
        if n == 1:
            before = torch.get_num_threads()
            previous = set_sink(recorder.progress.event)
            budget = set_threads(thread_budget(self.threads, 1))
            try:
                chunk_loop(states, chunk, recorder, InlineExecutor(train, data))
            finally:
                set_sink(previous)
                set_threads(budget)
                torch.set_num_threads(before)
            return
        pool = PoolExecutor(n, train, data, thread_budget(self.threads, n), recorder)
        ok = False
        try:
            chunk_loop(states, chunk, recorder, pool, on_poll=pool.drain)
            pool.drain()
            ok = True
        finally:
            pool.close(ok)


class PoolExecutor:
    """Chunks in a pool of ``n`` worker processes that received the data once. A worker that
    dies breaks the pool: every chunk in flight comes back :class:`~bnlab.lab.jobs.Lost` and
    a fresh pool takes over."""

    def __init__(
        self, n: int, train: Train, data: Any, threads: ThreadBudget, recorder: Any
    ) -> None:
        self.capacity = n
        self.train, self.data, self.threads = train, data, threads
        self.progress = recorder.progress
        self.ctx = _context(train)
        self.events = self.ctx.Queue()
        self.generation = 0
        self.pool = self._new_pool()
        self.chunks: dict[Future[ChunkResult], tuple[Chunk, int]] = {}

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(
            max_workers=self.capacity,
            mp_context=self.ctx,
            initializer=_worker_init,
            initargs=(
                self.threads.most,
                self.threads.adaptive,
                self.events,
                self.data,
                os.getpid(),
            ),
        )

    def _renew(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.generation += 1
        self.pool = self._new_pool()

    def submit(self, chunk: Chunk) -> Future[ChunkResult]:
        try:
            fut = self.pool.submit(_chunk, self.train, *chunk.args())
        except BrokenProcessPool:  # broke before this chunk was queued: nothing of it lost
            self._renew()
            fut = self.pool.submit(_chunk, self.train, *chunk.args())
        self.chunks[fut] = (chunk, self.generation)
        return fut

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, ChunkResult | Lost]]:
        finished, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        out: list[tuple[Any, ChunkResult | Lost]] = []
        for fut in finished:
            chunk, generation = self.chunks.pop(fut)
            try:
                out.append((fut, fut.result()))
            except BrokenProcessPool:  # its worker (or another one of the pool) died
                out.append((fut, Lost(WORKER_DIED)))
                if generation == self.generation:
                    self._renew()
            except Exception as exc:  # the result could not come back (e.g. not picklable)
                out.append((fut, ChunkResult(chunk.start, chunk.js.state, failed=failure(exc))))
        return out

    def drain(self) -> None:
        _drain(self.events, self.progress)

    def close(self, ok: bool) -> None:
        if not ok:  # interrupted: stop the workers now, not after their chunks
            for proc in list(getattr(self.pool, "_processes", {}).values()):
                proc.terminate()
            self.pool.shutdown(wait=False, cancel_futures=True)
            return
        self.pool.shutdown(wait=True)
        self.events.close()


# ---- the worker side ---------------------------------------------------------------------------

_DATA: Any = None  # the experiment's data, received once per worker process


def _worker_init(threads: int, adaptive: bool, events: Any, data: Any, driver_pid: int) -> None:
    global _DATA
    _DATA = data
    set_threads(ThreadBudget(threads, adaptive))
    set_sink(events.put)
    # Ctrl-C goes to the whole process group; the driver decides what to do about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    exit_when_gone(driver_pid)


def _chunk(train: Train, job: Any, state: Any, start: int, end: int) -> ChunkResult:
    return run_chunk(train, job, state, start, end, _DATA)


def _context(train: Train) -> Any:
    """forkserver where available, with torch and the training function's module imported
    once in the server, so each worker starts in milliseconds instead of re-importing torch
    (~2 s). Plain fork is avoided: forking a process whose OpenMP threads already ran can
    deadlock; the fork server itself never runs a parallel op."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", train.__module__])
        return ctx
    return mp.get_context("spawn")


def _drain(events: Any, progress: Any) -> None:
    while True:
        try:
            progress.event(events.get_nowait())
        except queue_mod.Empty:
            return
        except (EOFError, OSError):  # a worker died mid-put
            print("warning: lost a progress event from a worker", file=sys.stderr)
            return
