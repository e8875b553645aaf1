"""Run-directory plumbing: atomic files, torn JSON lines, run naming, report dispatch."""

from __future__ import annotations

import json

import pytest

from bnlab.lab.experiments.reports import build_report
from bnlab.lab.runs import append_jsonl, atomic_open, atomic_write_json, new_run_dir, read_jsonl


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_read_jsonl_skips_a_torn_last_line_with_a_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    with open(path, "a") as f:
        f.write('{"epoch": 3, "d_lo')  # a kill in the middle of a write
    with pytest.warns(UserWarning, match="torn last line 3"):
        assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_read_jsonl_refuses_a_corrupt_line_before_the_last(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"epoch": 1}\n{"epoch": 2, "d_lo\n{"epoch": 3}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not a JSON record"):
        read_jsonl(path)
    path.write_text('{"epoch": 1}\n[1, 2]\n')  # valid JSON, but not a record
    with pytest.raises(ValueError, match="line 2"):
        read_jsonl(path)


def test_new_run_dirs_never_collide(tmp_path):
    a = new_run_dir(tmp_path, "gan")
    a.mkdir()
    b = new_run_dir(tmp_path, "gan")
    assert a != b and b.name.startswith(a.name)


def test_report_names_an_unknown_experiment(tmp_path):
    atomic_write_json(tmp_path / "config.json", {"experiment": "alchemy", "config": {}})
    with pytest.raises(ValueError, match="unknown experiment 'alchemy'"):
        build_report([tmp_path])
    with pytest.raises(ValueError, match="at least one run directory"):
        build_report([])


def test_resolve_device_cuda_without_gpu_is_a_clear_error():
    import torch

    from bnlab.lab.experiments.common import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
