"""The driver: runs an experiment end to end and owns its run directory.

:func:`run_experiment` refuses paths that are not a bnlab run, locks the directory while it
writes, writes config.json first, then for each finished chunk the chunk's files, the job's
checkpoint (state plus every record so far) and the records (metrics.jsonl, append-only).
``--resume`` restores every job from its checkpoint and rebuilds metrics.jsonl from them, so a
resumed run is the same run. At the end it reads the run back (:func:`bnlab.lab.results.
load_run`), writes the analysis as summary.json and the report as report.html. Runners
(:mod:`bnlab.lab.runners`) only decide where chunks execute; experiments never see them.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import re
import time
from collections.abc import Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import torch

from bnlab.lab.configs import config_to_dict, field_defaults, flat_values, replace_flat
from bnlab.lab.data.fingerprint import data_fingerprint
from bnlab.lab.experiments.common import resolve_device
from bnlab.lab.experiments.protocol import OPERATIONAL, Experiment, Log, RunOptions
from bnlab.lab.jobs import ChunkResult, JobState, RunStopped
from bnlab.lab.report.html import write_report
from bnlab.lab.results import load_run
from bnlab.lab.runners.ddp import launched_by_torchrun
from bnlab.lab.runs import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    latest_run_dir,
    load_checkpoint,
    new_run_dir,
    read_config,
    save_checkpoint,
    to_json,
    write_jsonl,
)

__all__ = [
    "RunFailed",
    "RunResult",
    "apply_quick",
    "merge_resume",
    "run_experiment",
    "run_lock",
]

C = TypeVar("C", bound=RunOptions)


# ---- what the user set: --quick and --resume ----------------------------------------------------


def _given(cfg: RunOptions, given: Collection[str] | None) -> dict[str, Any]:
    """The settings the user set, by flat name: those named in ``given`` (the CLI knows which
    flags were on the command line), else, for callers from Python, those that differ from the
    default."""
    values = flat_values(cfg)
    if given is not None:
        return {name: values[name] for name in given}
    defaults = field_defaults(type(cfg))
    return {
        name: value
        for name, value in values.items()
        if name not in defaults or value != defaults[name]
    }


def apply_quick(exp: Experiment[C], cfg: C, given: Collection[str] | None = None) -> C:
    """``--quick``: the experiment's quick settings for every setting the user did not set."""
    if not cfg.quick:
        return cfg
    changes = {k: v for k, v in exp.quick.items() if k not in _given(cfg, given)}
    return replace_flat(cfg, changes)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value) or "(none)"
    if dataclasses.is_dataclass(value) and hasattr(value, "name"):
        return str(value.name)
    return str(value)


def _effective(stored: Any, name: str, value: Any) -> Any:
    """What a stored setting meant: ``--seeds`` unset ran ``--seed`` alone (``seed_list``)."""
    if name == "seeds" and not value and hasattr(stored, "seed_list"):
        return tuple(stored.seed_list)
    return value


def _grows(old: Any, new: Any) -> bool:
    """A larger count, or a list that keeps the old entries first and adds more (seeds)."""
    if isinstance(old, int) and isinstance(new, int):
        return new > old
    if isinstance(old, tuple) and isinstance(new, tuple):
        return len(new) > len(old) and new[: len(old)] == old
    return False


