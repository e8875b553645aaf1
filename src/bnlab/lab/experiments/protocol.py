"""The experiment protocol: what every ``bnlab <experiment>`` is, as data and pure functions.

An experiment is two halves, so that reading a run never needs its training code:

- :class:`ExperimentReport` (defined in the experiment's ``report.py``): its name and title,
  its ``Config`` class, ``analyse(run) -> analysis`` (a :class:`~bnlab.lab.results.Run` ->
  a dataclass of numbers and verdicts; the driver writes it as summary.json),
  ``report(run, analysis) -> sections`` (renders that analysis, with figures drawn from the
  run's records: ``bnlab report`` rebuilds it from the run alone, it never trains), the
  one-line ``result_line`` and an optional ``compare`` of several runs (without one,
  ``bnlab report RUN_A RUN_B`` lines up the runs' claims, verdict by verdict, where the
  analysis has ``claims``);
- :class:`Experiment` (the experiment's ``experiment.py``): that report, plus
  ``load(config, log) -> Loaded`` (the data every job needs, loaded once by the driver and
  shipped once to every worker), ``plan(config, data) -> list[Job]`` (typed, frozen jobs,
  see :mod:`bnlab.lab.jobs`) and ``train(job, state, start, end, data) -> ChunkResult``
  (units [start, end) of one job; it writes nothing).

A ``Config`` is a frozen dataclass, a subclass of :class:`RunOptions`: its fields are the
flags, their docstrings the ``--help``; ``Config.validate()`` refuses bad values before any
work. Training settings a job carries are a nested sub-config, declared once (see
:mod:`bnlab.lab.configs`). The driver that runs an experiment is
:mod:`bnlab.lab.experiments.driver`.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from bnlab.lab.configs import config_to_dict, differing_settings
from bnlab.lab.jobs import ChunkResult
from bnlab.lab.report.html import Section, Table
from bnlab.lab.results import Claim, Run, verdict_text

__all__ = [
    "MAX_COUNT",
    "NOT_IN_LABELS",
    "OPERATIONAL",
    "Experiment",
    "ExperimentReport",
    "Loaded",
    "Log",
    "RunOptions",
    "check_counts",
    "claims_compare",
    "run_labels",
    "validate_training",
]

Log = Callable[[str], None]


@dataclass(frozen=True)
class RunOptions:
    """Options of every experiment: where the run goes and how it runs. An experiment's Config
    subclasses this; these fields never change the numbers a run produces."""

    out: Path | None = None
    """run directory (default: runs/<experiment>-<date>-<time>; with --resume: the newest)"""
    resume: bool = False
    """continue an interrupted run in --out (or the newest one): its config.json is the
    configuration; a flag that differs from it is refused, except those that only say how to
    run (--jobs, --runner, --ray-address, --data) and more --epochs or --seeds (appended)
    where an experiment allows it"""
    quick: bool = False
    """a run of under a minute through every code path (training, metrics, report): a taste,
    and what the tests run; flags given explicitly still win"""
    jobs: int = 0
    """worker processes of the local runner; 0 = one per CPU core, at most one per job"""
    threads: int = 0
    """torch threads of each process that trains (this one, each worker, rank or Ray task),
    fixed; 0 = $OMP_NUM_THREADS if set, else each process's share of the cores, fewer while
    other programs keep cores busy (revisited every second: threads that share cores with
    other work spin and stall)"""
    runner: Literal["local", "ray"] = "local"
    """where jobs run: local (a process pool on this machine) or ray (a Ray cluster; pip
    install 'bnlab[ray]')"""
    ray_address: str | None = None
    """with --runner ray: unset = start a local Ray (or join $RAY_ADDRESS, where set); auto,
    host:port or ray://host:port = join a cluster"""

    def validate(self) -> None:
        """Raise ValueError for a bad value, before any work starts. Subclasses extend it."""
        if self.jobs < 0:
            raise ValueError(f"--jobs must be 0 (one per core) or more, got {self.jobs}")
        if self.threads < 0:
            raise ValueError(f"--threads must be 0 (automatic) or more, got {self.threads}")
        if self.ray_address is not None and self.runner != "ray":
            raise ValueError("--ray-address needs --runner ray")


