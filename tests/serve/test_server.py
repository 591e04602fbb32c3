"""The HTTP server on loopback (ephemeral ports): offline answers under concurrent clients, 422/413/429/504,
disconnects, /metrics, and SIGTERM draining a real `blender-fast serve` process."""
from __future__ import annotations

import concurrent.futures
import json
import re
import signal
import socket
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from conftest import live_server, require, serve_process

require("fastapi")
require("uvicorn")
require("prometheus_client")

from blender_fast import Client, Ranker
from blender_fast.serve.client import ServerError  # noqa: E402
from blender_fast.serve.engine import BatchingEngine  # noqa: E402
from test_engine import WAIT_S, gated_ranker  # noqa: E402

NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def ranker(tiny_checkpoint):
    return Ranker.from_pretrained(tiny_checkpoint, threads=1)


@pytest.fixture(scope="module")
def prompts(shared_records):
    return [(rec["instruction"][:300], [c["text"][:300] for c in rec["candidates"][:4 + i]])
            for i, rec in enumerate(shared_records[:6])]


def post(url, path, body: bytes | str, timeout=WAIT_S):
    """(status, json body, headers) of a raw POST."""
    data = body.encode() if isinstance(body, str) else body
    req = urllib.request.Request(url + path, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with NO_PROXY.open(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read()), resp.headers
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()), e.headers


def get(url, path):
    try:
        with NO_PROXY.open(url + path, timeout=WAIT_S) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def metric(text: str, name: str, **labels) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        base, _, rest = key.partition("{")
        if base == name and all(f'{k}="{v}"' in rest for k, v in labels.items()):
            return float(value)
    return 0.0


def test_concurrent_clients_get_the_offline_results(ranker, prompts):
    inputs = [p[0] for p in prompts]
    cands = [p[1] for p in prompts]
    want_scores = [ranker.rank([i], [c], return_scores=True)[0] for i, c in zip(inputs, cands)]
    want_sel = [ranker.select([i], [c], top_k=2, strategy="tournament")[0] for i, c in zip(inputs, cands)]
    want_adaptive = [ranker.select([i], [c], strategy="adaptive", budget=16)[0] for i, c in zip(inputs, cands)]
    want_cmp = ranker.compare(inputs, [c[0] for c in cands], [c[1] for c in cands])
    with live_server(BatchingEngine(ranker, max_rows_per_request=8)) as url:
        client = Client(url)

        def one(p):
            return (client.rank([inputs[p]], [cands[p]], return_scores=True)[0],
                    client.rank([inputs[p]], [cands[p]])[0],
                    client.select([inputs[p]], [cands[p]], top_k=2, strategy="tournament")[0],
                    client.compare([inputs[p]], [cands[p][0]], [cands[p][1]])[0],
                    client.select([inputs[p]], [cands[p]], strategy="adaptive", budget=16)[0])

        with concurrent.futures.ThreadPoolExecutor(len(prompts)) as pool:
            got = list(pool.map(one, range(len(prompts))))
        # A list of items in one request: results in item order.
        many = client.rank(inputs, cands, return_scores=True)
    for p, (scores, ranks, sel, logit, adaptive) in enumerate(got):
        assert adaptive["top_k"] == want_adaptive[p].top_k and adaptive["forward_passes"] <= 16
        np.testing.assert_allclose(scores, want_scores[p], atol=1e-5)
        np.testing.assert_array_equal(ranks, ranker.rank([inputs[p]], [cands[p]])[0])
        assert sel["top_k"] == want_sel[p].top_k  # 0-based indices
        assert (sel["comparisons"], sel["forward_passes"], sel["steps"]) == (
            want_sel[p].comparisons, want_sel[p].forward_passes, want_sel[p].steps)
        assert abs(logit - want_cmp[p]) < 1e-5
        np.testing.assert_allclose(many[p], want_scores[p], atol=1e-5)