def merge_resume(
    exp: Experiment[C], stored: C, given_cfg: C, given: Collection[str] | None = None
) -> tuple[C, list[str]]:
    """The configuration of a resumed run: the stored one, with the run-how fields given now
    and the growable fields increased (a count, or a list such as the seeds extended at its
    end); any other difference is refused, naming the flag."""
    changes: dict[str, Any] = {}
    notes = []
    old_values = flat_values(stored)
    for name, value in _given(given_cfg, given).items():
        old = _effective(stored, name, old_values[name])
        if value == old or name in ("resume", "quick"):
            continue
        if name in OPERATIONAL:
            changes[name] = value
        elif name in exp.growable and _grows(old, value):
            changes[name] = value
            notes.append(f"{_flag(name)} {_show(old)} -> {_show(value)}")
        else:
            more = f"more than {_show(old)}" if isinstance(old, int) else f"{_show(old)},..."
            allowed = f" (it may only grow: give {more})" if name in exp.growable else ""
            raise ValueError(
                f"--resume: this run was started with {_flag(name)} {_show(old)}, not "
                f"{_show(value)}{allowed}; drop {_flag(name)} to continue the run as it was, "
                "or start a new run with another --out"
            )
    for name in ("jobs", "runner", "ray_address"):  # how to run: this time's choice
        changes.setdefault(name, getattr(given_cfg, name))
    return replace_flat(stored, {"resume": True, **changes}), notes


# ---- the run directory --------------------------------------------------------------------------


class RunFailed(RuntimeError):
    """A run finished (report written) but some jobs failed: the CLI exits non-zero."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        jobs = ", ".join(f"{k} ({m})" for k, m in result.failed.items())
        super().__init__(f"{len(result.failed)} job(s) failed: {jobs}")


@dataclass
class RunResult:
    run_dir: Path
    records: list[dict[str, Any]]  # the metric records of metrics.jsonl (events left out)
    summary: dict[str, Any]  # summary.json: the analysis as JSON, and the failed jobs
    analysis: Any  # what the experiment's analyse() returned
    failed: dict[str, str]  # job key -> why
    seconds: float


def _resolve_dir(exp: Experiment[C], cfg: C) -> Path:
    """Where the run goes, refusing anything that is not (or would overwrite) a bnlab run."""
    if cfg.resume:
        run_dir = cfg.out if cfg.out is not None else latest_run_dir("runs", exp.name)
        if run_dir is None or not (Path(run_dir) / "config.json").is_file():
            where = cfg.out if cfg.out is not None else f"runs/{exp.name}-*"
            raise ValueError(f"--resume: no run to continue in {where} (no config.json there)")
        return Path(run_dir)
    run_dir = Path(cfg.out) if cfg.out is not None else new_run_dir("runs", exp.name)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {run_dir} is a file, not a directory; give a directory path")
    existing = run_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"--out {run_dir}: {existing} is a file, not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"--out {run_dir}: {existing} is not writable; pick another --out")
    if (run_dir / "config.json").exists():
        raise ValueError(
            f"{run_dir} already holds a run: continue it with --resume, or pick another --out"
        )
    if run_dir.is_dir() and any(p.name != ".lock" for p in run_dir.iterdir()):
        raise ValueError(
            f"--out {run_dir} is a directory that is not a bnlab run (it has files but no "
            "config.json); bnlab writes only into new or empty directories: pick another --out"
        )
    return run_dir


class RunDirBusy(ValueError):
    """Another bnlab process holds the run directory's lock."""


def _claim(exp: Experiment[Any], cfg: RunOptions, run_dir: Path, held: ExitStack) -> Path:
    """Lock the directory of a new run. Another process may have started a run there since
    :func:`_resolve_dir` chose it: with ``--out`` that is an error, without (two runs started
    in the same second) the next free default name is taken."""
    while True:
        attempt = ExitStack()
        try:
            attempt.enter_context(run_lock(run_dir))
        except RunDirBusy:
            if cfg.out is not None:
                raise
            run_dir = new_run_dir("runs", exp.name)
            continue
        if not (run_dir / "config.json").exists():
            held.enter_context(attempt)
            return run_dir
        attempt.close()
        if cfg.out is not None:  # another process started it meanwhile
            raise ValueError(f"{run_dir} already holds a run; pick another --out")
        run_dir = new_run_dir("runs", exp.name)


@contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold ``run_dir/.lock`` while writing the run: a second process (another run or resume
    into the same directory) is refused with the holder's PID. The lock is an OS file lock,
    released when its process dies, so a stale lock file from a killed run never blocks."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ValueError(
            f"--out {run_dir}: cannot write there ({exc.strerror or exc}); pick a writable "
            "directory"
        ) from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise RunDirBusy(
                f"{run_dir} is being written by another bnlab process (PID {holder}); wait for "
                "it to finish or stop it, or pick another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays (harmless: locks live in the OS)


def checkpoint_path(run_dir: Path, key: str) -> Path:
    return run_dir / "checkpoints" / f"{key}.pt"


def _restore(states: list[JobState], run_dir: Path) -> None:
    for js in states:
        path = checkpoint_path(run_dir, js.key)
        if not path.exists():
            continue
        try:
            ckpt = load_checkpoint(path)
        except Exception as exc:  # a torn or foreign file: name it
            raise ValueError(
                f"{path}: unreadable checkpoint ({exc}); delete it to redo that job"
            ) from None
        owner = ckpt.get("key", js.key)  # checkpoints from before the key was stored: trusted
        if owner != js.key:
            raise ValueError(
                f"{path}: a checkpoint of job {owner}, not of {js.key} (copied?); put it back "
                "where it belongs, or delete it to redo that job"
            )
        js.done, js.state = int(ckpt["done"]), ckpt["state"]
        js.records, js.failed = list(ckpt["records"]), ckpt.get("failed")


NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


@contextmanager
def disk_full_stops(path: Path) -> Iterator[None]:
    """A full disk (or quota) while writing ``path`` stops the run as a lost worker does
    (:class:`RunStopped`, exit 130): every chunk recorded before is checkpointed, and the
    run resumes once space is freed."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in NO_SPACE:
            raise
        raise RunStopped(f"no space left on the device writing {path}; free space") from None


class Recorder:
    """The driver's writer: applies finished chunks to the run directory, in a fixed order
    (files, checkpoint, records) so a kill at any point leaves a resumable run."""

    def __init__(self, run_dir: Path, progress: Any, observer: Any) -> None:
        self.run_dir, self.progress, self.observer = run_dir, progress, observer
        self.metrics = run_dir / "metrics.jsonl"

    def chunk_done(self, js: JobState, result: ChunkResult) -> None:
        for rel, data in result.files.items():
            with disk_full_stops(self.run_dir / rel):
                atomic_write_bytes(self.run_dir / rel, data)
        ckpt = checkpoint_path(self.run_dir, js.key)
        with disk_full_stops(ckpt):
            save_checkpoint(
                ckpt,
                {
                    "key": js.key,
                    "done": int(result.done),
                    "state": result.state,
                    "records": [*js.records, *result.records],
                    "failed": result.failed,
                },
            )
        js.done, js.state, js.failed = int(result.done), result.state, result.failed
        js.records.extend(result.records)
        with disk_full_stops(self.metrics):
            append_jsonl(self.metrics, result.records)
            if js.failed:
                append_jsonl(
                    self.metrics,
                    [{"event": "failed", "key": js.key, "message": js.failed, "done": js.done}],
                )
        if self.observer is not None:
            self.observer.records(result.records)
        self.progress.chunk_done(js)


# ---- the driver ---------------------------------------------------------------------------------


def _what(desc: Any) -> str:
    """A data description without where it was loaded from."""
    return re.sub(r" from \S+", "", str(desc))


def _same_data(run_dir: Path, stored: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """A resume trains on the data the run started with (the directory may move): compared
    by :func:`data_fingerprint`, or for runs from before it, by the description without its
    path. Refuses otherwise, naming both."""
    if stored.get("data_fingerprint") and found.get("data_fingerprint"):
        same = stored["data_fingerprint"] == found["data_fingerprint"]
    else:
        same = stored.get("data") is None or _what(stored.get("data")) == _what(found.get("data"))
    if not same:
        was, now = stored.get("data"), found.get("data")
        contents = (
            f"contents differ (data fingerprint {str(found.get('data_fingerprint'))[:12]}, not "
            f"{str(stored.get('data_fingerprint'))[:12]}): a file changed"
        )
        if was == now:  # same files, same sizes: only the bytes tell them apart
            found_what = f"this resume found {now}, but its {contents}"
        elif was is not None and _what(was) == _what(now):
            found_what = (
                f"the run was trained on {was}, but this resume found {now}, whose {contents}"
            )
        else:
            found_what = f"the run was trained on {was}, but this resume found {now}"
        raise ValueError(
            f"{run_dir}: {found_what}; point --data (or BNLAB_DATA) at the data the run used"
        )


def bn_backend() -> str:
    """Which rendition of bnlab's batch norm this process asks for: ``compiled`` (C++ on CPU,
    Triton on CUDA; BNLAB_BACKEND auto or compiled) or ``torch`` (the plain-torch path).
    They agree up to float rounding, so a run keeps one: config.json records it. (Asked, not
    loaded: loading would build the C++ kernels for runs that use no BN; auto's fallback
    where they cannot build is said on stderr.)"""
    from bnlab import kernels

    return "torch" if kernels.get_backend() == "torch" else "compiled"


def _same_backend(run_dir: Path, stored: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """Refuse to resume under another BN backend than the run trained with: the numbers would
    change silently mid-run (float rounding differs). Runs from before it was recorded pass."""
    was, now = stored.get("bn_backend"), found.get("bn_backend")
    if was is not None and was != now:
        raise ValueError(
            f"{run_dir}: the run was trained with bnlab's {was} batch norm, but this process "
            f"runs the {now} one (BNLAB_BACKEND={os.environ.get('BNLAB_BACKEND', 'auto')}); "
            f"the numbers would change mid-run: resume with BNLAB_BACKEND={was}"
        )


def _data_hint(cfg: C, given: Collection[str] | None, log: Log) -> C:
    """A resumed run's stored ``--data`` is where the data was, a hint: if that directory is
    gone and no --data was given now, look where a run without --data looks ($BNLAB_DATA,
    the cache, ...); the data fingerprint decides whether what is found is the run's."""
    stored = flat_values(cfg).get("data")
    if stored is None or (given is not None and "data" in given) or Path(stored).is_dir():
        return cfg
    log(f"the run's data directory {stored} is gone; looking for its data elsewhere")
    return replace_flat(cfg, {"data": None})


