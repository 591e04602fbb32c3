"""Parity with llm-blender 0.0.2 itself, on a generated checkpoint and real prompts from the shared data.

llm-blender decides candidate truncation per batch (longest source in the batch); blender-fast per prompt.
So the reference runs with batch_size=1 here, where the two rules coincide; test_truncation_rule shows
the difference when it does show.
"""
from __future__ import annotations

import numpy as np
import pytest

from blender_fast.model.checkpoint import llm_blender_model_name
from conftest import require

pytestmark = pytest.mark.reference

N_PROMPTS = 20
N_CANDIDATES = 12


@pytest.fixture(scope="module")
def reference(tiny_checkpoint, one_torch_thread):
    # one_torch_thread: the reference makes thousands of tiny-batch calls, where torch's thread pool only
    # adds overhead.
    require("llm_blender")
    import llm_blender

    ref = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    # llm-blender resolves model_name against the working directory; ours is relative to the checkpoint
    ref.loadranker(str(tiny_checkpoint), device="cpu", model_name=llm_blender_model_name(tiny_checkpoint))
    return ref


@pytest.fixture(scope="module")
def ours(tiny_checkpoint):
    from blender_fast import Blender

    blender = Blender({"device": "cpu", "use_tqdm": False})
    blender.loadranker(str(tiny_checkpoint), device="cpu")
    return blender


@pytest.fixture(scope="module")
def prompts(shared_records):
    records = shared_records[:N_PROMPTS]
    inputs = [r["instruction"] for r in records]
    candidates = [[c["text"] for c in r["candidates"][:N_CANDIDATES]] for r in records]
    return inputs, candidates


@pytest.mark.slow
def test_rank_scores_and_ranks_match(reference, ours, prompts):
    inputs, candidates = prompts
    ref_scores = reference.rank(inputs, candidates, return_scores=True, batch_size=1, disable_tqdm=True)
    our_scores = ours.rank(inputs, candidates, return_scores=True)
    assert our_scores.dtype == np.float32 and our_scores.shape == (N_PROMPTS, N_CANDIDATES)
    assert np.abs(our_scores - ref_scores).max() <= 1e-4
    # Non-degenerate: the generated checkpoint gives pairwise logits of order 1.
    assert ref_scores.std() > 0.05
    # llm-blender's rank() is get_ranks_from_scores(its scores); reuse them rather than rerun 2640 passes.
    from llm_blender.gpt_eval.utils import get_ranks_from_scores

    ref_ranks = get_ranks_from_scores(ref_scores)
    our_ranks = ours.rank(inputs, candidates)
    assert our_ranks.dtype == np.int32
    np.testing.assert_array_equal(our_ranks, ref_ranks)


def test_instructions_are_prepended_like_llm_blender(reference, ours, prompts):
    inputs, candidates = prompts
    inputs, candidates = inputs[:4], [c[:5] for c in candidates[:4]]
    instructions = ["Answer briefly. "] * 4
    ref = reference.rank(inputs, candidates, instructions=instructions, return_scores=True, batch_size=1, disable_tqdm=True)
    got = ours.rank(inputs, candidates, instructions=instructions, return_scores=True)
    assert np.abs(got - ref).max() <= 1e-4


@pytest.mark.parametrize("mode", ["[A,B]", "[B,A]", "[A,B]+[B,A]"])
def test_compare_matches_in_every_mode(reference, ours, prompts, mode):
    inputs, candidates = prompts
    cand_a = [c[0] for c in candidates]
    cand_b = [c[1] for c in candidates]
    ref = reference.compare(inputs, cand_a, cand_b, batch_size=1, return_logits=True, mode=mode)
    got = ours.compare(inputs, cand_a, cand_b, return_logits=True, mode=mode)
    assert np.abs(np.asarray(got) - np.asarray(ref)).max() <= 1e-4
    np.testing.assert_array_equal(
        ours.compare(inputs, cand_a, cand_b, mode=mode),
        reference.compare(inputs, cand_a, cand_b, batch_size=1, mode=mode),
    )


def test_truncation_rule(reference, ours, prompts):
    """With short limits candidates get truncated: per-prompt parity holds (batch_size=1 in the
    reference), and llm-blender's batched collator then gives different scores for some prompts."""
    inputs, candidates = prompts
    inputs, candidates = inputs[:8], [c[:4] for c in candidates[:8]]
    kw = dict(source_max_length=48, candidate_max_length=24)
    ref_single = reference.rank(inputs, candidates, return_scores=True, batch_size=1, disable_tqdm=True, **kw)
    got = ours.rank(inputs, candidates, return_scores=True, **kw)
    assert np.abs(got - ref_single).max() <= 1e-4
    ref_batched = reference.rank(inputs, candidates, return_scores=True, batch_size=8, disable_tqdm=True, **kw)
    assert np.abs(ref_batched - ref_single).max() > 1e-3, "expected llm-blender's batch-dependent truncation to show"


