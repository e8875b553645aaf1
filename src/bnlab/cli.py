"""`bnlab <command>`: maps command-line flags onto an experiment's Config, nothing else.

Each experiment is registered as (Config class, run function); tyro derives the flags and their
help from the Config's fields and docstrings.
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

# name -> (module, Config class, run function, one-line summary)
EXPERIMENTS: dict[str, tuple[str, str, str, str]] = {
    "gan": (
        "bnlab.experiments.gan",
        "GanConfig",
        "run",
        "the blog's MNIST GAN notebooks side by side (the main job)",
    ),
    "activations": (
        "bnlab.experiments.activations",
        "Config",
        "run",
        "per-layer activation histograms by init, with and without BN (C5, the CS231n figure)",
    ),
    "ioffe2015": (
        "bnlab.experiments.ioffe2015",
        "Config",
        "run",
        "Ioffe & Szegedy 2015 Figure 1: sigmoid MLP with/without BN, accuracy and percentiles",
    ),
    "regularization": (
        "bnlab.experiments.regularization",
        "Config",
        "run",
        "claim C6: train-test gap with/without BN over seeds, and one digit's batch dependence",
    ),
    "running-stats": (
        "bnlab.experiments.running_stats",
        "Config",
        "run",
        "eval-mode BN statistics: EMA vs cumulative average vs precise recomputation",
    ),
    "gan-ablation": (
        "bnlab.experiments.ablation",
        "AblationConfig",
        "run",
        "which of notebook 2's differences broke its BN GAN: factorial design",
    ),
}

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
        path = build_report(list(args.run_dirs), args.out)
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


def _usage() -> str:
    from bnlab import __version__

    lines = [
        f"bnlab {__version__}: batch normalization from first principles, and a lab.",
        "",
        "usage: bnlab <command> [options]     (bnlab <command> --help for its options)",
        "",
        "experiments:",
    ]
    lines += [f"  {name:<18} {summary}" for name, (*_, summary) in EXPERIMENTS.items()]
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
    if name in EXPERIMENTS:
        import tyro

        module_name, config_name, run_name, _ = EXPERIMENTS[name]
        module = importlib.import_module(module_name)
        config_cls = getattr(module, config_name)
        run: Callable[[Any], Any] = getattr(module, run_name)
        cfg = tyro.cli(config_cls, args=rest, prog=f"bnlab {name}")
        try:
            run(cfg)
        except KeyboardInterrupt:
            return 130
        except ValueError as exc:  # bad input: one clear line, no traceback
            print(f"bnlab {name}: error: {exc}", file=sys.stderr)
            return 2
        return 0
    if name in TOOLS:
        module_name, func_name, _ = TOOLS[name]
        func: Callable[[list[str]], int] = getattr(importlib.import_module(module_name), func_name)
        return func(rest)
    print(f"bnlab: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
