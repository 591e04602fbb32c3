"""The pointwise reward model (OpenAssistant/reward-model-deberta-v3-large-v2, llm-blender's "deberta-rm")
on blender-fast's engine: parity with llm-blender 0.0.2 on a generated model of that exact layout, the
torch twin, truncation, the verbs, the checkpoint kind, bad input, and where it is refused."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import require

LONG = ("The quick brown fox jumps over the lazy dog while the farmer watches from the porch, "
        "wondering whether the rain will come before the harvest is in. ")
INPUTS = [
    "What is the capital of France?",
    "Name a prime number and explain , briefly , why it 's prime .",
    "Hi",
    LONG * 4 + "Summarise the story above.",
    "Write a short poem about the sea.",
]
CANDIDATES = [
    ["Paris.", "London is the capital.", "It is Paris, a city in France. " * 6, "Paris!!", "lyon"],
    ["Seven.", "Nine is prime.", "Two is the smallest prime ,  since it 's only divisible by 1 and itself .",
     "I don't know.", "11"],
    ["Hello!", "Hey there \u2014 \u00fcn\u00efcode \u2603 text", "  leading spaces  and   gaps  ", "hi", "Hello, how are you?"],
    ["A fox jumps over a dog; a farmer hopes to finish the harvest before the rain.", "No.",
     LONG * 3, "The fox and the dog.", "Rain."],
    ["Waves roll in / salt on the wind / the tide keeps time", "The sea is big.", "Blue water. " * 20,
     "I cannot write poems.", "Ocean, ocean, ocean."],
]


@pytest.fixture(scope="module")
def reference(tiny_reward_model, one_torch_thread):
    require("llm_blender")
    import llm_blender

    ref = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    ref.loadranker(str(tiny_reward_model), device="cpu")
    assert ref.ranker_config.ranker_type == "deberta-rm"
    return ref


@pytest.fixture(scope="module")
def ours(tiny_reward_model):
    from blender_fast import Blender

    blender = Blender({"device": "cpu", "use_tqdm": False})
    blender.loadranker(str(tiny_reward_model), device="cpu")
    return blender


@pytest.fixture(scope="module")
def ours_torch(tiny_reward_model, one_torch_thread):
    from blender_fast import Blender

    blender = Blender({"device": "cpu", "use_tqdm": False})
    blender.loadranker(str(tiny_reward_model), device="cpu", backend="torch")
    return blender


def test_loads_as_a_pointwise_ranker(ours, ours_torch):
    from blender_fast import Ranker
    from blender_fast.pointwise import PointwiseRanker

    assert isinstance(ours.ranker, PointwiseRanker) and isinstance(ours_torch.ranker, PointwiseRanker)
    # One class over either scorer: a reward model is a Ranker, its scorer the reward model's.
    assert type(ours.ranker) is Ranker and PointwiseRanker is Ranker
    assert ours.ranker.scorer.kind == ours_torch.ranker.scorer.kind == "reward"
    d = ours.ranker.describe()
    assert (d["kind"], d["backend"], d["precision"]) == ("pointwise", "onnx", "fp32")
    assert ours_torch.ranker.describe()["backend"] == "torch"


@pytest.mark.reference
def test_rank_scores_and_ranks_match_llm_blender(reference, ours, ours_torch):
    from llm_blender.gpt_eval.utils import get_ranks_from_scores

    ref = reference.rank(INPUTS, CANDIDATES, return_scores=True, disable_tqdm=True)  # batch_size 8: padded batches
    got = ours.rank(INPUTS, CANDIDATES, return_scores=True)
    twin = ours_torch.rank(INPUTS, CANDIDATES, return_scores=True)
    assert got.dtype == np.float32 and got.shape == (len(INPUTS), 5)
    assert ref.std() > 0.3  # non-degenerate: the generated model's scores have spread of order 1
    assert np.abs(got - ref).max() <= 1e-4, np.abs(got - ref).max()
    assert np.abs(twin - ref).max() <= 1e-4
    ranks = ours.rank(INPUTS, CANDIDATES)
    assert ranks.dtype == np.int32
    np.testing.assert_array_equal(ranks, get_ranks_from_scores(ref))
    np.testing.assert_array_equal(ranks, reference.rank(INPUTS, CANDIDATES, disable_tqdm=True))


@pytest.mark.reference
def test_truncation_round_trip_matches(reference, ours):
    """source/candidate max lengths truncate by llm-blender's encode -> decode round trip."""
    kw = dict(source_max_length=9, candidate_max_length=12)
    ref = reference.rank(INPUTS, CANDIDATES, return_scores=True, disable_tqdm=True, **kw)
    got = ours.rank(INPUTS, CANDIDATES, return_scores=True, **kw)
    assert np.abs(got - ref).max() <= 1e-4
    full = ours.rank(INPUTS, CANDIDATES, return_scores=True)
    assert np.abs(full - got).max() > 0.05  # the lengths did truncate


