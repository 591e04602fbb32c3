"""The command line on a generated checkpoint: rank (full and selection), export, errors."""
from __future__ import annotations

import json

import pytest

from blender_fast.cli import main


def _read(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def test_rank_full_on_shared_file_as_is(tiny_checkpoint, tmp_path, shared_records):
    src = tmp_path / "in.jsonl"
    with open(src, "w") as f:
        for r in shared_records[:3]:
            f.write(json.dumps(r) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["rank", "--model", str(tiny_checkpoint), "--input", str(src), "--output", str(out), "--quiet"]) == 0
    rows = _read(out)
    assert len(rows) == 3
    for row, rec in zip(rows, shared_records[:3]):
        assert row["id"] == rec["id"] and row["candidates"] == rec["candidates"]  # input kept as it is
        result = row["blender_fast"]
        assert sorted(result["ranks"])[0] == 1 and len(result["scores"]) == 12
        assert result["forward_passes"] == 132
        assert result["best"] == result["top_k"][0]


@pytest.mark.parametrize("strategy, steps", [("bubble", 5), ("tournament", 3)])
def test_rank_selection_strategies(tiny_checkpoint, tmp_path, strategy, steps):
    out = tmp_path / "out.jsonl"
    argv = ["rank", "--model", str(tiny_checkpoint), "--output", str(out), "--strategy", strategy,
            "--top-k", "1", "--quiet"]
    assert main(argv) == 0  # the package's example prompts
    rows = _read(out)
    assert len(rows) == 6
    for row in rows:
        n = len(row["candidates"])
        assert row["blender_fast"]["forward_passes"] == 2 * (n - 1)
        if n == 5:
            assert row["blender_fast"]["steps"] == (4 if strategy == "bubble" else steps)


def test_export_command_reports_difference(tiny_checkpoint, tmp_path, capsys):
    assert main(["export", str(tiny_checkpoint), "--out", str(tmp_path / "onnx")]) == 0
    printed = capsys.readouterr().out
    assert "max |ORT - torch fp32|" in printed
    assert (tmp_path / "onnx" / "model.onnx").is_file()


def test_errors_are_reported_not_raised(tiny_checkpoint, tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "candidates": []}\n')
    assert main(["rank", "--model", str(tiny_checkpoint), "--input", str(bad), "--quiet"]) == 2
    assert "bad.jsonl:1: 'candidates' must be a non-empty list" in capsys.readouterr().err
    assert main(["rank", "--model", str(tmp_path / "missing"), "--quiet"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["rank", "--model", str(tiny_checkpoint), "--top-k", "9", "--strategy", "bubble", "--quiet"]) == 2
    assert "fewer than --top-k 9" in capsys.readouterr().err


def test_rank_with_a_budget(tiny_checkpoint, tmp_path):
    out = tmp_path / "out.jsonl"
    argv = ["rank", "--model", str(tiny_checkpoint), "--output", str(out), "--strategy", "adaptive",
            "--budget", "10", "--quiet"]
    assert main(argv) == 0
    rows = _read(out)
    assert len(rows) == 6 and all(r["blender_fast"]["forward_passes"] <= 10 for r in rows)
    assert max(r["blender_fast"]["forward_passes"] for r in rows) == 10  # n = 5: 5 comparisons
