"""``blender-fast serve``: a thin HTTP layer (FastAPI + uvicorn) over the BatchingEngine.

Every POST takes one item or a list of items and answers with one result or a list of results, in
order. Status codes: 422 invalid request (the message names the field and item index, in the Python
API's words), 413 oversized, 429 queue full (with Retry-After), 503 draining or warming up, 504
deadline (``?timeout_ms=``). Every accepted request gets exactly one response; a client that
disconnects has its remaining rows dropped. Bodies past 64 MiB or nested past 64 levels are refused
before decoding.

Also served: the Cohere (``/v1/rerank``, ``/v2/rerank``) and TEI (``/rerank``) rerank APIs on the same
engine (rerank.py, docs/rerank.md), and ``/v1/fuse`` batched across requests (fuse_batcher.py, with
``--fuser``). /docs and /redoc load their assets from the app itself (no CDN).

The parts: schema.py (the request schema and limits), http_body.py (reading a body), metrics.py,
connections.py (slow and stalled clients), startup.py (the command: arguments, socket, uvicorn, drain).

Needs the ``serve`` extra: ``pip install 'blender-fast[serve]'``.
"""
# No `from __future__ import annotations` here: FastAPI reads the route signatures (Request, Query).

import asyncio
import json
import os
import time
from typing import Optional

import numpy as np

from ..inputs import check_prompts
from ..options import check_top_k_fits
from . import rerank
from .engine import BatchingEngine
from .fuse_batcher import DEFAULT_FUSE_MAX_BATCH, DEFAULT_FUSE_MAX_QUEUED, DEFAULT_FUSE_MAX_WAIT_MS, FuseBatcher
from .http_body import MAX_BODY_BYTES, decode_json, read_body
from .http_errors import CLIENT_CLOSED, ClientGone, error_status, framework_error_message, rerank_api, until_disconnected
from .metrics import Metrics
from .rerank import RerankSettings
from .schema import (DEFAULT_MAX_CANDIDATES, DEFAULT_MAX_REQUEST_CHARS, DEFAULT_MAX_ITEMS, DEFAULT_MAX_QUEUED_TOKENS, DEFAULT_MAX_REQUEST_TOKENS,
                     DEFAULT_MAX_TEXT_CHARS, FIELDS, RESPONSES, TRUNCATION, HTTPError, Limits, TokenGate,
                     check_options, check_sizes, item_models, parse_items, request_tokens,
                     text_chars)

# A ranker whose default length is "none" (a reward model on a tokenizer without a limit) still needs a
# maximum a request may ask: tokens per text.
UNBOUNDED_LENGTH_MAXIMUM = 2048
NO_FUSER = "this server was started without --fuser; start it with --fuser MODEL to use /v1/fuse"

__all__ = ["create_app", "error_status", "model_names", "import_serving", "HTTPError", "FIELDS", "CLIENT_CLOSED"]


def import_serving():
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"blender-fast serve needs the serve extra: pip install 'blender-fast[serve]' ({e})") from None


def _groups(items: list[dict], keys: tuple) -> dict:
    """Item indices grouped by their option values: each group is one engine call (one request)."""
    groups: dict = {}
    for p, item in enumerate(items):
        groups.setdefault(tuple(json.dumps(item[k]) for k in keys), []).append(p)
    return groups


def truncation(item: dict) -> dict:
    """The item's source_maxlength / candidate_maxlength, as engine keyword arguments."""
    return {k: item.get(k) for k in TRUNCATION}


def _validate_prompts(engine, inputs, candidates, instructions):
    check_prompts(inputs, candidates, instructions, reserved=engine.ranker.reserved_markers)


# -- the route bodies: checked items -> results -------------------------------------------------------

async def _rank(engine, items, timeout):
    from ..selection.strategies import ranks_from_scores

    inputs = [i["input"] for i in items]
    # Check every item first so that messages carry the item's index, then one engine call per policy.
    _validate_prompts(engine, inputs, [i["candidates"] for i in items], [i["instruction"] for i in items])
    out = [None] * len(items)
    for key, ps in _groups(items, ("policy",) + TRUNCATION).items():
        scores = await engine.rank([inputs[p] for p in ps], [items[p]["candidates"] for p in ps],
                                   [items[p]["instruction"] for p in ps], return_scores=True,
                                   policy=items[ps[0]]["policy"], timeout=timeout, **truncation(items[ps[0]]))
        for p, s in zip(ps, scores):
            res = {"ranks": ranks_from_scores(np.asarray(s)).tolist()}
            if items[p]["return_scores"]:
                res["scores"] = [float(x) for x in s]
            out[p] = res
    return out


