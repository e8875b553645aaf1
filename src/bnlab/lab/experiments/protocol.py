"""The experiment protocol: what every ``bnlab <experiment>`` is, and the driver that runs one.

An experiment is data plus a few pure functions (see :class:`Experiment`):

- a frozen ``Config`` dataclass (a subclass of :class:`RunOptions`): its fields are the flags,
  their docstrings the ``--help``; ``Config.validate()`` refuses bad values before any work;
- ``load(config, log) -> Loaded``: the data every job needs, loaded once by the driver and
  shipped once to every worker (a process of the local pool, or a Ray worker through the
  object store), so workers need nothing on disk;
- ``plan(config, data) -> list[Job]``: typed, frozen job dataclasses (a GAN (seed, variant),
  a classifier (seed, net)); each has a ``key`` (unique, a relative path) and a ``total``
  amount of work in units (epochs, steps) that is cut into chunks;
- ``train(job, state, start, end, data) -> ChunkResult``: trains units [start, end) of one job
  from ``state`` (None at the start) and returns the new state, the metric records and the
  files (PNG bytes) of the chunk. It writes nothing: only the driver writes the run directory;
- ``analyse(run_dir) -> summary`` (records -> numbers and verdicts; the driver writes
  summary.json) and ``report(run_dir) -> sections`` (figures and text from the run directory
  alone: ``bnlab report`` rebuilds it, it never trains and never writes summary.json).

The driver (:func:`run_experiment`) owns the run directory: it refuses paths that are not a
bnlab run, locks the directory while it writes, writes config.json first, then for each
finished chunk the chunk's files, the job's checkpoint (state plus every record so far) and
the records (metrics.jsonl, append-only). ``--resume`` restores every job from its checkpoint
and rebuilds metrics.jsonl from them, so a resumed run is the same run. Runners
(:mod:`bnlab.lab.runners`) only decide where chunks execute; experiments never see them.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import re
import time
import types
import typing
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

import torch

from bnlab.lab.report.html import Section, write_report
from bnlab.lab.runs import (
    append_jsonl,
    atomic_write_bytes,
    atomic_write_json,
    config_to_dict,
    latest_run_dir,
    load_checkpoint,
    new_run_dir,
    read_config,
    read_jsonl,
    save_checkpoint,
    write_jsonl,
)

__all__ = [
    "ChunkResult",
    "Experiment",
    "Job",
    "Loaded",
    "RunFailed",
    "RunOptions",
    "RunResult",
    "RunStopped",
    "config_from_dict",
    "emit",
    "run_experiment",
]

Log = Callable[[str], None]


# ---- what an experiment is ----------------------------------------------------------------------


@dataclass(frozen=True)
class RunOptions:
    """Options of every experiment: where the run goes and how it runs. An experiment's Config
    subclasses this; these fields never change the numbers a run produces."""

    out: Path | None = None
    """run directory (default: runs/<experiment>-<date>-<time>; with --resume: the newest)"""
    resume: bool = False
    """continue an interrupted run in --out (or the newest one): its config.json is the
    configuration; a flag that differs from it is refused, except those that only say how to
    run (--jobs, --runner, --ray-address, --data) and more --epochs where an experiment
    allows it"""
    quick: bool = False
    """a run of under a minute through every code path (training, metrics, report): a taste,
    and what the tests run; flags given explicitly still win"""
    jobs: int = 0
    """worker processes of the local runner; 0 = one per CPU core, at most one per job"""
    runner: Literal["local", "ray"] = "local"
    """where jobs run: local (a process pool on this machine) or ray (a Ray cluster; pip
    install 'bnlab[ray]')"""
    ray_address: str | None = None
    """with --runner ray: unset = start a local Ray; auto or ray://host:port = join a cluster"""

    def validate(self) -> None:
        """Raise ValueError for a bad value, before any work starts. Subclasses extend it."""
        if self.jobs < 0:
            raise ValueError(f"--jobs must be 0 (one per core) or more, got {self.jobs}")
        if self.ray_address is not None and self.runner != "ray":
            raise ValueError("--ray-address needs --runner ray")