@pytest.mark.reference
def test_loadranker_max_lengths_match(tiny_reward_model, reference, one_torch_thread):
    import llm_blender

    from blender_fast import Blender

    ref = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    ref.loadranker(str(tiny_reward_model), device="cpu", source_maxlength=7, candidate_maxlength=10)
    ours = Blender({"device": "cpu", "use_tqdm": False})
    ours.loadranker(str(tiny_reward_model), device="cpu", source_maxlength=7, candidate_maxlength=10)
    want = ref.rank(INPUTS, CANDIDATES, return_scores=True, disable_tqdm=True)
    assert np.abs(ours.rank(INPUTS, CANDIDATES, return_scores=True) - want).max() <= 1e-4
    assert np.abs(want - reference.rank(INPUTS, CANDIDATES, return_scores=True, disable_tqdm=True)).max() > 0.05


@pytest.mark.reference
def test_instructions_are_prepended(reference, ours):
    inst = ["Answer briefly. "] * len(INPUTS)
    ref = reference.rank(INPUTS, CANDIDATES, instructions=inst, return_scores=True, disable_tqdm=True)
    assert np.abs(ours.rank(INPUTS, CANDIDATES, instructions=inst, return_scores=True) - ref).max() <= 1e-4


@pytest.mark.reference
@pytest.mark.parametrize("mode", ["[A,B]", "[B,A]", "[A,B]+[B,A]"])
def test_compare_matches(reference, ours, mode):
    a = [c[0] for c in CANDIDATES]
    b = [c[2] for c in CANDIDATES]
    ref = reference.compare(INPUTS, a, b, return_logits=True, mode=mode, disable_tqdm=True)
    got = ours.compare(INPUTS, a, b, return_logits=True, mode=mode)
    assert got.dtype == np.float32 and np.abs(got - ref).max() <= 1e-4
    np.testing.assert_array_equal(ours.compare(INPUTS, a, b, mode=mode), reference.compare(INPUTS, a, b, mode=mode))
    # score(A) - score(B), whatever the mode (llm-blender ignores it for a pointwise model)
    scores = ours.rank(INPUTS, [[x, y] for x, y in zip(a, b)], return_scores=True)
    np.testing.assert_allclose(got, scores[:, 0] - scores[:, 1], atol=1e-5)


@pytest.mark.reference
@pytest.mark.parametrize("cmp_type", ["bubble", "full"])
def test_best_and_worst_of_n_match(reference, ours, cmp_type):
    for method in ("get_best_of_n", "get_worst_of_n"):
        for return_all in (False, True):
            ref = getattr(reference, method)(INPUTS, CANDIDATES, pairrm_cmp_type=cmp_type, return_all=return_all)
            got = getattr(ours, method)(INPUTS, CANDIDATES, pairrm_cmp_type=cmp_type, return_all=return_all)
            ref = [list(r) for r in ref] if return_all else list(ref)
            assert got == ref, (method, return_all)
    scores = ours.rank(INPUTS, CANDIDATES, return_scores=True)
    assert ours.get_best_of_n(INPUTS, CANDIDATES) == [c[int(np.argmax(s))] for c, s in zip(CANDIDATES, scores)]


@pytest.mark.reference
def test_rank_with_ref_matches(reference, ours):
    for mode in ("longest", "first"):
        ref = reference.rank_with_ref(INPUTS, CANDIDATES, return_scores=True, ref_mode=mode)
        got = ours.rank_with_ref(INPUTS, CANDIDATES, return_scores=True, ref_mode=mode)
        assert np.abs(got - ref).max() <= 1e-4
        np.testing.assert_array_equal(ours.rank_with_ref(INPUTS, CANDIDATES, ref_mode=mode),
                                      reference.rank_with_ref(INPUTS, CANDIDATES, ref_mode=mode))


