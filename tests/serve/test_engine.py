"""The batching engine against the offline Ranker: same answers under concurrent callers (threads and
asyncio), and backpressure, deadlines, cancellation, fairness and drain on a gated model."""
from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time

import numpy as np
import pytest

from blender_fast import Ranker
from blender_fast.serve.engine import BatchingEngine, DeadlineExceeded, EngineClosed, Overloaded

WAIT_S = 30  # bound on every wait below


@pytest.fixture(scope="module")
def ranker(tiny_checkpoint):
    return Ranker.from_pretrained(tiny_checkpoint, threads=1)


@pytest.fixture(scope="module")
def prompts(shared_records):
    """(input, candidates) for 6 prompts with 4..9 candidates, texts clipped to keep the test fast."""
    out = []
    for i, rec in enumerate(shared_records[:6]):
        out.append((rec["instruction"][:300], [c["text"][:300] for c in rec["candidates"][:4 + i]]))
    return out


class GatedModel:
    """The ranker's model behind a gate: calls block until the test opens it."""

    def __init__(self, model):
        self.model = model
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls = 0

    def __call__(self, ids, mask, pos):
        self.entered.set()
        assert self.gate.wait(WAIT_S), "the test never opened the gate"
        self.calls += 1
        return self.model(ids, mask, pos)


def gated_ranker(ranker):
    gated = GatedModel(ranker.model)
    return Ranker(gated, ranker.tokenizer, ranker.source_maxlength, ranker.candidate_maxlength,
                  token_budget=ranker.token_budget, max_batch_size=ranker.max_batch_size,
                  batch_cost=ranker.batch_cost), gated


def test_rank_from_many_threads_matches_offline(ranker, prompts):
    offline = [ranker.rank([inp], [c], return_scores=True)[0] for inp, c in prompts]
    offline_ranks = [ranker.rank([inp], [c])[0] for inp, c in prompts]
    with BatchingEngine(ranker, max_rows_per_request=8, max_wait_ms=5) as engine:
        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            scores = list(pool.map(lambda ic: engine.rank_sync([ic[0]], [ic[1]], return_scores=True)[0], prompts))
            ranks = list(pool.map(lambda ic: engine.rank_sync([ic[0]], [ic[1]])[0], prompts))
        # Requests really were batched together: fewer iterations than requests' rows / per-request cap.
        assert engine.stats.rows == 2 * sum(len(c) * (len(c) - 1) for _, c in prompts)
        assert engine.queued_pairs == 0 and engine.in_flight == 0
    for got, want, r, wr in zip(scores, offline, ranks, offline_ranks):
        np.testing.assert_allclose(got, want, atol=1e-5)
        np.testing.assert_array_equal(r, wr)


@pytest.mark.parametrize("strategy, top_k, budget", [
    ("tournament", 1, None), ("tournament", 3, None), ("bubble", 2, None), ("full", 2, None),
    ("adaptive", 1, 20), ("swiss", 2, None), ("knockout_rr", 1, 16)])
def test_select_from_asyncio_tasks_matches_offline(ranker, prompts, strategy, top_k, budget):
    offline = [ranker.select([inp], [c], top_k=top_k, strategy=strategy, seed=3, budget=budget)[0]
               for inp, c in prompts]

    async def run(engine):
        return await asyncio.gather(*(engine.select([inp], [c], top_k=top_k, strategy=strategy, seed=3,
                                                    budget=budget) for inp, c in prompts))

    with BatchingEngine(ranker, max_rows_per_request=4) as engine:
        got = asyncio.run(asyncio.wait_for(run(engine), WAIT_S))
    for (sel,), want in zip(got, offline):
        assert sel.top_k == want.top_k
        assert (sel.comparisons, sel.forward_passes, sel.steps) == (want.comparisons, want.forward_passes, want.steps)
        assert sel.log == want.log
        if strategy == "full":
            np.testing.assert_allclose(sel.scores, want.scores, atol=1e-5)


