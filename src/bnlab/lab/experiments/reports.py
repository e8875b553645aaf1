"""`bnlab report RUN_DIR...`: report.html (or report.md) from run directories; never trains."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import tyro
from tyro.conf import Positional

__all__ = ["ReportArgs", "main"]


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


def main(argv: list[str]) -> int:
    from bnlab.lab.report import build_report

    args = tyro.cli(ReportArgs, args=argv, prog="bnlab report")
    try:
        path = build_report(list(args.run_dirs), args.out, args.markdown)
    except ValueError as exc:
        print(f"bnlab report: error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0