def test_judge_route_is_trls_shape(ranker, prompts):
    inputs = [p[0] for p in prompts]
    pairs = [p[1][:2] for p in prompts]
    want = [int(r) for r in ranker.rank(inputs, pairs)[:, 0] - 1]
    with live_server(BatchingEngine(ranker)) as url:
        assert Client(url).judge(inputs, pairs, shuffle_order=False) == want
        probs = Client(url).judge(inputs, pairs, return_scores=True, seed=0)
        assert all(0 <= p <= 1 for p in probs) and [0 if p >= 0.5 else 1 for p in probs] == want
        status, body, _ = post(url, "/v1/judge", json.dumps({"prompt": "q", "completions": ["a", "b"]}))
        assert status == 200 and body["preferred"] in (0, 1)
        # TRL's own call shape, answered with TRL's return value (a list).
        status, body, _ = post(url, "/v1/judge", json.dumps({"prompts": inputs, "completions": pairs,
                                                             "shuffle_order": False}))
        assert status == 200 and body == want
        status, body, _ = post(url, "/v1/judge", json.dumps({"prompts": inputs, "completions": pairs[:1]}))
        assert status == 422 and f"got {len(inputs)} prompts but 1 completion pairs" in body["detail"]


def test_bad_requests_get_422_and_413_with_the_message(ranker):
    with live_server(BatchingEngine(ranker), max_candidates=5, max_text_chars=50) as url:
        cases = [
            ("/v1/rank", "{not json", 422, "not valid JSON"),
            ("/v1/rank", "[" * 100_000 + "]" * 100_000, 422, "more than 64 levels deep"),
            ("/v1/rank", "[]", 422, "non-empty list of items"),
            ("/v1/rank", '[{"input": "q", "candidates": ["a", "b"]}, {"input": "q", "candidates": ["a", 7]}]',
             422, "candidates[1][1] must be a string, got int"),
            ("/v1/rank", '{"candidates": ["a"]}', 422, "item 0: missing field 'input'"),
            ("/v1/rank", '{"input": "q", "candidates": []}', 422, "candidates[0] is empty"),
            ("/v1/rank", '{"input": "q", "candidates": ["a"], "topk": 1}', 422, "unknown field 'topk'"),
            ("/v1/select", '{"input": "q", "candidates": ["a", "b"], "top_k": 3}', 422,
             "top_k = 3 exceeds the 2 candidates of prompt 0"),
            ("/v1/select", '{"input": "q", "candidates": ["a", "b"], "strategy": "knockout"}', 422,
             "strategy must be one of"),
            ("/v1/select", '{"input": "q", "candidates": ["a", "b", "c"], "strategy": "adaptive", "budget": 1}', 422,
             "budget = 1 forward passes is below the minimum"),
            ("/v1/select", '{"input": "q", "candidates": ["a", "b"], "strategy": "bubble", "budget": 8}', 422,
             "budget applies to the strategies"),
            ("/v1/compare", '{"input": "q", "candidate_a": "a", "candidate_b": "b", "mode": "AB"}', 422,
             "mode must be one of"),
            ("/v1/judge", '{"prompt": "q", "completions": ["a"]}', 422, "completions[0] must hold exactly 2"),
            ("/v1/judge", '{"prompt": "q", "completions": ["a", "b"], "temperature": 0}', 422, "temperature"),
            ("/v1/rank", '{"input": "q <|candidate|>", "candidates": ["a"]}', 422, "reserved marker"),
            ("/v1/rank", json.dumps({"input": "q", "candidates": ["a"] * 6}), 413, "at most 5 (--max-candidates)"),
            ("/v1/rank", json.dumps({"input": "q" * 51, "candidates": ["a"]}), 413, "inputs[0] has 51 characters"),
            ("/v1/rank?timeout_ms=-1", json.dumps({"input": "q", "candidates": ["a"]}), 422, "timeout_ms"),
        ]
        for path, body, status, message in cases:
            got_status, got, _ = post(url, path, body)
            assert (got_status, message in str(got.get("detail"))) == (status, True), (path, body, got)
        with pytest.raises(ServerError) as err:
            Client(url).rank(["q"], [["a", 3]])
        assert err.value.status == 422 and "candidates[0][1]" in err.value.detail
        assert post(url, "/v1/fuse", '{"input": "q", "candidates": ["a"]}')[0] == 404  # no --fuser


