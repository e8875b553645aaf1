"""Jobs, chunks and the one chunk loop: what the driver, the experiments and the runners share.

An experiment plans typed, frozen *jobs* (a GAN (seed, variant), a classifier (seed, net)), each
``total`` units of work (epochs, steps); a job trains in *chunks* of units, and after every
chunk the driver checkpoints it. The driver (:mod:`bnlab.lab.experiments.driver`) hands a runner
the jobs' states, a training callable and a recorder; a runner only decides where chunks
execute. It never imports the driver or an experiment: everything both sides need is here.

:func:`chunk_loop` is the loop every runner runs (next job, train a chunk, record), over an
:class:`Executor` that says where chunks go: this process (:class:`InlineExecutor`), a process
pool, Ray tasks, or all ranks of a data-parallel launch.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Chunk",
    "ChunkResult",
    "Executor",
    "InlineExecutor",
    "Job",
    "JobState",
    "Lost",
    "RunStopped",
    "ThreadBudget",
    "Train",
    "chunk_loop",
    "cpu_count",
    "emit",
    "exit_when_gone",
    "failure",
    "next_job",
    "run_chunk",
    "set_sink",
    "set_threads",
    "thread_budget",
    "unit_steps",
]

MAX_TRIES = 2  # a chunk whose worker died runs at most this many times


class Job(Protocol):
    """What the driver and runners need of an experiment's job dataclass."""

    @property
    def key(self) -> str:
        """Unique within a run, usable as a relative path (checkpoints/<key>.pt)."""
        ...

    @property
    def total(self) -> int:
        """Units of work (epochs, steps): chunks cover [0, total)."""
        ...


def unit_steps(job: Any) -> int:
    """Progress steps per unit of a job (e.g. batches per epoch): 1 unless the job says."""
    return int(getattr(job, "unit_steps", 1))


@dataclass
class ChunkResult:
    """What a training function returns for units [start, end) of a job."""

    done: int  # units finished after this chunk (end, or fewer if the job failed)
    state: Any  # everything the next chunk needs (tensors, state_dicts); picklable
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics of the chunk
    files: dict[str, bytes] = field(default_factory=dict)  # run-dir-relative path -> bytes
    failed: str | None = None  # why the job stopped (it does not continue)


# train(job, state, start, end, data) -> ChunkResult: pure, writes nothing
Train = Callable[[Any, Any, int, int, Any], ChunkResult]


class RunStopped(RuntimeError):
    """The run stopped for a reason outside its jobs (a data-parallel rank was lost): nothing
    is recorded for the chunk in flight, every finished chunk is checkpointed, and the run
    resumes like one stopped by Ctrl-C. Not a job failure: a resume trains the job on."""


@dataclass
class JobState:
    """The driver's view of one job: how far it is, its latest state and records."""

    job: Any
    done: int = 0
    state: Any = None
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: str | None = None
    running: bool = False

    @property
    def key(self) -> str:
        return str(self.job.key)

    @property
    def remaining(self) -> int:
        return 0 if self.failed else int(self.job.total) - self.done


@dataclass(frozen=True)
class Chunk:
    """Units [start, end) of one job, from the state it had after ``start`` units."""

    js: JobState
    start: int
    end: int

    @property
    def key(self) -> str:
        return self.js.key

    def args(self) -> tuple[Any, Any, int, int]:
        """(job, state, start, end): what a training function takes before the data."""
        return self.js.job, self.js.state, self.start, self.end


class Lost:
    """A chunk that did not run to an outcome because its worker process died: it runs again
    from the job's last state (up to ``MAX_TRIES`` times), then fails the job with ``why``."""

    def __init__(self, why: str) -> None:
        self.why = why


# ---- progress events from workers ---------------------------------------------------------------

# Set by a runner in each worker (and in the driver for inline runs): receives event dicts.
_SINK: Callable[[dict[str, Any]], None] | None = None


def set_sink(
    sink: Callable[[dict[str, Any]], None] | None,
) -> Callable[[dict[str, Any]], None] | None:
    global _SINK
    previous, _SINK = _SINK, sink
    return previous


def emit(key: str, step: int, text: str = "") -> None:
    """Progress of job ``key``: ``step`` steps of the job done in all (unit * unit_steps +
    steps into the unit), and a short status text (e.g. the losses). No-op without a sink.
    Also where a training process revisits its threads (:class:`ThreadBudget`)."""
    if _SINK is not None:
        _SINK({"key": key, "step": step, "text": text})
    if _THREADS is not None:  # the training thread's heartbeat: revisit its thread count
        _THREADS.tick()


