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
import threading
import time
import traceback
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import torch

from bnlab.lab.experiments.protocol import ChunkResult, JobState, set_sink

__all__ = ["LocalRunner", "cpu_count", "next_job"]

MAX_TRIES = 2  # a chunk whose worker died runs at most this many times

Train = Callable[[Any, Any, int, int, Any], ChunkResult]


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def next_job(states: list[JobState]) -> JobState | None:
    """The idle job with the most work left: longest-remaining-first balances the load."""
    idle = [js for js in states if not js.running and js.remaining > 0]
    return max(idle, key=lambda js: js.remaining) if idle else None


def failure(exc: BaseException) -> str:
    """A failed chunk's one-line reason; the traceback goes to stderr for whoever debugs it."""
    traceback.print_exception(exc, file=sys.stderr)
    return f"{type(exc).__name__}: {exc}"


class LocalRunner:
    def __init__(self, jobs: int, threads: int | None, one_process: bool = False) -> None:
        self.jobs, self.threads, self.one_process = jobs, threads, one_process

    def processes(self, n_jobs: int) -> int:
        if self.one_process:  # one GPU: processes would only queue on it
            return 1
        return max(1, min(self.jobs or cpu_count(), n_jobs))

    def describe(self, n_jobs: int) -> str:
        n = self.processes(n_jobs)
        return "local runner, in this process" if n == 1 else f"local runner, {n} processes"

    def run(
        self,
        states: list[JobState],
        train: Train,
        data: Any,
        chunk: int,
        recorder: Any,
        config: Any = None,
    ) -> None:
        n = self.processes(len(states))
        if n == 1:
            self._inline(states, train, data, chunk, recorder)
        else:
            self._pool(states, train, data, chunk, recorder, n)

    def _inline(
        self, states: list[JobState], train: Train, data: Any, chunk: int, recorder: Any
    ) -> None:
        before = torch.get_num_threads()
        if self.threads:
            torch.set_num_threads(self.threads)
        previous = set_sink(recorder.progress.event)
        try:
            while (js := next_job(states)) is not None:
                end = min(js.job.total, js.done + chunk)
                js.running = True
                try:
                    result = train(js.job, js.state, js.done, end, data)
                except Exception as exc:  # a crashing job fails itself, not the run
                    result = ChunkResult(js.done, js.state, failed=failure(exc))
                js.running = False
                recorder.chunk_done(js, result)
        finally:
            set_sink(previous)
            torch.set_num_threads(before)

    def _pool(
        self,
        states: list[JobState],
        train: Train,
        data: Any,
        chunk: int,
        recorder: Any,
        n: int,
    ) -> None:
        ctx = _context(train)
        events = ctx.Queue()
        threads = self.threads or max(1, cpu_count() // n)

        def new_pool() -> ProcessPoolExecutor:
            return ProcessPoolExecutor(
                max_workers=n,
                mp_context=ctx,
                initializer=_worker_init,
                initargs=(threads, events, data, os.getpid()),
            )

        pool = new_pool()
        running: dict[Future[ChunkResult], tuple[JobState, int]] = {}
        tries: dict[str, int] = {}
        previous_term = signal.getsignal(signal.SIGTERM)

        def on_term(signum: int, frame: Any) -> None:
            raise KeyboardInterrupt  # kill -> the same clean stop as Ctrl-C

        def submit(js: JobState) -> bool:
            """False if the pool broke (a worker died) before this chunk could be queued."""
            end = min(js.job.total, js.done + chunk)
            try:
                fut = pool.submit(_chunk, train, js.job, js.state, js.done, end)
            except BrokenProcessPool:
                return False
            js.running = True
            running[fut] = (js, end)
            return True

        signal.signal(signal.SIGTERM, on_term)
        try:
            while True:
                queued = True
                while len(running) < n and (js := next_job(states)) is not None:
                    if not (queued := submit(js)):
                        break
                if not queued and not running:  # broke with nothing in flight: nothing lost
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = new_pool()
                    continue
                if not running:
                    break
                finished, _ = wait(list(running), timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(events, recorder.progress)
                broken: list[JobState] = []
                for fut in finished:
                    js, _end = running.pop(fut)
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken.append(js)
                        continue
                    except Exception as exc:  # a crashed chunk fails its job, not the run
                        result = ChunkResult(js.done, js.state, failed=failure(exc))
                    js.running = False
                    tries.pop(js.key, None)
                    recorder.chunk_done(js, result)
                if broken:  # a worker died: every chunk in flight is lost with the pool
                    broken += [js for js, _ in running.values()]
                    running.clear()
                    pool.shutdown(wait=False, cancel_futures=True)
                    pool = new_pool()
                    for js in broken:
                        tries[js.key] = tries.get(js.key, 1) + 1
                        js.running = False
                        if tries[js.key] > MAX_TRIES:
                            why = (
                                "its worker process died on every try (killed? out of memory? "
                                "called from a script without an `if __name__ == "
                                '"__main__":` guard, which worker processes re-run?)'
                            )
                            recorder.chunk_done(js, ChunkResult(js.done, js.state, failed=why))
                        else:
                            print(
                                f"warning: a worker process died; {js.key} runs its chunk "
                                "again from its last state",
                                file=sys.stderr,
                            )
            _drain(events, recorder.progress)
        except BaseException:
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous_term)
        pool.shutdown(wait=True)
        events.close()


# ---- the worker side ---------------------------------------------------------------------------

_DATA: Any = None  # the experiment's data, received once per worker process


def _worker_init(threads: int, events: Any, data: Any, driver_pid: int) -> None:
    global _DATA
    _DATA = data
    torch.set_num_threads(threads)
    set_sink(events.put)
    # Ctrl-C goes to the whole process group; the driver decides what to do about it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_watch_driver, args=(driver_pid,), daemon=True).start()


def _watch_driver(pid: int) -> None:
    """Exit as soon as the driver is gone: nobody would receive this worker's results."""
    while True:
        time.sleep(0.5)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # the pid was reused by another user's process
            os._exit(1)


def _chunk(train: Train, job: Any, state: Any, start: int, end: int) -> ChunkResult:
    return train(job, state, start, end, _DATA)


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
