"""Runners: where the chunks of an experiment's jobs execute.

Only runners know about backends; experiments hand the driver typed jobs and a pure training
function (see :mod:`bnlab.lab.experiments.protocol`), the driver hands both to a runner. A runner
calls ``recorder.chunk_done(job_state, result)`` in the driver process for each finished chunk;
that is where the run directory is written, so every runner leaves the same files.

- ``local`` (default): this process for one job at a time, else a process pool with one
  single-threaded worker per core (:mod:`bnlab.lab.runners.local`).
- ``ray``: one Ray task per chunk on a local or remote Ray cluster (:mod:`bnlab.lab.runners.ray`).
- inside ``torchrun``: each job trained by all ranks together, data-parallel
  (:mod:`bnlab.lab.runners.ddp`).
"""

from __future__ import annotations

from typing import Any

__all__ = ["make_runner"]


def make_runner(cfg: Any, exp: Any) -> Any:
    """The runner a config asks for (``cfg.runner``, ``cfg.jobs``, ``cfg.ray_address``), or
    the data-parallel one inside a torchrun launch."""
    from bnlab.lab.runners import ddp

    if ddp.launched_by_torchrun():
        return ddp.DistributedRunner(exp.threads)
    if cfg.runner == "ray":
        from bnlab.lab.runners.ray import RayRunner

        return RayRunner(cfg.ray_address, cfg.jobs, exp.threads)
    from bnlab.lab.runners.local import LocalRunner

    device = str(getattr(cfg, "device", "cpu"))
    return LocalRunner(cfg.jobs, exp.threads, one_process=device.startswith("cuda"))
