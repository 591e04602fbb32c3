"""Entry points run from the root of a clone, as a new user would: `blender-fast rank --ray` (whose Ray workers
must import a blender_fast with its compiled _core, not the unbuilt source tree) and `python -m benchmarks`.

The subprocesses get cwd = the repository root and no PYTHONPATH, so they import what the install gives
them; with the editable install in place mode (pyproject.toml: editable.mode = "inplace") that is this
checkout with _core built into blender_fast/. See docs/cluster.md, "Running from a clone"."""
from __future__ import annotations

import json
import os
import shutil
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


def _copy_of_the_clone(dest: Path) -> Path:
    """The tracked files of this checkout (as they are now), without anything built: a fresh clone, whose
    blender_fast/ has no compiled _core."""
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    return dest


def _venv_with_a_wheel_of(clone: Path, where: Path) -> Path:
    """A venv holding blender_fast installed from a wheel of ``clone`` (NOT editable), which sees this
    environment's other packages through a .pth (as .ci/run makes its transformers-5 venv): python3 -m venv
    --system-site-packages would not do, this environment may itself be a venv."""
    import importlib.util

    wheels = where / "wheels"
    # Build with this environment's build backend when it has one (no download); else pip fetches it.
    have_backend = all(importlib.util.find_spec(m) for m in ("scikit_build_core", "pybind11"))
    isolation = ["--no-build-isolation"] if have_backend else []
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", *isolation, "-w", str(wheels),
                    str(clone)], check=True, timeout=1800, env=clone_env())
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # The parent's directories only, not their .pth files: those hold the editable install of this checkout
    # (a path, or scikit-build-core's import hook), which would shadow the wheel.
    parents = [p for p in sys.path if p.endswith(("site-packages", "dist-packages"))]
    Path(site, "_parent_env.pth").write_text("".join(f"{p}\n" for p in parents))
    wheel = next(wheels.glob("blender_fast-*.whl"))
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   timeout=600, env=clone_env())
    return venv


@pytest.mark.slow
def test_rank_ray_from_a_clone_root_with_a_non_editable_install(tiny_checkpoint, tmp_path):
    """README's Ray section: `pip install ".[export,ray]"` (not -e), then `blender-fast rank --ray` from the
    clone's root. The workers must import the installed package, not the clone's blender_fast/ (no _core);
    and a successful run prints no error-level line of Ray's."""
    require("ray")
    clone = _copy_of_the_clone(tmp_path / "clone")
    assert not list((clone / "blender_fast").glob("_core*"))
    venv = _venv_with_a_wheel_of(clone, tmp_path)
    src = tmp_path / "prompts.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in [
        {"instruction": "Name a colour.", "candidates": ["Red.", "A fish.", "Blue, or green."]},
        {"instruction": "Add 2 and 2.", "candidates": ["4", "22"]},
    ]), encoding="utf-8")
    installed = subprocess.run([str(venv / "bin" / "python"), "-c", "import blender_fast; print(blender_fast.__file__)"],
                               cwd=tmp_path, env=clone_env(), capture_output=True, text=True, timeout=120)
    assert str(venv) in installed.stdout, installed.stdout + installed.stderr  # the wheel, not the editable checkout
    for cwd in (clone, tmp_path):  # the clone's root, and anywhere else
        out = cwd / "ranked"
        proc = subprocess.run([str(venv / "bin" / "blender-fast"), "rank", "--ray", "--num-actors", "1",
                               "--model", str(tiny_checkpoint), "--input", str(src), "--output", str(out)],
                              cwd=cwd, env=clone_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "cannot import name '_core'" not in proc.stderr
        errors = [line for line in proc.stderr.splitlines() if " E " in line[:40] or "available CPUs" in line]
        assert not errors, errors  # core_worker.cc's constructor-arguments line, the CPU warning
        parts = sorted(p for p in out.rglob("*.jsonl"))
        rows = [json.loads(line) for p in parts for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        assert sorted(len(r["blender_fast"]["ranks"]) for r in rows) == [2, 3], parts