def test_scores_do_not_depend_on_batching(ours, tiny_reward_model):
    """Right padding changes nothing but float noise: each prompt alone, a one-row token budget and the
    whole call agree; each distinct (source, candidate) runs once."""
    from blender_fast import Ranker

    together = ours.rank(INPUTS, CANDIDATES, return_scores=True)
    alone = np.stack([ours.rank([i], [c], return_scores=True)[0] for i, c in zip(INPUTS, CANDIDATES)])
    np.testing.assert_allclose(together, alone, atol=1e-5)
    small = Ranker.from_pretrained(str(tiny_reward_model), token_budget=1)
    np.testing.assert_allclose(small.rank(INPUTS, CANDIDATES, return_scores=True), together, atol=1e-5)
    assert small.last_stats.batches == small.last_stats.pairs == 25 and small.last_stats.pad_tokens == 0
    small.rank(INPUTS + INPUTS, CANDIDATES + CANDIDATES)
    assert small.last_stats.pairs == 25  # memoised: the repeated prompts were not run again


def test_select_strategies_pick_the_best_score(ours):
    ranker = ours.ranker
    scores = ranker.rank(INPUTS, CANDIDATES, return_scores=True)
    for strategy in ("bubble", "tournament", "swiss", "knockout_rr", "adaptive", "full"):
        for worst in (False, True):
            sels = ranker.select(INPUTS, CANDIDATES, top_k=2, strategy=strategy, worst=worst)
            for s, sc in zip(sels, scores):
                order = np.argsort(sc if worst else -sc, kind="stable")
                if strategy == "adaptive":
                    # At the default budget (4(n-1) passes: 8 of the 10 pairs) adaptive is approximate
                    # (docs/selection.md): here it finds the best, and its other pick is the true second or,
                    # on a close call between two it did not play against each other, the third.
                    picks = [int(i) for i in s.top_k]
                    assert len(set(picks)) == 2 and order[0] in picks, (worst, picks, order, sc)
                    other = next(i for i in picks if i != order[0])
                    assert other in order[1:3], (worst, picks, order, sc)
                else:
                    assert s.top_k[0] == order[0], (strategy, worst)
                assert s.forward_passes == 5
    full = ranker.select(INPUTS, CANDIDATES, top_k=5, strategy="full")
    np.testing.assert_array_equal(np.stack([s.scores for s in full]), scores)


def test_adaptive_playing_every_pair_picks_the_full_rankings_top_two(ours):
    """With a budget that plays every pair, adaptive's Massey ratings order candidates exactly as the
    reward scores: a pointwise model's margins are score differences, and on a complete schedule the
    ridge fit is (n s_i - sum s) / (n + ridge), a monotone map of the scores. So its top 2, in order,
    is the full ranking's, on every prompt, best and worst; and the same seed gives the same picks."""
    ranker = ours.ranker
    scores = ranker.rank(INPUTS, CANDIDATES, return_scores=True)
    n = len(CANDIDATES[0])
    every_pair = n * (n - 1)  # forward passes: each of the n(n-1)/2 pairs in both orders
    for worst in (False, True):
        sels = ranker.select(INPUTS, CANDIDATES, top_k=2, strategy="adaptive", worst=worst, budget=every_pair, seed=3)
        again = ranker.select(INPUTS, CANDIDATES, top_k=2, strategy="adaptive", worst=worst, budget=every_pair, seed=3)
        for s, s2, sc in zip(sels, again, scores):
            order = np.argsort(sc if worst else -sc, kind="stable")
            assert s.comparisons == n * (n - 1) // 2, s.comparisons
            assert [int(i) for i in s.top_k] == [int(i) for i in order[:2]], (worst, list(s.top_k), order, sc)
            assert list(s2.top_k) == list(s.top_k)


def test_judge_prefers_the_higher_score(ours):
    from blender_fast.judges import PairRMJudge

    judge = PairRMJudge(ours, seed=0)
    pairs = [[c[0], c[1]] for c in CANDIDATES]
    scores = ours.rank(INPUTS, pairs, return_scores=True)
    assert judge.judge(INPUTS, pairs) == [0 if s[0] >= s[1] else 1 for s in scores]
    probs = judge.judge(INPUTS, pairs, return_scores=True)
    np.testing.assert_allclose(probs, 1 / (1 + np.exp(scores[:, 1] - scores[:, 0])), atol=1e-6)
    # PairRM's markers mean nothing to this model: the judge takes them, as rank and compare do
    assert judge.judge(["<|source|> x"], [["<|candidate1|>", "b"]]) in ([0], [1])


