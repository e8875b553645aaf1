"""bnlab.doctor: each misuse is reported where it is, clean models pass, nothing changes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import bnlab.nn as bnn
from bnlab.doctor import (
    Finding,
    Severity,
    check,
    format_findings,
    load_factory,
    main,
    watch,
)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def find(findings: list[Finding], code: str) -> list[Finding]:
    return [f for f in findings if f.code == code]


def serious(findings: list[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity is not Severity.INFO]


def snapshot(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, bool]]:
    state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {name: m.training for name, m in model.named_modules()}
    return state, flags


def train_on(model: nn.Module, make_batch, steps: int = 40) -> None:
    """Trained-ish running statistics: train-mode forwards, no optimizer needed for BN stats."""
    model.train()
    with torch.no_grad():
        for _ in range(steps):
            model(make_batch())


# ---- clean models from the docs --------------------------------------------------------------


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block, stride 1, identity shortcut."""

    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x: Tensor) -> Tensor:
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


def blog_generator() -> nn.Sequential:
    """The blog's fixed G (notebook 3): BN after Linear 1 and 2, none before Tanh."""
    return nn.Sequential(
        nn.Linear(64, 256),
        nn.BatchNorm1d(256),
        nn.LeakyReLU(0.2),
        nn.Linear(256, 256),
        nn.BatchNorm1d(256),
        nn.LeakyReLU(0.2),
        nn.Linear(256, 784),
        nn.Tanh(),
    )


def blog_discriminator() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(784, 256),
        nn.LeakyReLU(0.2),
        nn.Linear(256, 256),
        nn.LeakyReLU(0.2),
        nn.Linear(256, 1),
        nn.Sigmoid(),
    )


def test_resnet_basic_block_is_clean() -> None:
    block = BasicBlock()
    assert check(block) == []
    assert serious(check(block, torch.randn(4, 8, 6, 6))) == []
    train_on(block, lambda: torch.randn(8, 8, 6, 6))
    assert check(block, torch.randn(8, 8, 6, 6)) == []


def test_blog_fixed_gan_is_clean() -> None:
    g, d = blog_generator(), blog_discriminator()
    assert serious(check(g)) == []
    assert serious(check(g, torch.randn(16, 64))) == []
    assert check(d) == []
    assert check(d, torch.randn(16, 784)) == []
    train_on(g, lambda: torch.randn(32, 64))
    assert serious(check(g, torch.randn(32, 64))) == []


def test_blog_generator_biases_before_bn_are_info() -> None:
    found = find(check(blog_generator(), torch.randn(4, 64)), "bias-before-bn")
    assert [(f.module, f.severity) for f in found] == [("0", Severity.INFO), ("3", Severity.INFO)]


# ---- one model per finding -------------------------------------------------------------------


def test_bn_on_single_unit_logit_is_an_error() -> None:
    d = nn.Sequential(nn.Linear(8, 1), nn.BatchNorm1d(1), nn.Sigmoid())  # notebook 2's D head
    (f,) = find(check(d), "bn-on-single-unit")
    assert (f.severity, f.module) == (Severity.ERROR, "1")
    assert "BatchNorm1d(1)" in f.message


@pytest.mark.parametrize(
    "bn", [nn.BatchNorm1d(1), bnn.BatchNorm1d(1), nn.SyncBatchNorm(1)], ids=type
)
def test_torch_bnlab_and_sync_batch_norm_are_recognized(bn: nn.Module) -> None:
    model = nn.Sequential(nn.Linear(8, 1, bias=False), bn)
    assert [(f.code, f.module) for f in check(model)] == [("bn-on-single-unit", "1")]


def test_bnlab_layers_get_the_same_findings_as_torch_layers() -> None:
    def build(bn1d: type[nn.Module]) -> nn.Module:
        return nn.Sequential(nn.Linear(8, 4), bn1d(4), nn.ReLU(), nn.Linear(4, 1), bn1d(1))

    x = torch.randn(1, 8)
    as_torch = [(f.code, f.severity, f.module) for f in check(build(nn.BatchNorm1d), x)]
    as_bnlab = [(f.code, f.severity, f.module) for f in check(build(bnn.BatchNorm1d), x)]
    assert as_torch == as_bnlab
    assert ("batch-of-one", Severity.ERROR, "1") in as_torch