def check_before_launch(exp: Experiment[C], cfg: C, given: Collection[str] | None = None) -> C:
    """What the driver would refuse before any work, checked where no driver runs yet: the
    launcher of a data-parallel run, before its ranks start (bad input then exits 2 in one
    line, and nothing is written). Returns the configuration the run will have: with --resume
    the stored one (its ``nproc`` included), ``out`` resolved.

    Raises:
        ValueError: as :func:`run_experiment` would, naming the flag, path or file.
    """
    if not cfg.resume:
        cfg = apply_quick(exp, cfg, given)
    cfg.validate()
    run_dir = _resolve_dir(exp, cfg)
    if cfg.resume:
        cfg = _resumed(exp, cfg, run_dir, read_config(run_dir), given, lambda _m: None)[0]
    values = flat_values(cfg)
    if "dataset" in values and "data" in values:  # a given data directory must exist
        from bnlab.lab.data.datasets import available_splits

        available_splits(str(values["dataset"]), values["data"])
    return replace_flat(cfg, {"out": run_dir})


def _resumed(
    exp: Experiment[C],
    cfg: C,
    run_dir: Path,
    previous: Mapping[str, Any],
    given: Collection[str] | None,
    log: Log,
) -> tuple[C, list[str]]:
    """The configuration a resume runs with: config.json's (checked as flags are), merged
    with the flags given now (:func:`merge_resume`)."""
    if previous.get("experiment") != exp.name:
        raise ValueError(
            f"{run_dir / 'config.json'}: a {previous.get('experiment')!r} run, not "
            f"{exp.name!r}; resume it with bnlab {previous.get('experiment')} --resume"
        )
    stored = load_run(run_dir, exp.config).config
    try:  # an edited config.json: the same checks as the flags
        stored.validate()
    except ValueError as exc:
        raise ValueError(f"{run_dir / 'config.json'}: {exc}") from None
    cfg, notes = merge_resume(
        exp, stored, replace_flat(cfg, {"out": run_dir}), given and {*given, "out"}
    )
    cfg = _data_hint(cfg, given, log)
    cfg.validate()
    return cfg, notes


