"""A tiny experiment on the protocol, for the driver and runner tests: each job sums seeded
random numbers unit by unit, so any difference in state handling shows in the records.

Side channel for the tests (never used by real experiments): ``ToyConfig.toy_dir`` names a
directory where a job announces its worker's PID and where one-shot markers live. (A config
field, not an environment variable: pool workers fork from a server started earlier, with
the environment of that moment.)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bnlab.lab.experiments.protocol import Experiment, ExperimentReport, Loaded, RunOptions
from bnlab.lab.jobs import ChunkResult, emit
from bnlab.lab.report.html import Section
from bnlab.lab.results import Run
from bnlab.lab.seeding import derived_generator


@dataclass(frozen=True)
class ToyConfig(RunOptions):
    """A toy: n jobs of `steps` units each."""

    n: int = 3
    """number of jobs"""
    steps: int = 6
    """units per job"""
    chunk: int = 2
    """units per chunk"""
    fail: str = ""
    """key of a job whose training raises"""
    crash: str = ""
    """key of a job whose worker process dies once (os._exit) in its second chunk"""
    interrupt: str = ""
    """key of a job that raises KeyboardInterrupt once in its second chunk (inline runs)"""
    sleep: float = 0.0
    """seconds per unit"""
    toy_dir: str = ""
    """where jobs leave PID files and one-shot markers (tests)"""

    def validate(self) -> None:
        super().validate()
        if self.n < 1:
            raise ValueError(f"--n must be at least 1, got {self.n}")


@dataclass(frozen=True)
class ToyJob:
    index: int
    steps: int
    fail: bool
    crash: bool
    interrupt: bool
    sleep: float
    toy_dir: str

    @property
    def key(self) -> str:
        return f"job{self.index}"

    @property
    def total(self) -> int:
        return self.steps


def load(cfg: ToyConfig, log: Any) -> Loaded:
    return Loaded(torch.arange(10.0), {"data": "ten numbers"}, {"toy.txt": b"toy\n"})


def plan(cfg: ToyConfig, data: Any) -> list[ToyJob]:
    return [
        ToyJob(
            i,
            cfg.steps,
            f"job{i}" == cfg.fail,
            f"job{i}" == cfg.crash,
            f"job{i}" == cfg.interrupt,
            cfg.sleep,
            cfg.toy_dir,
        )
        for i in range(cfg.n)
    ]


def _once(toy_dir: str, name: str) -> bool:
    """True the first time ``name`` is asked for in ``toy_dir`` (a marker file), then False."""
    marker = Path(toy_dir) / name
    if marker.exists():
        return False
    marker.touch()
    return True


def train(job: ToyJob, state: Any, start: int, end: int, data: Any) -> ChunkResult:
    if job.toy_dir:
        (Path(job.toy_dir) / f"pid-{os.getpid()}").touch()
    if job.fail:
        raise RuntimeError(f"{job.key} was told to fail")
    if start > 0 and job.crash and _once(job.toy_dir, f"crashed-{job.key}"):
        os._exit(3)
    if start > 0 and job.interrupt and _once(job.toy_dir, f"interrupted-{job.key}"):
        raise KeyboardInterrupt
    total = torch.zeros(()) if state is None else state["total"].clone()
    records = []
    for unit in range(start, end):
        time.sleep(job.sleep)
        x = torch.randn(100, generator=derived_generator(job.index, unit)) + data.mean()
        total += x.sum()
        records.append(
            {
                "job": job.key,
                "unit": unit + 1,
                "total": float(total),
                "pid": os.getpid(),
                "threads": torch.get_num_threads(),
            }
        )
        emit(job.key, unit + 1, f"total {float(total):.2f}")
    files = {f"out/{job.key}-{end}.txt": f"{float(total)}\n".encode()}
    return ChunkResult(end, {"total": total}, records, files)


@dataclass(frozen=True)
class ToyAnalysis:
    records: int


def analyse(run: Run[ToyConfig]) -> ToyAnalysis:
    return ToyAnalysis(len(run.records))


def report(run: Run[ToyConfig], analysis: ToyAnalysis) -> list[Section]:
    return [Section("Toy", f"{analysis.records} records")]


TOY_REPORT: ExperimentReport[ToyConfig, ToyAnalysis] = ExperimentReport(
    name="toy",
    title="toy",
    config=ToyConfig,
    analyse=analyse,
    report=report,
    result_line=lambda analysis, run: f"toy: {analysis.records} records",
)

TOY: Experiment[ToyConfig] = Experiment(
    reading=TOY_REPORT,
    summary="a toy",
    load=load,
    plan=plan,
    train=train,
    quick={"steps": 2, "n": 2},
    chunk_size=lambda cfg: cfg.chunk,
    growable=frozenset({"steps"}),
)
