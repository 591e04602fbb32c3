"""Entry points run from the root of a clone, as a new user would: `blender-fast rank --ray` (whose Ray workers
must import a blender_fast with its compiled _core, not the unbuilt source tree) and `python -m benchmarks`.

The subprocesses get cwd = the repository root and no PYTHONPATH, so they import what the install gives
them; with the editable install in place mode (pyproject.toml: editable.mode = "inplace") that is this
checkout with _core built into blender_fast/. See docs/cluster.md, "Running from a clone"."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import require

ROOT = Path(__file__).resolve().parents[2]


def clone_env() -> dict:
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


@pytest.mark.slow
def test_rank_ray_from_the_repository_root(tiny_checkpoint, tmp_path):
    require("ray")
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Name a colour.", "candidates": ["Red.", "A fish.", "Blue, or green."]},
        {"instruction": "Add 2 and 2.", "candidates": ["4", "22"]},
    ]), encoding="utf-8")
    out = tmp_path / "ranked.jsonl"
    proc = subprocess.run([sys.executable, "-m", "blender_fast.cli", "rank", "--ray", "--num-actors", "1",
                           "--model", str(tiny_checkpoint), "--input", str(src), "--output", str(out), "--quiet"],
                          cwd=ROOT, env=clone_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ModuleNotFoundError" not in proc.stderr
    # The Ray job writes a directory of JSON Lines parts.
    parts = sorted(p for p in out.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
    rows = [json.loads(line) for p in parts for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert sorted(len(r["blender_fast"]["ranks"]) for r in rows) == [2, 3], parts


def test_benchmarks_help_from_the_repository_root():
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--help"], cwd=ROOT, env=clone_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "usage" in proc.stdout.lower()


@pytest.mark.slow
def test_benchmarks_ray_section_from_the_repository_root(tmp_path):
    """`python -m benchmarks` past its --help (which needs no _core): the smoke run of the ray section ranks
    on Ray actors and in one process, both importing the package from the root."""
    require("ray")
    from conftest import shared_data_file

    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--sections", "ray", "--out", str(out)],
                          cwd=ROOT, env={**clone_env(), "BLENDER_FAST_DATA": str(shared_data_file())},
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "ModuleNotFoundError" not in proc.stderr
    variants = json.loads((out / "results.json").read_text(encoding="utf-8"))["ray"]["variants"]
    assert {"single-process", "ray 1 actor"} <= set(variants), list(variants)