def test_overload_gets_429_and_no_request_is_lost_or_answered_twice(ranker, prompts):
    gr, gated = gated_ranker(ranker)
    inp, cands = prompts[2]  # 30 rows
    body = json.dumps({"input": inp, "candidates": cands})
    n = 12
    with live_server(BatchingEngine(gr, max_queued_pairs=40, max_wait_ms=0)) as url:
        with concurrent.futures.ThreadPoolExecutor(n + 2) as pool:
            first = pool.submit(post, url, "/v1/rank", body)
            assert gated.entered.wait(WAIT_S)
            rest = [pool.submit(post, url, "/v1/rank", body) for _ in range(n)]
            rejected = [f.result(WAIT_S) for f in rest]
            # A client that honours Retry-After gets through once the queue has room.
            retried = pool.submit(Client(url, max_retries=5).rank, [inp], [cands])
            time.sleep(0.2)
            gated.gate.set()
            assert first.result(WAIT_S)[0] == 200
            assert retried.result(WAIT_S).shape == (1, len(cands))
        statuses = [s for s, _, _ in rejected]
        assert statuses == [429] * n
        assert all(int(h["Retry-After"]) >= 1 for _, _, h in rejected)
        assert "queue full" in rejected[0][1]["detail"]
        _, text = get(url, "/metrics")
        answered = metric(text, "blender_fast_requests_total", route="rank", status="200")
        refused = metric(text, "blender_fast_requests_total", route="rank", status="429")
        # Every request got exactly one response: 1 + n + the retrying client's attempts (>= 1 retry).
        assert answered == 2 and refused >= n + 1
        assert metric(text, "blender_fast_queue_pairs") == 0


