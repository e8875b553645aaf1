"""bnlab batch-size: config errors, ghost b = SGD batch is BN, the train-mode evaluation leaves
the model alone, the analysis' verdicts on synthetic records, and the --quick run end to end."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch

import bnlab.nn as bnn
from bnlab.lab.configs import build as build_config
from bnlab.lab.experiments.batch_size import experiment as bs
from bnlab.lab.experiments.batch_size.analysis import analyse
from bnlab.lab.experiments.batch_size.train import BatchSizeJob, train_mode_error
from bnlab.lab.results import Run

pytestmark = pytest.mark.usefixtures("seeded_one_thread")
EPOCHS = bs.Training().epochs  # the synthetic records are last-epoch ones


@pytest.mark.parametrize(
    ("bad", "match"),
    [
        ({"norm_batches": (2, 6)}, r"--norm-batches 6: .*divide --sgd-batch 64"),
        ({"norm_batches": (1,)}, r"--norm-batches 1: each b must be at least 2"),
        ({"norm_batches": ()}, r"--norm-batches: give at least one"),
        ({"small_sgd_batches": (64,)}, r"--small-sgd-batches 64: each must be in 2..63"),
        ({"sgd_batch": 1}, r"--sgd-batch must be at least 2"),
        ({"groups": 5}, r"--groups 5 must divide every --widths value"),
        ({"widths": (8, 8)}, r"--widths takes three positive channel counts"),
        ({"seeds": (0, 0)}, r"--seeds: give at least one seed"),
        ({"train_size": 10}, r"--train-size 10 is smaller than one SGD batch"),
        ({"epochs": 0}, r"--epochs must be at least 1"),
        ({"holdout": -1}, r"--holdout must be >= 0"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag_and_the_fix(bad: dict[str, Any], match: str):
    with pytest.raises(ValueError, match=match):
        build_config(bs.Config, **bad).validate()


def _job(norm: str, b: int, batch: int = 16, regime: str = "ghost") -> BatchSizeJob:
    t = bs.Training(widths=(8, 8, 8), groups=4)
    return BatchSizeJob(norm, b, batch, regime, 0, 0.05, t, 256)  # type: ignore[arg-type]


def test_ghost_b_equal_to_the_sgd_batch_is_plain_bn():
    torch.manual_seed(0)
    x = torch.randn(16, 1, 14, 14)
    plain, ghost = bs.build(_job("bn", 16)), bs.build(_job("bn", 8))
    assert all(type(m) is bnn.BatchNorm2d for _, m in bnn.batch_norm_layers(plain))
    assert all(type(m) is bnn.GhostBatchNorm2d for _, m in bnn.batch_norm_layers(ghost))
    # same seed: same weights; a ghost layer whose ghost batch holds the whole batch is BN
    ghost.load_state_dict(plain.state_dict())
    for _, m in bnn.batch_norm_layers(ghost):
        m.ghost_batch_size = 16
    torch.testing.assert_close(ghost(x), plain(x))
    torch.testing.assert_close(ghost.state_dict(), plain.state_dict())
    for _, m in bnn.batch_norm_layers(ghost):
        m.ghost_batch_size = 4
    assert not torch.allclose(ghost(x), plain(x))  # smaller ghost batches normalize otherwise


@pytest.mark.parametrize("norm", ["bn", "renorm"])
def test_train_mode_evaluation_leaves_the_model_untouched(norm: str):
    model = bs.build(_job(norm, 4))
    model(torch.randn(16, 1, 14, 14) * 2 + 1)  # move the running statistics off init
    model.eval()
    before = copy.deepcopy(model.state_dict())
    x, y = torch.randn(40, 1, 14, 14) * 3, torch.randint(0, 10, (40,))
    err = train_mode_error(model, x, y, 16)
    assert 0 <= err <= 1 and not model.training
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


def _records(err: dict[tuple[str, str, int], list[float]]) -> list[dict[str, Any]]:
    """Last-epoch records of 3 seeds: (norm, regime, b) -> test error per seed."""
    out = []
    for (norm, regime, b), errs in err.items():
        for seed, e in enumerate(errs):
            r: dict[str, Any] = {"kind": "epoch", "norm": norm, "regime": regime, "b": b,
                                 "batch": 64 if regime == "ghost" else b, "seed": seed,
                                 "epoch": EPOCHS, "test_err": e, "sec_per_step": 0.01,
                                 "train_mode_err": e + 0.01 * (64 // b)}  # fmt: skip
            if norm == "bn":
                r["precise_err"] = e - 0.005  # precise recovers little at every b
            out.append(r)
    return out


# (norm, regime, b) -> test error of seeds 0, 1, 2: C1-C6 hold, C7 inconclusive
PLANTED: dict[tuple[str, str, int], list[float]] = {
    ("bn", "ghost", 2): [0.20, 0.21, 0.22],
    ("bn", "ghost", 8): [0.12, 0.125, 0.13],
    ("bn", "ghost", 64): [0.10, 0.11, 0.105],
    ("renorm", "ghost", 2): [0.15, 0.16, 0.165],
    ("renorm", "ghost", 8): [0.12, 0.12, 0.13],
    ("renorm", "ghost", 64): [0.10, 0.11, 0.11],
    ("gn", "ghost", 64): [0.12, 0.125, 0.118],
    ("ln", "ghost", 64): [0.14, 0.13, 0.135],
    ("bn", "small-sgd", 2): [0.119, 0.14, 0.13],  # no worse than GN: C7 fails
    ("gn", "small-sgd", 2): [0.12, 0.125, 0.13],
}


def test_analysis_gives_the_expected_verdicts_on_synthetic_records(tmp_path: Path):
    cfg = bs.Config(norm_batches=(2, 8, 64), small_sgd_batches=(2,), seeds=(0, 1, 2))
    records = _records(PLANTED)
    run = Run(tmp_path, "batch-size", cfg, {}, records)
    a = analyse(run)
    verdicts = {c.id: c.verdict for c in a.claims}
    assert verdicts == {
        "C1": "holds",  # BN at 2 worse than at 64
        "C2": "holds",  # GN beats BN at 2
        "C3": "holds",  # BN at 64 beats GN
        "C4": "holds",  # renorm beats BN at 2
        "C5": "holds",  # precise 0.5 pp better, every seed
        "C6": "holds",  # the gap grows 0.32 -> 0.01
        "C7": "inconclusive",
    }
    by = {(p.series, p.b): p for p in a.points}
    assert set(by) >= {("bn", 2), ("bn-precise", 2), ("gn", 64), ("bn-small-sgd", 2)}
    assert by[("bn", 2)].test_err.mean == pytest.approx(21.0)
    assert by[("bn", 2)].gap is not None and by[("bn", 2)].gap.mean == pytest.approx(32.0)
    assert by[("bn-precise", 2)].gap is None
    assert "Agrees with Wu & He" in a.agreement and "Differs" not in a.agreement
    assert a.no_answer == ""

    # one seed: directions; a net that did not learn: no answer
    one = analyse(Run(tmp_path, "batch-size", cfg, {}, [r for r in records if r["seed"] == 0]))
    assert {c.verdict for c in one.claims} <= {"agrees", "disagrees"}
    bad = [{**r, "test_err": 0.9} if r["norm"] == "bn" else r for r in records]
    dead = analyse(Run(tmp_path, "batch-size", cfg, {}, bad))
    assert "did not learn" in dead.no_answer
    assert {c.verdict for c in dead.claims} == {"no answer"}


def test_plan_trains_gn_and_ln_once_per_seed_and_scales_small_batch_lr():
    cfg = bs.Config(norm_batches=(2, 64), small_sgd_batches=(4,), seeds=(0, 1))
    jobs = bs.EXPERIMENT.plan(cfg, None, 1000)  # type: ignore[call-arg]
    keys = {j.key for j in jobs}
    assert len(keys) == len(jobs) == 2 * (2 + 2 + 1 + 1 + 2)
    assert {"gn-b64-sgd64-s0", "ln-b64-sgd64-s1", "bn-b4-sgd4-s0", "gn-b4-sgd4-s1"} <= keys
    small = next(j for j in jobs if j.key == "bn-b4-sgd4-s0")
    assert small.lr == pytest.approx(cfg.training.lr * 4 / 64) and small.unit_steps == 250


def test_quick_run_end_to_end(
    tmp_path: Path, mnist_root: Path, check_run_files: Any, report_from_run_dir: Any
):
    # MNIST (its 10k test split is enough) so that the test runs wherever the lab's do
    out = tmp_path / "run"
    lines: list[str] = []
    cfg = bs.Config(quick=True, dataset="mnist", data=mnist_root, out=out)
    result = bs.run(cfg, log=lines.append)
    check_run_files(out, "batch-size", ("error_vs_b.png", "gap_vs_b.png"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["failed"] == {}
    series = {p["series"] for p in summary["points"]}
    assert series == {"bn", "renorm", "gn", "ln", "bn-precise", "bn-small-sgd", "gn-small-sgd"}
    assert {c["id"] for c in summary["claims"]} == {f"C{i}" for i in range(1, 8)}
    finals = [r for r in result.records if r["kind"] == "epoch"]
    assert len(finals) == 8 and all("train_mode_err" in r for r in finals)
    assert all(("precise_err" in r) == (r["norm"] == "bn") for r in finals)
    html = (out / "report.html").read_text()
    assert "Wu &amp; He" in html and "data:image/png;base64" in html
    sections = report_from_run_dir(bs.EXPERIMENT, out, "error_vs_b.png")
    assert sections[0].hero and len(sections[0].tables) == 2


def test_a_job_whose_loss_turns_non_finite_fails_alone_and_the_run_exits_1(
    tmp_path: Path, mnist_root: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
):
    """The failed job is named with the reason and the fix; the other jobs finish and are
    reported; the command's exit status is 1, not 0."""
    from bnlab.lab import cli
    from bnlab.lab.experiments.batch_size import train as bs_train

    real_build = bs_train.build

    def poisoned(job: BatchSizeJob) -> torch.nn.Sequential:
        model = real_build(job)
        if job.norm == "ln":
            with torch.no_grad():
                model[0].weight.fill_(float("nan"))
        return model

    monkeypatch.setattr(bs_train, "build", poisoned)
    out = tmp_path / "run"
    argv = ["batch-size", "--quick", "--dataset", "mnist", "--data", str(mnist_root)]
    argv += ["--norms", "bn,ln", "--small-sgd-batches", "", "--jobs", "1", "--out", str(out)]
    assert cli.main(argv) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["failed"]) == ["ln-b16-sgd16-s0"]
    assert (
        "non-finite" in summary["failed"]["ln-b16-sgd16-s0"]
        and "--lr" in summary["failed"]["ln-b16-sgd16-s0"]
    )
    assert (out / "report.html").exists()
    assert "ln-b16-sgd16-s0" in capsys.readouterr().err + (out / "report.html").read_text()


