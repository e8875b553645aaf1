"""Reports: run directories -> figures and one self-contained report.html.

Each experiment module has ``report(run_dir) -> list[Section]``; this package only finds the
right one (``config.json["experiment"]``) and lays the sections out.
"""

from __future__ import annotations

from pathlib import Path

from bnlab.lab.report.html import Section, write_report
from bnlab.lab.runs import read_config

__all__ = ["build_report", "experiment_of"]


def experiment_of(run_dir: Path) -> str:
    from bnlab.lab.experiments import EXPERIMENTS

    meta = read_config(run_dir)
    name = meta.get("experiment")
    if name not in EXPERIMENTS:
        known = ", ".join(EXPERIMENTS)
        raise ValueError(f"{run_dir / 'config.json'}: unknown experiment {name!r}; known: {known}")
    return str(name)


def sections_for(run_dir: Path) -> list[Section]:
    from bnlab.lab.experiments import EXPERIMENTS

    return EXPERIMENTS[experiment_of(run_dir)].report(Path(run_dir))


def build_report(run_dirs: list[Path], out: Path | None = None, markdown: bool = False) -> Path:
    """Write report.html (or with ``markdown``, report.md) for one or several run directories;
    returns its path.

    One run directory: ``RUN_DIR/report.html``. Several: ``out`` (default ./report.html), the
    runs' sections one after another, after a comparison of the runs where the experiment
    has one (runs of the same experiment).
    """
    if not run_dirs:
        raise ValueError("bnlab report needs at least one run directory")
    from bnlab.lab.experiments import EXPERIMENTS

    sections: list[Section] = []
    kinds = {experiment_of(d) for d in run_dirs}
    if len(run_dirs) > 1 and len(kinds) == 1:
        exp = EXPERIMENTS.get(next(iter(kinds)))
        if exp is not None and exp.compare is not None:
            sections.extend(exp.compare([Path(d) for d in run_dirs]))
    names = []
    for run_dir in run_dirs:
        sections.extend(sections_for(run_dir))
        names.append(f"{experiment_of(run_dir)} ({run_dir})")
    name = "report.md" if markdown else "report.html"
    if out is None:
        out = run_dirs[0] / name if len(run_dirs) == 1 else Path(name)
    if markdown:
        from bnlab.lab.report.markdown import write_markdown

        return write_markdown(out, sections, "bnlab report", "; ".join(names))
    return write_report(out, sections, "bnlab report", "; ".join(names))
