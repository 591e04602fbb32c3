"""The rerank APIs that RAG and agent frameworks already call, answered by PairRM on the batching engine.

- Cohere ``POST /v1/rerank`` and ``POST /v2/rerank``: ``{model, query, documents, top_n, return_documents (v1),
  max_tokens_per_doc (v2)}`` -> ``{id, results: [{index, relevance_score, document?}], meta}``, best first.
- TEI (text-embeddings-inference) ``POST /rerank``: ``{query, texts, raw_scores, return_text, truncate,
  truncation_direction}`` -> ``[{index, score, text?}]``, best first.

The query is the PairRM input (no instruction) and the documents are its candidates. ``top_n`` < number of
documents runs a top-k selection (``strategy``/``budget``: the server's defaults, or per request in the
extension field ``blender_fast``); otherwise all pairs are compared (as ``Ranker.rank``).

Scores (docs/rerank.md): with a full ranking, ``relevance_score`` = sigmoid of the document's mean pairwise
logit against the other documents, each pair's logit averaged over both presentation orders; it orders the
documents exactly as the PairRM aggregate (``max_logits``), which TEI's ``raw_scores`` returns. With a top-k
selection no aggregate exists (not every pair is compared): ``relevance_score`` = the fraction of the other
documents the selection placed below it, (n - 1 - place) / (n - 1). Served by a reward model, a
full ranking orders by the reward scores (``raw_scores``) and ``relevance_score`` is their sigmoid.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..inputs import check_text
from ..model.checkpoint import SPECIAL_TOKENS
from ..options import MAX_BUDGET, MAX_COUNT, STRATEGIES
from .schema import HTTPError, Limits, TokenGate, check_truncation, truncation_maximum

DEFAULT_RERANK_STRATEGY = "tournament"

COHERE_V1_FIELDS = ("model", "query", "documents", "top_n", "return_documents", "rank_fields", "max_chunks_per_doc",
                    "blender_fast")
COHERE_V2_FIELDS = ("model", "query", "documents", "top_n", "max_tokens_per_doc", "relevant_spans", "priority",
                    "blender_fast")
TEI_FIELDS = ("query", "texts", "raw_scores", "return_text", "truncate", "truncation_direction", "blender_fast")
EXTENSION_FIELDS = ("strategy", "budget", "source_maxlength", "candidate_maxlength")

# TEI's error_type per status (its router's ErrorType names).
TEI_ERROR_TYPES = {400: "empty", 404: "validation", 413: "validation", 422: "validation", 429: "overloaded",
                   499: "backend", 500: "backend", 503: "unhealthy", 504: "backend"}


class RerankError(Exception):
    """A client error of a rerank request: the status and the message (put into each API's error shape)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.headers: dict = {}


@dataclass
class RerankSettings:
    """The server's side of the rerank routes: the names ``model`` may take, defaults and limits."""
    model_names: tuple = ()
    strategy: str = DEFAULT_RERANK_STRATEGY
    budget: Optional[int] = None
    max_documents: int = 64
    max_text_chars: int = 32768
    reserved: tuple = SPECIAL_TOKENS     # markers no text may hold (PairRM's; none for a reward model)
    limits: Limits = field(default_factory=lambda: Limits(max_source_length=MAX_COUNT, max_candidate_length=MAX_COUNT))
    gate: Optional[TokenGate] = None     # the app's admission by tokens (None: no bound)


@dataclass
class RerankRequest:
    query: str
    documents: list                      # the texts, in the request's order
    originals: list                      # what return_documents gives back (v1: the object as sent)
    top_n: Optional[int] = None
    return_documents: bool = False
    raw_scores: bool = False
    strategy: str = DEFAULT_RERANK_STRATEGY
    budget: Optional[int] = None
    source_maxlength: Optional[int] = None
    candidate_maxlength: Optional[int] = None
    max_tokens_per_doc: Optional[int] = None  # Cohere v2: each document's own tokens, at most


@dataclass
class Ranked:
    order: list                          # document indices, best first (top_n of them)
    relevance: list                      # relevance_score per entry of order, in [0, 1]
    raw: list                            # PairRM aggregate / reward score (full ranking), else relevance
    meta: dict = field(default_factory=dict)


def _check_type(name: str, value, kinds: tuple, what: str):
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise RerankError(422, f"{name} must be {what}, got {type(value).__name__}")
    return value


def _count(name: str, value, maximum: int = MAX_COUNT) -> int:
    """A positive integer within the one number rule's maximum (options.py), in this API's error shape."""
    _check_type(name, value, (int,), "a positive integer")
    if value < 1:
        raise RerankError(422, f"{name} must be a positive integer, got {value}")
    if value > maximum:
        raise RerankError(422, f"{name} must be <= {maximum}, got {value}")
    return value


def _unknown(data: dict, fields: tuple, route: str) -> None:
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise RerankError(422, f"unknown field {unknown[0]!r}; the fields of {route} are {', '.join(fields)}")


def _check_model(data: dict, settings: RerankSettings, required: bool) -> None:
    model = data.get("model")
    if model is None:
        if required:
            raise RerankError(422, f"model is required; this server serves {', '.join(settings.model_names)}")
        return
    _check_type("model", model, (str,), "a string")
    if settings.model_names and model not in settings.model_names:
        raise RerankError(404, f"model {model!r} is not served here; this server serves "
                               f"{', '.join(repr(n) for n in settings.model_names)}")


def _check_texts(query, documents: list, settings: RerankSettings, list_name: str) -> None:
    _check_type("query", query, (str,), "a string")
    if not documents:
        raise RerankError(400, f"{list_name} is empty: nothing to rerank")
    if len(documents) > settings.max_documents:
        raise RerankError(413, f"{len(documents)} {list_name}; this server accepts at most {settings.max_documents} "
                               f"per request (--max-candidates)")
    texts = [("query", query)] + [(f"{list_name}[{i}]", t) for i, t in enumerate(documents)]
    for name, text in texts:
        if len(text) > settings.max_text_chars:
            raise RerankError(413, f"{name} has {len(text)} characters; this server accepts at most "
                                   f"{settings.max_text_chars} (--max-text-chars)")
    for name, text in texts:  # named as the request names them (the engine's checks say inputs/candidates)
        try:
            check_text(name, text, settings.reserved)
        except ValueError as e:
            raise RerankError(422, str(e)) from None


def _extension(data: dict, req: RerankRequest, settings: RerankSettings) -> RerankRequest:
    """The ``blender_fast`` extension field: strategy / budget / truncation of this request."""
    req.strategy, req.budget = settings.strategy, settings.budget
    ext = data.get("blender_fast")
    if ext is None:
        return req
    _check_type("blender_fast", ext, (dict,), f"an object with the fields {', '.join(EXTENSION_FIELDS)}")
    _unknown(ext, EXTENSION_FIELDS, "blender_fast")
    if "strategy" in ext:
        if ext["strategy"] not in STRATEGIES:
            raise RerankError(422, f"blender_fast.strategy must be one of {', '.join(STRATEGIES)}, got "
                                   f"{ext['strategy']!r}")
        req.strategy = ext["strategy"]
        req.budget = None  # the server's budget belongs to the server's strategy
    for name in ("budget", "source_maxlength", "candidate_maxlength"):
        if ext.get(name) is not None:  # checked even where unused (a full ranking takes no budget)
            setattr(req, name, _count(f"blender_fast.{name}", ext[name], MAX_BUDGET if name == "budget" else MAX_COUNT))
    for name in ("source_maxlength", "candidate_maxlength"):
        try:
            check_truncation(f"blender_fast.{name}", getattr(req, name), truncation_maximum(name, settings.limits))
        except HTTPError as e:
            raise RerankError(e.status, str(e)) from None
    return req


def _top_n(value) -> Optional[int]:
    if value is None:
        return None
    return _count("top_n", value)  # more than the documents is Cohere's "all of them"


def parse_cohere(data, version: int, settings: RerankSettings) -> RerankRequest:
    """A Cohere rerank body (v1 or v2) as a RerankRequest; RerankError names what is wrong."""
    route = f"/v{version}/rerank"
    if not isinstance(data, dict):
        raise RerankError(422, f"the body of {route} must be a JSON object")
    _unknown(data, COHERE_V1_FIELDS if version == 1 else COHERE_V2_FIELDS, route)
    _check_model(data, settings, required=version == 2)
    if "query" not in data:
        raise RerankError(422, "missing field 'query'")
    if "documents" not in data:
        raise RerankError(422, "missing field 'documents'")
    docs = _check_type("documents", data["documents"], (list,), "a list")
    texts = []
    for i, d in enumerate(docs):
        if isinstance(d, str):
            texts.append(d)
        elif version == 1 and isinstance(d, dict) and isinstance(d.get("text"), str):
            texts.append(d["text"])
        elif version == 1:
            raise RerankError(422, f"documents[{i}] must be a string or an object with a string field 'text'")
        else:
            raise RerankError(422, f"documents[{i}] must be a string, got {type(d).__name__}")
    rank_fields = data.get("rank_fields")
    if rank_fields is not None and rank_fields != ["text"]:
        raise RerankError(422, "rank_fields: only the 'text' field of a document is ranked here")
    if data.get("relevant_spans") is not None:
        raise RerankError(422, "relevant_spans is not supported by this server")
    _check_texts(data["query"], texts, settings, "documents")
    req = RerankRequest(query=data["query"], documents=texts,
                        originals=[d if isinstance(d, dict) else {"text": d} for d in docs],
                        top_n=_top_n(data.get("top_n")))
    if version == 1 and data.get("return_documents") is not None:
        req.return_documents = _check_type("return_documents", data["return_documents"], (bool,), "a boolean")
    req = _extension(data, req, settings)
    if version == 2 and data.get("max_tokens_per_doc") is not None:
        value = _count("max_tokens_per_doc", data["max_tokens_per_doc"])
        req.max_tokens_per_doc = value  # a cap under the ranker's own lengths (truncation_lengths)
    return req


def parse_tei(data, settings: RerankSettings) -> RerankRequest:
    """A TEI rerank body as a RerankRequest (always a full ranking unless blender_fast asks otherwise)."""
    if not isinstance(data, dict):
        raise RerankError(422, "the body of /rerank must be a JSON object")
    _unknown(data, TEI_FIELDS, "/rerank")
    for name in ("query", "texts"):
        if name not in data:
            raise RerankError(422, f"missing field {name!r}")
    texts = _check_type("texts", data["texts"], (list,), "a list of strings")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise RerankError(422, f"texts[{i}] must be a string, got {type(t).__name__}")
    _check_texts(data["query"], texts, settings, "texts")
    req = RerankRequest(query=data["query"], documents=texts, originals=texts)
    for name, attr in (("raw_scores", "raw_scores"), ("return_text", "return_documents"), ("truncate", None)):
        if data.get(name) is not None:
            value = _check_type(name, data[name], (bool,), "a boolean")
            if attr:
                setattr(req, attr, value)
    direction = data.get("truncation_direction")
    if direction is not None and str(direction).lower() != "right":
        raise RerankError(422, f"truncation_direction {direction!r} is not supported: PairRM keeps the start of "
                               "each text (Right)")
    return _extension(data, req, settings)


def full_order(scores) -> list:
    """Indices best first, as the Ranker's ranks order them (ties: the lower index first)."""
    s = np.asarray(scores)
    return sorted(range(len(s)), key=lambda i: (-float(s[i]), i))


def truncation_lengths(engine, req: RerankRequest) -> dict:
    """The engine call's source_maxlength / candidate_maxlength: the request's (None: the ranker's), and
    with Cohere's max_tokens_per_doc, lengths that keep at most that many of each document's own tokens
    (never more than the ranker's lengths would keep: Cohere's default, 4096, changes nothing)."""
    lengths = {"source_maxlength": req.source_maxlength, "candidate_maxlength": req.candidate_maxlength}
    cap = req.max_tokens_per_doc
    if cap is None:
        return lengths
    return engine.ranker.capped_lengths(req.query, cap, req.source_maxlength, req.candidate_maxlength)


async def run_rerank(engine, req: RerankRequest, timeout) -> Ranked:
    """The request on the engine: a full ranking, or a top-k selection when top_n < n."""
    n = len(req.documents)
    top_n = n if req.top_n is None else min(req.top_n, n)
    lengths = truncation_lengths(engine, req)
    if top_n == n or req.strategy == "full":
        scores = (await engine.rank([req.query], [req.documents], None, return_scores=True, policy="max_logits",
                                    timeout=timeout, **lengths))[0]
        order = full_order(scores)[:top_n]
        rel, passes = engine.ranker.full_ranking_relevance(scores)
        return Ranked(order, [float(rel[i]) for i in order], [float(scores[i]) for i in order],
                      {"strategy": "full", "forward_passes": passes})
    sel = (await engine.select([req.query], [req.documents], top_k=top_n, strategy=req.strategy, orders="both",
                               seed=0, budget=req.budget, timeout=timeout, **lengths))[0]
    order = [int(i) for i in sel.top_k]
    rel = [(n - 1 - place) / (n - 1) for place in range(len(order))]
    return Ranked(order, rel, rel, {"strategy": req.strategy, "forward_passes": int(sel.forward_passes)})


def request_tokens(engine, req: RerankRequest, limits: Limits) -> int:
    """The tokens the request may hold (schema.TokenGate's unit): documents x the length bounds."""
    lengths = truncation_lengths(engine, req)
    # Clamped to the server's maxima: a length the request did not set explicitly (max_tokens_per_doc past a
    # tokenizer without a limit) is bounded by the texts' characters, which the server also caps.
    src = min(lengths["source_maxlength"] or limits.max_source_length, limits.max_source_length)
    cand = min(lengths["candidate_maxlength"] or limits.max_candidate_length, limits.max_candidate_length)
    return len(req.documents) * (src + cand)


async def answer(api: str, data, engine, settings: RerankSettings, timeout):
    """A decoded rerank body (api: cohere-v1, cohere-v2, tei) -> that API's response body, run on the
    engine under the app's admission by tokens; RerankError / HTTPError say what is wrong."""
    req = parse_tei(data, settings) if api == "tei" else parse_cohere(data, int(api[-1]), settings)
    if settings.gate is None:
        ranked = await run_rerank(engine, req, timeout)
    else:
        with settings.gate.admit(request_tokens(engine, req, settings.limits),
                                 len(req.query) + sum(len(d) for d in req.documents)):
            ranked = await run_rerank(engine, req, timeout)
    return tei_response(req, ranked) if api == "tei" else cohere_response(req, ranked, int(api[-1]))


def cohere_response(req: RerankRequest, ranked: Ranked, version: int) -> dict:
    results = []
    for i, rel in zip(ranked.order, ranked.relevance):
        r = {"index": i, "relevance_score": rel}
        if req.return_documents:
            r["document"] = req.originals[i]
        results.append(r)
    return {"id": str(uuid.uuid4()), "results": results,
            "meta": {"api_version": {"version": str(version)}, "billed_units": {"search_units": 1},
                     "blender_fast": ranked.meta}}


def tei_response(req: RerankRequest, ranked: Ranked) -> list:
    out = []
    for i, rel, raw in zip(ranked.order, ranked.relevance, ranked.raw):
        r = {"index": i, "score": raw if req.raw_scores else rel}
        if req.return_documents:
            r["text"] = req.documents[i]
        out.append(r)
    return out


def error_body(api: str, status: int, message: str):
    """The error in the API's own shape: Cohere ``{"message"}``, TEI ``{"error", "error_type"}``."""
    if api == "tei":
        return {"error": message, "error_type": TEI_ERROR_TYPES.get(status, "validation")}
    return {"message": message}


def openapi_bodies() -> dict:
    """OpenAPI request bodies of the three routes, for the docs page only (requests are checked by the
    parse functions above, so that errors carry this module's messages and each API's shape)."""
    from typing import List, Literal, Optional as Opt, Union

    from pydantic import BaseModel, Field

    class Extension(BaseModel):
        strategy: Opt[Literal[STRATEGIES]] = Field(None, description="top-k selection when top_n < documents")  # type: ignore[valid-type]
        budget: Opt[int] = Field(None, ge=1, description="forward passes (swiss / knockout_rr / adaptive)")
        source_maxlength: Opt[int] = Field(None, ge=1, description="tokens kept of the query")
        candidate_maxlength: Opt[int] = Field(None, ge=1, description="tokens kept of each document")

    class Document(BaseModel):
        text: str

    class CohereV1(BaseModel):
        model: Opt[str] = Field(None, description="a served model name (--served-model-name)")
        query: str
        documents: List[Union[str, Document]]
        top_n: Opt[int] = Field(None, ge=1, description="< documents: a top-k selection; else a full ranking")
        return_documents: Opt[bool] = False
        blender_fast: Opt[Extension] = None

    class CohereV2(BaseModel):
        model: str = Field(..., description="a served model name (--served-model-name)")
        query: str
        documents: List[str]
        top_n: Opt[int] = Field(None, ge=1, description="< documents: a top-k selection; else a full ranking")
        max_tokens_per_doc: Opt[int] = Field(None, ge=1, description="caps each document's tokens")
        blender_fast: Opt[Extension] = None

    class Tei(BaseModel):
        query: str
        texts: List[str]
        raw_scores: bool = Field(False, description="the PairRM aggregate instead of the [0, 1] relevance")
        return_text: bool = False
        truncate: Opt[bool] = Field(None, description="accepted; PairRM always truncates")
        truncation_direction: Literal["Right", "right"] = "Right"
        blender_fast: Opt[Extension] = None

    return {name: {"requestBody": {"required": True, "content": {"application/json": {
        "schema": _inline_refs(model.model_json_schema())}}}}
        for name, model in (("cohere-v1", CohereV1), ("cohere-v2", CohereV2), ("tei", Tei))}


def _inline_refs(schema: dict) -> dict:
    """The schema with its ``$defs`` references replaced by the definitions: a route's openapi_extra is
    inlined into the spec, where a ``#/$defs/...`` reference would point at nothing."""
    defs = schema.pop("$defs", {})

    def walk(node):
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return walk(defs[ref[len("#/$defs/"):]])
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        return node

    return walk(schema)
