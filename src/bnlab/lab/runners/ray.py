"""The Ray runner: one Ray task per chunk, on a local Ray or a cluster.

- ``--runner ray`` alone starts a local Ray (on a loopback address, no dashboard) for the run;
  ``--ray-address auto`` joins the cluster this machine belongs to (``ray start --head`` /
  ``ray start --address=...``), ``ray://host:port`` connects through Ray Client.
- The experiment's data goes into the object store once; each task gets (job, state, start,
  end) and returns the chunk's result (state included) to the driver, which alone writes the
  run directory. Workers need bnlab installed, and no data on disk.
- Each task asks for one CPU and runs with the same number of torch threads as a local
  worker, so results equal the local runner's.
- A task lost with its worker process or its node is retried by Ray from the same inputs,
  i.e. from the job's last checkpointed state (``MAX_RETRIES`` times). Ctrl-C cancels the
  tasks in flight and leaves a resumable run.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from bnlab.lab.jobs import (
    Chunk,
    ChunkResult,
    JobState,
    Lost,
    Train,
    chunk_loop,
    failure,
    run_chunk,
    set_sink,
)

__all__ = ["RayRunner"]

MAX_RETRIES = 3  # Ray retries a task whose worker or node died this many times
POLL_S = 0.2
# A local Ray listens on a loopback address. Not 127.0.0.1: Ray replaces 127.0.0.1 and
# "localhost" by the machine's network address (so that other nodes could reach it); any
# other address of the loopback range 127.0.0.0/8 is used as given.
LOCAL_NODE_IP = "127.0.0.2"


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError(
            "--runner ray needs Ray, which is not installed: pip install 'bnlab[ray]'"
        ) from None
    return ray


class RayRunner:
    def __init__(self, address: str | None, jobs: int, threads: int) -> None:
        self.ray = _import_ray()
        self.address, self.jobs, self.threads = address, jobs, threads

    def describe(self, n_jobs: int) -> str:
        where = f"Ray cluster at {self.address}" if self.address else "local Ray"
        return f"{where} (one task per chunk)"

    def _init(self) -> bool:
        """Connect (or start a local Ray); True when this call started it."""
        ray = self.ray
        if ray.is_initialized():
            return False
        common: dict[str, Any] = dict(
            include_dashboard=False, log_to_driver=True, configure_logging=False
        )
        if self.address is None:
            from bnlab.lab.runners.local import cpu_count

            ray.init(num_cpus=self.jobs or cpu_count(), _node_ip_address=LOCAL_NODE_IP, **common)
        else:
            common.pop("include_dashboard")
            ray.init(address=self.address, **common)
        return True

    def run(
        self, states: list[JobState], train: Train, data: Any, chunk: int, recorder: Any
    ) -> None:
        ray = self.ray
        started = self._init()
        try:
            from ray.util.queue import Queue

            events = Queue(actor_options={"num_cpus": 0})
            tasks = RayExecutor(ray, train, data, self.threads, events)
            try:
                chunk_loop(
                    states,
                    chunk,
                    recorder,
                    tasks,
                    poll=POLL_S,
                    on_poll=lambda: _drain(events, recorder.progress),
                )
                _drain(events, recorder.progress)
            except BaseException:
                tasks.cancel()
                raise
        finally:
            if started:
                ray.shutdown()


class RayExecutor:
    """One Ray task per chunk; Ray queues what it cannot place yet, so every job has a chunk
    in flight. A task lost with its worker or node is retried by Ray itself (``MAX_RETRIES``)."""

    capacity = sys.maxsize

    def __init__(self, ray: Any, train: Train, data: Any, threads: int, events: Any) -> None:
        self.ray, self.train, self.threads, self.events = ray, train, threads, events
        self.data_ref = ray.put(data)
        self.task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(
            _ray_chunk
        )
        self.chunks: dict[Any, Chunk] = {}

    def submit(self, chunk: Chunk) -> Any:
        ref = self.task.remote(
            self.train, *chunk.args(), self.data_ref, self.threads, self.events.actor
        )
        self.chunks[ref] = chunk
        return ref

    def wait(self, handles: list[Any], timeout: float) -> list[tuple[Any, ChunkResult | Lost]]:
        ray = self.ray
        done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        out: list[tuple[Any, ChunkResult | Lost]] = []
        for ref in done:
            chunk = self.chunks.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # the task itself broke (not training)
                result = ChunkResult(chunk.start, chunk.js.state, failed=failure(exc.cause or exc))
            except ray.exceptions.RayError as exc:  # lost beyond its retries
                why = f"lost its Ray worker or node {MAX_RETRIES + 1} times ({exc})"
                result = ChunkResult(chunk.start, chunk.js.state, failed=why)
            out.append((ref, result))
        return out

    def cancel(self) -> None:
        for ref in self.chunks:
            self.ray.cancel(ref, force=True)


def _ray_chunk(
    train: Train,
    job: Any,
    state: Any,
    start: int,
    end: int,
    data: Any,
    threads: int,
    events: Any,
) -> ChunkResult:
    """A Ray task: one chunk with ``threads`` torch threads, progress to the driver's queue."""
    import torch

    torch.set_num_threads(threads)

    def sink(event: dict[str, Any]) -> None:
        events.put_nowait.remote(event)  # fire and forget: progress must not slow training

    previous = set_sink(sink)
    try:
        return run_chunk(train, job, state, start, end, data)
    finally:
        set_sink(previous)


def _drain(events: Any, progress: Any) -> None:
    deadline = time.monotonic() + POLL_S
    while time.monotonic() < deadline:
        try:
            items = events.get_nowait_batch(min(events.qsize(), 1000))
        except Exception:  # the queue actor is gone (shutdown): progress is best effort
            return
        if not items:
            return
        for event in items:
            progress.event(event)
