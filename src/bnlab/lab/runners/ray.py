"""The Ray runner: one Ray task per chunk, on a local Ray or a cluster.

- ``--runner ray`` alone starts a local Ray (on a loopback address, no dashboard) for the run,
  even where ``ray start`` left a cluster running on this machine; ``--ray-address auto``
  joins that cluster (``ray start --head`` / ``ray start --address=...``), ``host:port`` the
  one there, ``ray://host:port`` connects through Ray Client. Without ``--ray-address``, a
  ``RAY_ADDRESS`` in the environment (``ray job submit`` sets it for its entrypoint) is taken
  as one.
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

import os
import signal
import socket
import subprocess
import sys
import threading
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


CONNECT_TIMEOUT_S = 5.0  # how long a given --ray-address has to answer, before anything starts
HOW_TO_START = (
    "start one with `ray start --head --node-ip-address=127.0.0.1 --port=6379` and pass "
    "--ray-address 127.0.0.1:6379, or leave --ray-address out to start a local Ray for the run"
)


def check_reachable(
    address: str, timeout_s: float = CONNECT_TIMEOUT_S, named: str | None = None
) -> None:
    """Refuse a ``--ray-address`` that nothing answers at, within ``timeout_s``: Ray itself
    retries for minutes ("Failed to connect to GCS"), after the run directory exists.
    ``auto`` is looked up as Ray does (RAY_ADDRESS, then this machine's running cluster);
    ``host:port`` and ``ray://host:port`` are tried with one TCP connection. ``named`` is how
    the errors name the address (default ``--ray-address ADDRESS``).

    Raises:
        ValueError: naming the address and how to start a cluster.
    """
    named = named or f"--ray-address {address}"
    target = address
    if address == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        try:
            target = canonicalize_bootstrap_address("auto") or ""
        except ConnectionError:
            raise ValueError(
                f"{named}: no Ray cluster runs on this machine; {HOW_TO_START}"
            ) from None
    host, _, port = target.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{named}: give auto, HOST:PORT or ray://HOST:PORT; {HOW_TO_START}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ValueError(
            f"{named}: no Ray cluster at {host}:{port} ({why} within "
            f"{timeout_s:g} s); {HOW_TO_START}"
        ) from None


class RayRunner:
    def __init__(self, address: str | None, jobs: int, threads: int) -> None:
        self.ray = _import_ray()
        self.address, self.jobs, self.threads = address, jobs, threads
        self.started = False
        self.reaper: subprocess.Popen[bytes] | None = None
        self.named = f"--ray-address {address}"
        if address is None and os.environ.get("RAY_ADDRESS"):  # as Ray's own tools take it
            self.address = address = os.environ["RAY_ADDRESS"]
            self.named = f"RAY_ADDRESS={address}"
        if address is not None:  # joined now: before the data loads and the directory exists
            check_reachable(address, named=self.named)
            try:
                self.started = self._init()
            except (ConnectionError, RuntimeError) as exc:  # something answered, not Ray
                why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ValueError(
                    f"{self.named}: could not join a Ray cluster there ({why}); {HOW_TO_START}"
                ) from None

    def describe(self, n_jobs: int) -> str:
        where = f"Ray cluster at {self.address}" if self.address else "local Ray"
        if self.named.startswith("RAY_ADDRESS"):
            where += " (from RAY_ADDRESS)"
        return f"{where} (one task per chunk)"

    def _init(self) -> bool:
        """Connect (or start a local Ray); True when this call started it."""
        ray = self.ray
        if ray.is_initialized():
            return False
        common: dict[str, Any] = dict(
            include_dashboard=False, log_to_driver=True, configure_logging=False
        )
        # ray.init installs a SIGTERM handler that exits with status 15: bnlab's (SIGTERM is
        # a Ctrl-C: exit 130, resumable) stays.
        on_term = signal.getsignal(signal.SIGTERM)
        try:
            if self.address is None:
                from bnlab.lab.jobs import cpu_count

                # address="local": a new Ray of its own even where `ray start` left a cluster
                # on this machine or RAY_ADDRESS names one (address=None would join that, and
                # then refuse num_cpus); joining one is what --ray-address is for
                ray.init(
                    address="local",
                    num_cpus=self.jobs or cpu_count(),
                    _node_ip_address=LOCAL_NODE_IP,
                    **common,
                )
                self.reaper = _start_reaper()
            else:
                common.pop("include_dashboard")
                ray.init(address=self.address, **common)
        finally:
            if threading.current_thread() is threading.main_thread() and on_term is not None:
                signal.signal(signal.SIGTERM, on_term)
        return True

    def run(
        self, states: list[JobState], train: Train, data: Any, chunk: int, recorder: Any
    ) -> None:
        ray = self.ray
        started = self._init() or self.started
        try:
            from ray.util.queue import Queue

            events = Queue(actor_options={"num_cpus": 0})
            # a task asks for one CPU: one thread unless --threads says otherwise
            tasks = RayExecutor(ray, train, data, self.threads or 1, events)
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
            if self.reaper is not None:  # the local Ray is gone: nothing left to reap
                self.reaper.kill()
                self.reaper.wait()
                self.reaper = None


# A local Ray's processes (GCS, raylet, its agents, workers) descend from the driver, but
# outlive its SIGKILL for a minute or more (the agents poll their parent slowly). The reaper,
# a stdlib-only process, notes the driver's descendants every half second and, once the driver
# is gone, kills those still running (the same process: same start time). Written here by
# hand: Ray has no switch for it; psutil is not a dependency.
_REAPER = """
import os, signal, sys, time
driver, me = int(sys.argv[1]), os.getpid()
def stat(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), fields[19], fields[0]  # ppid, start time, state
    except (OSError, IndexError, ValueError):
        return None
seen = {}
while True:
    alive = stat(driver)
    if alive is None or alive[2] in "ZX":  # gone, or dead and not yet waited for
        break
    table = {int(p): stat(p) for p in os.listdir("/proc") if p.isdigit()}
    tree, grew = {driver}, True
    while grew:
        grew = False
        for pid, st in table.items():
            if st and st[0] in tree and pid not in tree:
                tree.add(pid)
                grew = True
    seen.update({p: table[p][1] for p in tree - {driver, me} if table.get(p)})
    time.sleep(0.5)
for pid, started in seen.items():
    st = stat(pid)
    if st and st[1] == started:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""


def _start_reaper() -> subprocess.Popen[bytes] | None:
    """The reaper of this driver's local Ray (Linux: it reads /proc); None elsewhere."""
    if not os.path.isdir("/proc/self"):
        return None
    return subprocess.Popen(
        [sys.executable, "-c", _REAPER, str(os.getpid())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,  # holds none of the driver's pipes open
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # a Ctrl-C to the terminal's group leaves it to do its job
    )


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