def run_experiment(
    exp: Experiment[C], cfg: C, log: Log = print, given: Collection[str] | None = None
) -> RunResult:
    """Run ``exp`` with ``cfg`` end to end: run directory, jobs, summary.json, report.html.

    ``given`` names the fields the user set explicitly (the CLI passes them); None = those
    that differ from their defaults. They decide what --quick and --resume may override.

    Raises:
        ValueError: bad configuration or run directory (before any work).
        RunFailed: some jobs failed (everything else was written, the report too).
        KeyboardInterrupt: Ctrl-C or SIGTERM; the run directory can be resumed.
        RunStopped: the runner lost a worker it cannot replace; resumable the same way.
    """
    # here: the runner pulls in multiprocessing or ray
    from bnlab.lab.runners import make_runner

    started = time.perf_counter()
    if not cfg.resume:  # a resumed run keeps the settings it was started with, --quick's too
        cfg = apply_quick(exp, cfg, given)
    cfg.validate()
    run_dir = _resolve_dir(exp, cfg)
    with ExitStack() as held:
        notes: list[str] = []
        previous: dict[str, Any] = {}
        if cfg.resume:  # lock before reading: a second resume must not read a moving run
            held.enter_context(run_lock(run_dir))
            previous = read_config(run_dir)
            cfg, notes = _resumed(exp, cfg, run_dir, previous, given, log)
        nproc = int(getattr(cfg, "nproc", 1))
        if nproc > 1 and not launched_by_torchrun():
            raise ValueError(
                f"this run trains data-parallel on {nproc} processes: run it with --nproc {nproc}"
            )
        # A CUDA device, given or resolved from auto, runs every job in this process. Made
        # before any data is loaded: a missing extra (--runner ray) fails early.
        cuda = resolve_device(str(getattr(cfg, "device", "cpu"))).type == "cuda"
        runner = make_runner(cfg.runner, cfg.jobs, cfg.threads, cfg.ray_address, cuda, cfg)
        # A new run loads its data before its directory exists: bad data leaves nothing behind.
        try:
            loaded = exp.load(cfg, log)
        except ValueError as e:
            if cfg.resume and previous.get("data"):
                raise ValueError(f"{e}\n(this run was trained on {previous['data']})") from e
            raise
        meta = {**loaded.meta, "data_fingerprint": data_fingerprint(loaded.data)}
        meta["bn_backend"] = bn_backend()
        if cfg.resume:
            _same_data(run_dir, previous, meta)
            _same_backend(run_dir, previous, meta)
        jobs = exp.plan(cfg, loaded.data)
        keys = [j.key for j in jobs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{exp.name}: jobs must have unique keys, got {keys}")
        if not cfg.resume:
            run_dir = _claim(exp, cfg, run_dir, held)
        states = [JobState(j) for j in jobs]
        try:
            run, analysis, summary, failed = _run_in(
                exp, cfg, run_dir, states, loaded, runner, previous, notes, meta, log
            )
        except (KeyboardInterrupt, RunStopped) as exc:
            why = f"stopped: {exc}" if isinstance(exc, RunStopped) else "interrupted"
            again = resume_command(exp.name, run_dir, getattr(cfg, "nproc", 1))
            if not launched_by_torchrun():
                log(f"\n{why}; continue with: {again}")
            elif isinstance(exc, RunStopped):  # the launcher prints how to continue
                log(f"\n{why}")
            raise
    seconds = time.perf_counter() - started
    result = RunResult(run_dir, run.records, summary, analysis, failed, seconds)
    took = _minutes(seconds) + (" since the resume" if cfg.resume else "")
    log(f"{exp.reading.result_line(analysis, run)} ({took}, {run_dir / 'report.html'})")
    for key, message in failed.items():
        log(f"FAILED {key}: {message}")
    if failed:
        raise RunFailed(result)
    return result


def resume_command(name: str, run_dir: Path, nproc: int = 1) -> str:
    """The command that continues the run in ``run_dir``."""
    more = f" --nproc {nproc}" if nproc > 1 else ""
    return f"bnlab {name} --resume --out {run_dir}{more}"


def _run_in(
    exp: Experiment[C],
    cfg: C,
    run_dir: Path,
    states: list[JobState],
    loaded: Any,
    runner: Any,
    previous: dict[str, Any],
    notes: list[str],
    meta: dict[str, Any],
    log: Log,
) -> tuple[Any, Any, dict[str, Any], dict[str, str]]:
    """config.json, the jobs, summary.json and report.html of a locked run directory; from
    here on an interruption leaves a resumable run."""
    metrics = run_dir / "metrics.jsonl"
    config = {"experiment": exp.name, "config": config_to_dict(cfg), **meta}
    config.update(torch=torch.__version__, bnlab=_version())
    if cfg.resume:
        _restore(states, run_dir)
        if notes:
            config["resumed_with"] = [*previous.get("resumed_with", []), *notes]
            log("resume changes: " + "; ".join(notes))
        atomic_write_json(run_dir / "config.json", config)
        write_jsonl(metrics, [r for js in states for r in js.records])
        log(f"resuming {run_dir}: " + ", ".join(f"{js.key} at {js.done}" for js in states))
    else:
        try:
            atomic_write_json(run_dir / "config.json", config)
            write_jsonl(metrics, [])
        except OSError as exc:  # nothing is trained yet: nothing to resume, say so in a line
            if exc.errno not in NO_SPACE:
                raise
            raise ValueError(
                f"no space left on the device writing {exc.filename or run_dir}: nothing was "
                "trained; free space and run the command again"
            ) from None
    for rel, content in loaded.files.items():
        with disk_full_stops(run_dir / rel):
            atomic_write_bytes(run_dir / rel, content)
    from bnlab.lab.runners.progress import Bars

    log(f"{len(states)} job(s) on the {runner.describe(len(states))}; run dir {run_dir}")
    bars = Bars(states)
    observer = exp.observer(cfg, run_dir) if exp.observer is not None else None
    recorder = Recorder(run_dir, bars, observer)
    try:
        chunk = max(1, exp.chunk_size(cfg))
        runner.run(states, exp.train, loaded.data, chunk, recorder)
    finally:
        bars.close()
        if observer is not None:
            observer.close()
    failed = {js.key: js.failed for js in states if js.failed}
    run = load_run(run_dir, exp.config, exp.name)
    analysis = exp.reading.analyse(run)
    summary = dict(to_json(analysis))
    summary["failed"] = failed
    # Every job is checkpointed by now: a full disk here stops the run resumably too (the
    # resume trains nothing and writes these again).
    with disk_full_stops(run_dir / "summary.json"):
        atomic_write_json(run_dir / "summary.json", summary)
    sections = exp.reading.sections(run, analysis)  # draws the figures into run_dir
    with disk_full_stops(run_dir / "report.html"):
        write_report(run_dir / "report.html", sections, exp.title, str(run_dir))
    return run, analysis, summary, failed


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _version() -> str:
    from bnlab import __version__

    return __version__