# Fields that only say where and how a run executes: a resume may change them freely.
OPERATIONAL = frozenset({f.name for f in dataclasses.fields(RunOptions)} | {"data"})


class Job(Protocol):
    """What the driver and runners need of an experiment's job dataclass."""

    @property
    def key(self) -> str:
        """Unique within a run, usable as a relative path (checkpoints/<key>.pt)."""
        ...

    @property
    def total(self) -> int:
        """Units of work (epochs, steps): chunks cover [0, total)."""
        ...


def unit_steps(job: Any) -> int:
    """Progress steps per unit of a job (e.g. batches per epoch): 1 unless the job says."""
    return int(getattr(job, "unit_steps", 1))


@dataclass(frozen=True)
class Loaded:
    """What ``load`` returns: the data shipped once to every worker, lines for config.json
    (e.g. ``{"data": "mnist test split, 10,000 images from ..."}``) and files for the run
    directory (run-dir-relative path -> bytes, e.g. a grid of real images)."""

    data: Any
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)  # written at the start of a run


@dataclass
class ChunkResult:
    """What ``train`` returns for units [start, end) of a job."""

    done: int  # units finished after this chunk (end, or fewer if the job failed)
    state: Any  # everything the next chunk needs (tensors, state_dicts); picklable
    records: list[dict[str, Any]] = field(default_factory=list)  # metrics of the chunk
    files: dict[str, bytes] = field(default_factory=dict)  # run-dir-relative path -> bytes
    failed: str | None = None  # why the job stopped (it does not continue)


C = TypeVar("C", bound=RunOptions)


@dataclass(frozen=True)
class Experiment(Generic[C]):
    """One ``bnlab <name>`` command: its config, its jobs, its training, its report."""

    name: str
    summary: str  # one line for ``bnlab --help``
    title: str  # report.html's title
    config: type[C]
    load: Callable[[C, Log], Loaded]
    plan: Callable[[C, Any], list[Any]]
    train: Callable[[Any, Any, int, int, Any], ChunkResult]
    analyse: Callable[[Path], dict[str, Any]]
    report: Callable[[Path], list[Section]]
    result_line: Callable[[dict[str, Any], Path], str]
    quick: Mapping[str, Any] = field(default_factory=dict)  # --quick: field -> value
    chunk_size: Callable[[C], int] = lambda cfg: 1 << 30  # units per chunk (checkpoints)
    growable: frozenset[str] = frozenset()  # fields a resume may increase (e.g. epochs)
    threads: int | None = 1  # torch threads per worker; None: the cores shared among workers
    data_parallel: bool = False  # train() works with several ranks (torchrun, DDP)
    compare: Callable[[list[Path]], list[Section]] | None = None  # bnlab report RUN RUN ...
    observer: Callable[[C, Path], Any] | None = None  # driver-side sink: .records(), .close()


# ---- progress events from workers ---------------------------------------------------------------

# Set by a runner in each worker (and in the driver for inline runs): receives event dicts.
_SINK: Callable[[dict[str, Any]], None] | None = None


def set_sink(
    sink: Callable[[dict[str, Any]], None] | None,
) -> Callable[[dict[str, Any]], None] | None:
    global _SINK
    previous, _SINK = _SINK, sink
    return previous


def emit(key: str, step: int, text: str = "") -> None:
    """Progress of job ``key``: ``step`` steps of the job done in all (unit * unit_steps +
    steps into the unit), and a short status text (e.g. the losses). No-op without a sink."""
    if _SINK is not None:
        _SINK({"key": key, "step": step, "text": text})


# ---- configs to and from config.json ------------------------------------------------------------


def _strip(tp: Any) -> Any:
    while typing.get_origin(tp) is typing.Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _convert(tp: Any, value: Any) -> Any:
    """JSON value -> the field's type: lists to tuples, strings to Paths, dicts to dataclasses."""
    tp = _strip(tp)
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(options[0], value) if len(options) == 1 else value
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        if args:
            return tuple(_convert(a, v) for a, v in zip(args, value, strict=True))
        return tuple(value)
    if tp is Path:
        return Path(value)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = typing.get_type_hints(tp, include_extras=True)
        cls: Any = tp
        return cls(**{k: _convert(hints[k], v) for k, v in value.items() if k in hints})
    return value


