"""`bnlab <experiment>`: maps command-line flags onto an experiment's Config, nothing else."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bnlab", description=__doc__)
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    args = parser.parse_args(argv)
    if args.version:
        from bnlab import __version__

        print(__version__)
    return 0


if __name__ == "__main__":
    sys.exit(main())
