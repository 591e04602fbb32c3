"""The main job needs no torch and no transformers (issue 27.3).

Each check runs in a fresh interpreter where importing torch or transformers raises (a meta-path
``None`` in sys.modules, as if they were not installed) and then asserts that no module of either was loaded: the
generated demo checkpoint, the llm-blender and PairRM-hf layouts and a reward model load by path, go
through the graph builder and rank; Blender, the judge, the CLI's rank and the server's app import
and run without them.

The plain install itself (a virtualenv with only ``pip install .``, made once for the module) ranks the demo,
and loads llm-blender/PairRM, PairRM-hf, pair-ranker and OpenAssistant's reward model by hub id through the
loopback hub stand-in, with the ranks llm-blender 0.0.2 gives on the same checkpoints (issue 27's done-when)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, require

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


# The plain install (``pip install .``, no extras) in a virtualenv of its own: made once per module (the
# install builds the C++ extension, a minute or two) and shared by the tests below.
@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory) -> dict:
    """{"python": the venv's interpreter, "env": its environment}: torch and transformers are not installed
    there, and blender_fast is imported from the venv, not from this checkout."""
    root = tmp_path_factory.mktemp("plain")
    env_dir = root / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    environ = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "BLENDER_FAST_EXPORT", "HF_HUB_CACHE", "HF_TOKEN")}
    environ.update(BLENDER_FAST_CACHE=str(root / "cache"), OMP_NUM_THREADS="1")
    subprocess.run([str(py), "-m", "pip", "install", "-q", "-c", str(REPO / "constraints.txt"), str(REPO)],
                   check=True, env=environ, cwd=root, timeout=1800)
    # cwd outside the checkout: `python -c` puts the working directory first on sys.path
    probe = subprocess.run([str(py), "-c", "import importlib.util as u, blender_fast; "
                            "print(u.find_spec('torch'), u.find_spec('transformers'), blender_fast.__file__)"],
                           capture_output=True, text=True, env=environ, cwd=root, check=True)
    torch_spec, transformers_spec, package = probe.stdout.split()
    assert (torch_spec, transformers_spec) == ("None", "None"), probe.stdout
    assert Path(package).resolve().is_relative_to(env_dir.resolve()), package
    return {"python": py, "env": environ, "dir": env_dir}


@pytest.mark.slow
def test_plain_install_has_no_torch_and_ranks(plain_venv, tmp_path):
    """A virtualenv with only ``pip install .`` (no extras): torch is not installed, the demo ranks."""
    done = subprocess.run([str(plain_venv["dir"] / "bin" / "blender-fast"), "rank", "--model", "demo:tiny",
                           "--output", "x.jsonl"],
                          capture_output=True, text=True, env=plain_venv["env"], cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert '"blender_fast"' in (tmp_path / "x.jsonl").read_text()


# Hub ids through the loopback stand-in (tests/model/hub_server.py), each serving a generated tiny checkpoint
# in that repo's layout: PairRM (llm-blender's RankerConfig naming its backbone by hub id), PairRM-hf
# (DebertaV2PairRM), pair-ranker (llm-blender's layout with pytorch_model.bin and its 128/128 truncation:
# the long prompt below is cut) and OpenAssistant's reward model.
PAIRRM = "llm-blender/PairRM"
PAIRRM_HF = "llm-blender/PairRM-hf"
PAIR_RANKER = "llm-blender/pair-ranker"
REWARD_MODEL = "OpenAssistant/reward-model-deberta-v3-large-v2"
BACKBONE = "microsoft/deberta-v3-large"
HUB_IDS = (PAIRRM, PAIRRM_HF, PAIR_RANKER, REWARD_MODEL)
LONG_SOURCE = ("Summarise the following notes in one sentence. " + " ".join(
    f"Note {i}: the meeting moved from room {i} to room {i + 1} because the projector failed." for i in range(20)))
SOURCES = ["What is the capital of France?", "Name a prime number.", LONG_SOURCE]
CANDIDATES = [["Paris.", "London is the capital.", "It is Paris, a city in France.", "France has no capital."],
              ["Seven.", "Nine is prime.", "Two is the smallest prime.", "Primes are odd."],
              ["The projector failed, so the meeting moved rooms.", "Notes.", "Room changes happened twenty times.",
               "The meeting was cancelled."]]


def hub_environ(base: dict, hub_url: str, home: Path) -> dict:
    """Downloads go to the stand-in and into ``home``; the conftest's offline switches are lifted."""
    environ = {k: v for k, v in base.items() if k not in ("HF_HUB_CACHE", "HF_TOKEN", "BLENDER_FAST_EXPORT")}
    environ.update(HF_ENDPOINT=hub_url, HF_HOME=str(home), HF_HUB_OFFLINE="0", TRANSFORMERS_OFFLINE="0",
                   HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_ETAG_TIMEOUT="5", HF_HUB_DOWNLOAD_TIMEOUT="5",
                   BLENDER_FAST_CACHE=str(home / "bf"), OMP_NUM_THREADS="1")
    return environ


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """The stand-in serving the four repos and the backbone PairRM and pair-ranker name. Generated with
    numpy (no torch); distinct seeds, so no two repos share weights."""
    from blender_fast.synthetic import make_ranker_checkpoint, make_reward_model_checkpoint
    from tests.model.hub_server import HubServer, repo_from_dir

    root = tmp_path_factory.mktemp("hubrepos")
    pairrm = make_ranker_checkpoint(root / "pairrm", "tiny", seed=0)
    pairrm_hf = make_ranker_checkpoint(root / "pairrm-hf", "tiny", seed=1, layout="hf")
    pair_ranker = make_ranker_checkpoint(root / "pair-ranker", "tiny", seed=2, weights_format="bin",
                                         source_maxlength=128, candidate_maxlength=128)
    reward = make_reward_model_checkpoint(root / "reward", "tiny", seed=3)
    repos = {}
    for repo_id, path in ((PAIRRM, pairrm), (PAIR_RANKER, pair_ranker)):
        # as on the hub: config.json names the backbone by its hub id (the generator writes a local folder)
        config = json.loads((path / "config.json").read_text())
        config["model_name"] = BACKBONE
        hub_config = root / f"{path.name}-config.json"
        hub_config.write_text(json.dumps(config, indent=2))
        repos[repo_id] = repo_from_dir(path, exclude=("blender_fast.json",), extra={"config.json": hub_config})
    # Both rankers are the tiny shape: one backbone repo serves them (its config and tokenizer are what
    # blender-fast reads; llm-blender also loads its weights, then overwrites every one from the ranker's).
    repos[BACKBONE] = repo_from_dir(pairrm / "backbone")
    repos[PAIRRM_HF] = repo_from_dir(pairrm_hf, exclude=("blender_fast.json",))
    repos[REWARD_MODEL] = repo_from_dir(reward, exclude=("blender_fast.json",))
    with HubServer(repos) as server:
        yield server


# llm-blender 0.0.2 by hub id, as its users run it: Blender.loadranker for PairRM, pair-ranker and the
# reward model; PairRM-hf, which loadranker does not take, through llm-blender's own DebertaV2PairRM and
# tokenize_pair (the PairRM-hf model card's recipe) over every ordered pair, aggregated with llm-blender's
# get_scores_from_cmps as Blender.rank does.
REFERENCE = f"""
import json
import numpy as np
import torch
torch.set_num_threads(1)
import llm_blender
from llm_blender.blender.blender_utils import tokenize_pair
from llm_blender.gpt_eval.utils import get_scores_from_cmps
from llm_blender.pair_ranker.pairrm import DebertaV2PairRM
from transformers import AutoTokenizer

sources, candidates = {SOURCES!r}, {CANDIDATES!r}
scores = {{}}
for repo_id in {(PAIRRM, PAIR_RANKER, REWARD_MODEL)!r}:
    ref = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    ref.loadranker(repo_id, device="cpu")
    scores[repo_id] = ref.rank(sources, candidates, return_scores=True, batch_size=1, disable_tqdm=True).tolist()
model = DebertaV2PairRM.from_pretrained({PAIRRM_HF!r}).eval()
tokenizer = AutoTokenizer.from_pretrained({PAIRRM_HF!r})
rows = []
for source, cands in zip(sources, candidates):
    pairs = [(i, j) for i in range(len(cands)) for j in range(len(cands)) if i != j]
    batch = tokenize_pair(tokenizer, [source] * len(pairs), [cands[i] for i, _ in pairs], [cands[j] for _, j in pairs])
    with torch.no_grad():
        logits = model(**batch).logits.numpy()
    cmp = np.zeros((1, len(cands), len(cands)), np.float32)
    for (i, j), logit in zip(pairs, logits):
        cmp[0, i, j] = logit
    rows.append(get_scores_from_cmps(cmp)[0].tolist())
scores[{PAIRRM_HF!r}] = rows
print(json.dumps(scores))
"""


@pytest.fixture(scope="module")
def reference_scores(hub, tmp_path_factory) -> dict:
    """{hub id: llm-blender 0.0.2's scores}, computed here (this environment has torch and llm-blender),
    loading each id from the same stand-in."""
    require("torch")
    require("llm_blender")
    home = tmp_path_factory.mktemp("reference")
    done = subprocess.run([sys.executable, "-c", REFERENCE], env=hub_environ(dict(os.environ), hub.url, home),
                          cwd=home, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


OURS = f"""
import json, sys
import blender_fast
from blender_fast import Ranker
ranker = Ranker.from_pretrained(sys.argv[1])
scores = ranker.rank({SOURCES!r}, {CANDIDATES!r}, return_scores=True)
ranks = ranker.rank({SOURCES!r}, {CANDIDATES!r})
leaked = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers'))
print(json.dumps({{"scores": scores.tolist(), "ranks": ranks.tolist(), "leaked": leaked,
                  "package": blender_fast.__file__}}))
"""


@pytest.mark.slow
@pytest.mark.reference
@pytest.mark.parametrize("hub_id", HUB_IDS)
def test_plain_install_loads_hub_ids_with_llm_blenders_ranks(plain_venv, hub, reference_scores, hub_id, tmp_path):
    """Issue 27's done-when: in the plain install, each layout loads by hub id through the stand-in, ranks
    as llm-blender 0.0.2 does on the same checkpoint (ranks identical, |Δscore| <= 1e-4), and torch and
    transformers are never imported."""
    from llm_blender.gpt_eval.utils import get_ranks_from_scores

    hub.reset()
    done = subprocess.run([str(plain_venv["python"]), "-c", OURS, hub_id], cwd=tmp_path,
                          env=hub_environ(plain_venv["env"], hub.url, tmp_path / "hf"),
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    ours = json.loads(done.stdout.strip().splitlines()[-1])
    assert ours["leaked"] == [], ours["leaked"]
    assert Path(ours["package"]).resolve().is_relative_to(plain_venv["dir"].resolve()), ours["package"]
    repo_path = "/" + hub_id + "/resolve/"
    assert hub.count(r"^" + repo_path.replace(".", r"\.") + r".*/(model\.safetensors|pytorch_model\.bin)$") >= 1, \
        "the weights did not come from the stand-in"
    ref = np.asarray(reference_scores[hub_id], dtype=np.float64)
    assert np.asarray(ours["ranks"]).tolist() == get_ranks_from_scores(ref).tolist(), (ours, ref.tolist())
    assert np.abs(np.asarray(ours["scores"]) - ref).max() <= 1e-4, (ours["scores"], ref.tolist())
    # random weights still separate the candidates: identical ranks are not all ties
    assert all(len(set(row)) > 1 for row in ours["ranks"]), ours["ranks"]