# Fields that only say where and how a run executes: a resume may change them freely.
OPERATIONAL = frozenset({f.name for f in dataclasses.fields(RunOptions)} | {"data"})
# Settings a comparison does not name runs by: how they ran, and what they wrote besides.
NOT_IN_LABELS = OPERATIONAL | {"tensorboard"}


# The largest count a budget flag (epochs, steps, widths, samples) may take: a C int, so that
# sizes, step counters and progress totals stay exact wherever torch or tqdm holds them.
MAX_COUNT = 2**31 - 1


def check_counts(settings: Any, names: tuple[str, ...]) -> None:
    """Each of ``names`` at most :data:`MAX_COUNT` (``--epochs 99999999999999999999`` is a
    typo, not a plan), named by its flag."""
    for name in names:
        value = getattr(settings, name)
        if value > MAX_COUNT:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be at most {MAX_COUNT}, got {value}")


def validate_training(settings: Any, at_least_one: tuple[str, ...]) -> None:
    """The checks training sub-configs share, each named by its flag: the ``at_least_one``
    fields in [1, :data:`MAX_COUNT`], ``batch_size`` in [2, MAX_COUNT] (BN needs two values),
    ``lr`` in (0, 1).

    Raises:
        ValueError: the first bad value.
    """
    for name in at_least_one:
        if getattr(settings, name) < 1:
            flag = "--" + name.replace("_", "-")
            raise ValueError(f"{flag} must be at least 1, got {getattr(settings, name)}")
    check_counts(settings, (*at_least_one, "batch_size"))
    if settings.batch_size < 2:
        raise ValueError(
            f"--batch-size must be at least 2 (BN needs two values), got {settings.batch_size}"
        )
    if not 0 < settings.lr < 1:
        raise ValueError(f"--lr must be in (0, 1), got {settings.lr}")


@dataclass(frozen=True)
class Loaded:
    """What ``load`` returns: the data shipped once to every worker, lines for config.json
    (e.g. ``{"data": "mnist test split, 10,000 images from ..."}``) and files for the run
    directory (run-dir-relative path -> bytes, e.g. a grid of real images)."""

    data: Any
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # written at the start of a run


C = TypeVar("C", bound=RunOptions)
A = TypeVar("A")


@dataclass(frozen=True)
class ExperimentReport(Generic[C, A]):
    """How a run of one experiment is read: everything ``bnlab report`` needs, nothing that
    trains. ``A`` is the experiment's analysis dataclass; summary.json is its JSON form
    (:func:`bnlab.lab.runs.to_json`)."""

    name: str  # the command: bnlab <name>
    title: str  # report.html's title
    config: type[C]
    analyse: Callable[[Run[C]], A]
    report: Callable[[Run[C], A], list[Section]]  # renders the analysis: never recomputes it
    result_line: Callable[[A, Run[C]], str]  # printed at the end of a run
    # bnlab report RUN RUN ...: the runs and their analyses (each computed once) -> sections
    compare: Callable[[list[Run[C]], list[A]], list[Section]] | None = None

    def sections(self, run: Run[C], analysis: A | None = None) -> list[Section]:
        """The report of ``run``: its analysis (computed here unless given), rendered, and the
        run's configuration folded at the end."""
        return [
            *self.report(run, self.analyse(run) if analysis is None else analysis),
            config_section(run),
        ]

    def compare_sections(self, runs: list[Run[C]], analyses: list[A]) -> list[Section]:
        """Several runs of this experiment side by side: its own ``compare``, else the runs'
        claims lined up (where the analysis has ``claims``), else nothing."""
        if self.compare is not None:
            return self.compare(runs, analyses)
        claims = [getattr(a, "claims", None) for a in analyses]  # typed results: Claim tuples
        if all(isinstance(cs, tuple) for cs in claims):
            return [claims_compare(self.name, runs, claims)]  # type: ignore[arg-type]
        return []


