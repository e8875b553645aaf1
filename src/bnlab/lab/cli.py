"""`bnlab <command>`: maps command-line flags onto an experiment's Config, nothing else.

Each experiment is an entry of ``bnlab.lab.experiments.EXPERIMENTS``; tyro derives its flags and
their help from its Config's fields and docstrings.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Callable
from typing import Any

# What `pip install 'bnlab[lab]'` adds to the library (torch, numpy), by import name.
LAB_MODULES = ("tyro", "matplotlib", "scipy", "tqdm", "PIL")

# name -> (module, function taking argv, one-line summary)
TOOLS: dict[str, tuple[str, str, str]] = {
    "report": (
        "bnlab.lab.experiments.reports",
        "main",
        "report.html (+ PNGs) from one or more run directories",
    ),
    "doctor": ("bnlab.doctor", "cli", "find batch-norm misuse in your model: FILE.py:factory"),
}
LIBRARY_TOOLS = ("doctor",)  # run with the library alone (no lab extra)


def missing_lab_modules() -> list[str]:
    """The lab's dependencies that are not installed (import names)."""

    def found(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a broken or half-removed install
            return False

    return [m for m in LAB_MODULES if not found(m)]


def run_main(name: str, argv: list[str]) -> int:
    """``bnlab <experiment> ...``: flags -> Config -> the protocol's driver.

    Exit status: 0 done; 1 the run finished but some jobs failed (the summary says which);
    2 bad input (nothing was started); 130 interrupted (resumable with --resume).
    """
    import tyro

    from bnlab.lab.configs import given_fields
    from bnlab.lab.experiments import EXPERIMENTS
    from bnlab.lab.runners import ddp

    exp = EXPERIMENTS[name]
    cfg = tyro.cli(exp.config, args=argv, prog=f"bnlab {name}")
    given = given_fields(exp.config, argv)
    if ddp.launched_by_torchrun():
        return _run_rank(name, exp, cfg, given)
    if exp.data_parallel and (cfg.nproc > 1 or cfg.resume):
        # Checked here, before any rank starts (a rank's refusal would come with the others'
        # tracebacks); a resume takes the run's own --nproc from its config.json.
        from bnlab.lab.experiments.driver import check_before_launch

        try:
            checked = check_before_launch(exp, cfg, given)
        except ValueError as exc:
            print(f"bnlab {name}: error: {exc}", file=sys.stderr)
            return 2
        if checked.nproc > 1:
            return _launch_torchrun(name, checked, argv)
    return _drive(name, exp, cfg, given)


def _drive(name: str, exp: Any, cfg: Any, given: set[str]) -> int:
    from bnlab.lab.experiments.driver import RunFailed, run_experiment
    from bnlab.lab.jobs import RunStopped, sigterm_as_interrupt

    try:
        with sigterm_as_interrupt():  # from the start: loading data, training, the report
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
    import os

    from bnlab.lab.configs import replace_flat
    from bnlab.lab.experiments.common import resolve_device
    from bnlab.lab.jobs import exit_when_gone
    from bnlab.lab.runners import ddp

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
    cfg = replace_flat(cfg, {"nproc": world})
    given = {*given, "nproc"}
    try:
        device = str(resolve_device(cfg.device))
    except ValueError as exc:
        print(f"bnlab {name}: error: {exc}", file=sys.stderr)
        return 2
    exit_when_gone(os.getppid())  # a SIGKILLed launcher takes its ranks with it
    ddp.init_from_env(device)
    try:
        if ddp.rank() == 0:
            return _drive(name, exp, cfg, given)

        def load_and_plan(announced: Any) -> tuple[list[Any], Any]:
            loaded = exp.load(announced, lambda _msg: None)
            return exp.plan(announced, loaded.data), loaded.data

        from bnlab.lab.jobs import RunStopped, sigterm_as_interrupt

        try:
            with sigterm_as_interrupt():
                ddp.follow(load_and_plan, exp.train)
        except (KeyboardInterrupt, RunStopped):
            return 130  # rank 0 (or the launcher) says what happened, once
        except RuntimeError:  # a collective failed: rank 0 is gone
            print(f"bnlab {name}: rank {ddp.rank()} lost rank 0; stopping", file=sys.stderr)
            return 130
        return 0
    finally:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def _launch_torchrun(name: str, cfg: Any, argv: list[str]) -> int:
    """``bnlab <experiment> --nproc N``: torchrun's own launcher, on this machine, loopback
    only; the run directory is fixed here so that a failure can say how to resume."""
    import logging
    import os
    from pathlib import Path

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    from bnlab.lab.experiments.driver import resume_command
    from bnlab.lab.jobs import thread_budget

    out = cfg.out  # resolved by check_before_launch
    argv = [*_without_flag(argv, "--out"), "--out", str(out)]
    argv = _without_flag(argv, "--nproc")  # the ranks learn it from torchrun (WORLD_SIZE)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    # each rank's torch threads (its share of the cores, fixed): read by torch at import
    os.environ["OMP_NUM_THREADS"] = str(thread_budget(cfg.threads, cfg.nproc).most)
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
    again = resume_command(name, out, cfg.nproc)
    # torchrun's agent logs each rank it stops, and its errors, with file:line prefixes: the
    # lines below say what happened, once.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    try:
        torchrun(launch)
    except (KeyboardInterrupt, SignalException):  # Ctrl-C, SIGTERM: the ranks were stopped
        if (Path(out) / "config.json").exists():
            print(f"bnlab {name}: interrupted; continue with: {again}", file=sys.stderr)
        return 130
    except ChildFailedError as exc:
        codes = {r: f.exitcode for r, f in exc.failures.items()}
        first, failure = exc.get_first_failure()
        how = (
            f"was lost (killed by signal {-failure.exitcode})"
            if failure.exitcode < 0
            else f"exited with status {failure.exitcode}"
        )
        if set(codes.values()) != {2}:  # (on bad input every rank said why itself)
            print(
                f"bnlab {name}: rank {first} {how}, and torchrun stopped the others; every "
                f"finished chunk is checkpointed: continue with {again}",
                file=sys.stderr,
            )
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
    from bnlab.lab.experiments import EXPERIMENTS

    lines += [f"  {name:<18} {exp.summary}" for name, exp in EXPERIMENTS.items()]
    if TOOLS:
        lines += ["", "tools:"]
        lines += [f"  {name:<18} {summary}" for name, (_, _, summary) in TOOLS.items()]
    return "\n".join(lines)


def _tool(name: str, argv: list[str]) -> int:
    module_name, func_name, _ = TOOLS[name]
    func: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func_name)
    return func(argv)


def main(argv: list[str] | None = None) -> int:
    """``bnlab``'s command line; returns the exit status (130: interrupted, quietly)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C while importing: nothing started, nothing to say
        return 130


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--version":
        from bnlab import __version__

        print(__version__)
        return 0
    name, rest = (argv[0], argv[1:]) if argv else ("", [])
    if name in LIBRARY_TOOLS:  # the library's own commands: no lab needed
        return _tool(name, rest)
    if missing := missing_lab_modules():
        print(
            f"bnlab: the lab is not installed (missing {', '.join(missing)}): pip install "
            "'bnlab[lab]' (the library alone: import bnlab.nn, and bnlab doctor)",
            file=sys.stderr,
        )
        return 2
    if not argv or name in ("-h", "--help", "help"):
        print(_usage())
        return 0
    from bnlab.lab.experiments import EXPERIMENTS

    if name in EXPERIMENTS:
        return run_main(name, rest)
    if name in TOOLS:
        return _tool(name, rest)
    print(f"bnlab: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