def test_a_train_size_beyond_the_data_is_one_line_before_anything_is_written(
    tmp_path: Path, mnist_root: Path, capsys: Any
):
    from bnlab.lab import cli

    out = tmp_path / "run"
    argv = ["batch-size", "--quick", "--dataset", "mnist", "--data", str(mnist_root)]
    assert cli.main([*argv, "--train-size", "9500", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--train-size 9500 exceeds the training images (9,000)" in err, err
    assert len(err.strip().splitlines()) == 1 and not out.exists()


def test_two_runs_are_compared_claim_by_claim_each_analysed_once(tmp_path: Path, monkeypatch):
    """batch-size has no compare of its own: bnlab report RUN_A RUN_B lines up the claims."""
    import dataclasses

    from bnlab.lab.experiments import reports
    from bnlab.lab.runs import append_jsonl, atomic_write_json

    flat = {"norm_batches": [2, 8, 64], "small_sgd_batches": [2], "seeds": [0, 1, 2]}
    worse = {k: [e + 0.2 for e in v] if k == ("bn", "ghost", 64) else v for k, v in PLANTED.items()}
    for name, err, size in (("a", PLANTED, 0), ("b", worse, 30_000)):
        atomic_write_json(
            tmp_path / name / "config.json",
            {"experiment": "batch-size", "config": {**flat, "train_size": size}},
        )
        append_jsonl(tmp_path / name / "metrics.jsonl", _records(err))
    calls: list[Path] = []
    reading = reports.REPORTS["batch-size"]

    def counted(run: Run[Any]) -> Any:
        calls.append(run.dir)
        return reading.analyse(run)

    monkeypatch.setitem(
        reports.REPORTS, "batch-size", dataclasses.replace(reading, analyse=counted)
    )
    out = reports.build_report([tmp_path / "a", tmp_path / "b"], tmp_path / "both.md", True)
    assert calls == [tmp_path / "a", tmp_path / "b"]  # once each, not once more for the compare
    md = out.read_text()
    assert "batch-size: runs compared" in md
    assert "train_size=0" in md and "train_size=30000" in md
    # C1 (BN at b=2 worse than at 64) holds in a; in b BN at 64 is 20 pp worse, so it fails
    c1 = next(line for line in md.splitlines() if line.startswith("| C1 "))  # the compare's
    tail = "3 seeds: holds | 21 [18.5, 23.5] vs 30.5 [29.3, 31.7], diff -9.5 [-11.7, -7.35]; "
    assert c1.endswith(tail + "p=0.00276, d_z=-10.97; 3 seeds: does not hold |")
