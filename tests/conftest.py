"""Shared fixtures: where the real data is (skip cleanly when it is absent), one torch thread,
and the checks every experiment's run directory must pass."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from bnlab.lab.experiments.common import torch_threads
from bnlab.lab.experiments.protocol import Experiment
from bnlab.lab.report.html import Section

MNIST_TEST_FILES = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def data_root() -> Path:
    """$BNLAB_TEST_DATA, else ../shared/data beside the repository."""
    root = os.environ.get("BNLAB_TEST_DATA")
    return Path(root) if root else Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """A data root holding mnist/ with at least the test split, or skip."""
    root = data_root()
    if not all((root / "mnist" / f).is_file() for f in MNIST_TEST_FILES):
        pytest.skip(f"MNIST not found in {root / 'mnist'} (set BNLAB_TEST_DATA to a data root)")
    return root


@pytest.fixture(scope="module", params=["compiled", "torch"])
def each_backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs every test of a module once per bnlab backend: the compiled kernels and the
    plain-torch path. Use with ``pytestmark = pytest.mark.usefixtures("each_backend")``."""
    from bnlab import kernels
    from bnlab.kernels import cpu

    if request.param == "compiled" and not cpu.load():
        pytest.skip(f"bnlab's compiled kernels are unavailable here: {cpu.status()}")
    with kernels.use_backend(request.param):
        yield request.param


@pytest.fixture
def seeded_one_thread() -> Iterator[None]:
    """Seeded, and one torch thread as in the experiments' run(): tiny GEMMs crawl on a shared
    2-core box. Use with ``pytestmark = pytest.mark.usefixtures("seeded_one_thread")``."""
    torch.manual_seed(0)
    with torch_threads(1):
        yield


@pytest.fixture
def check_run_files() -> Callable[[Path, str, Iterable[str]], dict[str, Any]]:
    """A check of the run-directory contract: config.json (written first: "experiment" and
    "config" lead), metrics.jsonl, report.html and the given figures as PNGs. Returns the
    contents of config.json."""

    def check(run_dir: Path, experiment: str, figures: Iterable[str]) -> dict[str, Any]:
        names = {p.name for p in run_dir.iterdir()}
        assert {"config.json", "metrics.jsonl", "report.html"} <= names
        for f in figures:
            assert (run_dir / f).read_bytes()[:8] == PNG_MAGIC, f
        meta = json.loads((run_dir / "config.json").read_text())
        assert list(meta)[:2] == ["experiment", "config"] and meta["experiment"] == experiment
        return meta

    return check


def _experiment_sections(sections: list[Section]) -> list[Section]:
    """The experiment's own sections: every report ends with the run's configuration (folded
    settings and provenance, the same for all experiments), checked here once."""
    *own, config = sections
    assert config.title == "Run configuration" and config.tables[0].folded
    settings = {row[0] for row in config.tables[0].rows}
    assert {"out", "quick", "threads"} <= settings
    return own


@pytest.fixture
def report_from_files(
    monkeypatch: pytest.MonkeyPatch,
) -> Callable[..., list[Section]]:
    """The report of ``run_dir`` as ``bnlab report`` builds it (read through its
    experiment's reading half), with the training function ``module.<train>`` made to fail
    and ``figure`` deleted first: the report must come from the files alone, draw the lost
    figure again from metrics.jsonl, and leave summary.json (written by the run) as it was.
    Returns the sections."""

    def rebuild(module: ModuleType, train: str, run_dir: Path, figure: str) -> list[Section]:
        def no_training(*_a: object, **_k: object) -> None:
            raise AssertionError(f"{module.__name__}.{train} ran: a report must not train")

        monkeypatch.setattr(module, train, no_training)
        summary = run_dir / "summary.json"
        before = summary.read_bytes() if summary.exists() else None
        (run_dir / figure).unlink()
        from bnlab.lab.experiments.reports import read_run

        reading, run = read_run(run_dir)
        sections = reading.sections(run)
        assert all(isinstance(s, Section) for s in sections)
        assert (run_dir / figure).read_bytes()[:8] == PNG_MAGIC
        assert (summary.read_bytes() if summary.exists() else None) == before
        return _experiment_sections(sections)

    return rebuild


@pytest.fixture
def report_from_run_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> Callable[[Experiment[Any], Path, str], list[Section]]:
    """An experiment's ``report`` on a copy of ``run_dir`` without summary.json and without
    ``figure``, with the experiment's load and train made to fail and no dataset to be found:
    the report must come from the files alone, draw the lost figure again from metrics.jsonl,
    and never write summary.json (the run does). Returns the sections."""

    def rebuild(exp: Experiment[Any], run_dir: Path, figure: str) -> list[Section]:
        for fn in (exp.load, exp.train):

            def forbidden(*_a: object, _name: str = fn.__name__, **_k: object) -> None:
                raise AssertionError(f"{exp.name}'s report must not call {_name}")

            monkeypatch.setattr(sys.modules[fn.__module__], fn.__name__, forbidden)
        monkeypatch.setenv("BNLAB_DATA", str(tmp_path / "no-data-here"))
        copy = tmp_path / "report-copy"
        shutil.copytree(run_dir, copy)
        (copy / "summary.json").unlink()
        (copy / figure).unlink()
        from bnlab.lab.experiments.reports import read_run

        reading, run = read_run(copy)
        assert reading is exp.reading
        sections = reading.sections(run)
        assert sections and all(isinstance(s, Section) for s in sections)
        assert (copy / figure).read_bytes()[:8] == PNG_MAGIC
        assert not (copy / "summary.json").exists()
        return _experiment_sections(sections)

    return rebuild
