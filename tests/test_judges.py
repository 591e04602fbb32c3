"""PairRMJudge: TRL's PairRM judge interface, on Blender.rank."""
from __future__ import annotations

import numpy as np
import pytest

from blender_fast.blender import Blender
from blender_fast.model.checkpoint import llm_blender_model_name
from blender_fast.judges import PairRMJudge
from conftest import require

N_PAIRS = 24


@pytest.fixture(scope="module")
def judge(tiny_checkpoint):
    return PairRMJudge(tiny_checkpoint, device="cpu", threads=1, seed=0)


@pytest.fixture(scope="module")
def pairs(shared_records):
    prompts = [r["instruction"] for r in shared_records[:N_PAIRS]]
    completions = [[r["candidates"][0]["text"], r["candidates"][1]["text"]] for r in shared_records[:N_PAIRS]]
    return prompts, completions


@pytest.fixture(scope="module")
def blender_scores(judge, pairs):
    """The oracle: Blender.rank's scores on each pair, in the caller's order."""
    prompts, completions = pairs
    return np.asarray(judge.blender.rank(prompts, completions, return_scores=True, disable_tqdm=True), np.float64)


def softmax_first(scores, temperature=1.0):
    z = scores / temperature
    return np.exp(z[:, 0]) / np.exp(z).sum(axis=1)


@pytest.mark.parametrize("shuffle_order", [False, True])
def test_preferences_are_blender_rank_on_each_pair(judge, pairs, blender_scores, shuffle_order):
    prompts, completions = pairs
    ranks = judge.blender.rank(prompts, completions, disable_tqdm=True)
    want = [0 if r[0] == 1 else 1 for r in ranks]
    assert 0 < sum(want) < len(want), "both answers occur: the comparison can fail"
    assert judge.judge(prompts, completions, shuffle_order=shuffle_order) == want
    probs = judge.judge(prompts, completions, shuffle_order=shuffle_order, return_scores=True)
    np.testing.assert_allclose(probs, softmax_first(blender_scores), rtol=0, atol=1e-6)
    assert [0 if p >= 0.5 else 1 for p in probs] == want


def test_shuffle_flips_pairs_reproducibly_per_seed(tiny_checkpoint, judge, pairs, monkeypatch):
    prompts, completions = pairs
    seen = []

    ranker = judge.blender.ranker
    real = ranker.run_plan

    def run_plan(plan, *args, **kwargs):  # the pairs as shown to the model
        seen.append([list(c) for c in plan.candidates])
        return real(plan, *args, **kwargs)
    monkeypatch.setattr(ranker, "run_plan", run_plan)

    a = PairRMJudge(ranker, seed=7)
    b = PairRMJudge(ranker, seed=7)
    assert a.judge(prompts, completions) == b.judge(prompts, completions)
    assert seen[0] == seen[1], "same seed, same flips"
    flipped = [shown != list(c) for shown, c in zip(seen[0], completions)]
    assert 0 < sum(flipped) < len(flipped)
    assert all(shown == list(c)[::-1] for shown, c, f in zip(seen[0], completions, flipped) if f)
    a.judge(prompts, completions, shuffle_order=False)
    assert seen[2] == [list(c) for c in completions]


def test_probability_and_its_complement_sum_to_one(judge, pairs):
    prompts, completions = pairs
    swapped = [(b, a) for a, b in completions]  # tuples, as TRL's OnlineDPOTrainer passes them
    for shuffle_order in (False, True):
        p = np.asarray(judge.judge(prompts, completions, shuffle_order=shuffle_order, return_scores=True))
        q = np.asarray(judge.judge(prompts, swapped, shuffle_order=shuffle_order, return_scores=True))
        np.testing.assert_allclose(p + q, 1.0, rtol=0, atol=1e-6)
    prefs = judge.judge(prompts, completions, shuffle_order=False)
    tie = np.asarray(p) == 0.5  # equal scores (e.g. both truncated to the same tokens): first wins both ways
    assert judge.judge(prompts, swapped, shuffle_order=False) == [0 if t else 1 - x for x, t in zip(prefs, tie)]