def run_labels(runs: list[Run[Any]]) -> list[str]:
    """How a comparison names each run: the settings in which the runs differ (e.g.
    "dataset=fashion-mnist epochs=10"), else its folder's name."""
    labels = [
        " ".join(f"{k}={v}" for k, v in differ.items()) or run.dir.name
        for differ, run in zip(
            differing_settings([r.config for r in runs], NOT_IN_LABELS), runs, strict=True
        )
    ]
    if len(set(labels)) < len(labels):  # the same settings: tell them apart by folder
        labels = [f"{lab} ({r.dir.name})" for lab, r in zip(labels, runs, strict=True)]
    return labels


def claims_compare(name: str, runs: list[Run[Any]], claims: list[tuple[Claim, ...]]) -> Section:
    """Each claim's measurement and verdict in every run, one column per run (claims a run
    does not have: "-"). Every verdict is the run's own, from its seeds; runs are not paired
    with each other."""
    labels = run_labels(runs)
    first: dict[str, Claim] = {}  # claim id -> the claim, in the order the runs first give them
    for cs in claims:
        for c in cs:
            first.setdefault(c.id, c)
    by_run = [{c.id: c for c in cs} for cs in claims]
    rows = []
    for cid, claim in first.items():
        row = [cid, claim.statement, claim.quantity]
        for mine in by_run:
            got = mine.get(cid)
            row.append(f"{got.value}: {verdict_text(got.verdict)}" if got else "-")
        rows.append(row)
    intro = (
        f"{len(runs)} {name} runs side by side: "
        + "; ".join(f"{lab}: {r.dir}" for lab, r in zip(labels, runs, strict=True))
        + ". Each cell is the run's own measurement and verdict, from its own seeds; the runs "
        "are not paired with each other, so compare verdicts (and, on the same data, values)."
    )
    header = ["claim", "statement", "measured", *labels]
    return Section(
        f"{name}: runs compared",
        intro,
        tables=[Table("Per claim, per run", header, rows)],
        anchor=f"{name}-compare",
    )


def config_section(run: Run[Any]) -> Section:
    """The run's settings (config.json's flat view) and provenance, as one folded table."""
    rows = [
        [k, json.dumps(v) if not isinstance(v, str) else v]
        for k, v in config_to_dict(run.config).items()
    ]
    rows += [
        [k, str(run.meta[k])]
        for k in ("data", "data_fingerprint", "torch", "bnlab")
        if k in run.meta
    ]
    table = Table(
        f"{run.experiment}: settings of {run.dir}", ["setting", "value"], rows, folded=True
    )
    return Section("Run configuration", tables=[table], anchor=f"config-{run.dir.name}")


@dataclass(frozen=True)
class Experiment(Generic[C]):
    """One ``bnlab <name>`` command: how its runs are read, its data, jobs and training."""

    reading: ExperimentReport[C, Any]
    summary: str  # one line for ``bnlab --help``
    load: Callable[[C, Log], Loaded]
    plan: Callable[[C, Any], list[Any]]
    train: Callable[[Any, Any, int, int, Any], ChunkResult]
    quick: Mapping[str, Any] = field(default_factory=dict)  # --quick: flat name -> value
    chunk_size: Callable[[C], int] = lambda cfg: 1 << 30  # units per chunk (checkpoints)
    growable: frozenset[str] = frozenset()  # fields a resume may increase (e.g. epochs)
    data_parallel: bool = False  # train() works with several ranks (torchrun, DDP)
    observer: Callable[[C, Path], Any] | None = None  # driver-side sink: .records(), .close()

    @property
    def name(self) -> str:
        return self.reading.name

    @property
    def title(self) -> str:
        return self.reading.title

    @property
    def config(self) -> type[C]:
        return self.reading.config