def test_disconnecting_client_frees_its_work(ranker, prompts):
    gr, gated = gated_ranker(ranker)
    inp, cands = prompts[5]  # 72 rows, several iterations
    engine = BatchingEngine(gr, max_rows_per_request=8, max_batch_tokens=2000, max_wait_ms=0)
    with live_server(engine) as url:
        port = int(url.rsplit(":", 1)[1])
        body = json.dumps({"input": inp, "candidates": cands}).encode()
        with socket.create_connection(("127.0.0.1", port), timeout=WAIT_S) as s:
            s.sendall(b"POST /v1/rank HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
            assert gated.entered.wait(WAIT_S)
            assert engine.queued_pairs > 0
        # socket closed: the server notices, cancels the request, and the worker drops its rows.
        end = time.monotonic() + WAIT_S
        for _ in range(10_000):
            _, text = get(url, "/metrics")
            if metric(text, "blender_fast_requests_total", route="rank", status="499") == 1 or time.monotonic() > end:
                break
            time.sleep(0.01)
        gated.gate.set()
        while (engine.queued_pairs or engine.in_flight) and time.monotonic() < end:
            time.sleep(0.01)
        assert engine.queued_pairs == 0 and engine.in_flight == 0
        assert engine.stats.rows < 72
        _, text = get(url, "/metrics")
        assert metric(text, "blender_fast_requests_total", route="rank", status="499") == 1


def test_deadline_gets_504(ranker, prompts):
    gr, gated = gated_ranker(ranker)
    inp, cands = prompts[5]
    with live_server(BatchingEngine(gr, max_rows_per_request=8, max_batch_tokens=2000, max_wait_ms=0)) as url:
        threading.Timer(0.3, gated.gate.set).start()
        status, body, _ = post(url, "/v1/rank?timeout_ms=100", json.dumps({"input": inp, "candidates": cands}))
        assert status == 504 and "deadline" in body["detail"]


def test_metrics_health_ready_and_docs(ranker, prompts):
    with live_server(BatchingEngine(ranker), ready=False) as url:
        assert get(url, "/health")[0] == 200
        assert get(url, "/ready")[0] == 503
        assert post(url, "/v1/rank", json.dumps({"input": "q", "candidates": ["a", "b"]}))[0] == 503
        assert not Client(url).ready()
    engine = BatchingEngine(ranker)
    with live_server(engine) as url:
        inp, cands = prompts[0]
        Client(url).rank([inp], [cands])
        status, text = get(url, "/metrics")
        assert status == 200
        for series in ("blender_fast_requests_total", "blender_fast_request_seconds_bucket",
                       "blender_fast_queue_pairs", "blender_fast_queue_tokens", "blender_fast_batch_rows_bucket",
                       "blender_fast_batch_tokens_bucket", "blender_fast_batch_pad_fraction_bucket",
                       "blender_fast_model_seconds_total", "blender_fast_forward_passes_total"):
            assert series in text, series
        assert metric(text, "blender_fast_forward_passes_total") == engine.stats.rows > 0
        assert get(url, "/ready")[0] == 200
        status, schema = get(url, "/openapi.json")
        paths = json.loads(schema)["paths"]
        assert {"/v1/rank", "/v1/select", "/v1/compare", "/v1/judge", "/health", "/ready", "/metrics"} <= set(paths)
        assert "0-based" in json.dumps(paths["/v1/select"])
        assert get(url, "/docs")[0] == 200


def test_startup_says_what_runs_in_plain_words_and_the_details_with_verbose(tiny_checkpoint):
    """issue 28 item 6: serve printed auto-selection's whole reason ("ranker onnx fp32: exact fp32: no
    agreement-gate record for torch bf16, onnx int8; no cascade: ..."); now the CLI's plain line, the
    details under --verbose (and in describe())."""
    plain = re.compile(r"blender-fast serve: ranker: (ONNX Runtime|PyTorch|OpenVINO) (fp32|fp16|bf16|int8) on CPU "
                       r"\((exact; no faster certified path on this CPU|certified cascade: fp32's answers, with a "
                       r"fast first pass|faster, and passed the agreement gate for this checkpoint)\)")
    for verbose in ((), ("--verbose",)):
        with serve_process("--model", str(tiny_checkpoint), "--threads", "1", *verbose) as (proc, _line):
            lines = []
            while not lines or not lines[-1].startswith("blender-fast serve: limits:"):
                lines.append(proc.stderr.readline().rstrip("\n"))
                assert lines[-1] or proc.poll() is None, lines
        ranker_lines = [line for line in lines if line.startswith("blender-fast serve: ranker")]
        assert plain.fullmatch(ranker_lines[0]), ranker_lines
        assert "agreement-gate record" not in ranker_lines[0] and "no cascade" not in ranker_lines[0]
        if verbose:  # the CPU, its ISA, and the whole reason
            assert len(ranker_lines) == 2 and ranker_lines[1].startswith("blender-fast serve: ranker: onnx fp32 on cpu ("), \
                ranker_lines
            assert "): exact fp32" in ranker_lines[1], ranker_lines
        else:
            assert len(ranker_lines) == 1, ranker_lines


@pytest.mark.slow
def test_sigterm_drains_then_exits_0(tiny_checkpoint, shared_records):
    """A real `blender-fast serve` process: an in-flight request completes, new ones get 503, exit code 0."""
    texts = [c["text"][:400] for rec in shared_records[:4] for c in rec["candidates"]]
    body = json.dumps([{"input": rec["instruction"][:300], "candidates": texts[:20]} for rec in shared_records[:3]])
    end = time.monotonic() + 120  # startup and the loops below, together
    with serve_process("--model", str(tiny_checkpoint), "--threads", "1", "--max-rows-per-request", "16") as (proc, line):
        for word in ("model=", "runtime=onnxruntime", "precision=fp32", "threads=1", "max_queued_pairs="):
            assert word in line, line
        why = proc.stderr.readline()  # the default is auto: the next line says what it chose and why
        assert why.startswith("blender-fast serve: ranker: ONNX Runtime fp32 on CPU ("), why
        url = line.split()[2]
        assert Client(url).wait_ready(60)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(post, url, "/v1/rank", body, 120)
            for _ in range(10_000):  # until the engine holds it (bounded by the count and the deadline)
                if metric(get(url, "/metrics")[1], "blender_fast_queue_pairs") > 0 or time.monotonic() > end:
                    break
                time.sleep(0.005)
            proc.send_signal(signal.SIGTERM)
            for _ in range(10_000):
                status, _, _ = post(url, "/v1/rank", json.dumps({"input": "q", "candidates": ["a", "b"]}))
                if status == 503 or time.monotonic() > end:
                    break
                time.sleep(0.005)
            assert status == 503
            assert get(url, "/ready")[0] == 503 or in_flight.done()
            status, result, _ = in_flight.result(120)
        assert status == 200 and len(result) == 3 and all(len(r["ranks"]) == 20 for r in result)
        assert proc.wait(60) == 0


@pytest.mark.slow
def test_fuse_route_selects_then_fuses_like_offline(ranker, prompts, tmp_path_factory, one_torch_thread):
    require("transformers")
    from blender_fast.fusion.fuser import Fuser
    from blender_fast.synthetic import make_fuser_checkpoint

    fuser = Fuser.from_pretrained(make_fuser_checkpoint(tmp_path_factory.mktemp("fuser") / "tiny", shape="tiny"),
                                  device="cpu", dtype="float32")
    inp, cands = prompts[1]
    top = ranker.select([inp], [cands], top_k=2, strategy="tournament")[0].top_k
    want = fuser.fuse([inp], [[cands[i] for i in top]], progress=False, num_beams=1, max_new_tokens=8)
    with live_server(BatchingEngine(ranker), fuser=fuser) as url:
        status, body, _ = post(url, "/v1/fuse", json.dumps({"input": inp, "candidates": cands, "top_k": 2,
                                                            "num_beams": 1, "max_new_tokens": 8}))
        assert status == 200 and body["top_k"] == top and body["text"] == want[0]
        assert Client(url).fuse([inp], [cands], top_k=2, num_beams=1, max_new_tokens=8) == want
        # The ranker's truncation per request (HTTP fields, Client arguments): the selection follows it.
        lengths = {"source_maxlength": 8, "candidate_maxlength": 6}
        short = [int(i) for i in ranker.select([inp], [cands], top_k=2, strategy="tournament", **lengths)[0].top_k]
        assert short != list(top)  # the setting changes the selection, so the checks below mean something
        want = fuser.fuse([inp], [[cands[i] for i in short]], progress=False, num_beams=1, max_new_tokens=8)
        status, body, _ = post(url, "/v1/fuse", json.dumps({"input": inp, "candidates": cands, "top_k": 2,
                                                            "num_beams": 1, "max_new_tokens": 8, **lengths}))
        assert status == 200 and body["top_k"] == short and body["text"] == want[0]
        assert Client(url).fuse([inp], [cands], top_k=2, num_beams=1, max_new_tokens=8, **lengths) == want


@pytest.mark.slow
def test_concurrent_fuse_requests_share_generate_batches(ranker, prompts, tmp_path_factory, one_torch_thread):
    """Fusion is batched across requests: 6 concurrent requests take fewer generate batches than requests,
    each answer equals the offline Fuser's, and /metrics counts the batches."""
    require("transformers")
    from blender_fast.fusion.fuser import Fuser
    from blender_fast.synthetic import make_fuser_checkpoint

    fuser = Fuser.from_pretrained(make_fuser_checkpoint(tmp_path_factory.mktemp("fuser") / "tiny", shape="tiny"),
                                  device="cpu", dtype="float32")
    tops = [ranker.select([inp], [cands], top_k=2, strategy="tournament")[0].top_k for inp, cands in prompts]
    want = [fuser.fuse([inp], [[cands[i] for i in top]], progress=False, num_beams=1, max_new_tokens=8)[0]
            for (inp, cands), top in zip(prompts, tops)]
    with live_server(BatchingEngine(ranker), fuser=fuser, fuse_max_batch=8, fuse_max_wait_ms=200) as url:
        bodies = [json.dumps({"input": inp, "candidates": cands, "top_k": 2, "num_beams": 1, "max_new_tokens": 8})
                  for inp, cands in prompts]
        with concurrent.futures.ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda b: post(url, "/v1/fuse", b), bodies))
        assert [a[0] for a in answers] == [200] * len(bodies)
        assert [a[1]["text"] for a in answers] == want
        text = get(url, "/metrics")[1]
        batches = metric(text, "blender_fast_fuse_batch_prompts_count")
        assert 1 <= batches < len(bodies), text
        assert metric(text, "blender_fast_fuse_batch_prompts_sum") == len(bodies)