def test_temperature_scales_the_logits(judge, pairs, blender_scores):
    prompts, completions = pairs
    prefs = judge.judge(prompts, completions, shuffle_order=False)
    by_t = {}
    for t in (0.5, 1.0, 4.0):
        by_t[t] = np.asarray(judge.judge(prompts, completions, shuffle_order=False, return_scores=True, temperature=t))
        np.testing.assert_allclose(by_t[t], softmax_first(blender_scores, t), rtol=0, atol=1e-6)
        assert judge.judge(prompts, completions, shuffle_order=False, temperature=t) == prefs
    # A higher temperature pulls every probability towards 1/2, never across it.
    d = {t: np.abs(p - 0.5) for t, p in by_t.items()}
    assert np.all(d[4.0] <= d[1.0] + 1e-12) and np.all(d[1.0] <= d[0.5] + 1e-12)
    assert np.any(d[4.0] < d[0.5])


def test_bad_input_is_named(judge):
    with pytest.raises(ValueError, match=r"completions\[1\] must hold exactly 2 completions"):
        judge.judge(["a", "b"], [["x", "y"], ["x", "y", "z"]])
    with pytest.raises(ValueError, match="2 prompts but 1 completion pairs"):
        judge.judge(["a", "b"], [["x", "y"]])
    with pytest.raises(TypeError, match=r"completions\[0\]\[1\] must be a string"):
        judge.judge(["a"], [["x", 3]])
    with pytest.raises(TypeError, match=r"prompts\[0\] must be a string"):
        judge.judge([None], [["x", "y"]])
    with pytest.raises(ValueError, match="temperature"):
        judge.judge(["a"], [["x", "y"]], temperature=0)
    assert judge.judge([], []) == []
    with pytest.raises(TypeError, match="model must be"):
        PairRMJudge(3)
    with pytest.raises(RuntimeError, match="no ranker loaded"):
        PairRMJudge(Blender())


def trl_pairrm_judge(blender, prompts, completions, flip_mask, return_scores=False, temperature=1.0):
    """TRL's PairRMJudge.judge (trl/trainer/judges.py, before TRL removed its judges), on llm-blender
    itself, with the flip mask given instead of drawn from np.random, and batch_size=1 (llm-blender
    truncates per batch; blender-fast per prompt, equal at batch size 1: see test_parity)."""
    if len(completions[0]) != 2:
        raise ValueError("PairRM judge requires exactly 2 completions per prompt.")
    completions = [pair[::-1] if flip else pair for flip, pair in zip(flip_mask, completions)]
    ranks = blender.rank(prompts, completions, return_scores=return_scores, batch_size=1, disable_tqdm=True)
    if not return_scores:
        ranks -= 1
    else:
        ranks /= temperature
    ranks[flip_mask] = ranks[flip_mask][:, ::-1]
    if return_scores:
        logit_max = np.amax(ranks, axis=-1, keepdims=True)
        exp_logit_shifted = np.exp(ranks - logit_max)
        probs = exp_logit_shifted / np.sum(exp_logit_shifted, axis=-1, keepdims=True)
        return probs[:, 0].tolist()
    return ranks[:, 0].tolist()


class FixedFlips:
    """Stands in for the judge's generator: hands out a given flip mask."""

    def __init__(self, mask):
        self.mask = np.asarray(mask, dtype=bool)

    def random(self, size):  # coin_flips draws rng.random(n) < 0.5
        assert size == len(self.mask)
        return np.where(self.mask, 0.0, 1.0)


@pytest.mark.slow
@pytest.mark.reference
def test_same_answers_as_trl_judge_on_llm_blender(tiny_checkpoint, one_torch_thread, judge, pairs):
    require("llm_blender")
    import llm_blender

    ref = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    ref.loadranker(str(tiny_checkpoint), device="cpu", model_name=llm_blender_model_name(tiny_checkpoint))
    prompts, completions = pairs
    mask = np.random.default_rng(3).choice([True, False], size=len(prompts))
    for flips in (np.zeros(len(prompts), bool), mask):
        ours = PairRMJudge(judge.blender.ranker)
        ours.rng = FixedFlips(flips)
        assert ours.judge(prompts, completions) == trl_pairrm_judge(ref, prompts, completions, flips)
        for t in (1.0, 2.5):
            ours.rng = FixedFlips(flips)
            got = ours.judge(prompts, completions, return_scores=True, temperature=t)
            want = trl_pairrm_judge(ref, prompts, completions, flips, return_scores=True, temperature=t)
            # fp32 rounding only: the export reassociates the attention's sums (attention.py), and the
            # tiny checkpoint's head (x3200, so that its logits have std 1) magnifies that to ~5e-5 in a
            # logit, ~1e-5 in a probability. The picks above are compared exactly.
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4)