def test_bn_before_generator_output_tanh_is_a_warning() -> None:
    g = nn.Sequential(  # notebook 2's G tail: BN after the last Linear, then Tanh
        nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Linear(8, 16, bias=False), nn.BatchNorm1d(16), nn.Tanh(),
    )  # fmt: skip
    for example in (None, torch.randn(4, 4)):
        (f,) = find(check(g, example), "bn-before-output-activation")
        assert (f.severity, f.module) == (Severity.WARNING, "4")
        assert "DCGAN" in f.fix


def test_bn_before_a_hidden_tanh_is_not_an_output_finding() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 2)
    )
    assert find(check(model, torch.randn(4, 4)), "bn-before-output-activation") == []


@pytest.mark.parametrize("with_example", [False, True])
def test_bias_before_bn_is_reported_on_the_biased_layer(with_example: bool) -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    (f,) = find(check(model, torch.randn(2, 3, 5, 5) if with_example else None), "bias-before-bn")
    assert (f.severity, f.module) == (Severity.INFO, "0")
    assert "bias=False" in f.fix


class DefinedOutOfOrder(nn.Module):
    """Definition order says lin_a -> bn; the data flow is lin_b (no bias) -> bn."""

    def __init__(self) -> None:
        super().__init__()
        self.lin_a = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.lin_b = nn.Linear(4, 8, bias=False)
        self.lin_c = nn.Linear(4, 8)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.lin_b(x)) + self.lin_a(x) + torch.relu(self.lin_c(x))


def test_traced_data_flow_beats_definition_order() -> None:
    model = DefinedOutOfOrder()
    assert [f.module for f in find(check(model), "bias-before-bn")] == ["lin_a"]  # a guess
    assert find(check(model, torch.randn(4, 4)), "bias-before-bn") == []


def test_bias_before_bn_through_an_inplace_op_is_not_reported() -> None:
    class ReluInPlace(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 8)
            self.bn = nn.BatchNorm1d(8)

        def forward(self, x: Tensor) -> Tensor:
            return self.bn(self.lin(x).relu_())  # the bias now matters: relu is not linear

    assert find(check(ReluInPlace(), torch.randn(4, 4)), "bias-before-bn") == []


def test_nonfinite_running_stats_are_an_error() -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), bnn.BatchNorm1d(3))
    model[1].running_var[0] = float("nan")
    model[1].running_mean[2] = float("inf")
    (f,) = find(check(model), "nonfinite-running-stats")
    assert (f.severity, f.module) == (Severity.ERROR, "1")
    assert "1 of 3 in running_mean" in f.message and "1 of 3 in running_var" in f.message


@pytest.mark.parametrize("bn", [nn.BatchNorm1d, bnn.BatchNorm1d, bnn.SyncBatchNorm])
def test_keras_momentum_is_a_warning_with_the_pytorch_value(bn: type[nn.Module]) -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), bn(3, momentum=0.99))
    (f,) = find(check(model), "keras-momentum")
    assert (f.severity, f.module) == (Severity.WARNING, "1")
    assert "momentum=0.99" in f.message and f.fix.startswith("momentum=0.01 ")


@pytest.mark.parametrize("momentum", [0.1, 0.01, 0.5, 0.899, None, 1.0])
def test_pytorch_momentum_cumulative_and_last_batch_are_not_keras(momentum: float | None) -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), bnn.BatchNorm1d(3, momentum=momentum))
    assert find(check(model), "keras-momentum") == []


def test_fp16_running_var_near_the_float16_maximum_is_a_warning() -> None:
    model = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), bnn.BatchNorm2d(3)).half()
    model[1].running_var.copy_(torch.tensor([1.0, 6.2e4, 3.0e4]))
    (f,) = find(check(model), "fp16-running-var-overflow")
    assert (f.severity, f.module) == (Severity.WARNING, "1")
    assert "1 of 3 channels" in f.message and "largest 62016" in f.message
    model[1].running_var[2] = float("inf")  # overflowed: an error, next to the generic one
    (f,) = find(check(model), "fp16-running-var-overflow")
    assert f.severity is Severity.ERROR and "2 of 3 channels" in f.message
    assert find(check(model), "nonfinite-running-stats")


