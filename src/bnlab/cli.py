"""`bnlab <command>`: maps command-line flags onto an experiment's Config, nothing else.

Each experiment is an entry of ``bnlab.experiments.EXPERIMENTS``; tyro derives its flags and
their help from its Config's fields and docstrings.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tyro.conf import Positional

from bnlab.config import IntList

# name -> (module, function taking argv, one-line summary)
TOOLS: dict[str, tuple[str, str, str]] = {
    "report": ("bnlab.cli", "report_main", "report.html (+ PNGs) from one or more run directories"),
    "doctor": ("bnlab.cli", "doctor_main", "find batch-norm misuse in your model: FILE.py:factory"),
}


@dataclass(frozen=True)
class ReportArgs:
    """Build a self-contained report.html from run directories (never trains)."""

    run_dirs: Positional[tuple[Path, ...]]
    """run directories written by bnlab experiments"""
    out: Path | None = None
    """where to write (default: RUN_DIR/report.html for one run, ./report.html for several)"""
    markdown: bool = False
    """write report.md instead: the claims, tables and prose as Markdown, to quote in a README
    or an issue (every number from the run directories)"""


@dataclass(frozen=True)
class DoctorArgs:
    """Inspect a model for batch-norm misuse: structure, and with --input-shape, a forward pass.

    Exit status: 0 the doctor ran and found no ERROR (warnings and info may be listed); 1 it ran
    and found at least one ERROR; 2 it could not run (malformed spec, the file or the factory
    raised or does not exist, a zero, negative or oversized --input-shape, the model failed on
    the example input): one line on stderr saying why.
    """

    spec: Positional[str]
    """the model: path/to/file.py:factory (a function returning an nn.Module, or a module)"""
    input_shape: IntList = ()
    """shape of a random example input, e.g. 64,784 (enables batch and train/eval-gap checks)"""


def report_main(argv: list[str]) -> int:
    import tyro

    from bnlab.report import build_report

    args = tyro.cli(ReportArgs, args=argv, prog="bnlab report")
    try:
        path = build_report(list(args.run_dirs), args.out, args.markdown)
    except ValueError as exc:
        print(f"bnlab report: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def doctor_main(argv: list[str]) -> int:
    import tyro

    from bnlab import doctor

    args = tyro.cli(DoctorArgs, args=argv, prog="bnlab doctor")
    try:
        return doctor.main(args.spec, tuple(args.input_shape) or None)
    except ValueError as exc:  # could not run: the user's spec, file, factory, shape or model
        print(f"bnlab doctor: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:  # a bug in the doctor itself: keep the traceback, but not status 1
        traceback.print_exc()
        print(
            "bnlab doctor: internal error (please report it with the traceback above)",
            file=sys.stderr,
        )
        return 2


def run_main(name: str, argv: list[str]) -> int:
    """``bnlab <experiment> ...``: flags -> Config -> the protocol's driver.

    Exit status: 0 done; 1 the run finished but some jobs failed (the summary says which);
    2 bad input (nothing was started); 130 interrupted (resumable with --resume).
    """
    import tyro

    from bnlab.experiments import EXPERIMENTS
    from bnlab.experiments.protocol import given_fields
    from bnlab.runners import ddp

    exp = EXPERIMENTS[name]
    cfg = tyro.cli(exp.config, args=argv, prog=f"bnlab {name}")
    given = given_fields(exp.config, argv)
    if ddp.launched_by_torchrun():
        return _run_rank(name, exp, cfg, given)
    if getattr(cfg, "nproc", 1) > 1:
        return _launch_torchrun(name, cfg, argv)
    return _drive(name, exp, cfg, given)


def _drive(name: str, exp: Any, cfg: Any, given: set[str]) -> int:
    from bnlab.experiments.protocol import RunFailed, RunStopped, run_experiment

    try:
        run_experiment(exp, cfg, given=given)
    except (KeyboardInterrupt, RunStopped):
        return 130
    except RunFailed as exc:
        print(f"bnlab {name}: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # bad input: one clear line, no traceback
        print(f"bnlab {name}: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _run_rank(name: str, exp: Any, cfg: Any, given: set[str]) -> int:
    """One rank of ``torchrun -m bnlab <experiment>``: rank 0 drives, the others follow."""
    import dataclasses
    import os

    from bnlab.experiments.common import resolve_device
    from bnlab.runners import ddp

    world = int(os.environ["WORLD_SIZE"])
    if not exp.data_parallel:
        print(f"bnlab {name}: error: it does not train data-parallel; run it without torchrun")
        return 2
    if "nproc" in given and cfg.nproc != world:
        print(
            f"bnlab {name}: error: --nproc {cfg.nproc} but torchrun started {world} processes",
            file=sys.stderr,
        )
        return 2
    cfg = dataclasses.replace(cfg, nproc=world)
    given = {*given, "nproc"}
    try:
        device = str(resolve_device(cfg.device))
    except ValueError as exc:
        print(f"bnlab {name}: error: {exc}", file=sys.stderr)
        return 2
    ddp.init_from_env(device)
    try:
        if ddp.rank() == 0:
            return _drive(name, exp, cfg, given)
        ddp.follow(exp)
        return 0
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _launch_torchrun(name: str, cfg: Any, argv: list[str]) -> int:
    """``bnlab <experiment> --nproc N``: torchrun's own launcher, on this machine, loopback
    only; the run directory is fixed here so that a failure can say how to resume."""
    import os

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from bnlab.runners.local import cpu_count
    from bnlab.runs import latest_run_dir, new_run_dir

    try:
        cfg.validate()
    except ValueError as exc:
        print(f"bnlab {name}: error: {exc}", file=sys.stderr)
        return 2
    out = cfg.out
    if out is None:
        out = latest_run_dir("runs", name) if cfg.resume else new_run_dir("runs", name)
        if out is not None:
            argv = [*argv, "--out", str(out)]
    argv = _without_flag(argv, "--nproc")  # the ranks learn it from torchrun (WORLD_SIZE)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cpu_count() // cfg.nproc)))
    launch = [
        "--nnodes=1",
        f"--nproc-per-node={cfg.nproc}",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        "--max-restarts=0",
        "-m",
        "bnlab",
        name,
        *argv,
    ]
    try:
        torchrun(launch)
    except ChildFailedError as exc:
        ranks = ", ".join(f"rank {r} (exit {f.exitcode})" for r, f in exc.failures.items())
        again = f"bnlab {name} --resume --out {out} --nproc {cfg.nproc}"
        print(
            f"bnlab {name}: {ranks} failed, and torchrun stopped the others; every finished "
            f"chunk is checkpointed: continue with {again}",
            file=sys.stderr,
        )
        codes = {r: f.exitcode for r, f in exc.failures.items()}
        if set(codes.values()) == {2}:
            return 2  # bad input on every rank: nothing started
        if codes.get(0, 1) == 1:
            return 1  # the run finished with failed jobs (or a rank failed after it)
        return 130  # stopped before the end (a rank lost, SIGTERM): resumable
    return 0


def _without_flag(argv: list[str], flag: str) -> list[str]:
    """argv without ``flag VALUE`` / ``flag=VALUE``."""
    out, skip = [], False
    for token in argv:
        if skip:
            skip = False
        elif token == flag:
            skip = True
        elif not token.startswith(flag + "="):
            out.append(token)
    return out


def _usage() -> str:
    from bnlab import __version__

    lines = [
        f"bnlab {__version__}: batch normalization from first principles, and a lab.",
        "",
        "usage: bnlab <command> [options]     (bnlab <command> --help for its options)",
        "",
        "experiments:",
    ]
    from bnlab.experiments import EXPERIMENTS

    lines += [f"  {name:<18} {exp.summary}" for name, exp in EXPERIMENTS.items()]
    if TOOLS:
        lines += ["", "tools:"]
        lines += [f"  {name:<18} {summary}" for name, (_, _, summary) in TOOLS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        from bnlab import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    from bnlab.experiments import EXPERIMENTS

    if name in EXPERIMENTS:
        return run_main(name, rest)
    if name in TOOLS:
        module_name, func_name, _ = TOOLS[name]
        func: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func_name)
        return func(rest)
    print(f"bnlab: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
