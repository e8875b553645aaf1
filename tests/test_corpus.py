"""A corpus of bad inputs and misuse, each with the exit code and message it must give.

One row per case: the command line (with placeholders), the expected exit code, and a
fragment of the message (stderr, whitespace-normalized). To add a case, add a row; a
placeholder that needs setup is a fixture below. Exit codes: 2 = bad input, nothing started;
1 = the run (or check) completed and found failures.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bnlab.lab import cli
from bnlab.lab.data import datasets

UNREACHABLE = "http://127.0.0.1:9/"

# (case id, argv, exit code, message fragment)
CASES: list[tuple[str, list[str], int, str]] = [
    ("unknown command", ["nope"], 2, "unknown command 'nope'"),
    ("unknown variant", ["gan", "--variants", "nope"], 2, "unknown variant 'nope'; known: plain"),
    (
        "variant bad value",
        ["gan", "--variants", "x=init:modes=sometimes"],
        2,
        "bad value 'sometimes' for modes; choose one of none, notebook3, tidy",
    ),
    ("variant bad key", ["gan", "--variants", "x=init:color=red"], 2, "unknown key 'color'"),
    ("epochs 0", ["gan", "--epochs", "0"], 2, "--epochs must be at least 1, got 0"),
    ("lr negative", ["gan", "--lr", "-0.1"], 2, "--lr must be in (0, 1), got -0.1"),
    ("lr not a number", ["gan", "--lr", "fast"], 2, "--lr"),
    ("batch size 1", ["gan", "--batch-size", "1"], 2, "--batch-size must be at least 2"),
    ("subset negative", ["gan", "--subset", "-5"], 2, "--subset must be >= 0"),
    ("seeds repeated", ["gan", "--seeds", "1,2,1"], 2, "--seeds must not repeat a seed"),
    ("seed negative", ["gan", "--seed", "-3"], 2, "seeds must be >= 0"),
    (
        "metric samples 1",
        ["gan", "--metric-samples", "1"],
        2,
        "--metric-samples must be at least 2",
    ),
    ("checkpoint every 0", ["gan", "--checkpoint-every", "0"], 2, "--checkpoint-every must be"),
    ("jobs negative", ["gan", "--jobs", "-1"], 2, "--jobs must be 0 (one per core) or more"),
    ("ray address alone", ["gan", "--ray-address", "auto"], 2, "--ray-address needs --runner ray"),
    ("ablation no seeds", ["gan-ablation", "--seeds", ""], 2, "--seeds: give distinct seeds"),
    ("data dir missing", ["gan", "--data", "{tmp}/missing"], 2, "does not exist"),
    ("data dir is a file", ["gan", "--data", "{file}"], 2, "is not a directory"),
    (
        "fashion-mnist absent",
        ["gan", "--dataset", "fashion-mnist"],
        2,
        "apt-get install dataset-fashion-mnist",
    ),
    ("out is a file", ["gan", "--out", "{file}"], 2, "is a file, not a directory"),
    ("out below a file", ["gan", "--out", "{file}/run"], 2, "is a file, not a directory"),
    (
        "out foreign directory",
        ["gan", "--out", "{foreign}"],
        2,
        "is a directory that is not a bnlab run",
    ),
    (
        "out holds a run",
        ["gan", "--out", "{run}"],
        2,
        "already holds a run: continue it with --resume",
    ),
    ("resume no run", ["gan", "--resume", "--out", "{tmp}/none"], 2, "no run to continue"),
    (
        "resume another seed",
        ["gan", "--resume", "--out", "{run}", "--seed", "5"],
        2,
        "this run was started with --seed 777, not 5; drop --seed",
    ),
    (
        "resume other variants",
        ["gan", "--resume", "--out", "{run}", "--variants", "plain"],
        2,
        "this run was started with --variants init, not plain",
    ),
    (
        "resume fewer epochs",
        ["gan", "--resume", "--out", "{run}", "--epochs", "1"],
        2,
        "(it may only grow: give more than 2)",
    ),
    (
        "resume as another experiment",
        ["gan-ablation", "--resume", "--out", "{run}"],
        2,
        "a 'gan' run, not 'gan-ablation'",
    ),
    (
        "resume torn config",
        ["gan", "--resume", "--out", "{torn_config}"],
        2,
        "config.json: cannot read it",
    ),
    (
        "resume more seeds than a default-seed run, not extending it",
        ["gan", "--resume", "--out", "{run}", "--seeds", "1,777"],
        2,
        "started with --seeds 777, not 1,777 (it may only grow: give 777,...)",
    ),
    (
        "epochs beyond any budget",
        ["gan", "--epochs", "99999999999999999999"],
        2,
        "--epochs must be at most 2147483647",
    ),
    (
        "resume config.json edited to a bad choice",
        ["gan", "--resume", "--out", "{bogus_modes}"],
        2,
        "config.json: variants[0].modes: 'bogus' is not one of none, notebook3, tidy",
    ),
    (
        "resume config.json edited to a bad type",
        ["gan", "--resume", "--out", "{epochs_three}"],
        2,
        "config.json: epochs: 'three' is not an integer",
    ),
    (
        "resume config.json edited to a bad value",
        ["gan", "--resume", "--out", "{epochs_zero}"],
        2,
        "config.json: --epochs must be at least 1, got 0",
    ),
    (
        "resume under another bn backend",
        ["gan", "--resume", "--out", "{other_backend}"],
        2,
        "the numbers would change mid-run: resume with BNLAB_BACKEND=",
    ),
    (
        "resume a checkpoint copied from another job",
        ["gan", "--resume", "--out", "{copied_checkpoint}"],
        2,
        "a checkpoint of job s777/init, not of s777/plain (copied?)",
    ),
    # --nproc: bad input is refused before any rank starts (nothing launched, one line)
    ("nproc out holds a run", ["gan", "--nproc", "2", "--out", "{run}"], 2, "already holds a run"),
    ("nproc out foreign", ["gan", "--nproc", "2", "--out", "{foreign}"], 2, "not a bnlab run"),
    ("nproc out a file", ["gan", "--nproc", "2", "--out", "{file}"], 2, "is a file"),
    (
        "nproc data missing",
        ["gan", "--nproc", "2", "--data", "{tmp}/missing", "--out", "{tmp}/r"],
        2,
        "does not exist",
    ),
    (
        "nproc resume of a one-process run",
        ["gan", "--resume", "--out", "{run}", "--nproc", "2"],
        2,
        "this run was started with --nproc 1, not 2",
    ),
    ("report not a run", ["report", "{tmp}"], 2, "not a bnlab run directory"),
    (
        "report over the run's config.json",
        ["report", "{run}", "--out", "{run}/config.json"],
        2,
        "which bnlab report never overwrites",
    ),
    ("report into a directory", ["report", "{run}", "--out", "{tmp}"], 2, "is a directory"),
    ("report unwritable", ["report", "{run}", "--out", "{file}/r.html"], 2, "cannot write"),
    ("report corrupt metrics", ["report", "{corrupt_metrics}"], 2, "line 1: not a JSON record"),
    ("report unknown experiment", ["report", "{alchemy}"], 2, "unknown experiment 'alchemy'"),
    (
        "report a setting this version lacks",
        ["report", "{future_config}"],
        2,
        "config.json: settings this version of bnlab does not know: color",
    ),
]


@pytest.fixture
def isolated_data(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No system datasets, no network: a missing dataset is reported, not downloaded."""
    monkeypatch.setenv("BNLAB_CACHE", str(tmp_path.parent / f"{tmp_path.name}-cache"))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    monkeypatch.setattr(datasets, "MIRRORS", {k: [UNREACHABLE] for k in datasets.MIRRORS})


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Path:
    """A finished 2-epoch `bnlab gan --variants init` run (needs MNIST)."""
    mnist_root = request.getfixturevalue("mnist_root")
    out = tmp_path_factory.mktemp("corpus") / "run"
    argv = ["gan", "--data", str(mnist_root), "--variants", "init", "--epochs", "2"]
    argv += ["--subset", "200", "--no-metrics", "--jobs", "1", "--out", str(out)]
    assert cli.main(argv) == 0
    return out