def test_fuse_queue_full_is_429():
    """Admission of the fusion batcher: past max_queued prompts a request is refused (Overloaded -> 429)."""
    import threading as _threading

    from blender_fast.serve.engine import Overloaded
    from blender_fast.serve.fuse_batcher import FuseBatcher

    gate = _threading.Event()

    class SlowFuser:
        def fuse(self, inputs, candidates, instructions, **kw):
            gate.wait(WAIT_S)
            return [f"{i}+{len(c)}" for i, c in zip(inputs, candidates)]

    batcher = FuseBatcher(SlowFuser(), max_batch=2, max_wait_ms=0, max_queued=3)
    try:
        first = batcher.submit(["a"], [["x"]], [""])
        time.sleep(0.1)  # the first batch is running (blocked on the gate); the queue is empty again
        queued = [batcher.submit(["b", "c"], [["x"], ["y", "z"]], ["", ""])]
        with pytest.raises(Overloaded):
            batcher.submit(["d", "e"], [["x"], ["y"]], ["", ""])
        gate.set()
        assert first.result(WAIT_S) == ["a+1"] and queued[0].result(WAIT_S) == ["b+1", "c+2"]
    finally:
        gate.set()
        batcher.close()


def test_fuse_queue_full_over_http_is_429_with_retry_after_and_counted(ranker):
    """/v1/fuse's own admission as the client sees it: 429, Retry-After, the route's 429 in /metrics."""
    gate, entered = threading.Event(), threading.Event()

    class SlowFuser:
        def fuse(self, inputs, candidates, instructions, **kw):
            entered.set()
            gate.wait(WAIT_S)
            return [f"{i}+{len(c)}" for i, c in zip(inputs, candidates)]

    item = {"input": "q", "candidates": ["a", "b"], "top_k": 1}
    top = [int(i) for i in ranker.select(["q"], [["a", "b"]], top_k=1, strategy="tournament")[0].top_k]
    with live_server(BatchingEngine(ranker), fuser=SlowFuser(), fuse_max_batch=1, fuse_max_wait_ms=0,
                     fuse_max_queued=1) as url:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            try:
                first = pool.submit(post, url, "/v1/fuse", json.dumps(item))
                assert entered.wait(WAIT_S)  # its prompt is in generate: the fusion queue is empty again
                status, body, headers = post(url, "/v1/fuse", json.dumps([item, item]))  # 2 prompts > 1
            finally:
                gate.set()
            assert first.result(WAIT_S)[:2] == (200, {"text": "q+1", "top_k": top})
        assert status == 429 and "fusion queue full" in body["detail"] and int(headers["Retry-After"]) >= 1
        text = get(url, "/metrics")[1]
        assert metric(text, "blender_fast_requests_total", route="fuse", status="429") == 1
        assert metric(text, "blender_fast_requests_total", route="fuse", status="200") == 1


