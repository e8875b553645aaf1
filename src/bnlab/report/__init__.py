"""Reports: run directories -> figures and one self-contained report.html.

Each experiment module has ``report(run_dir) -> list[Section]``; this package only finds the
right one (``config.json["experiment"]``) and lays the sections out.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

from bnlab.report.html import Section, write_report

__all__ = ["build_report", "experiment_of"]

# experiment name (config.json) -> module with report(run_dir)
REPORTERS = {
    "gan": "bnlab.experiments.gan_report",
    "activations": "bnlab.experiments.activations",
    "ioffe2015": "bnlab.experiments.ioffe2015",
    "regularization": "bnlab.experiments.regularization",
    "running-stats": "bnlab.experiments.running_stats",
    "gan-ablation": "bnlab.experiments.ablation",
}


def experiment_of(run_dir: Path) -> str:
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ValueError(f"{run_dir} is not a bnlab run directory (no config.json)")
    name = json.loads(path.read_text()).get("experiment")
    if name not in REPORTERS:
        raise ValueError(f"{path}: unknown experiment {name!r}; known: {', '.join(REPORTERS)}")
    return str(name)


def sections_for(run_dir: Path) -> list[Section]:
    module = importlib.import_module(REPORTERS[experiment_of(run_dir)])
    sections: list[Section] = module.report(Path(run_dir))
    return sections


def build_report(run_dirs: list[Path], out: Path | None = None) -> Path:
    """Write report.html for one or several run directories; returns its path.

    One run directory: ``RUN_DIR/report.html``. Several: ``out`` (default ./report.html), the
    runs' sections one after another.
    """
    if not run_dirs:
        raise ValueError("bnlab report needs at least one run directory")
    sections: list[Section] = []
    names = []
    for run_dir in run_dirs:
        sections.extend(sections_for(run_dir))
        names.append(f"{experiment_of(run_dir)} ({run_dir})")
    if out is None:
        out = run_dirs[0] / "report.html" if len(run_dirs) == 1 else Path("report.html")
    return write_report(out, sections, "bnlab report", "; ".join(names))
