"""A pointwise reward model (OpenAssistant's, llm-blender's "deberta-rm") on the batching engine and the HTTP
server: the offline PointwiseRanker's answers (rank, select, compare, judge, rerank), and the engine's
guarantees (429, deadlines, cancellation, metrics, drain) for it; `blender-fast serve --model` starts."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import signal
import time

import numpy as np
import pytest

from conftest import live_server, require, serve_process

require("fastapi")
require("uvicorn")
require("prometheus_client")

from blender_fast import Client  # noqa: E402
from blender_fast.pointwise import PointwiseRanker  # noqa: E402
from blender_fast.serve.engine import BatchingEngine, DeadlineExceeded, EngineClosed, Overloaded  # noqa: E402
from test_engine import WAIT_S, GatedModel  # noqa: E402
from test_server import get, metric, post  # noqa: E402

INPUTS = ["What is the capital of France?", "Name a prime number.", "Hi", "Write a short poem about the sea."]
CANDIDATES = [
    ["Paris.", "London is the capital.", "It is Paris, a city in France. " * 4, "Paris!!", "lyon"],
    ["Seven.", "Nine is prime.", "Two is the smallest prime, divisible only by 1 and itself.", "11"],
    ["Hello!", "Hey there \u2014 \u00fcn\u00efcode", "hi", "Hello!", "Hello, how are you?", "yo"],  # a duplicate
    ["Waves roll in / salt on the wind", "The sea is big.", "Blue water. " * 10],
]


@pytest.fixture(scope="module")
def reward(tiny_reward_model):
    return PointwiseRanker.from_pretrained(tiny_reward_model, device="cpu", threads=1)


def gated(ranker: PointwiseRanker):
    """The same reward model behind a gate (test_engine.GatedModel): its calls block until the test opens it."""
    gate = GatedModel(ranker.model)
    return PointwiseRanker(gate, ranker.tokenizer, ranker.source_maxlength, ranker.candidate_maxlength,
                           token_budget=ranker.token_budget, max_batch_size=ranker.max_batch_size), gate


def distinct_rows(inputs, candidates) -> int:
    return sum(len(set(c)) for c in candidates)  # the inputs here are distinct


def idle(engine) -> None:
    """Wait (bounded) until nothing is queued or in flight: a request's answer is set just before the
    worker hands back what it reserved beyond its rows (a duplicate candidate is one row, not two)."""
    end = time.monotonic() + WAIT_S
    while (engine.in_flight or engine.queued_pairs) and time.monotonic() < end:
        time.sleep(0.01)
    assert engine.in_flight == 0 and engine.queued_pairs == 0


SELECTS = [dict(top_k=2, strategy="tournament"), dict(top_k=1, strategy="bubble"), dict(top_k=3, strategy="full"),
           dict(top_k=1, strategy="full", worst=True), dict(top_k=1, strategy="adaptive", budget=14),
           dict(top_k=2, strategy="swiss", seed=3)]


def assert_same_selections(got, want):
    for g, w in zip(got, want, strict=True):
        assert list(g.top_k) == list(w.top_k)
        assert (g.comparisons, g.forward_passes, g.steps) == (w.comparisons, w.forward_passes, w.steps)
        assert (g.scores is None) == (w.scores is None)
        if w.scores is not None:
            np.testing.assert_array_equal(g.scores, w.scores)


def test_engine_verbs_give_the_offline_answers_exactly(reward):
    """One request at a time runs alone, in one iteration, through PointwiseRanker's own batching and
    answer code: bit for bit the offline answer."""
    a, b = [c[0] for c in CANDIDATES], [c[1] for c in CANDIDATES]
    pairs = [c[:2] for c in CANDIDATES]
    with BatchingEngine(reward) as engine:
        for scores in (False, True):
            got, want = engine.rank_sync(INPUTS, CANDIDATES, return_scores=scores), \
                reward.rank(INPUTS, CANDIDATES, return_scores=scores)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_array_equal(g, w)
                assert g.dtype == w.dtype
        same = [c[:3] for c in CANDIDATES]  # every prompt with 3 candidates: one stacked array
        np.testing.assert_array_equal(engine.rank_sync(INPUTS, same), reward.rank(INPUTS, same))
        for kw in SELECTS:
            assert_same_selections(engine.select_sync(INPUTS, CANDIDATES, **kw),
                                   reward.select(INPUTS, CANDIDATES, **kw))
        np.testing.assert_array_equal(engine.compare_sync(INPUTS, a, b), reward.compare(INPUTS, a, b))
        np.testing.assert_array_equal(engine.compare_sync(INPUTS, a, b, mode="[A,B]"), reward.compare(INPUTS, a, b))
        for kw in (dict(shuffle_order=False), dict(seed=1), dict(return_scores=True, temperature=0.5, seed=2)):
            assert engine.judge_sync(INPUTS, pairs, **kw) == reward.judge(INPUTS, pairs, **kw)
        assert engine.judge_sync([], []) == reward.judge([], []) == []
        # Truncation per call, and PairRM's markers mean nothing to this model (accepted, as offline).
        np.testing.assert_array_equal(engine.rank_sync(INPUTS, CANDIDATES[:4], return_scores=True,
                                                       candidate_maxlength=4)[0],
                                      reward.rank(INPUTS, CANDIDATES[:4], return_scores=True, candidate_maxlength=4)[0])
        np.testing.assert_array_equal(engine.rank_sync(["q <|candidate|>"], [["a", "b"]]),
                                      reward.rank(["q <|candidate|>"], [["a", "b"]]))
        # Errors come from the caller's thread, as offline.
        with pytest.raises(ValueError, match="strategy"):
            engine.select_sync(INPUTS, CANDIDATES, strategy="knockout")
        with pytest.raises(TypeError, match="pointwise reward model"):
            engine.run_sync(INPUTS, CANDIDATES, iter(()))
        idle(engine)
        assert engine.stats.failed == 0 and engine.stats.completed == engine.stats.requests


def test_concurrent_callers_share_iterations_and_match_offline(reward):
    want = [reward.rank([i], [c], return_scores=True)[0] for i, c in zip(INPUTS, CANDIDATES)]
    with BatchingEngine(reward, max_rows_per_request=2, max_wait_ms=5) as engine:
        with concurrent.futures.ThreadPoolExecutor(len(INPUTS)) as pool:
            got = list(pool.map(lambda p: engine.rank_sync([INPUTS[p]], [CANDIDATES[p]], return_scores=True)[0],
                                range(len(INPUTS))))

        async def tasks():
            return await asyncio.gather(*(engine.select([i], [c], top_k=1, strategy="tournament")
                                          for i, c in zip(INPUTS, CANDIDATES)))

        sels = asyncio.run(tasks())
        # Each distinct (prompt, candidate) is one forward pass, whatever the batches.
        assert engine.stats.rows == 2 * distinct_rows(INPUTS, CANDIDATES)
        idle(engine)
    for g, w in zip(got, want):  # batched with other requests: float rounding may differ, not the rows
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    for s, i, c in zip(sels, INPUTS, CANDIDATES):
        assert list(s[0].top_k) == list(reward.select([i], [c], top_k=1, strategy="tournament")[0].top_k)


def test_overload_deadline_cancellation_and_drain(reward):
    gr, gate = gated(reward)
    engine = BatchingEngine(gr, max_queued_pairs=6, max_batch_tokens=30, max_wait_ms=0)
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(engine.rank_sync, [INPUTS[0]], [CANDIDATES[0]])  # 5 rows, held at the gate
            assert gate.entered.wait(WAIT_S)
            with pytest.raises(Overloaded, match="queue full") as e:
                engine.rank_sync([INPUTS[1]], [CANDIDATES[1]])
            assert e.value.retry_after >= 1 and engine.stats.rejected == 1
            gate.gate.set()
            np.testing.assert_array_equal(first.result(WAIT_S), reward.rank([INPUTS[0]], [CANDIDATES[0]]))
        # Several iterations (30 tokens each) behind a closed gate: the deadline passes between them.
        gate.gate.clear()
        gate.entered.clear()
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            late = pool.submit(engine.rank_sync, [INPUTS[3]], [CANDIDATES[3]], timeout=0.1)
            assert gate.entered.wait(WAIT_S)
            time.sleep(0.2)
            gate.gate.set()
            with pytest.raises(DeadlineExceeded):
                late.result(WAIT_S)

        # A caller that goes away: the rows of its request not yet run are dropped.
        gate.gate.clear()
        gate.entered.clear()
        rows_before = engine.stats.rows

        async def cancelled():
            task = asyncio.ensure_future(engine.rank([INPUTS[2]], [CANDIDATES[2]]))  # 5 rows, 30 tokens a turn
            for _ in range(3000):
                if gate.entered.is_set():
                    break
                await asyncio.sleep(0.01)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(cancelled())
        gate.gate.set()
        idle(engine)
        assert engine.stats.rows - rows_before < distinct_rows(INPUTS[2:3], CANDIDATES[2:3])
        assert engine.stats.failed == 2  # the late one and the cancelled one
        engine.warmup()
        assert engine.drain(WAIT_S)
        with pytest.raises(EngineClosed):
            engine.rank_sync(["q"], [["a", "b"]])
    finally:
        gate.gate.set()
        engine.close(timeout=WAIT_S)


def test_http_routes_give_the_offline_answers(reward):
    a, b = [c[0] for c in CANDIDATES], [c[1] for c in CANDIDATES]
    pairs = [c[:2] for c in CANDIDATES]
    engine = BatchingEngine(reward)
    with live_server(engine) as url:
        client = Client(url)
        ranks, scores = client.rank(INPUTS, CANDIDATES), client.rank(INPUTS, CANDIDATES, return_scores=True)
        for got, want in ((ranks, reward.rank(INPUTS, CANDIDATES)),
                          (scores, reward.rank(INPUTS, CANDIDATES, return_scores=True))):
            for g, w in zip(got, want, strict=True):
                assert [float(x) for x in g] == [float(x) for x in w]  # JSON carries the float32 values exactly
        for kw in SELECTS:
            got = client.select(INPUTS, CANDIDATES, **kw)
            for g, w in zip(got, reward.select(INPUTS, CANDIDATES, **kw), strict=True):
                assert g["top_k"] == [int(i) for i in w.top_k]
                assert (g["comparisons"], g["forward_passes"], g["steps"]) == (w.comparisons, w.forward_passes, w.steps)
                assert g.get("scores") == (None if w.scores is None else [float(x) for x in w.scores])
        assert [float(x) for x in client.compare(INPUTS, a, b)] == [float(x) for x in reward.compare(INPUTS, a, b)]
        assert client.judge(INPUTS, pairs, shuffle_order=False) == reward.judge(INPUTS, pairs, shuffle_order=False)
        assert client.judge(INPUTS, pairs, return_scores=True, seed=0) == \
            reward.judge(INPUTS, pairs, return_scores=True, seed=0)
        # TEI's rerank: the reward scores (raw_scores) best first; relevance is their sigmoid.
        query, docs = INPUTS[0], CANDIDATES[0]
        raw = reward.rank([query], [docs], return_scores=True)[0]
        order = sorted(range(len(docs)), key=lambda i: (-float(raw[i]), i))
        status, body, _ = post(url, "/rerank", json.dumps({"query": query, "texts": docs, "raw_scores": True}))
        assert status == 200 and [r["index"] for r in body] == order
        assert [r["score"] for r in body] == [float(raw[i]) for i in order]
        status, body, _ = post(url, "/rerank", json.dumps({"query": query, "texts": docs}))
        np.testing.assert_allclose([r["score"] for r in body], 1 / (1 + np.exp(-raw[order].astype(np.float64))))
        # A top-k rerank runs the select route's strategy: the offline selection's order.
        status, body, _ = post(url, "/v1/rerank", json.dumps({"query": query, "documents": docs, "top_n": 2,
                                                               "blender_fast": {"strategy": "tournament"}}))
        want = reward.select([query], [docs], top_k=2, strategy="tournament")[0].top_k
        assert status == 200 and [r["index"] for r in body["results"]] == [int(i) for i in want]
        # Cohere v2's max_tokens_per_doc: each document's own tokens, the special ones not counted; past the
        # model's lengths it changes nothing.
        n_special = reward.tokenizer.n_special
        for extra, kw in (({"max_tokens_per_doc": 4}, {"candidate_maxlength": 4 + n_special}),
                          ({"max_tokens_per_doc": 10**6}, {})):
            status, body, _ = post(url, "/v2/rerank", json.dumps({"model": "blender-fast", "query": query,
                                                                  "documents": docs, **extra}))
            want = reward.rank([query], [docs], return_scores=True, **kw)[0].astype(np.float64)
            got = [r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])]
            assert status == 200 and np.allclose(got, 1 / (1 + np.exp(-want))), (extra, body)
        # PairRM's markers are plain text to this model: accepted, as offline (the rerank routes too).
        status, body, _ = post(url, "/rerank", json.dumps({"query": "q", "texts": ["a <|candidate|>", "b"]}))
        assert status == 200, body
        status, body, _ = post(url, "/v1/rank", json.dumps({"input": "q <|candidate|>", "candidates": ["a", "b"],
                                                             "return_scores": True}))
        want = reward.rank(["q <|candidate|>"], [["a", "b"]], return_scores=True)[0]
        assert status == 200 and body["scores"] == [float(x) for x in want]
        _, text = get(url, "/metrics")
        assert metric(text, "blender_fast_forward_passes_total") == engine.stats.rows > 0


def test_overload_over_http_is_429(reward):
    gr, gate = gated(reward)
    body = json.dumps({"input": INPUTS[0], "candidates": CANDIDATES[0]})
    try:
        with live_server(BatchingEngine(gr, max_queued_pairs=6, max_wait_ms=0)) as url:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                first = pool.submit(post, url, "/v1/rank", body)
                assert gate.entered.wait(WAIT_S)
                status, detail, headers = post(url, "/v1/rank", body)
                gate.gate.set()
                assert first.result(WAIT_S)[0] == 200
            assert status == 429 and "queue full" in detail["detail"] and int(headers["Retry-After"]) >= 1
            status, detail, _ = post(url, "/rerank", json.dumps({"query": "q", "texts": ["a", "b"]}))
            assert status == 200
    finally:
        gate.gate.set()


@pytest.mark.slow
def test_cli_serve_starts_with_a_reward_model(tiny_reward_model, reward):
    """`blender-fast serve --model <reward model dir> --port 0` starts, answers as offline, drains on SIGTERM."""
    with serve_process("--model", str(tiny_reward_model), "--threads", "1", "--device", "cpu") as (proc, line):
        assert "runtime=onnxruntime" in line, line
        url = line.split()[2]
        assert Client(url).wait_ready(60)
        got = Client(url).rank(INPUTS, CANDIDATES, return_scores=True)
        for g, w in zip(got, reward.rank(INPUTS, CANDIDATES, return_scores=True), strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)  # another process, another ORT session
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
