"""The rerank routes (Cohere v1/v2, TEI) on loopback: the real cohere SDK and raw TEI-shaped bodies get the
offline Ranker's order, scores in [0, 1], each API's error shape, model names and limits."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require

require("fastapi")
require("uvicorn")

from blender_fast import Ranker  # noqa: E402
from blender_fast.serve.engine import BatchingEngine  # noqa: E402
from blender_fast.selection.aggregate import relevance_from_aggregate  # noqa: E402
from conftest import live_server  # noqa: E402
from test_server import post  # noqa: E402


@pytest.fixture(scope="module")
def ranker(tiny_checkpoint):
    return Ranker.from_pretrained(tiny_checkpoint, threads=1)


@pytest.fixture(scope="module")
def docs(shared_records):
    rec = shared_records[0]
    return rec["instruction"][:300], [c["text"][:300] for c in rec["candidates"][:6]]


def offline_order(ranker, query, documents):
    ranks = ranker.rank([query], [documents])[0]
    return sorted(range(len(documents)), key=lambda i: (ranks[i], i))


def test_relevance_keeps_the_aggregate_order_and_lies_in_0_1():
    s = np.array([-3.0, 0.5, 0.49, 7.0, -0.1])
    rel = relevance_from_aggregate(s)
    assert ((rel > 0) & (rel < 1)).all()
    assert list(np.argsort(-rel)) == list(np.argsort(-s))
    assert relevance_from_aggregate([1.0]).tolist() == [0.5]


def test_cohere_sdk_v1_and_v2_get_the_offline_order(ranker, docs):
    require("cohere")
    import cohere

    query, documents = docs
    want = offline_order(ranker, query, documents)
    want_top = ranker.select([query], [documents], top_k=2, strategy="tournament", seed=0)[0].top_k
    import httpx

    # The SDK's own httpx clients are never closed; ours are, so no socket is left for the GC to find.
    with live_server(BatchingEngine(ranker), served_model_names=["pairrm-test"]) as url, \
            httpx.Client(timeout=60) as http_v1, httpx.Client(timeout=60) as http_v2:
        v1 = cohere.Client(api_key="unused", base_url=url, httpx_client=http_v1)
        res = v1.rerank(model="pairrm-test", query=query, documents=documents, return_documents=True)
        assert [r.index for r in res.results] == want
        assert all(0 <= r.relevance_score <= 1 for r in res.results)
        scores = [r.relevance_score for r in res.results]
        assert scores == sorted(scores, reverse=True)
        assert [r.document.text for r in res.results] == [documents[i] for i in want]
        # v1 also takes {text} objects; top_n < n runs the top-k selection (the Ranker's select order).
        res = v1.rerank(query=query, documents=[{"text": d} for d in documents], top_n=2)
        assert [r.index for r in res.results] == list(want_top)
        assert res.results[0].relevance_score == 1.0

        v2 = cohere.ClientV2(api_key="unused", base_url=url, httpx_client=http_v2)
        res = v2.rerank(model="pairrm-test", query=query, documents=documents)
        assert [r.index for r in res.results] == want
        res = v2.rerank(model="pairrm-test", query=query, documents=documents, top_n=2)
        assert [r.index for r in res.results] == list(want_top)
        res = v2.rerank(model="pairrm-test", query=query, documents=documents, top_n=len(documents) + 3)
        assert [r.index for r in res.results] == want
        with pytest.raises(cohere.core.ApiError) as err:
            v2.rerank(model="rerank-english-v3.0", query=query, documents=documents)
        assert err.value.status_code == 404 and "'pairrm-test'" in err.value.body["message"]


def test_max_tokens_per_doc_keeps_that_many_tokens_of_each_document(ranker):
    """Cohere v2's max_tokens_per_doc: each document keeps at most that many of its own tokens (PairRM
    would otherwise give it candidate_maxlength plus half what the query leaves unused); a value past the
    ranker's lengths (Cohere's default, 4096) changes nothing."""
    words = "alpha beta gamma".split()  # one token each: a cut after a token is a cut after a word
    documents = [" ".join(words[(i + j) % 3] for j in range(60 + 9 * i)) for i in range(4)]
    query = "Which is best?"
    tok = ranker.tokenizer
    cap = 25
    cut = []
    for d in documents:
        enc = tok.tokenizer.encode(d, add_special_tokens=False)
        cut.append(d[:enc.offsets[cap - 1][1]])
        assert tok.tokenizer.encode(cut[-1], add_special_tokens=False).ids == enc.ids[:cap]
    full = relevance_from_aggregate(ranker.rank([query], [documents], return_scores=True)[0])
    capped = relevance_from_aggregate(ranker.rank([query], [cut], return_scores=True)[0])
    assert not np.allclose(full, capped)  # the cap changes the answer, so the checks below mean something

    def scores(body):
        return [r["relevance_score"] for r in sorted(body["results"], key=lambda r: r["index"])]

    with live_server(BatchingEngine(ranker)) as url:
        for extra, want in (({}, full), ({"max_tokens_per_doc": 4096}, full), ({"max_tokens_per_doc": cap}, capped)):
            status, body, _ = post(url, "/v2/rerank", json.dumps({"model": "blender-fast", "query": query,
                                                                  "documents": documents, **extra}))
            assert status == 200, body
            np.testing.assert_allclose(scores(body), want, rtol=1e-5, atol=1e-6, err_msg=str(extra))
        # The top-k selection truncates alike: the offline selection over the cut documents.
        status, body, _ = post(url, "/v2/rerank", json.dumps({"model": "blender-fast", "query": query,
                                                              "documents": documents, "max_tokens_per_doc": cap,
                                                              "top_n": 2}))
        want = ranker.select([query], [cut], top_k=2, strategy="tournament", seed=0)[0].top_k
        assert status == 200 and [r["index"] for r in body["results"]] == [int(i) for i in want]


def test_extension_field_picks_the_strategy_and_budget(ranker, docs):
    query, documents = docs
    want = ranker.select([query], [documents], top_k=3, strategy="adaptive", budget=20, seed=0)[0].top_k
    with live_server(BatchingEngine(ranker)) as url:
        status, body, _ = post(url, "/v2/rerank", json.dumps({
            "model": "blender-fast", "query": query, "documents": documents, "top_n": 3,
            "blender_fast": {"strategy": "adaptive", "budget": 20}}))
        assert status == 200, body
        assert [r["index"] for r in body["results"]] == list(want)
        assert body["meta"]["blender_fast"]["strategy"] == "adaptive"
        assert body["meta"]["blender_fast"]["forward_passes"] <= 20


def test_server_start_sets_the_strategy_and_budget_a_request_may_override(ranker, docs):
    """--rerank-strategy / --rerank-budget (create_app's rerank_strategy / rerank_budget) are the default of
    every top_n < n request; a request naming another strategy runs it without the server's budget."""
    query, documents = docs
    swiss = ranker.select([query], [documents], top_k=2, strategy="swiss", budget=16, seed=0)[0]
    tournament = ranker.select([query], [documents], top_k=2, strategy="tournament", seed=0)[0]
    with live_server(BatchingEngine(ranker), rerank_strategy="swiss", rerank_budget=16) as url:
        for extra, want, strategy in (({}, swiss, "swiss"), ({"blender_fast": {"strategy": "tournament"}},
                                                              tournament, "tournament")):
            status, body, _ = post(url, "/v1/rerank", json.dumps({"query": query, "documents": documents,
                                                                  "top_n": 2, **extra}))
            assert status == 200, body
            assert [r["index"] for r in body["results"]] == [int(i) for i in want.top_k]
            assert body["meta"]["blender_fast"] == {"strategy": strategy, "forward_passes": want.forward_passes}


def test_tei_rerank_shape_scores_and_errors(ranker, docs):
    query, documents = docs
    want = offline_order(ranker, query, documents)
    raw = ranker.rank([query], [documents], return_scores=True)[0]
    with live_server(BatchingEngine(ranker), max_candidates=8, max_text_chars=400) as url:
        status, body, _ = post(url, "/rerank", json.dumps({"query": query, "texts": documents, "return_text": True}))
        assert status == 200 and isinstance(body, list)
        assert [r["index"] for r in body] == want
        assert [r["text"] for r in body] == [documents[i] for i in want]
        assert all(0 <= r["score"] <= 1 for r in body)
        status, body, _ = post(url, "/rerank", json.dumps({"query": query, "texts": documents, "raw_scores": True}))
        assert status == 200
        np.testing.assert_allclose([r["score"] for r in body], [raw[i] for i in want], rtol=1e-5, atol=1e-5)
        cases = [
            ("/rerank", {"query": query, "texts": []}, 400, "empty"),
            ("/rerank", {"query": query, "texts": ["a"] * 9}, 413, "at most 8"),
            ("/rerank", {"query": query, "texts": ["a", "b" * 401]}, 413, "texts[1] has 401 characters"),
            ("/rerank", {"query": query, "texts": ["a", 3]}, 422, "texts[1] must be a string"),
            ("/rerank", {"texts": ["a"]}, 422, "missing field 'query'"),
            ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "Left"}, 422, "not supported"),
            # Texts are named as the request names them (not the Python API's inputs/candidates).
            ("/rerank", {"query": "q", "texts": ["a", "b <|candidate|>"]}, 422, "texts[1] contains the reserved"),
            ("/rerank", {"query": "<|source|> q", "texts": ["a"]}, 422, "query contains the reserved"),
        ]
        for path, payload, status, message in cases:
            got_status, got, _ = post(url, path, json.dumps(payload))
            assert got_status == status and message in got["error"] and "error_type" in got, (payload, got)
        # Cohere's error shape, and a body nested far too deep is a 4xx, never a 500.
        for path, body, status, message in [
            ("/v1/rerank", json.dumps({"query": "q", "documents": ["a"], "model": "nope"}), 404, "not served here"),
            ("/v2/rerank", json.dumps({"query": "q", "documents": ["a"]}), 422, "model is required"),
            ("/v1/rerank", json.dumps({"query": "q", "documents": [{"title": "a"}]}), 422, "documents[0]"),
            ("/v1/rerank", json.dumps({"query": "q", "documents": ["a", "b"], "top_n": 0}), 422, "top_n"),
            ("/v1/rerank", json.dumps({"query": "q", "documents": ["a"], "blender_fast": {"strategy": "x"}}), 422,
             "blender_fast.strategy"),
            ("/v1/rerank", "[" * 100_000 + "]" * 100_000, 422, "levels deep"),
            ("/v2/rerank", json.dumps({"model": "blender-fast", "query": "q", "documents": ["a", "b\ud800"]}), 422,
             "documents[1] contains a lone surrogate"),
        ]:
            got_status, got, _ = post(url, path, body)
            assert got_status == status and message in got["message"], (body[:80], got)