def test_ragged_prompts_give_lists(ours):
    out = ours.rank(INPUTS[:2], [CANDIDATES[0][:2], CANDIDATES[1]], return_scores=True)
    assert isinstance(out, list) and [len(x) for x in out] == [2, 5]


def test_bad_input_is_named(ours):
    with pytest.raises(ValueError, match=r"candidates\[1\] is empty"):
        ours.rank(INPUTS[:2], [["a"], []])
    with pytest.raises(ValueError, match="got 2 inputs but 1 candidate lists"):
        ours.rank(INPUTS[:2], [["a"]])
    with pytest.raises(ValueError, match="got 2 candidates_a but 1 candidates_b"):
        ours.compare(INPUTS[:2], ["a", "b"], ["c"])
    with pytest.raises(TypeError, match=r"candidates\[0\]\[1\] must be a string"):
        ours.rank(["x"], [["a", 3]])
    with pytest.raises(ValueError, match="mode must be one of"):
        ours.compare(["x"], ["a"], ["b"], mode="[A,A]")
    with pytest.raises(ValueError, match="source_max_length must be >= 1"):
        ours.rank(["x"], [["a", "b"]], source_max_length=0)
    with pytest.raises(ValueError, match="candidate_maxlength = 1 is too small: it must be >= 2"):
        ours.ranker.rank(["x"], [["a", "b"]], candidate_maxlength=1)
    with pytest.raises(ValueError, match="lone surrogate"):
        ours.rank(["x"], [["a", "b\ud800"]])
    # PairRM's reserved markers mean nothing to a pointwise model
    assert ours.rank(["<|source|> x"], [["<|candidate1|>", "b"]]).shape == (1, 2)


def test_unsupported_engine_options_are_refused(tiny_reward_model):
    from blender_fast import Ranker

    for backend, precision in (("onnx", "int8"), ("openvino", "fp32"), ("onnx", "bf16")):
        with pytest.raises(ValueError, match="a pointwise reward model runs with"):
            Ranker.from_pretrained(str(tiny_reward_model), backend=backend, precision=precision)
    auto = Ranker.from_pretrained(str(tiny_reward_model), precision="auto")
    assert auto.describe()["precision"] == "fp32" and "PairRM checkpoints only" in auto.describe()["reason"]


def test_fp16_export_stays_close(tiny_reward_model, ours):
    from blender_fast import Ranker

    half = Ranker.from_pretrained(str(tiny_reward_model), precision="fp16")
    assert half.describe()["precision"] == "fp16"
    full = ours.rank(INPUTS, CANDIDATES, return_scores=True)
    assert np.abs(half.rank(INPUTS, CANDIDATES, return_scores=True) - full).max() < 0.05


def test_recognised_by_config_not_only_by_name(tiny_reward_model, tmp_path, tiny_checkpoint):
    from blender_fast.model.checkpoint import CheckpointError, load_checkpoint
    from blender_fast.model.reward import is_pointwise_dir, load_pointwise_checkpoint

    renamed = shutil.copytree(tiny_reward_model, tmp_path / "my-rm")
    assert is_pointwise_dir(renamed) and is_pointwise_dir(tiny_reward_model)
    assert not is_pointwise_dir(tiny_checkpoint) and not is_pointwise_dir(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="Ranker.from_pretrained"):
        load_checkpoint(renamed)  # the PairRM reader says where a reward model loads
    config = json.loads((renamed / "config.json").read_text())
    two = {**config, "id2label": {"0": "bad", "1": "good"}}
    (renamed / "config.json").write_text(json.dumps(two))
    with pytest.raises(CheckpointError, match="with 2 labels is a classifier"):
        load_pointwise_checkpoint(renamed)
    llama = {**config, "model_type": "llama", "architectures": ["LlamaForSequenceClassification"]}
    (renamed / "config.json").write_text(json.dumps(llama))
    with pytest.raises(CheckpointError, match="LlamaForSequenceClassification reward model is not supported"):
        load_pointwise_checkpoint(renamed)