def config_from_dict(cls: type[C], values: Mapping[str, Any]) -> C:
    """A Config from config.json's ``"config"``; unknown keys are an error naming them."""
    hints = typing.get_type_hints(cls, include_extras=True)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(
            f"config.json has settings this version of bnlab does not know: {', '.join(unknown)}"
        )
    return cls(**{k: _convert(hints[k], v) for k, v in values.items()})


def _defaults(cls: type[Any]) -> dict[str, Any]:
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def _given(cfg: RunOptions, given: Collection[str] | None) -> dict[str, Any]:
    """The fields the user set: those named in ``given`` (the CLI knows which flags were on
    the command line), else, for callers from Python, those that differ from the default."""
    if given is not None:
        return {name: getattr(cfg, name) for name in given}
    defaults = _defaults(type(cfg))
    return {
        f.name: getattr(cfg, f.name)
        for f in dataclasses.fields(cfg)
        if f.name not in defaults or getattr(cfg, f.name) != defaults[f.name]
    }


def given_fields(cls: type[Any], argv: list[str]) -> set[str]:
    """The Config fields that ``argv`` sets explicitly (``--epochs 5``, ``--no-metrics``)."""
    names = {f.name for f in dataclasses.fields(cls)}
    out = set()
    for token in argv:
        if not token.startswith("--"):
            continue
        name = token[2:].split("=", 1)[0].replace("-", "_")
        if name not in names and name.startswith("no_") and name[3:] in names:
            name = name[3:]
        if name in names:
            out.add(name)
    return out


def apply_quick(exp: Experiment[C], cfg: C, given: Collection[str] | None = None) -> C:
    """``--quick``: the experiment's quick settings for every field the user did not set."""
    if not cfg.quick:
        return cfg
    changes = {k: v for k, v in exp.quick.items() if k not in _given(cfg, given)}
    return dataclasses.replace(cfg, **changes)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    if dataclasses.is_dataclass(value) and hasattr(value, "name"):
        return str(value.name)
    return str(value)


def merge_resume(
    exp: Experiment[C], stored: C, given_cfg: C, given: Collection[str] | None = None
) -> tuple[C, list[str]]:
    """The configuration of a resumed run: the stored one, with the run-how fields given now
    and the growable fields increased; any other difference is refused, naming the flag."""
    changes: dict[str, Any] = {}
    notes = []
    for name, value in _given(given_cfg, given).items():
        old = getattr(stored, name)
        if value == old or name in ("resume", "quick"):
            continue
        if name in OPERATIONAL:
            changes[name] = value
        elif name in exp.growable and isinstance(value, int) and value > old:
            changes[name] = value
            notes.append(f"{_flag(name)} {old} -> {value}")
        else:
            allowed = (
                f" (it may only grow: give more than {_show(old)})" if name in exp.growable else ""
            )
            raise ValueError(
                f"--resume: this run was started with {_flag(name)} {_show(old)}, not "
                f"{_show(value)}{allowed}; drop {_flag(name)} to continue the run as it was, "
                "or start a new run with another --out"
            )
    for name in ("jobs", "runner", "ray_address"):  # how to run: this time's choice
        changes.setdefault(name, getattr(given_cfg, name))
    return dataclasses.replace(stored, resume=True, **changes), notes


# ---- the run directory --------------------------------------------------------------------------


class RunFailed(RuntimeError):
    """A run finished (report written) but some jobs failed: the CLI exits non-zero."""

    def __init__(self, result: RunResult) -> None:
        self.result = result
        jobs = ", ".join(f"{k} ({m})" for k, m in result.failed.items())
        super().__init__(f"{len(result.failed)} job(s) failed: {jobs}")


class RunStopped(RuntimeError):
    """The run stopped for a reason outside its jobs (a data-parallel rank was lost): nothing
    is recorded for the chunk in flight, every finished chunk is checkpointed, and the run
    resumes like one stopped by Ctrl-C. Not a job failure: a resume trains the job on."""