def test_docs_page_loads_only_assets_the_app_serves(ranker):
    """/docs and /redoc must render with no network: every script/style/icon URL is the app's own."""
    import re
    import urllib.request

    from test_server import NO_PROXY

    with live_server(BatchingEngine(ranker)) as url:
        for page in ("/docs", "/redoc"):
            with NO_PROXY.open(url + page, timeout=30) as resp:
                html = resp.read().decode()
            assets = re.findall(r"""(?:src|href)\s*=\s*['"]([^'"]+)['"]""", html)
            assets += re.findall(r"""url:\s*['"]([^'"]+)['"]""", html)  # swagger-ui's openapi.json
            assert assets, html
            for asset in assets:
                assert asset.startswith("/") and not asset.startswith("//"), (page, asset)
                with NO_PROXY.open(urllib.request.Request(url + asset), timeout=30) as resp:
                    assert resp.status == 200 and resp.read(), asset
        # The rerank routes document their bodies, with no reference left dangling.
        with NO_PROXY.open(url + "/openapi.json", timeout=30) as resp:
            spec = json.loads(resp.read())
        for path, field in (("/v1/rerank", "documents"), ("/v2/rerank", "max_tokens_per_doc"), ("/rerank", "texts")):
            body = spec["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
            assert field in body["properties"] and "$defs" not in json.dumps(body), path


def test_llamaindex_tei_reranker_gets_the_offline_order(ranker, docs):
    """LlamaIndex's TEI reranker (TextEmbeddingInference postprocessor) re-sorts the nodes by our score."""
    require("llama_index.postprocessor.tei_rerank")
    from llama_index.core.schema import NodeWithScore, TextNode
    from llama_index.postprocessor.tei_rerank import TextEmbeddingInference

    query, documents = docs
    want = offline_order(ranker, query, documents)
    nodes = [NodeWithScore(node=TextNode(text=d, id_=str(i)), score=0.0) for i, d in enumerate(documents)]
    with live_server(BatchingEngine(ranker)) as url:
        reranker = TextEmbeddingInference(base_url=url, top_n=len(documents))
        out = reranker.postprocess_nodes(nodes, query_str=query)
    assert [int(n.node.id_) for n in out] == want
    assert all(0 <= n.score <= 1 for n in out)


def test_rerank_shares_the_engines_admission_429_in_each_apis_shape(ranker, docs):
    import concurrent.futures

    from test_engine import WAIT_S, gated_ranker
    from test_server import get, metric

    query, documents = docs  # 6 documents: a full ranking is 30 rows
    gr, gated = gated_ranker(ranker)
    with live_server(BatchingEngine(gr, max_queued_pairs=40, max_wait_ms=0)) as url:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(post, url, "/v1/rank", json.dumps({"input": query, "candidates": documents}))
            assert gated.entered.wait(WAIT_S)
            v2 = post(url, "/v2/rerank", json.dumps({"model": "blender-fast", "query": query, "documents": documents}))
            tei = post(url, "/rerank", json.dumps({"query": query, "texts": documents}))
            # A top-1 tournament costs 2(n-1) = 10 rows: it fits beside the 30 in flight.
            top1 = pool.submit(post, url, "/v1/rerank", json.dumps({"query": query, "documents": documents,
                                                                    "top_n": 1}))
            gated.gate.set()
            assert first.result(WAIT_S)[0] == 200 and top1.result(WAIT_S)[0] == 200
        assert v2[0] == 429 and "queue full" in v2[1]["message"] and int(v2[2]["Retry-After"]) >= 1
        assert tei[0] == 429 and tei[1]["error_type"] == "overloaded"
        _, text = get(url, "/metrics")
        assert metric(text, "blender_fast_requests_total", route="rerank_v2", status="429") == 1
        assert metric(text, "blender_fast_requests_total", route="rerank_v1", status="200") == 1


def test_oversized_body_is_413_before_decoding(ranker):
    with live_server(BatchingEngine(ranker), max_body_bytes=1000) as url:
        big = json.dumps({"query": "q", "documents": ["x" * 2000]})
        status, body, _ = post(url, "/v1/rerank", big)
        assert status == 413 and "at most 1000" in body["message"]
        status, body, _ = post(url, "/v1/rank", json.dumps({"input": "q", "candidates": ["x" * 2000]}))
        assert status == 413 and "at most 1000" in body["detail"]


def test_rerank_numbers_follow_the_one_rule(ranker):
    """Every count of the rerank routes is an integer within a stated maximum, and the 422 names it: a huge
    max_tokens_per_doc, top_n, or blender_fast.budget on TEI's full ranking passed unchecked (200)."""
    big = 10**30
    with live_server(BatchingEngine(ranker)) as url:
        for path, body, error_key, message in [
            ("/v2/rerank", {"model": "blender-fast", "query": "q", "documents": ["a", "b"], "max_tokens_per_doc": big},
             "message", f"max_tokens_per_doc must be <= 1000000000, got {big}"),
            ("/rerank", {"query": "q", "texts": ["a", "b"], "blender_fast": {"budget": big}}, "error",
             f"blender_fast.budget must be <= 1000000000, got {big}"),
            ("/v1/rerank", {"query": "q", "documents": ["a", "b"], "top_n": big}, "message",
             f"top_n must be <= 1000000000, got {big}"),
            ("/v1/rerank", {"query": "q", "documents": ["a", "b"], "blender_fast": {"candidate_maxlength": 2.0}},
             "message", "blender_fast.candidate_maxlength must be a positive integer, got float"),
        ]:
            status, got, _ = post(url, path, json.dumps(body))
            assert status == 422 and message in got[error_key], (path, body, got)
        # more documents than top_n asks for is still Cohere's "all of them"
        status, got, _ = post(url, "/v1/rerank", json.dumps({"query": "q", "documents": ["a", "b"], "top_n": 10**9}))
        assert status == 200 and len(got["results"]) == 2, got