def test_large_running_var_in_float32_or_below_the_limit_in_float16_is_fine() -> None:
    wide = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), bnn.BatchNorm2d(3))
    wide[1].running_var.fill_(1e6)  # float32: far from its maximum
    assert find(check(wide), "fp16-running-var-overflow") == []
    half = nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3)).half()
    half[1].running_var.fill_(5.9e4)
    assert find(check(half), "fp16-running-var-overflow") == []


def test_across_ranks_needs_a_process_group() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        check(nn.Sequential(bnn.BatchNorm1d(3)), across_ranks=True)


def test_untracked_running_stats_are_a_warning() -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3, track_running_stats=False))
    (f,) = find(check(model), "untracked-stats")
    assert (f.severity, f.module) == (Severity.WARNING, "1")


def test_batch_of_one_in_train_mode_is_an_error() -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3), nn.ReLU())
    (f,) = find(check(model, torch.randn(1, 4)), "batch-of-one")
    assert (f.severity, f.module) == (Severity.ERROR, "1")
    assert "(1, 3)" in f.message
    model.eval()
    assert find(check(model, torch.randn(1, 4)), "batch-of-one") == []


def test_batch_of_one_with_spatial_positions_is_fine() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 1, bias=False), nn.BatchNorm2d(4))
    findings = check(model, torch.randn(1, 3, 4, 4))  # 16 values per channel
    assert find(findings, "batch-of-one") == [] and serious(findings) == []


def test_train_eval_gap_on_shifted_data_is_a_warning() -> None:
    model = nn.Sequential(
        nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2)
    )
    train_on(model, lambda: torch.randn(32, 4))
    model.eval()
    assert check(model, torch.randn(64, 4)) == []  # same distribution: no gap
    (f,) = find(check(model, torch.randn(64, 4) * 3 + 2), "train-eval-gap")  # shifted
    assert (f.severity, f.module) == (Severity.WARNING, "1")
    assert "relative L2" in f.message and "mean shift" in f.message


def test_untrained_running_stats_are_info_not_a_gap() -> None:
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8))
    findings = check(model, torch.randn(16, 4) * 5 + 3)
    assert [(f.code, f.severity) for f in findings] == [("running-stats-at-init", Severity.INFO)]


@pytest.mark.parametrize("bn1d", [nn.BatchNorm1d, bnn.BatchNorm1d], ids=["torch", "bnlab"])
def test_eval_mode_with_initial_stats_on_shifted_input_is_a_warning(bn1d) -> None:
    model = nn.Sequential(nn.Linear(4, 8, bias=False), bn1d(8), nn.ReLU(), nn.Linear(8, 2))
    model.eval()  # never trained: "works in training, garbage in eval"
    findings = check(model, torch.randn(64, 4) * 5 + 3)
    (f,) = find(findings, "eval-with-initial-stats")
    assert (f.severity, f.module) == (Severity.WARNING, "1")
    assert "changes its output on this batch by" in f.message and "relative L2" in f.message
    assert "mean shift" in f.message
    assert find(findings, "running-stats-at-init") == []  # reported once, as the warning
    model.train()  # the same layer about to be trained: only the INFO
    assert [f.code for f in check(model, torch.randn(64, 4) * 5 + 3)] == ["running-stats-at-init"]


def test_eval_mode_with_initial_stats_on_standard_normal_input_stays_info() -> None:
    model = nn.Sequential(nn.BatchNorm1d(8), nn.Linear(8, 2)).eval()
    findings = check(model, torch.randn(256, 8))  # what the initial statistics assume
    assert [(f.code, f.severity) for f in findings] == [("running-stats-at-init", Severity.INFO)]


def test_checkpoint_loaded_without_bn_buffers_is_a_warning_with_the_output_change() -> None:
    def build() -> nn.Module:
        return nn.Sequential(
            nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
            nn.Linear(8, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2),
        )  # fmt: skip

    def data() -> Tensor:
        return torch.randn(64, 4) * 4 + 2

    trained = build()
    train_on(trained, data)
    params_only = {k: v for k, v in trained.state_dict().items() if "running" not in k}
    loaded = build()
    missing = loaded.load_state_dict(params_only, strict=False).missing_keys
    assert len(missing) == 4
    assert check(trained.eval(), data()) == []
    loaded.eval()
    warned = find(check(loaded, data()), "eval-with-initial-stats")
    assert [(f.module, f.severity) for f in warned] == [
        ("1", Severity.WARNING),
        ("4", Severity.WARNING),
    ]
    (pct,) = {f.message.split("output on this batch by ")[1].split("%")[0] for f in warned}
    assert float(pct) > 10  # the size of the damage, the same whole-model number for each