def _set_modes(meta: dict) -> None:
    meta["config"]["variants"] = [{**meta["config"]["variants"][0], "modes": "bogus"}]


def _set_backend(meta: dict) -> None:
    meta["bn_backend"] = "torch" if meta["bn_backend"] == "compiled" else "compiled"


def _copy_checkpoint(meta: dict, run: Path) -> None:
    """Plan a second job (plain) and give it the init job's checkpoint file."""
    meta["config"]["variants"].insert(0, {**meta["config"]["variants"][0], "name": "plain"})
    (run / "checkpoints" / "s777").mkdir(exist_ok=True)
    ckpts = sorted((run / "checkpoints").rglob("*init.pt"))
    shutil.copy(ckpts[0], ckpts[0].with_name(ckpts[0].name.replace("init", "plain")))


# placeholder -> how its copy of the tiny run's config.json is edited (meta, run dir)
EDITED = {
    "bogus_modes": lambda meta, run: _set_modes(meta),
    "epochs_three": lambda meta, run: meta["config"].update(epochs="three"),
    "epochs_zero": lambda meta, run: meta["config"].update(epochs=0),
    "other_backend": lambda meta, run: _set_backend(meta),
    "copied_checkpoint": _copy_checkpoint,
}


def _edited_copy(run: Path, to: Path, edit) -> Path:
    shutil.copytree(run, to)
    meta = json.loads((to / "config.json").read_text())
    edit(meta, to)
    (to / "config.json").write_text(json.dumps(meta))
    return to


