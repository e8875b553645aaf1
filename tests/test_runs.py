"""Run-directory plumbing: atomic files, torn JSON lines, run naming, report dispatch, pool."""

from __future__ import annotations

import json

import pytest

from bnlab.experiments.pool import Cell, Progress, run_cells
from bnlab.report import build_report
from bnlab.runs import append_jsonl, atomic_open, atomic_write_json, new_run_dir, read_jsonl


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "config.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(RuntimeError), atomic_open(path, "w") as f:
        f.write('{"v": 2, "half')
        raise RuntimeError("killed mid-write")
    assert json.loads(path.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    assert oct(path.stat().st_mode & 0o777) != oct(0o600)  # not mkstemp's private mode


def test_read_jsonl_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    append_jsonl(path, [{"epoch": 1}, {"epoch": 2}])
    with open(path, "a") as f:
        f.write('{"epoch": 3, "d_lo')  # a kill in the middle of a write
    assert read_jsonl(path) == [{"epoch": 1}, {"epoch": 2}]
    assert read_jsonl(tmp_path / "absent.jsonl") == []


def test_new_run_dirs_never_collide(tmp_path):
    a = new_run_dir(tmp_path, "gan")
    a.mkdir()
    b = new_run_dir(tmp_path, "gan")
    assert a != b and b.name.startswith(a.name)


def test_report_names_an_unknown_experiment(tmp_path):
    atomic_write_json(tmp_path / "config.json", {"experiment": "alchemy"})
    with pytest.raises(ValueError, match="unknown experiment 'alchemy'"):
        build_report([tmp_path])
    with pytest.raises(ValueError, match="at least one run directory"):
        build_report([])


def _chunk(payload, start, end):
    if payload["crash"]:
        raise RuntimeError("boom")
    return {"done": end}


class _Record(Progress):
    def __init__(self) -> None:
        self.done: list[tuple[str, int]] = []

    def chunk_done(self, cell, result) -> None:
        self.done.append((cell.key, cell.done))


def test_a_crashing_cell_fails_alone_in_the_process_pool():
    cells = [Cell("ok", 0, 4, payload={"crash": False}), Cell("bad", 0, 4, payload={"crash": True})]
    progress = _Record()
    run_cells(cells, _chunk, chunk_epochs=2, jobs=2, progress=progress)
    ok, bad = cells
    assert ok.done == 4 and ok.failed is None
    assert bad.done == 0 and bad.failed == "RuntimeError: boom"
    assert ("ok", 2) in progress.done and ("ok", 4) in progress.done


def test_cells_are_chunked_longest_remaining_first_inline():
    cells = [Cell("a", 0, 2, payload={"crash": False}), Cell("b", 1, 5, payload={"crash": False})]
    progress = _Record()
    run_cells(cells, _chunk, chunk_epochs=2, jobs=1, progress=progress)
    assert progress.done[0] == ("b", 3)  # b had 4 epochs left, a only 2
    assert all(c.done == c.total for c in cells)


def test_resolve_device_cuda_without_gpu_is_a_clear_error():
    import torch

    from bnlab.experiments.common import resolve_device

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_device("cuda")
    assert resolve_device("auto") == torch.device("cpu")