def test_empty_batch_gives_no_batch_of_one_finding() -> None:
    model = nn.Sequential(nn.Linear(4, 3, bias=False), nn.BatchNorm1d(3), nn.ReLU())
    findings = check(model, torch.randn(0, 4))
    assert find(findings, "batch-of-one") == [] and serious(findings) == []


# ---- check() changes nothing -----------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 16])
def test_check_leaves_the_model_untouched(batch: int) -> None:
    model = nn.Sequential(
        nn.Linear(4, 8), bnn.BatchNorm1d(8, momentum=None), nn.Dropout(0.5),
        nn.Linear(8, 1), nn.BatchNorm1d(1), nn.Sigmoid(),
    )  # fmt: skip
    train_on(model, lambda: torch.randn(8, 4), steps=5)
    model[1].eval()  # mixed flags must survive too
    buffers = [b for b in model.buffers()]
    state, flags = snapshot(model)
    x = torch.randn(batch, 4) * 2 + 1
    rng = torch.get_rng_state()  # Dropout in the train-mode pass must not consume it
    findings = check(model, x)
    assert findings  # it did look
    after_state, after_flags = snapshot(model)
    assert after_flags == flags
    assert state.keys() == after_state.keys()
    for k in state:
        torch.testing.assert_close(after_state[k], state[k], rtol=0, atol=0)
    assert all(a is b for a, b in zip(model.buffers(), buffers, strict=True))
    assert torch.equal(torch.get_rng_state(), rng)


def test_check_names_the_input_when_the_model_fails_on_it() -> None:
    with pytest.raises(ValueError, match=r"example input \[\(2, 5\)\]"):
        check(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)), torch.randn(2, 5))


# ---- watch() -----------------------------------------------------------------------------------


def test_watch_catches_evaluation_under_no_grad_in_train_mode() -> None:
    model = nn.Sequential(nn.Linear(4, 8, bias=False), bnn.BatchNorm1d(8), nn.ReLU())
    with watch(model) as findings, torch.no_grad():
        model(torch.randn(8, 4))
        model(torch.randn(8, 4))
        assert findings == []  # filled on exit
    got = {(f.code, f.severity, f.module) for f in findings}
    assert got == {
        ("train-mode-under-no-grad", Severity.WARNING, "1"),
        ("running-stats-changed-in-eval", Severity.ERROR, "1"),
    }
    assert "2 forward call(s)" in findings[0].message


def test_watch_is_quiet_after_eval_and_during_training() -> None:
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8), nn.ReLU())
    with watch(model) as findings:
        model(torch.randn(8, 4)).sum().backward()  # a training step: grad on, train mode
        model.eval()
        with torch.no_grad():
            model(torch.randn(8, 4))
    assert findings == []


def test_watch_removes_its_hooks_on_exceptions() -> None:
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.BatchNorm1d(8))
    with pytest.raises(RuntimeError, match="boom"), watch(model) as findings, torch.no_grad():
        model(torch.randn(8, 4))
        raise RuntimeError("boom")
    assert not model[1]._forward_hooks and not model[1]._forward_pre_hooks
    assert {f.code for f in findings} == {
        "train-mode-under-no-grad",
        "running-stats-changed-in-eval",
    }


# ---- formatting, loading, CLI body ----------------------------------------------------------


def test_format_findings() -> None:
    assert format_findings([]) == "no findings"
    text = format_findings(check(nn.Sequential(nn.Linear(8, 1), nn.BatchNorm1d(1))))
    assert "ERROR" in text and "bn-on-single-unit" in text and "fix:" in text
    assert "1 error(s)" in text


