"""The request schema of the /v1 routes: the one place that names each item's fields, their defaults, their
checks and the server's limits. The route bodies (app.py), the OpenAPI models (item_models) and the
client's field names all read it.

Requests are checked by hand, not by pydantic, so that a bad value gets the Python API's message (the
options.py check it goes through) with the item's index; the pydantic models exist only for the
OpenAPI schema and the docs page.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Callable, List, Literal, Optional

from ..options import (COMPARE_MODES, MAX_BUDGET, MAX_SEED, MAX_TOP_K, ORDERS, POLICIES, STRATEGIES, check_budget,
                       check_optional_count, check_optional_seed, check_seed, check_temperature, check_top_k)

DEFAULT_MAX_CANDIDATES = 64
DEFAULT_MAX_TEXT_CHARS = 32768
DEFAULT_MAX_ITEMS = 256
# Tokens one request may hold at most, estimated before any tokenizing as rows x per-row length bound
# (request_tokens): 2^22 int64 token ids are 32 MiB per array. Beyond it 413; docs/serving.md states the
# memory this bounds, measured.
DEFAULT_MAX_REQUEST_TOKENS = 2**22
# Tokens all admitted requests may hold together; beyond it 429 with Retry-After.
DEFAULT_MAX_QUEUED_TOKENS = 2**24
# Characters of text one request may carry: the tokenizer reads every character of a text before it is
# truncated, at tens of bytes of memory per character, so the token estimate alone does not bound it.
DEFAULT_MAX_REQUEST_CHARS = 2**20

ROUTES = ("rank", "select", "compare", "judge", "fuse")


class HTTPError(Exception):
    """A request the server refuses: the status, the message, and extra response headers."""

    def __init__(self, status: int, message: str, headers: Optional[dict] = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


REQUIRED = object()


@dataclass(frozen=True)
class Field:
    """One field of an item. default: REQUIRED or the value; kind: its type in the OpenAPI schema;
    check: "bool" (a JSON boolean), an options.py check (the Python API's rule and message), or None
    (the engine checks it, in the Python API's words); schema: pydantic Field bounds and description."""
    default: object
    kind: object
    check: object = None
    schema: dict = field(default_factory=dict)


def _optional_count(name: str) -> Callable:
    return lambda v: check_optional_count(name, v)


_TEXT = Field(REQUIRED, str)
_INSTRUCTION = Field("", str, schema={"description": "prepended to input with no separator, as llm-blender"})
_CANDIDATES = Field(REQUIRED, List[str])
_STRATEGY = Field("tournament", Literal[STRATEGIES])  # type: ignore[valid-type]
_POLICY = Field("max_logits", Literal[POLICIES])  # type: ignore[valid-type]
_SEED = Field(0, int, check_seed, {"ge": 0, "le": MAX_SEED})
# The ranker's truncation (tokens of the source / of each candidate) per item: None = the ranker's own;
# above the server's maximum (--max-source-length / --max-candidate-length) refused by check_truncation.
TRUNCATION = ("source_maxlength", "candidate_maxlength")
_TRUNCATION = {
    "source_maxlength": Field(None, Optional[int], _optional_count("source_maxlength"),
                              {"ge": 1, "description": "tokens kept of instruction+input (None: the ranker's)"}),
    "candidate_maxlength": Field(None, Optional[int], _optional_count("candidate_maxlength"),
                                 {"ge": 1, "description": "tokens kept of each candidate"}),
}

# Each route's item fields, in the order they are checked and listed.
SCHEMA: dict[str, dict[str, Field]] = {
    "rank": {
        "instruction": _INSTRUCTION, "input": _TEXT,
        "candidates": Field(REQUIRED, List[str], schema={"description": "the texts to rank"}),
        "return_scores": Field(False, bool, "bool",
                               {"description": "also return the per-candidate scores (higher = better)"}),
        "policy": _POLICY, **_TRUNCATION},
    "select": {
        "instruction": Field("", str), "input": _TEXT, "candidates": _CANDIDATES,
        "top_k": Field(1, int, check_top_k, {"ge": 1, "le": MAX_TOP_K, "description": "how many to select"}),
        "strategy": _STRATEGY,
        "orders": Field("both", Literal[ORDERS]),  # type: ignore[valid-type]
        "seed": Field(0, int, check_seed, {"ge": 0, "le": MAX_SEED,
                                           "description": "seed of the starting arrangement (bubble / tournament)"}),
        "policy": _POLICY,
        "worst": Field(False, bool, "bool", {"description": "select the worst k instead"}),
        "budget": Field(None, Optional[int], check_budget,
                        {"ge": 1, "le": MAX_BUDGET, "description": "swiss / knockout_rr / adaptive: forward passes "
                                                                   "per item they never exceed (default 4(n-1))"}),
        **_TRUNCATION},
    "compare": {
        "instruction": Field("", str), "input": _TEXT, "candidate_a": _TEXT, "candidate_b": _TEXT,
        "mode": Field("[A,B]+[B,A]", Literal[COMPARE_MODES]),  # type: ignore[valid-type]
        **_TRUNCATION},
    "judge": {
        "prompt": _TEXT,
        "completions": Field(REQUIRED, List[str], schema={"min_length": 2, "max_length": 2,
                                                          "description": "[completion_0, completion_1]"}),
        "shuffle_order": Field(True, bool, "bool", {"description": "rank each pair in a random order (TRL's default)"}),
        "return_scores": Field(False, bool, "bool",
                               {"description": "return the probability that completion 0 is better"}),
        "temperature": Field(1.0, float, check_temperature, {"gt": 0}),
        "seed": Field(None, Optional[int], check_optional_seed,
                      {"ge": 0, "le": MAX_SEED, "description": "seed of shuffle_order's coin flips"})},
    "fuse": {
        "instruction": Field("", str), "input": _TEXT, "candidates": _CANDIDATES,
        "top_k": Field(3, int, check_top_k, {"ge": 1, "le": MAX_TOP_K, "description": "candidates selected and fused"}),
        "strategy": _STRATEGY, "seed": _SEED,
        "budget": Field(None, Optional[int], check_budget,
                        {"ge": 1, "le": MAX_BUDGET,
                         "description": "swiss / knockout_rr / adaptive: forward passes per item"}),
        "num_beams": Field(None, Optional[int], _optional_count("num_beams")),
        "max_new_tokens": Field(None, Optional[int], _optional_count("max_new_tokens")),
        **_TRUNCATION},
}
# Each route's item fields and defaults (REQUIRED: no default), derived from SCHEMA.
FIELDS = {route: {name: f.default for name, f in fields.items()} for route, fields in SCHEMA.items()}
# Which field of an item each Python-API argument name stands for, in messages about a missing field.
API_NAME = {"input": "inputs", "candidates": "candidates", "instruction": "instructions", "prompt": "prompts",
            "completions": "completions", "candidate_a": "candidates_a", "candidate_b": "candidates_b"}
# Per route: the single-text fields and the list-of-texts field that the size limits (413) apply to.
SIZED_FIELDS = {
    "rank": (("input", "instruction"), "candidates"),
    "select": (("input", "instruction"), "candidates"),
    "fuse": (("input", "instruction"), "candidates"),
    "compare": (("input", "instruction", "candidate_a", "candidate_b"), None),
    "judge": (("prompt",), "completions"),
}
TRL_JUDGE_FIELDS = ("prompts", "completions", "shuffle_order", "return_scores", "temperature", "seed")

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


@dataclass(frozen=True)
class Limits:
    """The server's limits on one request (each a command-line setting of ``blender-fast serve``)."""
    max_items: int = DEFAULT_MAX_ITEMS
    max_candidates: int = DEFAULT_MAX_CANDIDATES
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS
    max_source_length: int = 0       # tokens: the ranker's source_maxlength unless set higher or lower
    max_candidate_length: int = 0    # tokens: the ranker's candidate_maxlength unless set
    max_request_tokens: int = DEFAULT_MAX_REQUEST_TOKENS
    max_queued_tokens: int = DEFAULT_MAX_QUEUED_TOKENS
    max_request_chars: int = DEFAULT_MAX_REQUEST_CHARS


def item_models() -> dict:
    """Pydantic models of the items, built from SCHEMA, for the OpenAPI schema and docs page only."""
    from pydantic import Field as PydanticField, create_model

    models = {}
    for route, fields in SCHEMA.items():
        spec = {}
        # The truncation fields first, as the schema listed them before it was derived from SCHEMA.
        for name, f in sorted(fields.items(), key=lambda kv: kv[0] not in TRUNCATION):
            default = ... if f.default is REQUIRED else f.default
            spec[name] = (f.kind, PydanticField(default, **f.schema) if f.schema else default)
        models[route] = create_model(f"{route.capitalize()}Item", **spec)
    return models


def parse_items(route: str, data, max_items: int) -> tuple[list[dict], str]:
    """The decoded body as a list of items with defaults filled in, and its shape: "one" (a single item),
    "list" (a list of items) or "trl" (TRL's batch judge call)."""
    if route == "judge" and isinstance(data, dict) and "prompts" in data:
        items, shape = trl_judge_items(data), "trl"
    else:
        shape = "one" if isinstance(data, dict) else "list"
        items = [data] if shape == "one" else data
        if not isinstance(items, list) or not items:
            raise HTTPError(422, "the request body must be one item (a JSON object) or a non-empty list of items")
    if len(items) > max_items:
        raise HTTPError(413, f"{len(items)} items in one request; this server accepts at most {max_items}")
    if shape == "trl":
        return items, shape
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
            elif default is REQUIRED:
                raise HTTPError(422, f"item {p}: missing field {name!r}")
            else:
                full[name] = default
        out.append(full)
    return out, shape


def trl_judge_items(data: dict) -> list[dict]:
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


def check_sizes(route: str, items: list[dict], limits: Limits) -> None:
    """413 for requests past the server's limits (types are the engine's business: it names them)."""
    text_fields, list_field = SIZED_FIELDS[route]
    for p, item in enumerate(items):
        if list_field and isinstance(item[list_field], list) and len(item[list_field]) > limits.max_candidates:
            raise HTTPError(413, f"{list_field}[{p}] has {len(item[list_field])} entries; this server accepts "
                                 f"at most {limits.max_candidates} (--max-candidates)")
        texts = [(f, item[f]) for f in text_fields]
        if list_field and isinstance(item[list_field], list):
            texts += [(f"{list_field}[{p}][{c}]", t) for c, t in enumerate(item[list_field])]
        for name, text in texts:
            if isinstance(text, str) and len(text) > limits.max_text_chars:
                where = name if "[" in name else f"{API_NAME.get(name, name)}[{p}]"
                raise HTTPError(413, f"{where} has {len(text)} characters; this server accepts at most "
                                     f"{limits.max_text_chars} (--max-text-chars)")


def check_options(route: str, items: list[dict], limits: Limits) -> None:
    """Each item's options through their SCHEMA checks, in SCHEMA's order: 422 naming the item. The
    engine checks the rest (strategy, orders, policy, mode, the texts) in the Python API's words."""
    fields = SCHEMA[route]
    for p, item in enumerate(items):
        for name, f in fields.items():
            if f.check == "bool":
                value = item[name]
                if not isinstance(value, bool):
                    raise HTTPError(422, f"item {p}: {name} must be bool, got {json.dumps(value)}")
            elif f.check is not None:
                try:
                    f.check(item[name])
                except (TypeError, ValueError) as e:
                    raise HTTPError(422, f"item {p}: {e}") from None
        for name in TRUNCATION:
            if name in item:
                check_truncation(f"item {p}: {name}", item[name], truncation_maximum(name, limits))


def truncation_maximum(name: str, limits: Limits) -> int:
    return limits.max_source_length if name == "source_maxlength" else limits.max_candidate_length


def check_truncation(name: str, value, maximum: int) -> None:
    """A truncation length above the server's maximum: 422 naming it, its value and the maximum (one
    row of the model holds both lengths' tokens, and its memory grows with the square of that)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > maximum:
        flag = "--max-source-length" if name.endswith("source_maxlength") else "--max-candidate-length"
        raise HTTPError(422, f"{name} = {value} is above this server's maximum, {maximum} ({flag})")


def request_tokens(route: str, items: list[dict], limits: Limits) -> int:
    """The tokens the items may hold, bounded before tokenizing: per item, its candidates (2 for compare
    and judge) x its source's and a candidate's length bound (a model row holds one source and one
    candidate; one step of a prompt holds at most that many rows)."""
    if route == "compare":
        n = [2] * len(items)
    else:
        name = "completions" if route == "judge" else "candidates"
        n = [len(i[name]) if isinstance(i[name], list) else 0 for i in items]
    src = [i.get("source_maxlength") or limits.max_source_length for i in items]
    cand = [i.get("candidate_maxlength") or limits.max_candidate_length for i in items]
    return sum(k * (s + c) for k, s, c in zip(n, src, cand))


def text_chars(route: str, items: list[dict]) -> int:
    """Characters of the items' texts (SIZED_FIELDS: the input, instruction, candidates, ...)."""
    text_fields, list_field = SIZED_FIELDS[route]
    total = 0
    for item in items:
        texts = [item[f] for f in text_fields] + (item[list_field] if list_field and isinstance(item[list_field], list)
                                                  else [])
        total += sum(len(t) for t in texts if isinstance(t, str))
    return total


class TokenGate:
    """Admission by tokens: a request whose estimate (request_tokens) passes max_request_tokens gets 413;
    one that would take the admitted requests' total past max_queued_tokens gets 429 with Retry-After
    (a lone request is always admitted). Used from the event loop only, so it needs no lock."""

    def __init__(self, limits: Limits, retry_after_s: int = 1):
        self.limits = limits
        self.held = 0
        self.retry_after_s = retry_after_s

    @contextlib.contextmanager
    def admit(self, tokens: int, chars: int = 0):
        if chars > self.limits.max_request_chars:
            raise HTTPError(413, f"this request carries {chars} characters of text; this server accepts at most "
                                 f"{self.limits.max_request_chars} per request (--max-request-chars): split it")
        most = self.limits.max_request_tokens
        if tokens > most:
            raise HTTPError(413, f"this request may hold {tokens} tokens (texts x their length bounds); this "
                                 f"server accepts at most {most} per request (--max-request-tokens): send fewer "
                                 f"items or candidates, or smaller source_maxlength / candidate_maxlength")
        if self.held > 0 and self.held + tokens > self.limits.max_queued_tokens:
            raise HTTPError(429, f"queue full: the requests in flight hold {self.held} tokens, this one may hold "
                                 f"{tokens}, the bound is {self.limits.max_queued_tokens} (--max-queued-tokens)",
                            {"Retry-After": str(self.retry_after_s)})
        self.held += tokens
        try:
            yield
        finally:
            self.held -= tokens