def test_fuse_batcher_checks_its_numbers_by_the_one_rule():
    from blender_fast.serve.fuse_batcher import FuseBatcher

    for kwargs, error in (({"max_batch": 0}, ValueError), ({"max_batch": 2.0}, TypeError),
                          ({"max_queued": True}, TypeError), ({"max_wait_ms": float("nan")}, ValueError),
                          ({"max_wait_ms": -1}, ValueError)):
        with pytest.raises(error, match=next(iter(kwargs))):
            FuseBatcher(object(), **kwargs)


def test_truncation_settings_over_http_match_the_ranker(ranker, prompts):
    inp, cands = prompts[1]
    want = ranker.rank([inp], [cands], return_scores=True, source_maxlength=8, candidate_maxlength=6)[0]
    default = ranker.rank([inp], [cands], return_scores=True)[0]
    assert not np.allclose(want, default)  # the setting changes the answer, so the check below means something
    with live_server(BatchingEngine(ranker)) as url:
        client = Client(url)
        got = client.rank([inp], [cands], return_scores=True, source_maxlength=8, candidate_maxlength=6)[0]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        sel = client.select([inp], [cands], top_k=1, source_maxlength=8, candidate_maxlength=6)[0]
        assert sel["top_k"] == ranker.select([inp], [cands], top_k=1, strategy="tournament", source_maxlength=8,
                                             candidate_maxlength=6)[0].top_k
        logit = client.compare([inp], [cands[0]], [cands[1]], source_maxlength=8, candidate_maxlength=6)
        np.testing.assert_allclose(logit, ranker.compare([inp], [cands[0]], [cands[1]], source_maxlength=8,
                                                         candidate_maxlength=6), rtol=1e-5, atol=1e-5)
        status, body, _ = post(url, "/v1/rank", json.dumps({"input": inp, "candidates": cands,
                                                            "source_maxlength": 0}))
        assert status == 422 and "source_maxlength must be >= 1, got 0" in body["detail"]