MODEL_FILE = """
from torch import nn

def bad():
    return nn.Sequential(nn.Linear(8, 1), nn.BatchNorm1d(1), nn.Sigmoid())

def good():
    return nn.Sequential(nn.Linear(8, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU())

ready = good()
not_a_model = 3

def returns_int():
    return 3
"""


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    path = tmp_path / "models.py"
    path.write_text(MODEL_FILE)
    return path


def test_load_factory_calls_the_factory_or_returns_the_module(model_file: Path) -> None:
    assert isinstance(load_factory(f"{model_file}:bad"), nn.Sequential)
    assert isinstance(load_factory(f"{model_file}:ready"), nn.Sequential)


@pytest.mark.parametrize(
    ("suffix", "match"),
    [
        (":missing", "no attribute 'missing'"),
        (":not_a_model", "neither an nn.Module nor callable"),
        (":returns_int", "returned int"),
        ("", "expected 'path/to/file.py:factory'"),
    ],
)
def test_load_factory_errors_name_the_problem(model_file: Path, suffix: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        load_factory(f"{model_file}{suffix}")


def test_load_factory_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.py"):
        load_factory(f"{tmp_path / 'nope.py'}:factory")


def test_main_returns_1_on_errors_and_prints_them(model_file: Path, capsys) -> None:
    assert main(f"{model_file}:bad") == 1
    assert "bn-on-single-unit" in capsys.readouterr().out
    assert main(f"{model_file}:good", (16, 8)) == 0
    out = capsys.readouterr().out
    assert "example input (16, 8)" in out and "running-stats-at-init" in out
    assert main(f"{model_file}:good", (1, 8)) == 1
    assert "batch-of-one" in capsys.readouterr().out


# ---- CLI: exit status 0 / 1 / 2, one line when it cannot run ------------------------------------

BROKEN_FILE = """
from torch import nn

def raises():
    raise RuntimeError("checkpoint.pt not found\\nsecond line")

def good():
    return nn.Sequential(nn.Linear(8, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU())
"""


def run_cli(argv: list[str], capsys) -> tuple[int, str, str]:
    from bnlab.lab import cli

    code = cli.main(["doctor", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def broken_dir(tmp_path: Path) -> Path:
    (tmp_path / "models.py").write_text(BROKEN_FILE)
    (tmp_path / "bad_import.py").write_text("import not_a_module_anywhere\n")
    (tmp_path / "bad_syntax.py").write_text("def f(:\n")
    return tmp_path


@pytest.mark.parametrize(
    ("spec", "shape", "message"),
    [
        ("models.py:raises", None, r"models\.py:raises\(\) raised RuntimeError: checkpoint\.pt"),
        ("bad_import.py:f", None, r"bad_import\.py raised ModuleNotFoundError: .*not_a_module"),
        ("bad_syntax.py:f", None, r"bad_syntax\.py raised SyntaxError"),
        ("models.py:good", "0,8", r"--input-shape 0,8: every size must be positive, got 0"),
        ("models.py:good", "16,0", r"got 0 at position 1"),
        ("models.py:good", "-4,8", r"--input-shape -4,8: every size must be positive, got -4"),
        ("models.py:good", "100000,100000,100", r"1,000,000,000,000 values .* more than the"),
        ("models.py:good", "16,9", r"the model failed on the example input \[\(16, 9\)\]"),
    ],
)
def test_cli_that_cannot_run_exits_2_with_one_line(
    broken_dir: Path, spec: str, shape: str | None, message: str, capsys
) -> None:
    argv = [str(broken_dir / spec)] + (["--input-shape", shape] if shape else [])
    code, out, err = run_cli(argv, capsys)
    assert code == 2
    assert out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert err.startswith("bnlab doctor: error: ")


def test_cli_exit_status_separates_clean_errors_and_could_not_run(model_file: Path, capsys) -> None:
    assert run_cli([f"{model_file}:good", "--input-shape", "16,8"], capsys)[0] == 0
    assert run_cli([f"{model_file}:bad"], capsys)[0] == 1  # ran, found an ERROR
    assert run_cli([f"{model_file}:missing"], capsys)[0] == 2  # could not run
    with pytest.raises(SystemExit) as exit_help:
        run_cli(["--help"], capsys)
    assert exit_help.value.code == 0
    assert "Exit status: 0" in capsys.readouterr().out