async def _select(engine, items, timeout):
    for p, item in enumerate(items):
        if isinstance(item["candidates"], list):
            try:
                check_top_k_fits(item["top_k"], len(item["candidates"]), f"prompt {p}")
            except ValueError as e:
                raise HTTPError(422, str(e)) from None
    _validate_prompts(engine, [i["input"] for i in items], [i["candidates"] for i in items],
                      [i["instruction"] for i in items])
    out = [None] * len(items)
    calls = []
    for key, ps in _groups(items, ("top_k", "strategy", "orders", "seed", "policy", "worst", "budget")
                           + TRUNCATION).items():
        o = items[ps[0]]
        calls.append((ps, engine.select([items[p]["input"] for p in ps], [items[p]["candidates"] for p in ps],
                                        top_k=o["top_k"], strategy=o["strategy"], orders=o["orders"], seed=o["seed"],
                                        instructions=[items[p]["instruction"] for p in ps], policy=o["policy"],
                                        worst=o["worst"], budget=o["budget"], timeout=timeout, **truncation(o))))
    results = await asyncio.gather(*(c for _, c in calls))
    for (ps, _), sels in zip(calls, results):
        for p, s in zip(ps, sels):
            res = {"top_k": [int(i) for i in s.top_k], "comparisons": int(s.comparisons),
                   "forward_passes": int(s.forward_passes), "steps": int(s.steps)}
            if s.scores is not None:
                res["scores"] = [float(x) for x in s.scores]
            out[p] = res
    return out


async def _compare(engine, items, timeout):
    _validate_prompts(engine, [i["input"] for i in items], [[i["candidate_a"], i["candidate_b"]] for i in items],
                      [i["instruction"] for i in items])
    out = [None] * len(items)
    groups = list(_groups(items, ("mode",) + TRUNCATION).values())
    results = await asyncio.gather(*(engine.compare(
        [items[p]["input"] for p in ps], [items[p]["candidate_a"] for p in ps], [items[p]["candidate_b"] for p in ps],
        [items[p]["instruction"] for p in ps], mode=items[ps[0]]["mode"], timeout=timeout,
        **truncation(items[ps[0]])) for ps in groups))
    for ps, logits in zip(groups, results):
        for p, x in zip(ps, logits):
            out[p] = {"logit": float(x)}
    return out


async def _judge(engine, items, timeout):
    out = [None] * len(items)
    groups = list(_groups(items, ("shuffle_order", "return_scores", "temperature", "seed")).values())
    # Check every item first (completions shape and texts) so that messages carry the item's index.
    for p, i in enumerate(items):
        c = i["completions"]
        if not isinstance(c, list) or len(c) != 2:
            raise HTTPError(422, f"completions[{p}] must hold exactly 2 completions (the PairRM judge compares "
                                 f"two), got " + (str(len(c)) if isinstance(c, list) else type(c).__name__))
    _validate_prompts(engine, [i["prompt"] for i in items], [i["completions"] for i in items], None)
    results = await asyncio.gather(*(engine.judge(
        [items[p]["prompt"] for p in ps], [items[p]["completions"] for p in ps],
        shuffle_order=items[ps[0]]["shuffle_order"], return_scores=items[ps[0]]["return_scores"],
        temperature=items[ps[0]]["temperature"], seed=items[ps[0]]["seed"], timeout=timeout) for ps in groups))
    for ps, values in zip(groups, results):
        for p, v in zip(ps, values):
            if items[p]["return_scores"]:
                out[p] = {"preferred": 0 if v >= 0.5 else 1, "probability": float(v)}
            else:
                out[p] = {"preferred": int(v)}
    return out


async def _fuse(engine, items, timeout, batcher):
    if batcher is None:
        raise HTTPError(404, NO_FUSER)
    for item in items:
        item.setdefault("orders", "both")
        item.setdefault("policy", "max_logits")
        item.setdefault("worst", False)
    selected = await _select(engine, items, timeout)
    # One submission per generate setting; the batcher joins them with other requests' prompts.
    out = [None] * len(items)
    groups = list(_groups(items, ("num_beams", "max_new_tokens")).values())

    def generate(item):
        return {k: item[k] for k in ("num_beams", "max_new_tokens") if item[k] is not None}

    texts = await asyncio.gather(*(batcher.fuse(
        [items[p]["input"] for p in ps], [[items[p]["candidates"][i] for i in selected[p]["top_k"]] for p in ps],
        [items[p]["instruction"] for p in ps], **generate(items[ps[0]])) for ps in groups))
    for ps, group_texts in zip(groups, texts):
        for p, text in zip(ps, group_texts):
            out[p] = {"text": text, "top_k": selected[p]["top_k"]}
    return out


