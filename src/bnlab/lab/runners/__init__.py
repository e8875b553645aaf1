"""Runners: where the chunks of an experiment's jobs execute.

Only runners know about backends; experiments hand the driver typed jobs and a pure training
function (see :mod:`bnlab.lab.jobs`), the driver hands both to a runner. A runner
calls ``recorder.chunk_done(job_state, result)`` in the driver process for each finished chunk;
that is where the run directory is written, so every runner leaves the same files.

- ``local`` (default): this process for one job at a time, else a process pool with one
  single-threaded worker per core (:mod:`bnlab.lab.runners.local`).

Every process that trains (this one, a worker, a Ray task, a rank) runs with
:func:`threads_per_process` torch threads: one unless asked otherwise.
- ``ray``: one Ray task per chunk on a local or remote Ray cluster (:mod:`bnlab.lab.runners.ray`).
- inside ``torchrun``: each job trained by all ranks together, data-parallel
  (:mod:`bnlab.lab.runners.ddp`).
"""

from __future__ import annotations

import os
from typing import Any, Literal

__all__ = ["make_runner", "threads_per_process"]


def threads_per_process(requested: int = 0) -> int:
    """Torch CPU threads for each process that trains: ``requested`` (``--threads``) when > 0,
    else ``$OMP_NUM_THREADS`` when set, else 1.

    Why one: the lab's nets are small (the GAN's largest GEMM is (100, 784) x (784, 256)), so
    a second thread buys little alone, while a team of OpenMP threads spin-waits at the end of
    every parallel region for its slowest member. When another process shares the cores, that
    member is often descheduled and the team burns its time slices waiting: two 2-thread
    `bnlab gan` runs at once trained at 1/20 of their alone speed, two 1-thread runs at about
    half each (bench/bench_contention.py). Parallelism comes from processes (jobs, ranks),
    which the kernel's scheduler shares fairly. Passive OpenMP waiting (OMP_WAIT_POLICY) only
    softens the collapse and must be set before torch is imported, so it is not the lever.
    """
    if requested > 0:
        return requested
    env = os.environ.get("OMP_NUM_THREADS", "")
    return int(env) if env.isdigit() and int(env) > 0 else 1


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
        threads: torch threads of each process that trains (:func:`threads_per_process`).
        ray_address: with ray, the cluster to join (None = start a local Ray).
        one_process: run every job in this process (a CUDA device: processes would queue on it).
        announce: inside torchrun, what the follower ranks receive (the run's configuration).
    """
    from bnlab.lab.runners import ddp

    if ddp.launched_by_torchrun():
        return ddp.DistributedRunner(threads, announce)
    if kind == "ray":
        from bnlab.lab.runners.ray import RayRunner

        return RayRunner(ray_address, jobs, threads)
    from bnlab.lab.runners.local import LocalRunner

    return LocalRunner(jobs, threads, one_process=one_process)
