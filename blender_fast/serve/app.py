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

Needs the ``serve`` extra: ``pip install 'blender-fast[serve]'``.
"""
# No `from __future__ import annotations` here: FastAPI reads the route signatures (Request, Query).

import asyncio
import errno
import json
import re
import signal
import socket
import sys
import threading
import time
from typing import Optional

import numpy as np

from ..model.checkpoint import SPECIAL_TOKENS
from ..options import (check_budget, check_optional_count, check_optional_seed, check_seed, check_temperature,
                       check_top_k)
from ..selection.steps import ModelOutputError
from . import rerank
from .fuse_batcher import DEFAULT_FUSE_MAX_BATCH, DEFAULT_FUSE_MAX_QUEUED, DEFAULT_FUSE_MAX_WAIT_MS, FuseBatcher
from .rerank import RerankError, RerankSettings
from .engine import (DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MAX_QUEUED_PAIRS, DEFAULT_MAX_ROWS_PER_REQUEST,
                     DEFAULT_MAX_WAIT_MS, BatchingEngine, DeadlineExceeded, EngineClosed, Overloaded)

DEFAULT_MAX_CANDIDATES = 64
DEFAULT_MAX_TEXT_CHARS = 32768
DEFAULT_MAX_ITEMS = 256
DRAIN_TIMEOUT_S = 60.0
CLIENT_CLOSED = 499  # nginx's "client closed request": logged in /metrics, never read by anyone

ROUTES = ("rank", "select", "compare", "judge", "fuse")


def _import_serving():
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ImportError(f"blender-fast serve needs the serve extra: pip install 'blender-fast[serve]' ({e})") from None


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


# -- request items: field -> (type check, default) ---------------------------------------------------

_REQUIRED = object()
# Each route's item fields and defaults. Types are checked by the engine (check_prompts) for the texts,
# so that the messages are the Python API's; the options are checked here.
FIELDS = {
    "rank": {"instruction": "", "input": _REQUIRED, "candidates": _REQUIRED, "return_scores": False,
             "policy": "max_logits"},
    "select": {"instruction": "", "input": _REQUIRED, "candidates": _REQUIRED, "top_k": 1,
               "strategy": "tournament", "orders": "both", "seed": 0, "policy": "max_logits", "worst": False,
               "budget": None},
    "compare": {"instruction": "", "input": _REQUIRED, "candidate_a": _REQUIRED, "candidate_b": _REQUIRED,
                "mode": "[A,B]+[B,A]"},
    "judge": {"prompt": _REQUIRED, "completions": _REQUIRED, "shuffle_order": True, "return_scores": False,
              "temperature": 1.0, "seed": None},
    "fuse": {"instruction": "", "input": _REQUIRED, "candidates": _REQUIRED, "top_k": 3,
             "strategy": "tournament", "seed": 0, "budget": None, "num_beams": None, "max_new_tokens": None},
}
# The ranker's truncation (tokens of the source / of each candidate) per item: None = the ranker's own.
TRUNCATION = ("source_maxlength", "candidate_maxlength")
for _route in ("rank", "select", "compare", "fuse"):
    FIELDS[_route].update(dict.fromkeys(TRUNCATION))
# Which field of an item each Python-API argument name stands for, in messages about a missing field.
_API_NAME = {"input": "inputs", "candidates": "candidates", "instruction": "instructions", "prompt": "prompts",
             "completions": "completions", "candidate_a": "candidates_a", "candidate_b": "candidates_b"}


def _schemas():
    """Pydantic models of the items, for the OpenAPI schema and docs page only (requests are checked by
    hand so that errors carry the Python API's messages)."""
    from typing import List, Literal, Optional as Opt

    from pydantic import BaseModel, Field

    from ..options import COMPARE_MODES, MAX_BUDGET, MAX_SEED, MAX_TOP_K, ORDERS, POLICIES, STRATEGIES

    class RankItem(BaseModel):
        instruction: str = Field("", description="prepended to input with no separator, as llm-blender")
        input: str
        candidates: List[str] = Field(..., description="the texts to rank")
        return_scores: bool = Field(False, description="also return the per-candidate scores (higher = better)")
        policy: Literal[POLICIES] = "max_logits"  # type: ignore[valid-type]

    class SelectItem(BaseModel):
        instruction: str = ""
        input: str
        candidates: List[str]
        top_k: int = Field(1, ge=1, le=MAX_TOP_K, description="how many to select")
        strategy: Literal[STRATEGIES] = "tournament"  # type: ignore[valid-type]
        orders: Literal[ORDERS] = "both"  # type: ignore[valid-type]
        seed: int = Field(0, ge=0, le=MAX_SEED, description="seed of the starting arrangement (bubble / tournament)")
        policy: Literal[POLICIES] = "max_logits"  # type: ignore[valid-type]
        worst: bool = Field(False, description="select the worst k instead")
        budget: Opt[int] = Field(None, ge=1, le=MAX_BUDGET, description="swiss / knockout_rr / adaptive: forward passes per "
                                 "item they never exceed (default 4(n-1))")

    class CompareItem(BaseModel):
        instruction: str = ""
        input: str
        candidate_a: str
        candidate_b: str
        mode: Literal[COMPARE_MODES] = "[A,B]+[B,A]"  # type: ignore[valid-type]

    class JudgeItem(BaseModel):
        prompt: str
        completions: List[str] = Field(..., min_length=2, max_length=2, description="[completion_0, completion_1]")
        shuffle_order: bool = Field(True, description="rank each pair in a random order (TRL's default)")
        return_scores: bool = Field(False, description="return the probability that completion 0 is better")
        temperature: float = Field(1.0, gt=0)
        seed: Opt[int] = Field(None, ge=0, le=MAX_SEED, description="seed of shuffle_order's coin flips")

    class FuseItem(BaseModel):
        instruction: str = ""
        input: str
        candidates: List[str]
        top_k: int = Field(3, ge=1, le=MAX_TOP_K, description="candidates selected and fused")
        strategy: Literal[STRATEGIES] = "tournament"  # type: ignore[valid-type]
        seed: int = Field(0, ge=0, le=MAX_SEED)
        budget: Opt[int] = Field(None, ge=1, le=MAX_BUDGET, description="swiss / knockout_rr / adaptive: forward passes per item")
        num_beams: Opt[int] = None
        max_new_tokens: Opt[int] = None

    class Truncation(BaseModel):
        source_maxlength: Opt[int] = Field(None, ge=1, description="tokens kept of instruction+input (None: the "
                                           "ranker's)")
        candidate_maxlength: Opt[int] = Field(None, ge=1, description="tokens kept of each candidate")

    RankItem, SelectItem, CompareItem, FuseItem = (type(m.__name__, (m, Truncation), {})
                                                   for m in (RankItem, SelectItem, CompareItem, FuseItem))
    return {"rank": RankItem, "select": SelectItem, "compare": CompareItem, "judge": JudgeItem, "fuse": FuseItem}


RESPONSES = {
    "rank": "`{ranks: [int] (1 = best, ties share the better rank), scores?: [float]}` per item",
    "select": "`{top_k: [int] (0-based candidate indices, best first), comparisons, forward_passes, steps, "
              "scores?}` per item",
    "compare": "`{logit: float}` per item: > 0 means candidate_a is better",
    "judge": "`{preferred: 0|1}` per item (0-based index of the better completion); with return_scores also "
             "`probability`: that completion 0 is better, softmax(scores / temperature)[0] (TRL's PairRMJudge). "
             "The body may also be TRL's call, `{prompts, completions, shuffle_order?, return_scores?, "
             "temperature?}`, answered with TRL's return value: a list of indices or probabilities",
    "fuse": "`{text: str, top_k: [int] (0-based)}` per item",
}


MAX_JSON_DEPTH = 64  # the deepest request shape is 4 levels; anything far deeper is garbage or an attack
MAX_BODY_BYTES = 64 * 2**20
# A JSON string (escapes included) or one bracket: strings are skipped so brackets inside texts don't count.
_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth_exceeds(body: bytes, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the body's arrays/objects nest deeper than limit, found by a scan before decoding:
    json.loads recurses once per level and a 100k-deep ``[[[...]]]`` ends in RecursionError."""
    depth = 0
    for m in _JSON_TOKENS.finditer(body):
        c = m.group()[:1]
        if c in (b"[", b"{"):
            depth += 1
            if depth > limit:
                return True
        elif c in (b"]", b"}"):
            depth -= 1
    return False


async def read_body(request, max_bytes: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it (or its declared Content-Length) passes max_bytes,
    so that an oversized body is never held whole in memory."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise HTTPError(413, f"the request body has {declared} bytes; this server accepts at most {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise HTTPError(413, f"the request body has more than {max_bytes} bytes; this server accepts at most "
                                 f"{max_bytes}")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_json(body: bytes, max_bytes: int = MAX_BODY_BYTES):
    """The decoded body; HTTPError 413 past max_bytes, 422 when nested too deeply or not JSON."""
    if len(body) > max_bytes:
        raise HTTPError(413, f"the request body has {len(body)} bytes; this server accepts at most {max_bytes}")
    if json_depth_exceeds(body):
        raise HTTPError(422, f"the request body nests arrays/objects more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise HTTPError(422, f"the request body is not valid JSON: {e}") from None
    except RecursionError:  # the depth scan should have caught it; never a 500 for a malformed body
        raise HTTPError(422, "the request body nests arrays/objects too deeply") from None


def _parse_items(route: str, body: bytes, max_items: int, max_body_bytes: int = MAX_BODY_BYTES
                 ) -> tuple[list[dict], str]:
    """The body as a list of items with defaults filled in, and its shape: "one" (a single item),
    "list" (a list of items) or "trl" (TRL's batch judge call)."""
    data = decode_json(body, max_body_bytes)
    if route == "judge" and isinstance(data, dict) and "prompts" in data:
        return _trl_judge_items(data), "trl"
    single = isinstance(data, dict)
    items = [data] if single else data
    if not isinstance(items, list) or not items:
        raise HTTPError(422, "the request body must be one item (a JSON object) or a non-empty list of items")
    if len(items) > max_items:
        raise HTTPError(413, f"{len(items)} items in one request; this server accepts at most {max_items}")
    fields = FIELDS[route]
    out = []
    for p, item in enumerate(items):
        if not isinstance(item, dict):
            raise HTTPError(422, f"item {p} must be a JSON object, got {type(item).__name__}")
        unknown = sorted(set(item) - set(fields))
        if unknown:
            raise HTTPError(422, f"item {p}: unknown field {unknown[0]!r}; the fields of /v1/{route} are "
                                 f"{', '.join(fields)}")
        full = {}
        for name, default in fields.items():
            if name in item:
                full[name] = item[name]
            elif default is _REQUIRED:
                raise HTTPError(422, f"item {p}: missing field {name!r}")
            else:
                full[name] = default
        out.append(full)
    return out, "one" if single else "list"


TRL_JUDGE_FIELDS = ("prompts", "completions", "shuffle_order", "return_scores", "temperature", "seed")


def _trl_judge_items(data: dict) -> list[dict]:
    """TRL's call shape, ``{prompts: [...], completions: [[c0, c1], ...], shuffle_order?, return_scores?,
    temperature?}``, as judge items sharing the options."""
    unknown = sorted(set(data) - set(TRL_JUDGE_FIELDS))
    if unknown:
        raise HTTPError(422, f"unknown field {unknown[0]!r}; a batch judge request has the fields "
                             f"{', '.join(TRL_JUDGE_FIELDS)}")
    prompts, completions = data.get("prompts"), data.get("completions")
    if not isinstance(prompts, list) or not isinstance(completions, list):
        raise HTTPError(422, "prompts and completions must be lists (completions: one [completion_0, "
                             "completion_1] pair per prompt)")
    if len(prompts) != len(completions):
        raise HTTPError(422, f"got {len(prompts)} prompts but {len(completions)} completion pairs")
    if not prompts:
        raise HTTPError(422, "prompts is empty")
    options = {k: data.get(k, FIELDS["judge"][k]) for k in ("shuffle_order", "return_scores", "temperature", "seed")}
    return [{"prompt": p, "completions": c, **options} for p, c in zip(prompts, completions)]


# Per route: the single-text fields and the list-of-texts field that the size limits (413) apply to.
SIZED_FIELDS = {
    "rank": (("input", "instruction"), "candidates"),
    "select": (("input", "instruction"), "candidates"),
    "fuse": (("input", "instruction"), "candidates"),
    "compare": (("input", "instruction", "candidate_a", "candidate_b"), None),
    "judge": (("prompt",), "completions"),
}


def _check_sizes(items: list[dict], text_fields: tuple, list_field: Optional[str], max_candidates: int,
                 max_text_chars: int) -> None:
    """413 for requests past the server's limits (types are the engine's business: it names them)."""
    for p, item in enumerate(items):
        if list_field and isinstance(item[list_field], list) and len(item[list_field]) > max_candidates:
            raise HTTPError(413, f"{list_field}[{p}] has {len(item[list_field])} entries; this server accepts "
                                 f"at most {max_candidates} (--max-candidates)")
        texts = [(f, item[f]) for f in text_fields]
        if list_field and isinstance(item[list_field], list):
            texts += [(f"{list_field}[{p}][{c}]", t) for c, t in enumerate(item[list_field])]
        for name, text in texts:
            if isinstance(text, str) and len(text) > max_text_chars:
                where = name if "[" in name else f"{_API_NAME.get(name, name)}[{p}]"
                raise HTTPError(413, f"{where} has {len(text)} characters; this server accepts at most "
                                     f"{max_text_chars} (--max-text-chars)")


def _option(items: list[dict], p: int, name: str, kinds: tuple, check=None):
    value = items[p][name]
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise HTTPError(422, f"item {p}: {name} must be {' or '.join(k.__name__ for k in kinds)}, got "
                             f"{json.dumps(value)}")
    if check is not None and value is not None and not check(value):
        raise HTTPError(422, f"item {p}: {name} = {json.dumps(value)} is out of range")
    return value


def _checked(items: list[dict], p: int, name: str, check):
    """items[p][name] through one of options.py's checks (the Python API's): 422 with its message."""
    try:
        return check(items[p][name])
    except (TypeError, ValueError) as e:
        raise HTTPError(422, f"item {p}: {e}") from None


def _groups(items: list[dict], keys: tuple) -> dict:
    """Item indices grouped by their option values: each group is one engine call (one request)."""
    groups: dict = {}
    for p, item in enumerate(items):
        groups.setdefault(tuple(json.dumps(item[k]) for k in keys), []).append(p)
    return groups


# -- the route bodies: items -> results ---------------------------------------------------------------

async def _rank(engine, items, timeout):
    for p in range(len(items)):
        _option(items, p, "return_scores", (bool,))
    inputs = [i["input"] for i in items]
    # Check every item first so that messages carry the item's index, then one engine call per policy.
    _validate_prompts(engine, inputs, [i["candidates"] for i in items], [i["instruction"] for i in items])
    out = [None] * len(items)
    for key, ps in _groups(items, ("policy",) + TRUNCATION).items():
        scores = await engine.rank([inputs[p] for p in ps], [items[p]["candidates"] for p in ps],
                                   [items[p]["instruction"] for p in ps], return_scores=True,
                                   policy=items[ps[0]]["policy"], timeout=timeout, **truncation(items[ps[0]]))
        from ..selection.strategies import ranks_from_scores

        for p, s in zip(ps, scores):
            res = {"ranks": ranks_from_scores(np.asarray(s)).tolist()}
            if items[p]["return_scores"]:
                res["scores"] = [float(x) for x in s]
            out[p] = res
    return out


def truncation(item: dict) -> dict:
    """The item's source_maxlength / candidate_maxlength, as engine keyword arguments."""
    return {k: item.get(k) for k in TRUNCATION}


def _validate_prompts(engine, inputs, candidates, instructions):
    from ..inputs import check_prompts

    check_prompts(inputs, candidates, instructions, reserved=engine.ranker.reserved_markers)


def _select_checks(items):
    for p in range(len(items)):
        top_k = _checked(items, p, "top_k", check_top_k)
        _checked(items, p, "seed", check_seed)
        if "worst" in items[p]:
            _option(items, p, "worst", (bool,))
        _checked(items, p, "budget", check_budget)
        cands = items[p]["candidates"]
        if isinstance(cands, list) and top_k > len(cands):
            raise HTTPError(422, f"top_k = {top_k} exceeds the {len(cands)} candidates of prompt {p}")


async def _select(engine, items, timeout):
    _select_checks(items)
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
    for p in range(len(items)):
        _option(items, p, "shuffle_order", (bool,))
        _option(items, p, "return_scores", (bool,))
        _checked(items, p, "temperature", check_temperature)
        _checked(items, p, "seed", check_optional_seed)
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
    _select_checks(items)
    for p in range(len(items)):
        _checked(items, p, "num_beams", lambda v: check_optional_count("num_beams", v))
        _checked(items, p, "max_new_tokens", lambda v: check_optional_count("max_new_tokens", v))
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


# -- metrics ---------------------------------------------------------------------------------------

class Metrics:
    """The Prometheus series of one app, in its own registry (several apps may share a process)."""

    def __init__(self, engine: BatchingEngine):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("blender_fast_requests", "HTTP requests by route and status", ["route", "status"],
                                registry=r)
        self.latency = Histogram("blender_fast_request_seconds", "Request latency by route", ["route"], registry=r,
                                 buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60))
        q_pairs = Gauge("blender_fast_queue_pairs", "Model rows admitted and not yet run", registry=r)
        q_pairs.set_function(lambda: engine.queued_pairs)
        q_tokens = Gauge("blender_fast_queue_tokens", "Tokens held by requests in flight", registry=r)
        q_tokens.set_function(lambda: engine.queued_tokens)
        in_flight = Gauge("blender_fast_requests_in_flight", "Engine requests admitted and not yet answered",
                          registry=r)
        in_flight.set_function(lambda: engine.in_flight)
        self.batch_rows = Histogram("blender_fast_batch_rows", "Rows per model call", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.batch_tokens = Histogram("blender_fast_batch_tokens", "Padded tokens per model call", registry=r,
                                      buckets=(256, 512, 1024, 2048, 4096, 8192, 16384, 32768))
        self.batch_pad = Histogram("blender_fast_batch_pad_fraction", "Pad tokens / padded tokens per model call",
                                   registry=r, buckets=(0, .05, .1, .2, .3, .4, .5, .75, 1))
        self.model_seconds = Counter("blender_fast_model_seconds", "Seconds spent in the model", registry=r)
        self.forward_passes = Counter("blender_fast_forward_passes", "Model rows run (one per ordered pair)",
                                      registry=r)
        self.batches = Counter("blender_fast_batches", "Model calls", registry=r)
        self.tokens = Counter("blender_fast_tokens", "Real tokens run through the model", registry=r)
        self.pad_tokens = Counter("blender_fast_pad_tokens", "Pad tokens run through the model", registry=r)
        self.fuse_batch_prompts = Histogram("blender_fast_fuse_batch_prompts", "Prompts per fusion generate batch",
                                            registry=r, buckets=(1, 2, 4, 8, 16, 32, 64))
        self.fuse_batch_requests = Histogram("blender_fast_fuse_batch_requests",
                                             "Requests sharing one fusion generate batch", registry=r,
                                             buckets=(1, 2, 4, 8, 16, 32, 64))
        self.fuse_seconds = Counter("blender_fast_fuse_seconds", "Seconds spent in fusion generate", registry=r)

    def observe_fuse_batch(self, prompts: int, requests: int, seconds: float) -> None:
        self.fuse_batch_prompts.observe(prompts)
        self.fuse_batch_requests.observe(requests)
        self.fuse_seconds.inc(seconds)

    def observe_batch(self, rows: int, tokens: int, pad: int, seconds: float) -> None:
        self.batch_rows.observe(rows)
        self.batch_tokens.observe(tokens + pad)
        self.batch_pad.observe(pad / (tokens + pad) if tokens + pad else 0.0)
        self.model_seconds.inc(seconds)
        self.forward_passes.inc(rows)
        self.batches.inc()
        self.tokens.inc(tokens)
        self.pad_tokens.inc(pad)


# -- the app ---------------------------------------------------------------------------------------

async def _until_disconnected(request) -> None:
    for _ in range(10**9):  # bounded only by the connection: each receive waits for a message
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _ClientGone(Exception):
    pass


def error_status(e: BaseException, timeout_ms=None) -> tuple[int, str, dict]:
    """(status, message, headers) of an exception raised while answering a request."""
    if isinstance(e, HTTPError):
        return e.status, str(e), e.headers
    if isinstance(e, RerankError):
        return e.status, str(e), {}
    if isinstance(e, ModelOutputError):  # a ValueError, but the server's model is at fault, not the request
        return 500, str(e), {}
    if isinstance(e, (ValueError, TypeError)):
        return 422, str(e), {}
    if isinstance(e, Overloaded):
        return 429, str(e), {"Retry-After": str(int(e.retry_after))}
    if isinstance(e, DeadlineExceeded):
        return 504, f"deadline exceeded ({timeout_ms} ms): {e}", {}
    if isinstance(e, EngineClosed):
        return 503, str(e), {}
    if isinstance(e, _ClientGone):
        return CLIENT_CLOSED, "client closed the request", {}
    return 500, f"{type(e).__name__}: {e}", {}


def create_app(engine: BatchingEngine, *, fuser=None, max_candidates: int = DEFAULT_MAX_CANDIDATES,
               max_text_chars: int = DEFAULT_MAX_TEXT_CHARS, max_items: int = DEFAULT_MAX_ITEMS,
               info: Optional[dict] = None, ready: bool = True, served_model_names=None,
               rerank_strategy: str = rerank.DEFAULT_RERANK_STRATEGY, rerank_budget: Optional[int] = None,
               fuse_max_batch: int = DEFAULT_FUSE_MAX_BATCH, fuse_max_wait_ms: float = DEFAULT_FUSE_MAX_WAIT_MS,
               fuse_max_queued: int = DEFAULT_FUSE_MAX_QUEUED, max_body_bytes: int = MAX_BODY_BYTES):
    """The FastAPI app over an engine (which the caller owns and closes). ready=False: /ready says 503
    and POSTs are refused until ``app.state.ready = True`` (after a warm-up).

    served_model_names: the names the rerank routes' ``model`` may take (default: "blender-fast" and the
    checkpoint's path and directory name from info); rerank_strategy / rerank_budget: the top-k selection
    of a rerank request with top_n < documents, unless the request's ``blender_fast`` field says otherwise.
    fuse_*: /v1/fuse's batching across requests (prompts per generate, wait for company, prompts queued
    before 429); the app's FuseBatcher is ``app.state.fuse_batcher`` (the caller closes it).
    max_body_bytes: larger request bodies are refused (413) before they are read whole or decoded."""
    _import_serving()
    from fastapi import Query, Request
    from fastapi_offline import FastAPIOffline
    from fastapi.responses import JSONResponse, PlainTextResponse, Response
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from .. import __version__

    # FastAPIOffline: /docs and /redoc load swagger-ui/redoc from the app (/static-offline-docs), not a CDN.
    app = FastAPIOffline(title="blender-fast", version=__version__,
                  description="PairRM ranking as a service, with continuous batching across requests and "
                              "selection steps. Each POST takes one item or a list of items.")
    metrics = Metrics(engine)
    if engine.on_batch is None:
        engine.on_batch = metrics.observe_batch
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.ready = ready
    app.state.draining = False
    app.state.info = info or {}
    fuse_batcher = None
    if fuser is not None:
        fuse_batcher = FuseBatcher(fuser, max_batch=fuse_max_batch, max_wait_ms=fuse_max_wait_ms,
                                   max_queued=fuse_max_queued, on_batch=metrics.observe_fuse_batch)
    app.state.fuse_batcher = fuse_batcher
    schemas = _schemas()
    rerank_settings = RerankSettings(model_names=model_names(served_model_names, info),
                                     strategy=rerank_strategy, budget=rerank_budget,
                                     max_documents=max_candidates, max_text_chars=max_text_chars,
                                     reserved=engine.ranker.reserved_markers)
    app.state.rerank = rerank_settings

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
        """The coroutine's result; _ClientGone (its engine rows dropped) when the client disconnects first."""
        task = asyncio.ensure_future(coro)
        watcher = asyncio.ensure_future(_until_disconnected(request))
        try:
            done, _ = await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
        if task not in done:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise _ClientGone()
        return task.result()

    async def handle_rerank(api: str, request: Request, timeout_ms: Optional[float]) -> Response:
        """A rerank route (api: cohere-v1, cohere-v2, tei): errors in that API's own shape."""
        route = {"cohere-v1": "rerank_v1", "cohere-v2": "rerank_v2", "tei": "rerank_tei"}[api]
        t0 = time.perf_counter()
        status, headers = 200, {}
        try:
            check_accepting(timeout_ms)
            data = decode_json(await read_body(request, max_body_bytes), max_body_bytes)
            req = (rerank.parse_tei(data, rerank_settings) if api == "tei"
                   else rerank.parse_cohere(data, int(api[-1]), rerank_settings))
            timeout = None if timeout_ms is None else timeout_ms / 1000.0
            ranked = await until_done_or_gone(request, rerank.run_rerank(engine, req, timeout))
            payload = (rerank.tei_response(req, ranked) if api == "tei"
                       else rerank.cohere_response(req, ranked, int(api[-1])))
        except Exception as e:  # noqa: BLE001  (one response per request, whatever happened)
            status, message, headers = error_status(e, timeout_ms)
            payload = rerank.error_body(api, status, message)
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return JSONResponse(payload, status_code=status, headers=headers)

    async def handle(route: str, request: Request, timeout_ms: Optional[float], fn) -> Response:
        t0 = time.perf_counter()
        status, headers = 200, {}
        try:
            check_accepting(timeout_ms)
            items, shape = _parse_items(route, await read_body(request, max_body_bytes), max_items, max_body_bytes)
            if len(items) > max_items:
                raise HTTPError(413, f"{len(items)} items in one request; this server accepts at most {max_items}")
            _check_sizes(items, *SIZED_FIELDS[route], max_candidates, max_text_chars)
            timeout = None if timeout_ms is None else timeout_ms / 1000.0
            results = await until_done_or_gone(request, fn(items, timeout))
            if shape == "trl":  # TRL's PairRMJudge.judge return value: a plain list
                payload = [r["probability"] if "probability" in r else r["preferred"] for r in results]
            else:
                payload = results[0] if shape == "one" else results
        except Exception as e:  # noqa: BLE001  (one response per request, whatever happened)
            status, message, headers = error_status(e, timeout_ms)
            payload = {"detail": message}
        metrics.requests.labels(route, str(status)).inc()
        metrics.latency.labels(route).observe(time.perf_counter() - t0)
        return JSONResponse(payload, status_code=status, headers=headers)

    timeout_q = Query(None, description="deadline in milliseconds; past it the request fails with 504 and "
                                        "its remaining rows are dropped")

    @app.post("/v1/rank", openapi_extra=body_schema("rank"), summary="Rank candidates (all pairs)",
              description="Full pairwise ranking, as `Ranker.rank`. Returns " + RESPONSES["rank"])
    async def rank(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle("rank", request, timeout_ms, lambda items, t: _rank(engine, items, t))

    @app.post("/v1/select", openapi_extra=body_schema("select"), summary="Select the top k (0-based indices)",
              description="Best-k selection with bubble / tournament / full, as `Ranker.select`. Returns "
                          + RESPONSES["select"] + ". Indices are 0-based.")
    async def select(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle("select", request, timeout_ms, lambda items, t: _select(engine, items, t))

    @app.post("/v1/compare", openapi_extra=body_schema("compare"), summary="Compare two candidates",
              description="The logit that candidate_a is better, as `Ranker.compare`. Returns " + RESPONSES["compare"])
    async def compare(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle("compare", request, timeout_ms, lambda items, t: _compare(engine, items, t))

    @app.post("/v1/judge", openapi_extra=body_schema("judge"), summary="TRL PairRM judge",
              description="For each (prompt, [completion_0, completion_1]) as TRL's PairRMJudge. Returns "
                          + RESPONSES["judge"])
    async def judge(request: Request, timeout_ms: Optional[float] = timeout_q):
        return await handle("judge", request, timeout_ms, lambda items, t: _judge(engine, items, t))

    if fuser is not None:
        @app.post("/v1/fuse", openapi_extra=body_schema("fuse"), summary="Select the top k and fuse them",
                  description="Selects the top k with the ranker, then fuses them with the GenFuser. Returns "
                              + RESPONSES["fuse"])
        async def fuse(request: Request, timeout_ms: Optional[float] = timeout_q):
            return await handle("fuse", request, timeout_ms,
                                lambda items, t: _fuse(engine, items, t, fuse_batcher))

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
        import os

        names += [str(model), os.path.basename(str(model).rstrip("/"))]
    return tuple(dict.fromkeys(names))


# -- the command -----------------------------------------------------------------------------------

def add_serve_parser(subparsers) -> None:
    """``blender-fast serve``: the CLI calls this from build_parser."""
    from ..options import STRATEGIES, HelpFormatter, add_engine_options, int_argument, number_argument
    from .rerank import DEFAULT_RERANK_STRATEGY

    positive_int = int_argument(1)

    p = subparsers.add_parser("serve", help="serve PairRM over HTTP with continuous batching (needs [serve])",
                              description="Serve PairRM over HTTP (JSON under /v1, /health, /ready, /metrics, "
                                          "/docs) with continuous batching across requests and selection steps.",
                              formatter_class=HelpFormatter)
    p.add_argument("--model", "--ranker", dest="model", required=True,
                   help="Hugging Face Hub id (llm-blender/PairRM), PairRM checkpoint directory, or demo:tiny / "
                        "demo:xsmall (random weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback by default)")
    p.add_argument("--port", type=int_argument(0, 65535), default=8000,
                   help="0 = any free port (the startup line says which)")
    add_engine_options(p)
    p.add_argument("--fuser", default=None, help="GenFuser checkpoint directory: enables POST /v1/fuse")
    p.add_argument("--max-batch-tokens", type=positive_int, default=DEFAULT_MAX_BATCH_TOKENS,
                   help="real tokens one scheduler iteration runs (all its model calls together)")
    p.add_argument("--max-wait-ms", type=number_argument(0), default=DEFAULT_MAX_WAIT_MS,
                   help="when idle, how long a new request waits for others to share its batch")
    p.add_argument("--max-queued-pairs", type=positive_int, default=DEFAULT_MAX_QUEUED_PAIRS,
                   help="model rows admitted but not yet run; beyond it requests get 429")
    p.add_argument("--max-rows-per-request", type=positive_int, default=DEFAULT_MAX_ROWS_PER_REQUEST,
                   help="most rows one request contributes to one iteration (fairness)")
    p.add_argument("--max-candidates", type=positive_int, default=DEFAULT_MAX_CANDIDATES,
                   help="candidates per item; beyond it 413")
    p.add_argument("--max-text-chars", type=positive_int, default=DEFAULT_MAX_TEXT_CHARS,
                   help="characters per text; beyond it 413")
    p.add_argument("--fuse-max-batch", type=positive_int, default=DEFAULT_FUSE_MAX_BATCH,
                   help="/v1/fuse: prompts of concurrent requests run in one generate batch")
    p.add_argument("--fuse-max-wait-ms", type=number_argument(0), default=DEFAULT_FUSE_MAX_WAIT_MS,
                   help="/v1/fuse: how long a fusion batch waits for other requests to join")
    p.add_argument("--fuse-max-queued", type=positive_int, default=DEFAULT_FUSE_MAX_QUEUED,
                   help="/v1/fuse: prompts waiting for generate; beyond it requests get 429")
    p.add_argument("--served-model-name", action="append", default=None, metavar="NAME",
                   help="a name the rerank routes' `model` field may take (repeatable; default: blender-fast and "
                        "the checkpoint's path and directory name)")
    p.add_argument("--rerank-strategy", choices=STRATEGIES, default=DEFAULT_RERANK_STRATEGY,
                   help="rerank with top_n < documents: the top-k selection strategy")
    p.add_argument("--rerank-budget", type=positive_int, default=None,
                   help="rerank: forward passes per request for swiss / knockout_rr / adaptive")
    p.add_argument("--no-cross-request-batching", action="store_true",
                   help="run one request per model call (for comparison only)")
    p.set_defaults(func=cmd_serve)


def listening_socket(host: str, port: int) -> socket.socket:
    """A bound TCP socket (port 0: the OS picks one; getsockname() says which).

    proto must be IPPROTO_TCP: asyncio turns on TCP_NODELAY only for sockets that say so, and without
    it a keep-alive client waits ~40 ms per response (Nagle against delayed ACKs, headers and body
    being two writes). TCP_NODELAY on the listening socket is inherited by accepted ones on Linux."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:  # port in use, address not on this machine, a privileged port ...
        sock.close()
        raise ListenError(f"cannot listen on {host}:{port}: {e.strerror or e}"
                          + (" (another process holds the port; pick another --port)" if e.errno == errno.EADDRINUSE else "")) from None
    return sock


class ListenError(RuntimeError):
    """The server cannot bind its address (one line for the CLI, naming host:port)."""


def _runtime_name(model) -> str:
    session = getattr(model, "session", None)
    if session is not None:
        import onnxruntime as ort

        return f"onnxruntime {ort.__version__} {session.get_providers()[0]}"
    import torch

    return f"torch {torch.__version__}"


def cmd_serve(args) -> int:
    _import_serving()
    import uvicorn

    from ..synthetic.demo import resolve_model
    from ..ranker import Ranker
    from ..runtime.sessions import resolve_device

    for name in ("max_batch_tokens", "max_queued_pairs", "max_candidates", "max_text_chars", "max_rows_per_request"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from ..selection.budgets import BUDGETED

    if args.rerank_budget is not None and args.rerank_strategy not in BUDGETED:
        raise ValueError(f"--rerank-budget applies to the strategies {', '.join(BUDGETED)}, not "
                         f"--rerank-strategy {args.rerank_strategy}")
    sock = listening_socket(args.host, args.port)  # first: a port in use is refused before the model loads
    t0 = time.perf_counter()
    try:  # a model that fails to load (or that the engine refuses) leaves no socket open behind it
        path = resolve_model(args.model)
        device = resolve_device(args.device, "torch" if args.backend == "torch" else "onnx")
        ranker = Ranker.from_pretrained(path, backend=args.backend, device=device, precision=args.precision,
                                        threads=args.threads)
        fuser = None
        if args.fuser:
            from ..fusion.fuser import Fuser

            from ..synthetic.demo import announce_random_weights

            announce_random_weights(args.fuser, "fuser")
            fuser = Fuser.from_pretrained(args.fuser, device=device)
        engine = BatchingEngine(ranker, max_batch_tokens=args.max_batch_tokens, max_wait_ms=args.max_wait_ms,
                                max_queued_pairs=args.max_queued_pairs, max_rows_per_request=args.max_rows_per_request,
                                cross_request=not args.no_cross_request_batching)
    except BaseException:
        sock.close()
        raise
    # The precision that runs (the one "auto" chose; the requested one otherwise).
    info = {"model": str(path), "runtime": _runtime_name(ranker.model),
            "precision": ranker.engine_info.get("precision") or args.precision,
            "threads": args.threads or "runtime default", "device": device,
            "why": ranker.engine_info.get("reason", "")}  # what "auto" chose and why (describe())
    app = create_app(engine, fuser=fuser, max_candidates=args.max_candidates, max_text_chars=args.max_text_chars,
                     info=info, ready=False, served_model_names=args.served_model_name,
                     rerank_strategy=args.rerank_strategy, rerank_budget=args.rerank_budget,
                     fuse_max_batch=args.fuse_max_batch, fuse_max_wait_ms=args.fuse_max_wait_ms,
                     fuse_max_queued=args.fuse_max_queued)
    port = sock.getsockname()[1]
    server = _DrainingServer(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                            timeout_graceful_shutdown=DRAIN_TIMEOUT_S), engine, app)

    def warm_up():
        engine.warmup()
        app.state.ready = True
        print(f"blender-fast serve: ready after {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)

    print(f"blender-fast serve: http://{args.host}:{port} model={path} runtime={info['runtime']} "
          f"precision={info['precision']} threads={info['threads']} device={device} "
          f"max_batch_tokens={args.max_batch_tokens} max_wait_ms={args.max_wait_ms} "
          f"max_queued_pairs={args.max_queued_pairs} max_rows_per_request={args.max_rows_per_request} "
          f"max_candidates={args.max_candidates} max_text_chars={args.max_text_chars} "
          f"cross_request_batching={'off' if args.no_cross_request_batching else 'on'} fuser={args.fuser or 'none'}",
          file=sys.stderr, flush=True)
    print(f"blender-fast serve: ranker {ranker.engine_info.get('backend')} {info['precision']}: {info['why']}",
          file=sys.stderr, flush=True)
    threading.Thread(target=warm_up, name="blender-fast-warmup", daemon=True).start()
    try:
        server.run(sockets=[sock])
    finally:
        engine.close(timeout=5)
        if app.state.fuse_batcher is not None:
            app.state.fuse_batcher.close()
    print("blender-fast serve: stopped", file=sys.stderr, flush=True)
    return 0


def _uvicorn_server_class():
    import uvicorn

    class DrainingServer(uvicorn.Server):
        """SIGTERM drains: new requests get 503 while the requests in flight finish; then exit 0."""

        def __init__(self, config, engine: BatchingEngine, app):
            super().__init__(config)
            self.engine, self.app = engine, app
            self.draining = False

        def handle_exit(self, sig, frame):
            if sig == signal.SIGTERM and not self.draining:
                # Not recorded as a captured signal: uvicorn would re-raise it after shutting down and
                # the process would die of it instead of exiting 0.
                self.draining = True
                self.app.state.draining = True
                print("blender-fast serve: SIGTERM, draining", file=sys.stderr, flush=True)
                threading.Thread(target=self._drain, name="blender-fast-drain", daemon=True).start()
                return
            super().handle_exit(sig, frame)

        def _drain(self):
            self.engine.drain(timeout=DRAIN_TIMEOUT_S)
            time.sleep(0.05)  # let the last responses be written before uvicorn stops the loop
            self.should_exit = True

    return DrainingServer


def _DrainingServer(config, engine, app):  # noqa: N802  (a factory: uvicorn is imported lazily)
    return _uvicorn_server_class()(config, engine, app)