def _placeholders(tmp_path: Path, needs: set[str], request: pytest.FixtureRequest) -> dict:
    values = {"tmp": str(tmp_path)}
    file = tmp_path / "a-file"
    file.write_text("not a directory")
    values["file"] = str(file)
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    values["foreign"] = str(foreign)
    if needs & {"run", "torn_config", "corrupt_metrics", "future_config", *EDITED}:
        run = request.getfixturevalue("tiny_run")
        values["run"] = str(run)
        torn = tmp_path / "torn"
        shutil.copytree(run, torn)
        (torn / "config.json").write_text('{"experiment": "gan", "conf')
        values["torn_config"] = str(torn)
        corrupt = tmp_path / "corrupt"
        shutil.copytree(run, corrupt)
        lines = (corrupt / "metrics.jsonl").read_text().splitlines()
        (corrupt / "metrics.jsonl").write_text("\n".join(["{oops", *lines]) + "\n")
        values["corrupt_metrics"] = str(corrupt)
        future = tmp_path / "future"
        shutil.copytree(run, future)
        meta = json.loads((future / "config.json").read_text())
        meta["config"]["color"] = "red"
        (future / "config.json").write_text(json.dumps(meta))
        values["future_config"] = str(future)
        for name in needs & set(EDITED):
            values[name] = str(_edited_copy(run, tmp_path / name, EDITED[name]))
    alchemy = tmp_path / "alchemy"
    alchemy.mkdir()
    (alchemy / "config.json").write_text(json.dumps({"experiment": "alchemy", "config": {}}))
    values["alchemy"] = str(alchemy)
    return values


@pytest.mark.usefixtures("isolated_data")
@pytest.mark.parametrize(
    ("argv", "code", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_bad_input_gives_its_exit_code_and_message(argv, code, fragment, tmp_path, request, capsys):
    needs = {a[1 : a.index("}")] for a in argv if a.startswith("{")}
    values = _placeholders(tmp_path, needs, request)
    argv = [a.format(**values) for a in argv]
    before = sorted(p.name for p in tmp_path.iterdir())
    try:
        got = cli.main(argv)
    except SystemExit as exc:  # the argument parser's own errors
        got = exc.code
    err = capsys.readouterr().err
    err = " ".join(err.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())  # the parser's box
    assert got == code, err
    assert fragment in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing new was written