@pytest.mark.slow
def test_best_of_n_bubble_matches_with_the_same_start_order(reference, ours, prompts, monkeypatch):
    """llm-blender's bubble pass starts from an unseeded torch.randperm; record it and give us the same."""
    import torch

    inputs, candidates = prompts
    inputs, candidates = inputs[:6], candidates[:6]
    perms = []
    real_randperm = torch.randperm

    def recording_randperm(*args, **kwargs):
        perm = real_randperm(*args, **kwargs)
        perms.append(perm.clone())
        return perm

    monkeypatch.setattr(torch, "randperm", recording_randperm)
    torch.manual_seed(1234)
    ref_all = reference.get_best_of_n(inputs, candidates, pairrm_cmp_type="bubble", return_all=True, batch_size=1)
    monkeypatch.setattr(torch, "randperm", real_randperm)
    assert len(perms) == len(inputs)
    orders = [p.numpy().astype(np.int64) for p in perms]
    got_all = ours.get_best_of_n(inputs, candidates, pairrm_cmp_type="bubble", return_all=True, initial_orders=orders)
    assert got_all == ref_all
    got_best = ours.get_best_of_n(inputs, candidates, pairrm_cmp_type="bubble", initial_orders=orders)
    assert got_best == [r[0] for r in ref_all]


@pytest.mark.slow
def test_best_and_worst_of_n_full_match(reference, ours, prompts):
    inputs, candidates = prompts
    inputs, candidates = inputs[:5], [c[:6] for c in candidates[:5]]
    for method in ("get_best_of_n", "get_worst_of_n"):
        ref = getattr(reference, method)(inputs, candidates, pairrm_cmp_type="full", batch_size=1)
        got = getattr(ours, method)(inputs, candidates, pairrm_cmp_type="full")
        assert got == list(ref), method


@pytest.mark.slow
def test_rank_with_ref_matches(reference, ours, prompts):
    inputs, candidates = prompts
    inputs, candidates = inputs[:4], [c[:4] for c in candidates[:4]]
    for ref_mode in ("longest", "shortest", "median_length", "first", "last"):
        ref = reference.rank_with_ref(inputs, candidates, return_scores=True, batch_size=1, ref_mode=ref_mode)
        got = ours.rank_with_ref(inputs, candidates, return_scores=True, ref_mode=ref_mode)
        assert np.abs(got - ref).max() <= 1e-4, ref_mode
        np.testing.assert_array_equal(
            ours.rank_with_ref(inputs, candidates, ref_mode=ref_mode),
            reference.rank_with_ref(inputs, candidates, batch_size=1, ref_mode=ref_mode),
        )


def test_compare_conversations_matches(reference, ours):
    conv_a = [
        [{"role": "USER", "content": "Name a prime number."}, {"role": "ASSISTANT", "content": "Seven is prime."},
         {"role": "USER", "content": "And an even one?"}, {"role": "ASSISTANT", "content": "Two."}],
        [{"role": "USER", "content": "Say hi."}, {"role": "ASSISTANT", "content": "Hi!"}],
    ]
    conv_b = [
        [{"role": "USER", "content": "Name a prime number."}, {"role": "ASSISTANT", "content": "Nine."},
         {"role": "USER", "content": "And an even one?"}, {"role": "ASSISTANT", "content": "There is none."}],
        [{"role": "USER", "content": "Say hi."}, {"role": "ASSISTANT", "content": "Hello there, how can I help?"}],
    ]
    ref = reference.compare_conversations(conv_a, conv_b, batch_size=1, return_logits=True)
    got = ours.compare_conversations(conv_a, conv_b, return_logits=True)
    assert np.abs(np.asarray(got) - np.asarray(ref)).max() <= 1e-4


def test_token_ids_match_the_reference_collator(reference, ours, prompts):
    """The packed sequence for one pair is token for token what llm-blender feeds its model."""
    import torch

    inputs, candidates = prompts
    src, cand_a, cand_b = inputs[3], candidates[3][0], candidates[3][1]
    batch = reference.ranker_collator([{"index": 0, "source": src, "candidates": [cand_a, cand_b]}])
    tok = reference.ranker_tokenizer
    c1 = batch["candidate_ids"][:, 0].clone()
    c2 = batch["candidate_ids"][:, 1].clone()
    c1[c1 == tok.cand_prefix_id] = tok.cand1_prefix_id
    c2[c2 == tok.cand_prefix_id] = tok.cand2_prefix_id
    ids, mask = reference.ranker.cat_ids(batch["source_ids"], batch["source_attention_mask"], c1,
                                         batch["candidate_attention_mask"][:, 0], c2, batch["candidate_attention_mask"][:, 1])
    want = ids[0][mask[0].bool()].tolist()

    from blender_fast import _core

    r = ours.ranker
    enc = r.encode([src], [[cand_a, cand_b]])
    packer = _core.PairPacker(enc.tokens, enc.offsets, enc.limits, cand1_id=r.tokenizer.cand1_id,
                              cand2_id=r.tokenizer.cand2_id, pad_id=r.tokenizer.pad_id)
    pairs = np.array([[enc.source_index[0], enc.candidate_index(0, 0), enc.candidate_index(0, 1)]], dtype=np.int64)
    got_ids, got_mask, got_pos = packer.build(pairs, np.array([0], dtype=np.int64))[:3]
    assert got_ids[0][got_mask[0] == 1].tolist() == want
    assert [want[i] for i in got_pos[0]] == [tok.source_prefix_id, tok.cand1_prefix_id, tok.cand2_prefix_id]
    assert torch.is_tensor(ids)