ROUTE_BODIES = {"rank": _rank, "select": _select, "compare": _compare, "judge": _judge}


# -- the app ---------------------------------------------------------------------------------------

def create_app(engine: BatchingEngine, *, fuser=None, max_candidates: int = DEFAULT_MAX_CANDIDATES,
               max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, max_items: int = DEFAULT_MAX_ITEMS,
               info: Optional[dict] = None, ready: bool = True, served_model_names=None,
               rerank_strategy: str = rerank.DEFAULT_RERANK_STRATEGY, rerank_budget: Optional[int] = None,
               fuse_max_batch: int = DEFAULT_FUSE_MAX_BATCH, fuse_max_wait_ms: float = DEFAULT_FUSE_MAX_WAIT_MS,
               fuse_max_queued: int = DEFAULT_FUSE_MAX_QUEUED, max_body_bytes: int = MAX_BODY_BYTES,
               max_source_length: Optional[int] = None, max_candidate_length: Optional[int] = None,
               max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS,
               max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS, max_request_chars: int = DEFAULT_MAX_REQUEST_CHARS):
    """The FastAPI app over an engine (which the caller owns and closes). ready=False: /ready says 503
    and POSTs are refused until ``app.state.ready = True`` (after a warm-up).

    served_model_names: the names the rerank routes' ``model`` may take (default: "blender-fast" and the
    checkpoint's path and directory name from info); rerank_strategy / rerank_budget: the top-k selection
    of a rerank request with top_n < documents, unless the request's ``blender_fast`` field says otherwise.
    fuse_*: /v1/fuse's batching across requests (prompts per generate, wait for company, prompts queued
    before 429); the app's FuseBatcher is ``app.state.fuse_batcher`` (the caller closes it).
    max_body_bytes: larger request bodies are refused (413) before they are read whole or decoded.
    max_source_length / max_candidate_length: the largest truncation lengths a request may ask (None: the
    ranker's own); max_request_tokens / max_queued_tokens: a request's estimated tokens (texts x length
    bounds) past which it gets 413, and all admitted requests' past which a new one gets 429;
    max_request_chars: a request's characters of text past which it gets 413."""
    import_serving()
    from fastapi import Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from fastapi_offline import FastAPIOffline
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .. import __version__

    # FastAPIOffline: /docs and /redoc load swagger-ui/redoc from the app (/static-offline-docs), not a CDN.
    app = FastAPIOffline(title="blender-fast", version=__version__,
                  description="PairRM ranking as a service, with continuous batching across requests and "
                              "selection steps. Each POST takes one item or a list of items.")
    metrics = Metrics(engine)
    if engine.on_batch is None:
        engine.on_batch = metrics.observe_batch
    # The ranker's own maxima (Ranker.max_source_length: the checkpoint's lengths unless raised): one rule.
    src_default, cand_default = (getattr(engine.ranker, "max_source_length", None),
                                 getattr(engine.ranker, "max_candidate_length", None))
    limits = Limits(max_items=max_items, max_candidates=max_candidates, max_text_chars=max_text_chars,
                    max_source_length=max_source_length or src_default or UNBOUNDED_LENGTH_MAXIMUM,
                    max_candidate_length=max_candidate_length or cand_default or UNBOUNDED_LENGTH_MAXIMUM,
                    max_request_tokens=max_request_tokens, max_queued_tokens=max_queued_tokens,
                    max_request_chars=max_request_chars)
    gate = TokenGate(limits)
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.ready = ready
    app.state.draining = False
    app.state.info = info or {}
    app.state.limits = limits
    app.state.token_gate = gate
    fuse_batcher = None
    if fuser is not None:
        fuse_batcher = FuseBatcher(fuser, max_batch=fuse_max_batch, max_wait_ms=fuse_max_wait_ms,
                                   max_queued=fuse_max_queued, on_batch=metrics.observe_fuse_batch)
    app.state.fuse_batcher = fuse_batcher
    schemas = item_models()
    rerank_settings = RerankSettings(model_names=model_names(served_model_names, info),
                                     strategy=rerank_strategy, budget=rerank_budget,
                                     max_documents=max_candidates, max_text_chars=max_text_chars,
                                     reserved=engine.ranker.reserved_markers, limits=limits, gate=gate)
    app.state.rerank = rerank_settings
    bodies = dict(ROUTE_BODIES, fuse=lambda e, items, t: _fuse(e, items, t, fuse_batcher))

    def body_schema(route):
        item = schemas[route].model_json_schema()
        return {"requestBody": {"required": True, "content": {"application/json": {"schema": {
            "oneOf": [item, {"type": "array", "items": item}]}}}}}

    def check_accepting(timeout_ms):
        if app.state.draining or not engine.accepting:
            raise HTTPError(503, "the server is draining (shutting down) and accepts no new requests")
        if not app.state.ready:
            raise HTTPError(503, "the server is warming up; see GET /ready", {"Retry-After": "1"})
        if timeout_ms is not None and not timeout_ms > 0:
            raise HTTPError(422, f"timeout_ms must be a positive number, got {timeout_ms}")

    async def until_done_or_gone(request, coro):
        """The coroutine's result; ClientGone (its engine rows dropped) when the client disconnects first."""
        task = asyncio.ensure_future(coro)
        watcher = asyncio.ensure_future(until_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if task not in done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise ClientGone()
        return task.result()

    def respond(route, t0, payload, status, headers):
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return JSONResponse(payload, status_code=status, headers=headers)

    async def handle_rerank(api: str, request: Request, timeout_ms: Optional[float]) -> Response:
        """A rerank route (api: cohere-v1, cohere-v2, tei): errors in that API's own shape."""
        route = {"cohere-v1": "rerank_v1", "cohere-v2": "rerank_v2", "tei": "rerank_tei"}[api]
        t0 = time.perf_counter()
        status, headers = 200, {}
        try:
            check_accepting(timeout_ms)
            data = decode_json(await read_body(request, max_body_bytes), max_body_bytes)
            timeout = None if timeout_ms is None else timeout_ms / 1000.0
            payload = await until_done_or_gone(request, rerank.answer(api, data, engine, rerank_settings, timeout))
        except Exception as e:  # noqa: BLE001  (one response per request, whatever happened)
            status, message, headers = error_status(e, timeout_ms)
            payload = rerank.error_body(api, status, message)
        return respond(route, t0, payload, status, headers)

    async def handle(route: str, request: Request, timeout_ms: Optional[float]) -> Response:
        t0 = time.perf_counter()
        status, headers = 200, {}
        try:
            check_accepting(timeout_ms)
            if route == "fuse" and fuse_batcher is None:
                raise HTTPError(404, NO_FUSER)
            data = decode_json(await read_body(request, max_body_bytes), max_body_bytes)
            items, shape = parse_items(route, data, limits.max_items)
            check_sizes(route, items, limits)
            check_options(route, items, limits)
            timeout = None if timeout_ms is None else timeout_ms / 1000.0
            with gate.admit(request_tokens(route, items, limits), text_chars(route, items)):
                results = await until_done_or_gone(request, bodies[route](engine, items, timeout))
            if shape == "trl":  # TRL's PairRMJudge.judge return value: a plain list
                payload = [r["probability"] if "probability" in r else r["preferred"] for r in results]
            else:
                payload = results[0] if shape == "one" else results
        except Exception as e:  # noqa: BLE001  (one response per request, whatever happened)
            status, message, headers = error_status(e, timeout_ms)
            payload = {"detail": message}
        return respond(route, t0, payload, status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def framework_http_error(request: Request, exc):
        api = rerank_api(request.url.path)
        if api is None:
            from fastapi.exception_handlers import http_exception_handler

            return await http_exception_handler(request, exc)
        return JSONResponse(rerank.error_body(api, exc.status_code, framework_error_message(exc)),
                            status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def framework_validation_error(request: Request, exc):
        api = rerank_api(request.url.path)
        if api is None:
            from fastapi.exception_handlers import request_validation_exception_handler

            return await request_validation_exception_handler(request, exc)
        return JSONResponse(rerank.error_body(api, 422, framework_error_message(exc)), status_code=422)

    timeout_q = Query(None, description="deadline in milliseconds; past it the request fails with 504 and "
                                        "its remaining rows are dropped")

    @app.post("/v1/rank", openapi_extra=body_schema("rank"), summary="Rank candidates (all pairs)",
              description="Full pairwise ranking, as `Ranker.rank`. Returns " + RESPONSES["rank"])
    async def rank(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle("rank", request, timeout_ms)

    @app.post("/v1/select", openapi_extra=body_schema("select"), summary="Select the top k (0-based indices)",
              description="Best-k selection with bubble / tournament / full, as `Ranker.select`. Returns "
                          + RESPONSES["select"] + ". Indices are 0-based.")
    async def select(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle("select", request, timeout_ms)

    @app.post("/v1/compare", openapi_extra=body_schema("compare"), summary="Compare two candidates",
              description="The logit that candidate_a is better, as `Ranker.compare`. Returns " + RESPONSES["compare"])
    async def compare(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle("compare", request, timeout_ms)

    @app.post("/v1/judge", openapi_extra=body_schema("judge"), summary="TRL PairRM judge",
              description="For each (prompt, [completion_0, completion_1]) as TRL's PairRMJudge. Returns "
                          + RESPONSES["judge"])
    async def judge(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle("judge", request, timeout_ms)

    # Without a fuser the route still answers, with a 404 that says how to start the server with one;
    # it is then left out of the schema (it serves nothing).
    @app.post("/v1/fuse", openapi_extra=body_schema("fuse"), summary="Select the top k and fuse them",
              description="Selects the top k with the ranker, then fuses them with the GenFuser. Returns "
                          + RESPONSES["fuse"], include_in_schema=fuser is not None)
    async def fuse(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle("fuse", request, timeout_ms)

    rerank_bodies = rerank.openapi_bodies()
    rerank_doc = (" The query is the PairRM input and the documents its candidates; top_n < documents runs a "
                  "top-k selection (the extension field `blender_fast: {strategy, budget, source_maxlength, "
                  "candidate_maxlength}` overrides the server's), else a full ranking. See docs/rerank.md.")

    @app.post("/v1/rerank", openapi_extra=rerank_bodies["cohere-v1"], summary="Cohere v1 rerank", tags=["rerank"],
              description="Cohere's v1 rerank: `{model?, query, documents (strings or {text}), top_n?, "
                          "return_documents?}` -> `{id, results: [{index, relevance_score, document?}], meta}`, "
                          "best first; errors `{message}`." + rerank_doc)
    async def rerank_v1(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle_rerank("cohere-v1", request, timeout_ms)

    @app.post("/v2/rerank", openapi_extra=rerank_bodies["cohere-v2"], summary="Cohere v2 rerank", tags=["rerank"],
              description="Cohere's v2 rerank: `{model, query, documents (strings), top_n?, max_tokens_per_doc?}` "
                          "-> `{id, results: [{index, relevance_score}], meta}`, best first; errors `{message}`."
                          + rerank_doc)
    async def rerank_v2(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle_rerank("cohere-v2", request, timeout_ms)

    @app.post("/rerank", openapi_extra=rerank_bodies["tei"], summary="TEI rerank", tags=["rerank"],
              description="text-embeddings-inference's rerank: `{query, texts, raw_scores?, return_text?, "
                          "truncate?, truncation_direction?}` -> `[{index, score, text?}]`, best first (a full "
                          "ranking); errors `{error, error_type}`. score: relevance in [0, 1], or with raw_scores "
                          "the PairRM aggregate." + rerank_doc)
    async def rerank_tei(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle_rerank("tei", request, timeout_ms)

    @app.get("/health", summary="Alive")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="Model loaded and warmed up, and not draining")
    async def ready_route():
        if app.state.draining or not engine.accepting:
            return JSONResponse({"ready": False, "reason": "draining"}, status_code=503)
        if not app.state.ready:
            return JSONResponse({"ready": False, "reason": "warming up"}, status_code=503)
        return {"ready": True, **app.state.info}

    @app.get("/metrics", summary="Prometheus metrics")
    async def metrics_route():
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type=CONTENT_TYPE_LATEST)

    return app


def model_names(served_model_names, info: Optional[dict]) -> tuple:
    """The names a rerank request's ``model`` may take."""
    if served_model_names:
        return tuple(served_model_names)
    names = ["blender-fast"]
    model = (info or {}).get("model")
    if model:
        names += [str(model), os.path.basename(str(model).rstrip("/"))]
    return tuple(dict.fromkeys(names))
