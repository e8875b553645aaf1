"""`bnlab <command>`: help, dispatch, clear errors without tracebacks, report and doctor."""

from __future__ import annotations

from pathlib import Path

import pytest

from bnlab.lab import cli

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "blog_models.py"


def test_help_lists_every_experiment_and_tool(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    from bnlab.lab.experiments import EXPERIMENTS

    for name in [*EXPERIMENTS, *cli.TOOLS]:
        assert f"  {name} " in out


def test_unknown_command_is_an_error(capsys):
    assert cli.main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


def test_gan_help_states_the_defaults_and_run_time(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["gan", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--epochs" in out and "--seeds" in out and "--resume" in out
    assert "10-20 minutes" in out and "two hours" in out


def test_bad_input_is_a_clear_error_and_exit_code_2(capsys, tmp_path):
    # parsed at the command-line edge: the parser's own error box, naming the flag
    with pytest.raises(SystemExit) as exc:
        cli.main(["gan", "--variants", "nope", "--out", str(tmp_path / "r")])
    assert exc.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "Error parsing --variants: unknown variant 'nope'; known: plain" in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()
    # checked before any work: one line, exit code 2
    assert cli.main(["gan", "--epochs", "0", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err == "bnlab gan: error: --epochs must be at least 1, got 0\n"


def test_missing_data_directory_is_a_clear_error(capsys, tmp_path):
    code = cli.main(["gan", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert code == 2 and "does not exist" in err and "Traceback" not in err


def test_doctor_flags_notebook2_and_passes_the_fixed_generator(capsys):
    assert (
        cli.main(["doctor", f"{EXAMPLES}:notebook2_discriminator", "--input-shape", "16,784"]) == 1
    )
    out = capsys.readouterr().out
    assert "bn-on-single-unit" in out and "ERROR" in out
    assert cli.main(["doctor", f"{EXAMPLES}:fixed_generator", "--input-shape", "16,64"]) == 0
    out = capsys.readouterr().out
    assert "ERROR" not in out and "WARNING" not in out


def test_doctor_bad_spec_is_a_clear_error(capsys):
    assert cli.main(["doctor", f"{EXAMPLES}:no_such_factory"]) == 2
    assert "no attribute 'no_such_factory'" in capsys.readouterr().err


def test_report_rejects_a_directory_that_is_not_a_run(capsys, tmp_path):
    assert cli.main(["report", str(tmp_path)]) == 2
    assert "not a bnlab run directory" in capsys.readouterr().err


def test_report_rebuilds_from_a_gan_run(capsys, tmp_path, mnist_root):
    run_dir = tmp_path / "run"
    assert (
        cli.main(
            [
                "gan",
                "--data",
                str(mnist_root),
                "--subset",
                "300",
                "--epochs",
                "1",
                "--variants",
                "init,init-bn",
                "--jobs",
                "1",
                "--no-metrics",
                "--out",
                str(run_dir),
            ]
        )
        == 0
    )
    (run_dir / "report.html").unlink()
    capsys.readouterr()
    assert cli.main(["report", str(run_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "report.html")
    html = (run_dir / "report.html").read_text()
    for section in ("GAN: what the blog showed", "GAN: curves", "GAN: samples across epochs"):
        assert section in html
    assert html.count("data:image/png;base64,") >= 5
    assert (run_dir / "summary.json").exists()  # written by the run


@pytest.mark.parametrize(
    ("codes", "expected"),
    [
        ({0: 2, 1: 2}, 2),  # bad input on every rank: nothing started
        ({0: 1}, 1),  # rank 0 finished the run with failed jobs
        ({1: 1}, 1),  # a rank failed after rank 0 ended cleanly
        ({0: 130, 1: -15}, 130),  # stopped resumably (rank lost, SIGTERM)
        ({0: -15}, 130),
        ({0: 2, 1: 130}, 130),
    ],
)
def test_nproc_exit_code_says_what_the_ranks_ended_with(
    monkeypatch, capsys, tmp_path, codes, expected
):
    # torchrun's failure report, mapped to bnlab's exit codes (the real launches are in
    # test_ddp_gan.py; this covers every branch without starting processes)
    import torch.distributed.run as run
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

    seen: list[list[str]] = []

    def fake_torchrun(args: list[str]) -> None:
        seen.append(args)
        failures = {
            r: ProcessFailure(local_rank=r, pid=1000 + r, exitcode=c, error_file="")
            for r, c in codes.items()
        }
        raise ChildFailedError("bnlab", failures)

    monkeypatch.setattr(run, "main", fake_torchrun)
    out = tmp_path / "r"
    assert cli.main(["gan", "--quick", "--nproc", "2", "--out", str(out)]) == expected
    assert "--nproc-per-node=2" in seen[0] and "--nproc" not in seen[0]
    err = " ".join(capsys.readouterr().err.split())
    again = f"continue with bnlab gan --resume --out {out} --nproc 2"
    assert (again in err) == (expected != 2)  # bad input: every rank said why, nothing to resume


def test_the_reading_halves_are_the_commands_own():
    """bnlab report's catalog (reading halves only) and the command registry list the same
    experiments, in the same order, each command reading its runs with its own half."""
    from bnlab.lab.experiments.registry import EXPERIMENTS
    from bnlab.lab.experiments.reports import REPORTS

    assert list(REPORTS) == list(EXPERIMENTS)
    assert all(EXPERIMENTS[name].reading is REPORTS[name] for name in REPORTS)
