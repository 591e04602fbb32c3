"""The llm-blender-compatible facade: signatures, config objects, rank_and_fuse, and errors."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest

from conftest import require

INPUTS = ["Give a tip for sleeping better.", "What is 2 + 2?"]
CANDIDATES = [
    ["Keep a regular schedule.", "Drink coffee at night.", "Avoid screens an hour before bed and keep the room cool.", "Sleep."],
    ["4", "Four.", "22", "2 + 2 equals 4."],
]


@pytest.fixture(scope="module")
def tiny_fuser(tmp_path_factory):
    require("torch")
    from blender_fast.synthetic import make_fuser_checkpoint

    return make_fuser_checkpoint(tmp_path_factory.mktemp("fuser") / "tiny", shape="tiny", seed=0)


@pytest.fixture(scope="module")
def blender(tiny_checkpoint, tiny_fuser):
    from blender_fast import Blender

    b = Blender({"device": "cpu", "use_tqdm": False})
    b.loadranker(str(tiny_checkpoint))
    b.loadfuser(str(tiny_fuser), device="cpu")
    return b


def test_signatures_match_llm_blender():
    """Every public method of llm_blender.Blender exists here with the same parameters and defaults."""
    llm_blender = require("llm_blender")
    from blender_fast import Blender

    for name, ref in inspect.getmembers(llm_blender.Blender, inspect.isfunction):
        if name.startswith("_"):
            continue
        ours = getattr(Blender, name)
        ref_params = inspect.signature(ref).parameters
        our_params = inspect.signature(ours).parameters
        for pname, p in ref_params.items():
            assert pname in our_params, f"{name}() lacks parameter {pname}"
            if p.default is not inspect.Parameter.empty and p.kind is not p.VAR_KEYWORD:
                assert our_params[pname].default == p.default, f"{name}({pname}=...) default differs"


def test_config_objects_are_accepted(tiny_checkpoint):
    llm_blender = require("llm_blender")
    from blender_fast import Blender

    cfg = llm_blender.RankerConfig(ranker_type="pairranker", model_type="deberta", load_checkpoint=str(tiny_checkpoint),
                                   source_maxlength=1224, candidate_maxlength=412)
    b = Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False), ranker_config=cfg)
    assert b.rank(INPUTS, CANDIDATES).shape == (2, 4)
    b2 = Blender({"device": "cpu"}, ranker_config={"load_checkpoint": str(tiny_checkpoint)})
    np.testing.assert_array_equal(b2.rank(INPUTS, CANDIDATES), b.rank(INPUTS, CANDIDATES))


@pytest.mark.parametrize("strategy", ["full", "bubble", "tournament"])
def test_rank_and_fuse(blender, strategy):
    fused, ranks = blender.rank_and_fuse(INPUTS, CANDIDATES, top_k=2, strategy=strategy, num_beams=1, max_new_tokens=8)
    assert len(fused) == 2 and all(isinstance(t, str) for t in fused)
    assert ranks.shape == (2, 4) and ranks.dtype == np.int32
    assert sorted(ranks[0])[:2] == [1, 2]


def test_rank_and_fuse_uses_the_top_k_of_the_ranking(blender):
    ranks = blender.rank(INPUTS, CANDIDATES)
    top = [[c[i] for i in np.argsort(r)[:2]] for r, c in zip(ranks, CANDIDATES)]
    want = blender.fuse(INPUTS, top, num_beams=1, max_new_tokens=8)
    got, _ = blender.rank_and_fuse(INPUTS, CANDIDATES, top_k=2, num_beams=1, max_new_tokens=8)
    assert got == want


def test_best_of_n_strategies_agree_with_a_consistent_ranking(blender):
    full = blender.get_best_of_n(INPUTS, CANDIDATES, pairrm_cmp_type="full")
    assert len(full) == 2 and all(f in c for f, c in zip(full, CANDIDATES))
    for cmp_type in ("bubble", "tournament", "swiss", "knockout_rr", "adaptive"):
        allc = blender.get_best_of_n(INPUTS, CANDIDATES, pairrm_cmp_type=cmp_type, return_all=True)
        assert [sorted(a) for a in allc] == [sorted(c) for c in CANDIDATES]  # a permutation, best first
    assert blender.get_best_of_n(["x"], [["only"]]) == ["only"]


def test_bad_input_errors(blender, tiny_checkpoint):
    from blender_fast import Blender

    conv_a = [[{"role": "USER", "content": "hi"}, {"role": "ASSISTANT", "content": "hello"}]]
    conv_b = [[{"role": "USER", "content": "hey"}, {"role": "ASSISTANT", "content": "yo"}]]
    with pytest.raises(ValueError, match="USER turn 0 differs"):
        blender.compare_conversations(conv_a, conv_b)
    with pytest.raises(ValueError, match="even, non-zero number of turns"):
        blender.compare_conversations([conv_a[0][:1]], [conv_b[0][:1]])
    with pytest.raises(ValueError, match=r"top_k = 5 exceeds the \d+ candidates of candidates\[0\]"):
        blender.rank_and_fuse(INPUTS, CANDIDATES, top_k=5)
    with pytest.raises(ValueError, match="ref_mode"):
        blender.rank_with_ref(INPUTS, CANDIDATES, ref_mode="random")
    with pytest.raises(ValueError, match="pairrm_cmp_type"):
        blender.get_best_of_n(INPUTS, CANDIDATES, pairrm_cmp_type="quick")
    with pytest.raises(ValueError, match=r"budget applies to the strategies .*, not to pairrm_cmp_type='bubble'"):
        blender.get_best_of_n(INPUTS, CANDIDATES, pairrm_cmp_type="bubble", budget=10)
    with pytest.raises(ValueError, match="empty"):
        blender.fuse(["x"], [[""]])
    fresh = Blender({"device": "cpu"})
    with pytest.raises(RuntimeError, match="no fuser loaded"):
        fresh.fuse(INPUTS, CANDIDATES)
    with pytest.raises(RuntimeError, match="no ranker loaded"):
        fresh.rank(INPUTS, CANDIDATES)
    with pytest.raises(TypeError, match="unknown options"):
        fresh.loadranker(str(tiny_checkpoint), batchsize=3)
    with pytest.raises(FileNotFoundError):
        fresh.loadfuser("/nonexistent/fuser")


def test_fuse_cli(tiny_checkpoint, tiny_fuser, tmp_path, capsys):
    from blender_fast.cli import main

    out = tmp_path / "fused.jsonl"
    argv = ["fuse", "--ranker", str(tiny_checkpoint), "--fuser", str(tiny_fuser), "--output", str(out),
            "--strategy", "tournament", "--top-k", "2", "--num-beams", "1", "--limit", "3", "--quiet"]
    assert main(argv) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 3
    for row in rows:
        assert isinstance(row["fused"], str) and len(row["blender_fast"]["top_k"]) == 2
    err = capsys.readouterr().err  # both generated models, given by path, are announced
    assert "fusing with a GENERATED fuser" in err and "ranking with a GENERATED checkpoint" in err


def test_rank_and_fuse_at_a_budget(blender):
    got, ranks = blender.rank_and_fuse(INPUTS, CANDIDATES, top_k=2, strategy="knockout_rr", budget=40,
                                       num_beams=1, max_new_tokens=8)
    assert len(got) == len(INPUTS) and all(isinstance(g, str) for g in got)
    assert all(sorted(r)[:2] == [1, 2] for r in ranks)
    with pytest.raises(ValueError, match=r"budget applies to the strategies .*, not to strategy='full'"):
        blender.rank_and_fuse(INPUTS, CANDIDATES, top_k=2, strategy="full", budget=40)
# -- the facade validates like the Ranker; NaN; threads ---------------------------------------------

@pytest.mark.parametrize("call, error, message", [
    (lambda b: b.get_best_of_n(["q"], ["only"]), TypeError, r"candidates\[0\] must be a list"),
    (lambda b: b.get_best_of_n(INPUTS, CANDIDATES, seed=-1), ValueError, "seed must be >= 0, got -1"),
    (lambda b: b.rank_with_ref(INPUTS, "not a list"), TypeError, "candidates must be a list"),
    (lambda b: b.rank_with_ref(INPUTS, ["abc", "def"]), TypeError, r"candidates\[0\] must be a list"),
    (lambda b: b.rank_with_ref(INPUTS, CANDIDATES, ref_candidates="ref"), TypeError, "ref_candidates must be a list"),
    (lambda b: b.rank_and_fuse(INPUTS, CANDIDATES, top_k=-1), ValueError, "top_k must be >= 1, got -1"),
    (lambda b: b.rank_and_fuse(INPUTS, CANDIDATES, top_k=0), ValueError, "top_k must be >= 1, got 0"),
    (lambda b: b.rank_and_fuse(INPUTS, CANDIDATES, top_k=1.5), TypeError, "top_k must be an integer, got 1.5"),
    (lambda b: b.rank_and_fuse(INPUTS, CANDIDATES, top_k=None), TypeError, "top_k must be an integer, got None"),
    (lambda b: b.rank_and_fuse(INPUTS, CANDIDATES, top_k=float("nan")), TypeError, "top_k must be an integer, got nan"),
    (lambda b: b.fuse(INPUTS, CANDIDATES, num_beams=0), ValueError, "num_beams must be >= 1, got 0"),
    (lambda b: b.fuse(INPUTS, CANDIDATES, batch_size=0), ValueError, "batch_size must be >= 1"),
    (lambda b: b.rank(INPUTS, CANDIDATES, source_max_length=0), ValueError, "source_max_length must be >= 1, got 0"),
    (lambda b: b.rank(INPUTS, CANDIDATES, candidate_max_length=-5), ValueError, "candidate_max_length must be >= 1"),
    # batch_size is unused (the engine packs by tokens) but still a count; unknown keywords are refused.
    (lambda b: b.rank(INPUTS, CANDIDATES, batch_size=float("nan")), TypeError, "batch_size must be an integer, got nan"),
    (lambda b: b.rank(INPUTS, CANDIDATES, batch_size=0), ValueError, "batch_size must be >= 1, got 0"),
    (lambda b: b.compare(INPUTS, ["a", "b"], ["c", "d"], batch_size=2.0), TypeError, "batch_size must be an integer"),
    (lambda b: b.rank_with_ref(INPUTS, CANDIDATES, batch_size=None), TypeError, "batch_size must be an integer"),
    (lambda b: b.get_best_of_n(INPUTS, CANDIDATES, batch_size=-1), ValueError, "batch_size must be >= 1"),
    (lambda b: b.rank(INPUTS, CANDIDATES, source_maxlength=8, top_k=2), TypeError,
     r"rank\(\) got unknown keyword arguments source_maxlength, top_k \(it takes source_max_length, "),
    (lambda b: b.rank_with_ref(INPUTS, CANDIDATES, source_max_length=8), TypeError,
     r"rank_with_ref\(\) got unknown keyword arguments source_max_length \(it takes mode\)"),
    (lambda b: b.rank(["\ud800"], [["x", "y"]]), ValueError, r"inputs\[0\] contains a lone surrogate"),
    (lambda b: b.compare(["q"], ["a"], ["b\udc00"]), ValueError, r"candidates\[0\]\[1\] contains a lone surrogate"),
    (lambda b: b.fuse(["q"], [["a\ud800", "b"]]), ValueError, r"candidates\[0\]\[0\] contains a lone surrogate"),
    (lambda b: b.get_best_of_n(["q", "r"], [["a", "b"], ["c", "\ud83d"]]), ValueError, r"candidates\[1\]\[1\] contains a lone surrogate"),
])
def test_facade_bad_arguments_are_named(blender, call, error, message):
    with pytest.raises(error, match=message):
        call(blender)


def test_rank_takes_every_keyword_llm_blender_reads(blender):
    # llm-blender's rank reads source_max_length / candidate_max_length from **rank_kwargs (and nothing
    # else); batch_size and disable_tqdm are named parameters. All still work here, batch_size unused.
    want = blender.rank(INPUTS, CANDIDATES, return_scores=True, source_max_length=64, candidate_max_length=32)
    got = blender.rank(INPUTS, CANDIDATES, return_scores=True, batch_size=1, disable_tqdm=True,
                       source_max_length=64, candidate_max_length=32, policy="max_logits")
    np.testing.assert_array_equal(got, want)
    assert blender.rank_with_ref(INPUTS, CANDIDATES, batch_size=1, mode="[A,B]").shape == (2, 4)


def test_one_candidate_is_trivially_the_best(blender):
    # As llm-blender: nothing to compare, the candidate is returned; mixed with larger prompts too.
    assert blender.get_best_of_n(["x"], [["only"]]) == ["only"]
    best = blender.get_best_of_n(["x", INPUTS[0]], [["only"], CANDIDATES[0]], pairrm_cmp_type="tournament")
    assert best[0] == "only" and best[1] in CANDIDATES[0]


def test_nan_is_an_error_in_every_compare_path(blender):
    import copy

    from blender_fast import Blender

    bad = Blender({"device": "cpu", "use_tqdm": False})
    bad.ranker = copy.copy(blender.ranker)
    bad.ranker.model = lambda ids, mask, pos: np.full(len(ids), np.nan, dtype=np.float32)
    with pytest.raises(ValueError, match="NaN on prompt 0: the model is at fault"):
        bad.compare(INPUTS, [c[0] for c in CANDIDATES], [c[1] for c in CANDIDATES])
    conv_a = [[{"role": "USER", "content": "hi"}, {"role": "ASSISTANT", "content": "hello"}]]
    conv_b = [[{"role": "USER", "content": "hi"}, {"role": "ASSISTANT", "content": "yo"}]]
    with pytest.raises(ValueError, match="NaN on conversation 0: the model is at fault"):
        bad.compare_conversations(conv_a, conv_b)
    with pytest.raises(ValueError, match=r"NaN on prompt 0 \(comparing candidates\[0\]\[0\] with its reference\)"):
        bad.rank_with_ref(INPUTS, CANDIDATES)
    with pytest.raises(ValueError, match="NaN"):
        bad.rank(INPUTS, CANDIDATES)
    with pytest.raises(ValueError, match="NaN"):
        bad.get_best_of_n(INPUTS, CANDIDATES)


def test_threads_with_different_lengths_share_one_ranker(blender):
    """Truncation lengths are per call: 4 threads on one Ranker with different lengths get exactly the
    sequential results (llm-blender-style setters on a shared object would mix them up)."""
    from concurrent.futures import ThreadPoolExecutor

    settings = [(None, None), (24, 8), (12, 5), (40, 16)] * 3
    inputs = INPUTS * 2
    cands = [c + ["An extra answer that is long enough to be truncated at small lengths, surely."] for c in CANDIDATES * 2]

    def run(s):
        src, cand = s
        return blender.rank(inputs, cands, return_scores=True, source_max_length=src, candidate_max_length=cand)

    sequential = [run(s) for s in settings]
    assert not np.array_equal(sequential[0], sequential[2])  # the lengths do change the scores
    with ThreadPoolExecutor(4) as pool:
        parallel = list(pool.map(run, settings))
    for want, got in zip(sequential, parallel):
        np.testing.assert_array_equal(got, want)