def test_serve_benchmark_summary_and_report(tmp_path):
    """The load benchmark's bookkeeping on made-up outcomes: percentiles, merged rounds, table, plot."""
    require("matplotlib")
    from benchmarks.serve import Outcome, _merge_runs, serve_md, serve_plot, summarize

    outcomes = [Outcome("rank", 200, 0.1 * (i + 1), 12) for i in range(10)] + [Outcome("select", 429, 0.01, 6)]
    one = summarize(outcomes, 2.0)
    assert one["ok"] == 10 and one["statuses"] == {"200": 10, "429": 1}
    assert one["pairs_per_s"] == 60.0 and abs(one["rank_p50_ms"] - 550.0) < 1e-6 and "select_p50_ms" not in one
    stats = {"cpu_s": 1.0, "batches": 4, "model_s": 1.5, "rows_per_batch": 3.0, "batch_fill": 0.5, "pad_fraction": 0.1}
    merged = _merge_runs([{**one, **stats}, {**one, **stats}])
    assert merged["ok"] == 20 and merged["pairs_per_s"] == 60.0 and merged["batches"] == 8
    row = {**merged, "server": "batching", "concurrency": 4, "offline_pairs_per_s": 50.0,
           "offline_cpu_ms_per_pair": 2.0, "rss_mb": 100.0}
    row.pop("outcomes")
    res = {"settings": {"overload_factor": 10, "overload_seconds": 6, "overload_queue_pairs": 600},
           "closed_loop": [row], "poisson": [{**one, "offered_rate": 5.0, "fraction": 0.5, "sent": 11, "all_p50_ms": 1.0,
                                              "all_p95_ms": 2.0, "all_p99_ms": 3.0, **stats}],
           "overload": {**one, "sent": 11, "unanswered": 0, "lost": 0, "exit_code": 0},
           "tournament_latency": {"offline_ms": 10.0, "server_ms": 11.0, "ratio": 1.1, "repeats": 3}}
    md = "\n".join(serve_md(res))
    assert "| batching | 4 | 20/22 | 60.0 | 50.0 | 120 |" in md and "lost 0" in md and "1.10x" in md
    assert serve_plot(res, tmp_path) == "serve.png" and (tmp_path / "serve.png").stat().st_size > 1000
