"""The main job needs no torch and no transformers (issue 27.3).

Each check runs in a fresh interpreter where importing torch or transformers raises (a meta-path
``None`` in sys.modules, as if they were not installed) and then asserts that no module of either was loaded: the
generated demo checkpoint, the llm-blender and PairRM-hf layouts and a reward model load by path, go
through the graph builder and rank; Blender, the judge, the CLI's rank and the server's app import
and run without them."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

from conftest import REPO

# sys.modules[name] = None: ``import torch`` raises ImportError and importlib.util.find_spec returns None,
# exactly as where it is not installed.
BLOCK = "import sys\nfor _name in ('torch', 'transformers'):\n    sys.modules[_name] = None\n"
CHECK = ("\nleaked = [m for m, mod in sys.modules.items() if mod is not None and m.split('.')[0] in ('torch', 'transformers')]"
         "\nassert not leaked, leaked\nprint('NO-TORCH-OK')\n")


def run_blocked(code: str, tmp_path: Path, block: bool = True, **env) -> str:
    """Run ``code`` in a fresh interpreter (torch and transformers absent unless block=False: then they are
    installed but must still not be imported) and check that neither was loaded."""
    full = (BLOCK if block else "import sys\n") + textwrap.dedent(code) + CHECK
    environ = {**os.environ, "BLENDER_FAST_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(REPO),
               "OMP_NUM_THREADS": "1", **env}
    environ.pop("BLENDER_FAST_EXPORT", None)
    done = subprocess.run([sys.executable, "-c", full], cwd=tmp_path, env=environ, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0 and "NO-TORCH-OK" in done.stdout, done.stdout[-2000:] + done.stderr[-4000:]
    return done.stdout


def test_demo_ranks_without_torch(tmp_path):
    out = run_blocked("""
        from blender_fast import Ranker
        from blender_fast.blender import Blender
        from blender_fast.judges import PairRMJudge
        ranker = Ranker.from_pretrained("demo:tiny")
        ranks = ranker.rank(["Say hi."], [["hi", "hello there", "no"]])
        assert ranks.shape == (1, 3), ranks
        blender = Blender()
        blender.loadranker("demo:tiny")
        print("BLENDER", blender.rank(["Say hi."], [["hi", "hello there", "no"]]).tolist())
        judge = PairRMJudge("demo:tiny", seed=0)
        print("JUDGE", judge.judge(["Say hi."], [["hi", "no"]]))
        import blender_fast.serve.app  # the server's app: no torch at import either
    """, tmp_path)
    assert "BLENDER [[" in out and "JUDGE" in out


def test_cli_rank_without_torch(tmp_path):
    (tmp_path / "in.jsonl").write_text('{"instruction": "Say hi.", "candidates": ["hi", "hello there", "no"]}\n')
    run_blocked("""
        from blender_fast.cli import main
        assert main(["rank", "--model", "demo:tiny", "--input", "in.jsonl", "--output", "out.jsonl"]) == 0
    """, tmp_path)
    assert '"blender_fast"' in (tmp_path / "out.jsonl").read_text()


@pytest.mark.parametrize("kind,block", [("llm-blender", True), ("hf", True), ("reward", True), ("reward", False),
                                        ("hf", False)])
def test_generated_checkpoints_load_by_path_without_torch(kind, block, tmp_path):
    from blender_fast.synthetic import make_ranker_checkpoint, make_reward_model_checkpoint

    if kind == "reward":
        path = make_reward_model_checkpoint(tmp_path / "OpenAssistant" / "reward-model-deberta-v3-large-v2", "tiny")
    else:
        path = make_ranker_checkpoint(tmp_path / kind, "tiny", layout=kind)
    out = run_blocked(f"""
        from blender_fast import Ranker
        ranker = Ranker.from_pretrained({str(path)!r})
        print("RANKS", ranker.rank(["Say hi."], [["hi", "hello there", "no"]]).tolist())
    """, tmp_path, block)
    assert "RANKS [[" in out


@pytest.mark.slow
def test_plain_install_has_no_torch_and_ranks(tmp_path):
    """A virtualenv with only ``pip install .`` (no extras): torch is not installed, the demo ranks."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    environ = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BLENDER_FAST_EXPORT")}
    environ["BLENDER_FAST_CACHE"] = str(tmp_path / "cache")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(REPO)],
                   check=True, env=environ, cwd=tmp_path, timeout=1800)
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch'), u.find_spec('transformers'))"],
                           capture_output=True, text=True, env=environ, check=True)
    assert probe.stdout.split() == ["None", "None"], probe.stdout
    done = subprocess.run([str(env_dir / "bin" / "blender-fast"), "rank", "--model", "demo:tiny", "--output", "x.jsonl"],
                          capture_output=True, text=True, env=environ, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert '"blender_fast"' in (tmp_path / "x.jsonl").read_text()