def test_the_export_is_cached_and_checked(tiny_reward_model, tmp_path):
    from blender_fast.model.export import cached_export as cached_pointwise_export
    from blender_fast.model.reward import load_pointwise_checkpoint

    ckpt = load_pointwise_checkpoint(tiny_reward_model)
    path, first = cached_pointwise_export(ckpt, "fp32", tmp_path)
    assert not first.cached and first.max_abs_diff < 1e-4
    again = cached_pointwise_export(ckpt, "fp32", tmp_path)[1]
    assert again.cached and again.path == first.path
    # a damaged entry is exported again, not served
    (path / "model.onnx").write_bytes((path / "model.onnx").read_bytes()[:-10])
    assert not cached_pointwise_export(ckpt, "fp32", tmp_path)[1].cached


def test_cli_rank_runs_it(tiny_reward_model, tmp_path, ours):
    from blender_fast.cli import main

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"instruction": "", "input": i, "candidates": c}) + "\n"
                               for i, c in zip(INPUTS, CANDIDATES)))
    out = tmp_path / "out.jsonl"
    assert main(["rank", "--model", str(tiny_reward_model), "--input", str(prompts), "--output", str(out),
                 "--device", "cpu", "--quiet"]) == 0
    rows = [json.loads(line)["blender_fast"] for line in out.read_text().splitlines()]
    want = ours.rank(INPUTS, CANDIDATES, return_scores=True)
    np.testing.assert_allclose([r["scores"] for r in rows], want, atol=1e-5)
    assert [r["best"] for r in rows] == [int(np.argmax(s)) for s in want]
    assert all(r["forward_passes"] == 5 for r in rows)


def test_ray_driver_prepares_it_and_its_actor_ranks_it(tiny_reward_model, tmp_path, ours):
    """prepare_model warms the reward model's export; the actor class (called in-process here, no Ray
    cluster) loads it from that cache and writes the CLI's result columns."""
    pa = require("pyarrow")
    from blender_fast.cluster.jobs import RankOptions
    from blender_fast.cluster.ray_job import RankerActor, prepare_model

    path, cache = prepare_model(str(tiny_reward_model), cache_dir=tmp_path)
    assert path == str(tiny_reward_model) and cache == str(tmp_path.resolve())
    assert any((d / "model.onnx").is_file() for d in tmp_path.iterdir())
    actor = RankerActor(path, RankOptions(strategy="full"), {"device": "cpu", "cache_dir": cache})
    table = pa.table({"input": INPUTS, "candidates": CANDIDATES})
    got = actor(table).column("blender_fast").to_pylist()
    want = ours.rank(INPUTS, CANDIDATES, return_scores=True)
    np.testing.assert_allclose([r["scores"] for r in got], want, atol=1e-5)


@pytest.mark.parametrize("verb", ["rank", "compare", "select", "judge", "from_pretrained"])
def test_verbs_take_the_rankers_parameters(verb):
    """Wherever a Ranker is taken (Blender, the CLI, the Ray job, the judge), a PointwiseRanker fits."""
    import inspect

    from blender_fast import Ranker
    from blender_fast.pointwise import PointwiseRanker

    def sig(fn):
        return [(p.name, p.default, p.kind) for p in inspect.signature(fn).parameters.values()]

    assert sig(getattr(PointwiseRanker, verb)) == sig(getattr(Ranker, verb))


def test_cli_make_checkpoint_writes_a_reward_model(tmp_path, capsys):
    from blender_fast.cli import main
    from blender_fast.model.reward import is_pointwise_dir, load_pointwise_checkpoint

    out = tmp_path / "OpenAssistant" / "reward-model-deberta-v3-large-v2"
    assert main(["make-checkpoint", str(out), "--kind", "reward-model", "--weights-format", "bin"]) == 0
    assert "wrote reward-model checkpoint" in capsys.readouterr().out
    assert is_pointwise_dir(out) and load_pointwise_checkpoint(out).weights_path.name == "pytorch_model.bin"
    from blender_fast import Ranker

    scores = Ranker.from_pretrained(str(out), backend="torch").rank(INPUTS[:2], CANDIDATES[:2], return_scores=True)
    assert scores.shape == (2, 5) and np.isfinite(scores).all() and scores.std() > 0.1
