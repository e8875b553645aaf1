"""Runners: where the chunks of an experiment's jobs execute.

Only runners know about backends; experiments hand the driver typed jobs and a pure training
function (see :mod:`bnlab.lab.jobs`), the driver hands both to a runner. A runner
calls ``recorder.chunk_done(job_state, result)`` in the driver process for each finished chunk;
that is where the run directory is written, so every runner leaves the same files.

- ``local`` (default): this process for one job at a time, else a process pool with one
  single-threaded worker per core (:mod:`bnlab.lab.runners.local`).
- ``ray``: one Ray task per chunk on a local or remote Ray cluster (:mod:`bnlab.lab.runners.ray`).
- inside ``torchrun``: each job trained by all ranks together, data-parallel
  (:mod:`bnlab.lab.runners.ddp`).

Threads: the local runner's training processes (this one, each pool worker) take theirs from
:func:`bnlab.lab.jobs.thread_budget` (their share of the cores, fewer while other work keeps
them busy); a Ray task asks for one CPU and takes one thread (or --threads); ranks take a fixed
share from the launcher's OMP_NUM_THREADS (cli).
"""

from __future__ import annotations

from typing import Any, Literal

__all__ = ["make_runner"]


def make_runner(
    kind: Literal["local", "ray"],
    jobs: int,
    threads: int,
    ray_address: str | None = None,
    one_process: bool = False,
    announce: Any = None,
) -> Any:
    """The runner to use: the data-parallel one inside a torchrun launch, else ``kind``.

    Args:
        kind: local (this machine) or ray.
        jobs: worker processes of the local runner (0 = one per core, at most one per job).
        threads: --threads (0: :func:`bnlab.lab.jobs.thread_budget` decides per process).
        ray_address: with ray, the cluster to join (None = start a local Ray).
        one_process: run every job in this process (a CUDA device: processes would queue on it).
        announce: inside torchrun, what the follower ranks receive (the run's configuration).
    """
    from bnlab.lab.runners import ddp

    if ddp.launched_by_torchrun():
        return ddp.DistributedRunner(announce)
    if kind == "ray":
        from bnlab.lab.runners.ray import RayRunner

        return RayRunner(ray_address, jobs, threads)
    from bnlab.lab.runners.local import LocalRunner

    return LocalRunner(jobs, threads, one_process=one_process)