def test_multi_prompt_request_worst_and_truncation_match_offline(ranker, prompts):
    inputs = [p[0] for p in prompts]
    cands = [p[1] for p in prompts]
    before = (ranker.source_maxlength, ranker.candidate_maxlength)
    with BatchingEngine(ranker) as engine:
        got = engine.select_sync(inputs, cands, top_k=2, strategy="bubble", worst=True, source_maxlength=16,
                                 candidate_maxlength=24)
        scores = engine.rank_sync(inputs, cands, return_scores=True, candidate_maxlength=20)
    want = ranker.select(inputs, cands, top_k=2, strategy="bubble", worst=True, source_maxlength=16,
                         candidate_maxlength=24)
    assert [s.top_k for s in got] == [s.top_k for s in want]
    for a, b in zip(scores, ranker.rank(inputs, cands, return_scores=True, candidate_maxlength=20)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert (ranker.source_maxlength, ranker.candidate_maxlength) == before  # never written per call


@pytest.mark.parametrize("mode", ["[A,B]", "[B,A]", "[A,B]+[B,A]"])
def test_compare_matches_offline(ranker, prompts, mode):
    inputs = [p[0] for p in prompts]
    a, b = [p[1][0] for p in prompts], [p[1][1] for p in prompts]
    with BatchingEngine(ranker) as engine:
        got = engine.compare_sync(inputs, a, b, mode=mode)
    np.testing.assert_allclose(got, ranker.compare(inputs, a, b, mode=mode), atol=1e-5)


def test_judge_is_trls_pairrm_judge(ranker, prompts):
    inputs = [p[0] for p in prompts]
    pairs = [p[1][:2] for p in prompts]
    scores = ranker.rank(inputs, pairs, return_scores=True).astype(np.float64)
    want_index = [int(r) for r in ranker.rank(inputs, pairs)[:, 0] - 1]
    logits = scores / 0.5
    e = np.exp(logits - logits.max(-1, keepdims=True))
    want_prob = (e / e.sum(-1, keepdims=True))[:, 0]
    with BatchingEngine(ranker) as engine:
        assert engine.judge_sync(inputs, pairs, shuffle_order=False) == want_index
        np.testing.assert_allclose(engine.judge_sync(inputs, pairs, shuffle_order=False, return_scores=True,
                                                     temperature=0.5), want_prob, atol=1e-5)
        # Shuffling ranks some pairs reversed and flips them back: same answers up to rounding.
        np.testing.assert_allclose(engine.judge_sync(inputs, pairs, return_scores=True, temperature=0.5, seed=1),
                                   want_prob, atol=1e-5)
        with pytest.raises(ValueError, match=r"completions\[1\] must hold exactly 2 completions"):
            engine.judge_sync(inputs[:2], [pairs[0], pairs[1] + ["x"]])


def test_empty_requests_answer_like_the_ranker(ranker):
    with BatchingEngine(ranker) as engine:
        assert engine.compare_sync([], [], []).shape == (0,)
        assert engine.select_sync([], [], strategy="tournament") == [] == engine.select_sync([], [], strategy="full")
        assert len(engine.rank_sync([], [])) == len(ranker.rank([], [])) == 0
        assert engine.judge_sync([], []) == []
        # One candidate: nothing to run, answered at submission.
        assert engine.select_sync(["q"], [["only"]])[0].top_k == [0]
        assert engine.queued_pairs == 0 and engine.in_flight == 0


def test_invalid_requests_fail_with_the_python_api_messages(ranker):
    with BatchingEngine(ranker) as engine:
        with pytest.raises(TypeError, match=r"candidates\[1\]\[0\] must be a string, got int"):
            engine.rank_sync(["a", "b"], [["x", "y"], [3, "z"]])
        with pytest.raises(ValueError, match=r"top_k = 3 exceeds the 2 candidates of prompt 0"):
            engine.select_sync(["a"], [["x", "y"]], top_k=3)
        with pytest.raises(ValueError, match="strategy must be one of"):
            engine.select_sync(["a"], [["x", "y"]], strategy="knockout")
        with pytest.raises(ValueError, match="source_maxlength = 0 is too small: it must be >= 3"):
            engine.rank_sync(["a"], [["x", "y"]], source_maxlength=0)
        assert engine.queued_pairs == 0 and engine.in_flight == 0  # nothing reserved by failures


def test_overload_rejects_with_retry_after_and_loses_nothing(ranker, prompts):
    gr, gated = gated_ranker(ranker)
    inp, cands = prompts[2]  # 6 candidates: 30 rows
    with BatchingEngine(gr, max_queued_pairs=50, max_wait_ms=0) as engine:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            first = pool.submit(engine.rank_sync, [inp], [cands])
            assert gated.entered.wait(WAIT_S)
            with pytest.raises(Overloaded) as err:
                engine.rank_sync([inp], [cands])  # 30 + 30 > 50
            assert err.value.retry_after >= 1
            small = pool.submit(engine.rank_sync, [inp], [cands[:3]])  # 6 rows still fit
            gated.gate.set()
            assert first.result(WAIT_S).shape == (1, len(cands))
            assert small.result(WAIT_S).shape == (1, 3)
        assert engine.stats.rejected == 1 and engine.stats.completed >= 2
        assert engine.queued_pairs == 0 and engine.in_flight == 0


def test_cancelled_request_frees_its_rows(ranker, prompts):
    gr, gated = gated_ranker(ranker)
    inp, cands = prompts[5]  # 9 candidates: 72 rows, several iterations at 8 rows each

    async def run(engine):
        task = asyncio.ensure_future(engine.rank([inp], [cands]))
        for _ in range(1000):
            if gated.entered.is_set():
                break
            await asyncio.sleep(0.01)
        assert engine.queued_pairs > 0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    with BatchingEngine(gr, max_rows_per_request=8, max_batch_tokens=2000, max_wait_ms=0) as engine:
        asyncio.run(asyncio.wait_for(run(engine), WAIT_S))
        gated.gate.set()
        end = time.monotonic() + WAIT_S
        while (engine.queued_pairs or engine.in_flight) and time.monotonic() < end:
            time.sleep(0.01)
        assert engine.queued_pairs == 0 and engine.in_flight == 0
        assert engine.stats.rows < 72  # the rest was dropped, not run
        assert engine.stats.failed == 1


def test_deadline_drops_the_rest(ranker, prompts):
    gr, gated = gated_ranker(ranker)
    inp, cands = prompts[5]
    with BatchingEngine(gr, max_rows_per_request=8, max_batch_tokens=2000, max_wait_ms=0) as engine:
        threading.Timer(0.3, gated.gate.set).start()
        with pytest.raises(DeadlineExceeded):
            engine.rank_sync([inp], [cands], timeout=0.1)
        assert engine.queued_pairs == 0 and engine.in_flight == 0
        assert engine.stats.rows < 72


def test_small_request_is_not_starved_by_a_large_one(ranker, prompts):
    gr, gated = gated_ranker(ranker)
    big_inp, big = prompts[5]
    finished = []
    with BatchingEngine(gr, max_rows_per_request=8, max_batch_tokens=2000, max_wait_ms=0) as engine:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            f_big = pool.submit(lambda: (engine.rank_sync([big_inp], [big]), finished.append("big")))
            assert gated.entered.wait(WAIT_S)  # the big one is running its first iteration
            f_small = pool.submit(lambda: (engine.judge_sync([big_inp], [big[:2]]), finished.append("small")))
            end = time.monotonic() + WAIT_S
            while engine.in_flight < 2 and time.monotonic() < end:
                time.sleep(0.005)
            gated.gate.set()
            f_big.result(WAIT_S), f_small.result(WAIT_S)
    assert finished == ["small", "big"]


def test_drain_finishes_in_flight_and_refuses_new(ranker, prompts):
    gr, gated = gated_ranker(ranker)
    inp, cands = prompts[1]
    engine = BatchingEngine(gr, max_wait_ms=0)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        running = pool.submit(engine.rank_sync, [inp], [cands])
        assert gated.entered.wait(WAIT_S)
        drained = pool.submit(engine.drain, WAIT_S)
        end = time.monotonic() + WAIT_S
        while engine.accepting and time.monotonic() < end:
            time.sleep(0.005)
        with pytest.raises(EngineClosed):
            engine.rank_sync([inp], [cands])
        gated.gate.set()
        assert running.result(WAIT_S).shape == (1, len(cands))
        assert drained.result(WAIT_S) is True
    engine.close()