# ---- the chunk loop -----------------------------------------------------------------------------


def failure(exc: BaseException) -> str:
    """A failed chunk's one-line reason; the traceback goes to stderr for whoever debugs it."""
    traceback.print_exception(exc, file=sys.stderr)
    return f"{type(exc).__name__}: {exc}"


def next_job(states: list[JobState]) -> JobState | None:
    """The idle job with the most work left: longest-remaining-first balances the load."""
    idle = [js for js in states if not js.running and js.remaining > 0]
    return max(idle, key=lambda js: js.remaining) if idle else None


def cpu_count() -> int:
    """The cores this process may run on (its affinity), or the machine's off Linux."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def exit_when_gone(pid: int, poll_s: float = 0.5) -> None:
    """Exit this process (``os._exit(1)``, no cleanup: nobody is left to receive its results)
    as soon as process ``pid`` is gone, even by SIGKILL: a daemon thread polls it. A pool
    worker watches its driver, a rank its launcher. For our own parent, re-parenting counts
    as gone (a dead parent can linger as a zombie that still answers ``kill(pid, 0)``).
    Chosen over ``prctl(PR_SET_PDEATHSIG)``: Linux only, and tied to the launching thread."""
    parent = pid == os.getppid()

    def watch() -> None:
        while True:
            time.sleep(poll_s)
            try:
                os.kill(pid, 0)
            except (ProcessLookupError, PermissionError):  # gone, or its pid reused by another
                os._exit(1)
            if parent and os.getppid() != pid:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name=f"bnlab-watch-{pid}").start()


def _cpu_seconds() -> tuple[float, float, float] | None:
    """(wall clock, seconds all CPUs of the machine were busy, this process's CPU seconds) now,
    or None where /proc/stat does not exist (not Linux)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    busy = (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # up to steal; guests are in user
    own = sum(os.times()[:2])  # user + system of every thread of this process
    return time.monotonic(), busy, own


class ThreadBudget:
    """The torch threads of one training process, revisited about once a second while it
    trains (at each chunk's start and each progress report, :func:`emit`: both run on the
    training thread, which is the one whose OpenMP team the count sets).

    Fixed at ``most`` when ``adaptive`` is False (--threads or $OMP_NUM_THREADS given).
    Adaptive: ``most`` (this process's share of the cores) while the cores are free, fewer
    while other processes keep some busy: the cores they used over the last interval (the
    machine's busy CPU time from /proc/stat minus this process's own) are left to them. Why:
    torch's OpenMP team spin-waits at the end of every parallel region for its slowest thread,
    so a team that shares its cores with another busy process waits out that process's time
    slices (measured: two 2-thread `bnlab gan` runs at once trained at under a quarter of
    their alone speed each, two 1-thread runs at full speed on 2 cores). The first interval
    runs with ``most``: a collapse lasts at most about a second.
    """

    SLACK = 0.25  # cores of others' use (daemons, the driver's progress bars) that count as free

    def __init__(self, most: int, adaptive: bool = True, interval: float = 1.0) -> None:
        self.most, self.adaptive, self.interval = max(1, most), adaptive, interval
        self.threads = self.most
        self._last: tuple[float, float, float] | None = None

    def decide(self, others: float) -> int:
        """Threads when other processes use ``others`` cores on average."""
        if others < self.SLACK:
            return self.most
        return max(1, min(self.most, math.floor(cpu_count() - others + self.SLACK)))

    def start(self) -> None:
        """Set ``most`` threads and start measuring (a process's first chunk)."""
        import torch

        self.threads = self.most
        torch.set_num_threads(self.threads)
        self._last = _cpu_seconds() if self.adaptive and self.most > 1 else None

    def tick(self) -> int:
        """Decide again if an interval has passed since the last decision; returns the count."""
        if self._last is None or time.monotonic() - self._last[0] < self.interval:
            return self.threads
        now = _cpu_seconds()
        if now is None:
            return self.threads
        wall, busy, own = (a - b for a, b in zip(now, self._last, strict=True))
        n = self.decide(max(0.0, busy - own) / wall)
        if n != self.threads:
            import torch

            torch.set_num_threads(n)
            self.threads = n
        self._last = now
        return n


_THREADS: ThreadBudget | None = None


def set_threads(budget: ThreadBudget | None) -> ThreadBudget | None:
    """Where this process's training takes its thread count from now on (None: leave it as
    it is); starts the budget; returns the previous one, to restore."""
    global _THREADS
    previous, _THREADS = _THREADS, budget
    if budget is not None:
        budget.start()
    return previous


def thread_budget(requested: int, processes: int) -> ThreadBudget:
    """The torch threads of each of ``processes`` training processes of one run (see
    docs/design.md, "Threads"): ``requested`` (``--threads``) when > 0, else
    ``$OMP_NUM_THREADS`` when set, both fixed; else the cores shared among the processes,
    adapted before each chunk to what other processes leave free
    (:class:`ThreadBudget`)."""
    if requested > 0:
        return ThreadBudget(requested, adaptive=False)
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return ThreadBudget(int(env), adaptive=False)
    return ThreadBudget(max(1, cpu_count() // max(1, processes)))


def run_chunk(train: Train, job: Any, state: Any, start: int, end: int, data: Any) -> ChunkResult:
    """Train units [start, end) of ``job`` from ``state`` wherever the caller runs (this
    process, a pool worker, a Ray task, a rank): the one place where a raise of the training
    code becomes the job's failure (its traceback on that process's stderr), not the run's,
    and where the thread budget is applied before each chunk."""
    if _THREADS is not None:
        _THREADS.tick()
    try:
        return train(job, state, start, end, data)
    except Exception as exc:
        return ChunkResult(start, state, failed=failure(exc))


class Executor(Protocol):
    """Where chunks run. ``submit`` starts one (returning a handle), ``wait`` returns the
    (handle, outcome) pairs that finished, at least one unless ``timeout`` passed; an outcome
    is a :class:`ChunkResult` or :class:`Lost`. ``capacity`` chunks run at once."""

    capacity: int

    def submit(self, chunk: Chunk) -> Any: ...

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, ChunkResult | Lost]]: ...


class Ran:
    """The handle of a chunk that ran to its outcome during ``submit``."""

    def __init__(self, outcome: ChunkResult | Lost) -> None:
        self.outcome = outcome


class InlineExecutor:
    """Chunks in this process, one at a time."""

    capacity = 1

    def __init__(self, train: Train, data: Any) -> None:
        self.train, self.data = train, data

    def submit(self, chunk: Chunk) -> Any:
        return Ran(self.run(chunk))

    def run(self, chunk: Chunk) -> ChunkResult | Lost:
        return run_chunk(self.train, *chunk.args(), self.data)

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, ChunkResult | Lost]]:
        return [(h, h.outcome) for h in handles]


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (``kill``, a scheduler, torchrun stopping the ranks) ends the run as Ctrl-C
    does: resumable. Only the main thread can set signal handlers; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def chunk_loop(
    states: list[JobState],
    chunk_size: int,
    recorder: Any,
    executor: Executor,
    poll: float = 0.2,
    on_poll: Callable[[], None] | None = None,
) -> None:
    """Run every job to its end, chunk by chunk, on ``executor``: keep ``capacity`` chunks in
    flight (longest remaining job first), hand each finished one to
    ``recorder.chunk_done(job_state, result)`` in this process, run a lost chunk again from
    the job's last state (:class:`Lost`; at most ``MAX_TRIES`` times). ``on_poll`` runs after
    every wait (e.g. to drain workers' progress events)."""
    in_flight: dict[Any, Chunk] = {}
    tries: dict[str, int] = {}
    with sigterm_as_interrupt():
        while True:
            while len(in_flight) < executor.capacity and (js := next_job(states)) is not None:
                chunk = Chunk(js, js.done, min(int(js.job.total), js.done + chunk_size))
                js.running = True
                in_flight[executor.submit(chunk)] = chunk
            if not in_flight:
                break
            finished = executor.wait(list(in_flight), poll)
            if on_poll is not None:
                on_poll()
            for handle, outcome in finished:
                chunk = in_flight.pop(handle)
                chunk.js.running = False
                if isinstance(outcome, Lost):
                    tries[chunk.key] = tries.get(chunk.key, 1) + 1
                    if tries[chunk.key] <= MAX_TRIES:
                        print(
                            f"warning: a worker process died; {chunk.key} runs its chunk again "
                            "from its last state",
                            file=sys.stderr,
                        )
                        continue
                    outcome = ChunkResult(chunk.start, chunk.js.state, failed=outcome.why)
                tries.pop(chunk.key, None)
                recorder.chunk_done(chunk.js, outcome)
