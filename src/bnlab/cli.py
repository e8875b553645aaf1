"""`bnlab <command>`: maps command-line flags onto an experiment's Config, nothing else.

Each experiment is registered as (Config class, run function); tyro derives the flags and their
help from the Config's fields and docstrings.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

# name -> (module, Config class, run function, one-line summary)
EXPERIMENTS: dict[str, tuple[str, str, str, str]] = {
    "gan": (
        "bnlab.experiments.gan",
        "GanConfig",
        "run",
        "the blog's MNIST GAN notebooks side by side (the main job)",
    ),
}

# name -> (module, function taking argv, one-line summary)
TOOLS: dict[str, tuple[str, str, str]] = {}


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
