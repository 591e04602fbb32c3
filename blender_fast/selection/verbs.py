"""The verbs as step generators (see steps.py): rank, compare and judge. The Ranker drives them with
``run_steps``; the server's BatchingEngine drives many at once. Both get the same results from them."""
from __future__ import annotations

import numpy as np

from ..options import COMPARE_MODES, POLICIES, check_choice, check_temperature
from .aggregate import ranks_from_scores, stack_if_equal
from .steps import ModelOutputError, Step, Steps, checked_logits
from .strategies import full_steps


def rank_steps(ns: list[int], policy: str = "max_logits", return_scores: bool = False) -> Steps:
    """Full ranking of every prompt (all n(n-1) ordered pairs, one step), as llm-blender's rank: ranks
    (int32, 1 = best) or scores (float32), one array when every prompt has n candidates, else a list."""
    check_choice("policy", policy, POLICIES)
    return _rank(ns, policy, return_scores)


def _rank(ns, policy, return_scores) -> Steps:
    sels = yield from full_steps(ns, 1, "both", policy)
    scores = [s.scores for s in sels]
    if return_scores:
        return stack_if_equal(scores)
    return stack_if_equal([ranks_from_scores(s) for s in scores])


def compare_steps(n: int, mode: str = "[A,B]+[B,A]") -> Steps:
    """llm-blender's compare of (A, B) = candidates (0, 1) of each of n prompts: "[A,B]": f(A,B);
    "[B,A]": f(B,A) (not negated); "[A,B]+[B,A]": f(A,B) - f(B,A). Returns float32 logits [n]."""
    check_choice("mode", mode, COMPARE_MODES)
    return _compare(n, mode)


def _compare(n: int, mode: str) -> Steps:
    prompts = np.arange(n, dtype=np.int64)
    ab = np.stack([prompts, np.zeros(n, np.int64), np.ones(n, np.int64)], axis=1)
    if mode == "[A,B]+[B,A]":
        rows = np.empty((2 * n, 3), dtype=np.int64)
        rows[0::2], rows[1::2] = ab, ab[:, [0, 2, 1]]
        both = checked_logits(rows, (yield Step(rows, group=2)))
        out = both[0::2] - both[1::2]
    else:
        rows = ab if mode == "[A,B]" else ab[:, [0, 2, 1]]
        out = checked_logits(rows, (yield Step(rows, group=1)))
    bad = np.flatnonzero(np.isnan(out))
    if bad.size:  # inf - inf: as rank/select do, a NaN logit is an error, never a silent "A loses"
        raise ModelOutputError(int(bad[0]))
    return out


def coin_flips(rng: np.random.Generator, n: int) -> np.ndarray:
    """THE judge's coin flips (shuffle_order): bool [n], True = show the pair as [c1, c0]. One draw per
    pair, ``rng.random(n) < 0.5``, everywhere (PairRMJudge, the engine, the server), so a seed flips the
    same pairs in-process and behind HTTP."""
    return rng.random(n) < 0.5


def judge_steps(n: int, flips: np.ndarray, return_scores: bool = False, temperature: float = 1.0) -> Steps:
    """TRL's PairRMJudge.judge on a full ranking of each of n prompts' 2 completions, which the caller
    has already arranged as shown (flipped pairs as [c1, c0]); results come back in the caller's order:
    per prompt 0 / 1 (the preferred completion; ties go to the first), or with return_scores the
    probability that completion 0 is better, softmax(scores / temperature)[0]."""
    temperature = check_temperature(temperature)
    flips = np.asarray(flips, dtype=bool)
    if flips.shape != (n,):
        raise ValueError(f"flips must have shape ({n},), got {flips.shape}")
    return _judge(n, flips, return_scores, temperature)


def _judge(n, flips, return_scores, temperature) -> Steps:
    sels = yield from full_steps([2] * n, 1, "both", "max_logits")
    scores = np.stack([s.scores for s in sels]).astype(np.float64) if sels else np.zeros((0, 2))
    scores[flips] = scores[flips][:, ::-1]  # back to the caller's order
    if return_scores:
        logits = scores / temperature
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        return [float(p) for p in probs[:, 0] / probs.sum(axis=1)]
    return [int(r) for r in (ranks_from_scores(scores)[:, 0] - 1)] if n else []