@dataclass
class RunResult:
    run_dir: Path
    records: list[dict[str, Any]]  # the metric records of metrics.jsonl (events left out)
    summary: dict[str, Any]  # what analyse() returned (summary.json)
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
            raise ValueError(
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


@dataclass
class JobState:
    """The driver's view of one job: how far it is, its latest state and records."""

    job: Any
    done: int = 0
    state: Any = None
    records: list[dict[str, Any]] = field(default_factory=list)
    failed: str | None = None
    running: bool = False

    @property
    def key(self) -> str:
        return str(self.job.key)

    @property
    def remaining(self) -> int:
        return 0 if self.failed else int(self.job.total) - self.done


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
        js.done, js.state = int(ckpt["done"]), ckpt["state"]
        js.records, js.failed = list(ckpt["records"]), ckpt.get("failed")


class Recorder:
    """The driver's writer: applies finished chunks to the run directory, in a fixed order
    (files, checkpoint, records) so a kill at any point leaves a resumable run."""

    def __init__(self, run_dir: Path, progress: Any, observer: Any) -> None:
        self.run_dir, self.progress, self.observer = run_dir, progress, observer
        self.metrics = run_dir / "metrics.jsonl"

    def chunk_done(self, js: JobState, result: ChunkResult) -> None:
        for rel, data in result.files.items():
            atomic_write_bytes(self.run_dir / rel, data)
        js.done, js.state, js.failed = int(result.done), result.state, result.failed
        js.records.extend(result.records)
        save_checkpoint(
            checkpoint_path(self.run_dir, js.key),
            {"done": js.done, "state": js.state, "records": js.records, "failed": js.failed},
        )
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


_NOT_DATA = "bnlab_not_data"


def not_data() -> Any:
    """A dataclass field that describes the data without being it (a path, a caption):
    ``description: str = not_data()``. :func:`data_fingerprint` leaves it out, so the same data
    loaded from another directory has the same fingerprint."""
    return field(metadata={_NOT_DATA: True})


def data_fingerprint(data: Any) -> str:
    """A digest of the loaded data itself (every tensor's dtype, shape and bytes, through
    dataclasses, dicts and sequences; dataclass fields marked :func:`not_data` are left out):
    the same data wherever it was loaded from, and any other dataset, split, subset or
    preprocessing differs. Hand-written: no library walks arbitrary
    containers of tensors; hashlib does the hashing."""
    digest = hashlib.blake2b(digest_size=16)

    def walk(obj: Any) -> None:
        if isinstance(obj, torch.Tensor):
            t = obj.detach().cpu().contiguous()
            digest.update(f"T{t.dtype}{tuple(t.shape)}".encode())
            if t.numel():
                digest.update(t.view(torch.uint8).numpy().data)
        elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            for f in dataclasses.fields(obj):
                if not f.metadata.get(_NOT_DATA):  # how it is described is not what it is
                    digest.update(f.name.encode())
                    walk(getattr(obj, f.name))
        elif isinstance(obj, Mapping):
            for k in sorted(obj, key=str):
                digest.update(str(k).encode())
                walk(obj[k])
        elif isinstance(obj, (list, tuple)):
            digest.update(f"S{len(obj)}".encode())
            for item in obj:
                walk(item)
        elif obj is None or isinstance(obj, (bool, int, float, str)):
            digest.update(repr(obj).encode())
        else:  # anything else: its kind only (functions, devices, ...)
            digest.update(type(obj).__qualname__.encode())

    walk(data)
    return digest.hexdigest()


def _same_data(run_dir: Path, stored: Mapping[str, Any], found: Mapping[str, Any]) -> None:
    """A resume trains on the data the run started with (the directory may move): compared
    by :func:`data_fingerprint`, or for runs from before it, by the description without its
    path. Refuses otherwise, naming both."""
    if stored.get("data_fingerprint") and found.get("data_fingerprint"):
        same = stored["data_fingerprint"] == found["data_fingerprint"]
    else:

        def what(desc: Any) -> str:
            return re.sub(r" from \S+", "", str(desc))

        same = stored.get("data") is None or what(stored.get("data")) == what(found.get("data"))
    if not same:
        raise ValueError(
            f"{run_dir}: the run was trained on {stored.get('data')}, but this resume found "
            f"{found.get('data')}; point --data (or BNLAB_DATA) at the data the run used"
        )


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
    from bnlab.lab.runners import make_runner  # here: the runner pulls in multiprocessing or ray

    started = time.perf_counter()
    if not cfg.resume:  # a resumed run keeps the settings it was started with, --quick's too
        cfg = apply_quick(exp, cfg, given)
    cfg.validate()
    run_dir = _resolve_dir(exp, cfg)
    runner = make_runner(cfg, exp)  # fails early for a missing extra (--runner ray)
    with ExitStack() as held:
        notes: list[str] = []
        previous: dict[str, Any] = {}
        if cfg.resume:  # lock before reading: a second resume must not read a moving run
            held.enter_context(run_lock(run_dir))
            previous = read_config(run_dir)
            if previous.get("experiment") != exp.name:
                raise ValueError(
                    f"{run_dir / 'config.json'}: a {previous.get('experiment')!r} run, not "
                    f"{exp.name!r}; resume it with bnlab {previous.get('experiment')} --resume"
                )
            stored = config_from_dict(exp.config, previous["config"])
            cfg, notes = merge_resume(
                exp, stored, dataclasses.replace(cfg, out=run_dir), given and {*given, "out"}
            )
            cfg.validate()
        # A new run loads its data before its directory exists: bad data leaves nothing behind.
        try:
            loaded = exp.load(cfg, log)
        except ValueError as e:
            if cfg.resume and previous.get("data"):
                raise ValueError(f"{e}\n(this run was trained on {previous['data']})") from e
            raise
        meta = {**loaded.meta, "data_fingerprint": data_fingerprint(loaded.data)}
        if cfg.resume:
            _same_data(run_dir, previous, meta)
        jobs = exp.plan(cfg, loaded.data)
        keys = [j.key for j in jobs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{exp.name}: jobs must have unique keys, got {keys}")
        if not cfg.resume:
            held.enter_context(run_lock(run_dir))
            if (run_dir / "config.json").exists():  # another process started it meanwhile
                raise ValueError(f"{run_dir} already holds a run; pick another --out")
        states = [JobState(j) for j in jobs]
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
            atomic_write_json(run_dir / "config.json", config)
            write_jsonl(metrics, [])
        for rel, content in loaded.files.items():
            atomic_write_bytes(run_dir / rel, content)
        from bnlab.lab.runners.progress import Bars

        log(f"{len(states)} job(s) on the {runner.describe(len(states))}; run dir {run_dir}")
        bars = Bars(states)
        observer = exp.observer(cfg, run_dir) if exp.observer is not None else None
        recorder = Recorder(run_dir, bars, observer)
        try:
            chunk = max(1, exp.chunk_size(cfg))
            runner.run(states, exp.train, loaded.data, chunk, recorder, config=cfg)
        except (KeyboardInterrupt, RunStopped) as exc:
            bars.close()
            why = f"stopped: {exc}" if isinstance(exc, RunStopped) else "interrupted"
            log(f"\n{why}; continue with: bnlab {exp.name} --resume --out {run_dir}")
            raise
        finally:
            if observer is not None:
                observer.close()
        bars.close()
        failed = {js.key: js.failed for js in states if js.failed}
        summary = exp.analyse(run_dir)
        summary["failed"] = failed
        atomic_write_json(run_dir / "summary.json", summary)
        write_report(run_dir / "report.html", exp.report(run_dir), exp.title, str(run_dir))
    seconds = time.perf_counter() - started
    records = [r for r in read_jsonl(metrics) if "event" not in r]
    result = RunResult(run_dir, records, summary, failed, seconds)
    took = _minutes(seconds) + (" since the resume" if cfg.resume else "")
    log(f"{exp.result_line(summary, run_dir)} ({took}, {run_dir / 'report.html'})")
    for key, message in failed.items():
        log(f"FAILED {key}: {message}")
    if failed:
        raise RunFailed(result)
    return result


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.1f} min"


def _version() -> str:
    from bnlab import __version__

    return __version__
