"""`bnlab report RUN_DIR...`: report.html (or report.md) from run directories; never trains.

Every experiment's reading half (:class:`~bnlab.lab.experiments.protocol.ExperimentReport`,
in its ``report.py``) is listed here: its config class, analysis and report. Nothing here
imports an experiment's training code or the registry of commands.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tyro
from tyro.conf import Positional

from bnlab.lab.experiments.ablation.report import REPORT as ABLATION
from bnlab.lab.experiments.activations.report import REPORT as ACTIVATIONS
from bnlab.lab.experiments.batch_size.report import REPORT as BATCH_SIZE
from bnlab.lab.experiments.gan.report import REPORT as GAN
from bnlab.lab.experiments.gan_norms.report import REPORT as GAN_NORMS
from bnlab.lab.experiments.ioffe2015.report import REPORT as IOFFE2015
from bnlab.lab.experiments.protocol import ExperimentReport
from bnlab.lab.experiments.regularization.report import REPORT as REGULARIZATION
from bnlab.lab.experiments.running_stats.report import REPORT as RUNNING_STATS
from bnlab.lab.experiments.santurkar2018.report import REPORT as SANTURKAR2018
from bnlab.lab.report.html import Section, write_report
from bnlab.lab.results import Run, load_run
from bnlab.lab.runs import read_config

__all__ = ["REPORTS", "ReportArgs", "build_report", "main", "read_run"]

REPORTS: dict[str, ExperimentReport[Any, Any]] = {
    r.name: r
    for r in (
        GAN,
        ABLATION,
        GAN_NORMS,
        ACTIVATIONS,
        IOFFE2015,
        SANTURKAR2018,
        REGULARIZATION,
        RUNNING_STATS,
        BATCH_SIZE,
    )
}


def read_run(run_dir: str | Path) -> tuple[ExperimentReport[Any, Any], Run[Any]]:
    """The run in ``run_dir`` with its experiment's typed config, and how to read it."""
    run_dir = Path(run_dir)
    name = read_config(run_dir).get("experiment")
    if name not in REPORTS:
        known = ", ".join(REPORTS)
        raise ValueError(f"{run_dir / 'config.json'}: unknown experiment {name!r}; known: {known}")
    reading = REPORTS[str(name)]
    return reading, load_run(run_dir, reading.config, reading.name)


def build_report(run_dirs: list[Path], out: Path | None = None, markdown: bool = False) -> Path:
    """Write report.html (or with ``markdown``, report.md) for one or several run directories;
    returns its path.

    One run directory: ``RUN_DIR/report.html``. Several: ``out`` (default ./report.html), the
    runs' sections one after another, after a comparison of the runs where the experiment
    has one (runs of the same experiment).
    """
    if not run_dirs:
        raise ValueError("bnlab report needs at least one run directory")
    runs = [read_run(d) for d in run_dirs]
    analyses = [reading.analyse(run) for reading, run in runs]  # each run analysed once
    sections: list[Section] = []
    kinds = {reading.name for reading, _ in runs}
    if len(runs) > 1 and len(kinds) == 1:
        sections.extend(runs[0][0].compare_sections([run for _, run in runs], analyses))
    for (reading, run), analysis in zip(runs, analyses, strict=True):
        sections.extend(reading.sections(run, analysis))
    names = "; ".join(f"{reading.name} ({run.dir})" for reading, run in runs)
    name = "report.md" if markdown else "report.html"
    if out is None:
        out = Path(run_dirs[0]) / name if len(run_dirs) == 1 else Path(name)
    _check_out(Path(out))
    if markdown:
        from bnlab.lab.report.markdown import write_markdown

        return write_markdown(out, sections, "bnlab report", names)
    return write_report(out, sections, "bnlab report", names)


REPORT_NAMES = ("report.html", "report.md")


def _check_out(out: Path) -> None:
    """Refuse an ``--out`` that is a directory, or an existing file of a run directory that
    is not a report (.html, .md): config.json, metrics.jsonl, a checkpoint, a sample grid.
    A report never overwrites a run's own files."""
    if out.is_dir():
        raise ValueError(
            f"--out {out} is a directory; give a file path, e.g. {out / REPORT_NAMES[0]}"
        )
    target = out.resolve()
    if not target.exists() or target.suffix in (".html", ".md"):
        return
    for parent in target.parents:
        if (parent / "config.json").is_file():
            raise ValueError(
                f"--out {out} is a file of the run in {parent}, which bnlab report never "
                f"overwrites; write the report elsewhere, or to {parent / REPORT_NAMES[0]}"
            )


@dataclass(frozen=True)
class ReportArgs:
    """Build a self-contained report.html from run directories (never trains)."""

    run_dirs: Positional[tuple[Path, ...]]
    """run directories written by bnlab experiments"""
    out: Path | None = None
    """where to write (default: RUN_DIR/report.html for one run, ./report.html for several)"""
    markdown: bool = False
    """write report.md instead: the claims, tables and prose as Markdown, to quote in a README
    or an issue (every number from the run directories), its figures as PNG files in
    report_files/ beside it"""


def main(argv: list[str]) -> int:
    """``bnlab report``'s command line."""
    args = tyro.cli(ReportArgs, args=argv, prog="bnlab report")
    try:
        path = build_report(list(args.run_dirs), args.out, args.markdown)
    except ValueError as exc:
        print(f"bnlab report: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # --out read-only, on a full disk, ...
        where = exc.filename or args.out
        print(f"bnlab report: error: cannot write {where} ({exc.strerror or exc})", file=sys.stderr)
        return 2
    print(path)
    return 0
