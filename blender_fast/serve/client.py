"""Client for ``blender-fast serve``: the Ranker's verbs over HTTP, standard library only.

    from blender_fast import Client
    client = Client("http://127.0.0.1:8000")
    ranks = client.rank(inputs, candidates)                      # as Ranker.rank (list of arrays)
    picks = client.select(inputs, candidates, top_k=1, strategy="tournament")   # list of dicts
    probs = client.judge(prompts, [[a, b], ...], return_scores=True)            # as TRL's PairRMJudge

Arguments are checked here first, by the checks the server (and the Ranker) run (options.py): a bad
value raises the Ranker's exception and message before any request. A 429 (queue full) is retried after
the server's Retry-After (seconds or an HTTP date, clamped to [0, max_retry_wait]), a bounded number of
times; any other error raises ``ServerError`` with the status and the server's message. An answer that is
not the server's JSON (a proxy's HTML page, a list where an object belongs) is a ``ServerError`` too,
naming the URL and the status.
"""
from __future__ import annotations

import email.utils
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Optional

import numpy as np

from ..options import (COMPARE_MODES, ORDERS, POLICIES, STRATEGIES, check_choice, check_optional_count,
                       check_optional_seed, check_seed, check_strategy_budget, check_temperature, check_top_k)


class ServerError(RuntimeError):
    """The server answered with an error status; ``status`` and the server's ``detail`` message."""

    def __init__(self, status: int, detail: str, retry_after: Optional[float] = None):
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.detail = detail
        self.retry_after = retry_after
        self.url: Optional[str] = None  # the URL called, set by Client


class ClientConnectionError(ConnectionError):
    """The server could not be reached (refused, unknown host, timed out, reset); ``url`` is what was called.
    A ConnectionError (an OSError): code catching OSError keeps working."""

    def __init__(self, url: str, reason: str):
        super().__init__(f"{url}: cannot reach the blender-fast server ({reason})")
        self.url = url
        self.reason = reason


def parse_retry_after(value, maximum: float) -> Optional[float]:
    """Seconds to wait from a Retry-After header: delay-seconds or an HTTP date (RFC 9110 10.2.3), clamped
    to [0, maximum]; None when absent or unreadable (the caller's default applies)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None:
            return None
        seconds = when.timestamp() - time.time()
    if seconds != seconds:  # nan
        return None
    return min(max(seconds, 0.0), maximum)


def _error_detail(body: bytes) -> str:
    """The message of an error answer: blender-fast's ``detail``, Cohere's ``message``, TEI's ``error``, or
    the body as text (a proxy's HTML page, a JSON list)."""
    text = body.decode(errors="replace")
    try:
        data = json.loads(body)
    except ValueError:
        return text
    if isinstance(data, dict):
        for key in ("detail", "message", "error"):
            if key in data:
                return data[key] if isinstance(data[key], str) else json.dumps(data[key])
    return text


def _not_ours(status: int, url: str, what: str, body) -> "ServerError":
    text = body if isinstance(body, str) else json.dumps(body)
    err = ServerError(status, f"{url} answered {what}, not a blender-fast answer: {text[:200]!r}")
    err.url = url
    return err


def _truncation(source_maxlength, candidate_maxlength) -> dict:
    """The truncation fields to send, checked as the Ranker checks them: only those given (None keeps the
    server's ranker defaults)."""
    fields = (("source_maxlength", source_maxlength), ("candidate_maxlength", candidate_maxlength))
    return {k: check_optional_count(k, v) for k, v in fields if v is not None}


def _check_select(top_k, strategy, seed, budget, orders="both", policy="max_logits") -> None:
    """select's and fuse's options, in the order the Ranker's select checks them."""
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("orders", orders, ORDERS)
    check_choice("policy", policy, POLICIES)
    check_top_k(top_k), check_seed(seed), check_strategy_budget(strategy, budget)


def check_base_url(url) -> str:
    """``url`` without its trailing slashes, when it is an http(s) URL with a host (a path prefix is
    fine, e.g. behind a proxy); else a ValueError naming it now, not urllib's "unknown url type" on the
    first call."""
    if not isinstance(url, str):
        raise TypeError(f"url must be a string such as 'http://127.0.0.1:8000', got {type(url).__name__}")
    parts = urllib.parse.urlsplit(url.strip())
    # "localhost:8000" parses as scheme "localhost": the usual slip, so say what is missing.
    hint = "; add the http://" if "://" not in url else ""
    try:
        parts.port  # noqa: B018  (a port that is not a number raises here)
    except ValueError:
        raise ValueError(f"url must be an http:// or https:// URL with a host and a numeric port, "
                         f"got {url!r}") from None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError(f"url must be an http:// or https:// URL with a host, such as 'http://127.0.0.1:8000', "
                         f"got {url!r}{hint}")
    return url.strip().rstrip("/")


class Client:
    """HTTP client of one blender-fast server.

    timeout: seconds per HTTP call; max_retries: how many times a 429 is retried (after Retry-After,
    capped at max_retry_wait seconds); deadline_ms: the server-side deadline sent with each request.
    """

    def __init__(self, url: str, timeout: float = 300.0, max_retries: int = 5, max_retry_wait: float = 30.0,
                 deadline_ms: Optional[float] = None):
        self.url = check_base_url(url)
        self.timeout = timeout
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.deadline_ms = deadline_ms
        self.retries = 0  # 429s retried so far (all calls)
        # No proxies: a server is usually on loopback or the local network, and HTTP_PROXY would
        # otherwise route loopback calls through the proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    # -- transport --------------------------------------------------------------------------------

    def _request(self, method: str, path: str, payload=None):
        url = self.url + path
        if payload is not None and self.deadline_ms is not None:
            url += f"?timeout_ms={self.deadline_ms}"
        data = None if payload is None else json.dumps(payload).encode()
        for attempt in range(self.max_retries + 1):
            req = urllib.request.Request(url, data=data, method=method,
                                         headers={"Content-Type": "application/json"} if data else {})
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    body = resp.read()
                    ctype = resp.headers.get("Content-Type", "")
                    if "json" not in ctype:
                        return body.decode(errors="replace")
                    try:
                        return json.loads(body)
                    except ValueError:
                        raise _not_ours(resp.status, url, "with invalid JSON", body.decode(errors="replace")) from None
            except urllib.error.HTTPError as e:
                body = e.read()
                detail = _error_detail(body)
                retry_after = parse_retry_after(e.headers.get("Retry-After"), self.max_retry_wait)
                if e.code == 429 and attempt < self.max_retries:
                    self.retries += 1
                    time.sleep(retry_after if retry_after is not None else min(1.0, self.max_retry_wait))
                    continue
                err = ServerError(e.code, detail, retry_after)
                err.url = url
                raise err from None
            except urllib.error.URLError as e:  # refused, unknown host ...: one line with the URL
                reason = getattr(e.reason, "strerror", None) or str(e.reason)
                raise ClientConnectionError(url, reason) from None
            except (TimeoutError, ConnectionError) as e:
                raise ClientConnectionError(url, str(e) or type(e).__name__) from None
        raise AssertionError("unreachable")

    def _post(self, route: str, items: list[dict], *keys: str) -> list[dict]:
        """One result object per item, each holding ``keys``; else ServerError naming the URL and the answer."""
        out = self._request("POST", f"/v1/{route}", items)
        url = self.url + f"/v1/{route}"
        if not isinstance(out, list) or len(out) != len(items):
            raise _not_ours(200, url, f"with something other than a list of {len(items)} results", out)
        for r in out:
            if not isinstance(r, dict) or any(k not in r for k in keys):
                raise _not_ours(200, url, f"a result without the fields {', '.join(keys)}", r)
        return out

    @staticmethod
    def _items(inputs, candidates, instructions, **extra) -> list[dict]:
        if isinstance(inputs, str) or isinstance(candidates, str):
            raise TypeError("inputs and candidates must be lists (one entry per prompt)")
        if len(inputs) != len(candidates):
            raise ValueError(f"got {len(inputs)} inputs but {len(candidates)} candidate lists")
        if instructions is not None and len(instructions) != len(inputs):
            raise ValueError(f"instructions must be None or a list with one string per input ({len(inputs)})")
        return [{"input": inp, "candidates": list(c), **({"instruction": instructions[p]} if instructions else {}),
                 **extra} for p, (inp, c) in enumerate(zip(inputs, candidates))]

    # -- the verbs --------------------------------------------------------------------------------

    def rank(self, inputs, candidates, instructions=None, return_scores: bool = False,
             policy: str = "max_logits", *, source_maxlength: Optional[int] = None,
             candidate_maxlength: Optional[int] = None):
        """As Ranker.rank: ranks (1 = best) or scores per prompt; one array when all have n candidates.
        source_maxlength / candidate_maxlength (every verb): this call's truncation (None: the server's)."""
        check_choice("policy", policy, POLICIES)
        out = self._post("rank", self._items(inputs, candidates, instructions, return_scores=return_scores,
                                             policy=policy, **_truncation(source_maxlength, candidate_maxlength)),
                         "scores" if return_scores else "ranks")
        rows = [np.asarray(r["scores"], dtype=np.float32) if return_scores else np.asarray(r["ranks"], np.int32)
                for r in out]
        if rows and all(len(r) == len(rows[0]) for r in rows):
            return np.stack(rows)
        return rows

    def select(self, inputs, candidates, top_k: int = 1, strategy: str = "tournament", orders: str = "both",
               seed: int = 0, instructions=None, policy: str = "max_logits", worst: bool = False,
               budget: int | None = None, *, source_maxlength: Optional[int] = None,
               candidate_maxlength: Optional[int] = None) -> list[dict]:
        """Per prompt ``{top_k: [0-based indices, best first], comparisons, forward_passes, steps}``.
        budget: forward passes per prompt for swiss / knockout_rr / adaptive (None: their default)."""
        _check_select(top_k, strategy, seed, budget, orders, policy)
        return self._post("select", self._items(inputs, candidates, instructions, top_k=top_k, strategy=strategy,
                                                orders=orders, seed=seed, policy=policy, worst=worst,
                                                budget=budget,
                                                **_truncation(source_maxlength, candidate_maxlength)), "top_k")

    def compare(self, inputs, candidates_a, candidates_b, instructions=None, mode: str = "[A,B]+[B,A]", *,
                source_maxlength: Optional[int] = None, candidate_maxlength: Optional[int] = None) -> np.ndarray:
        """As Ranker.compare: one logit per input that candidate A is better than B."""
        check_choice("mode", mode, COMPARE_MODES)
        if len(candidates_a) != len(candidates_b) or len(inputs) != len(candidates_a):
            raise ValueError("inputs, candidates_a and candidates_b must have the same length")
        items = [{"input": i, "candidate_a": a, "candidate_b": b, "mode": mode,
                  **_truncation(source_maxlength, candidate_maxlength),
                  **({"instruction": instructions[p]} if instructions else {})}
                 for p, (i, a, b) in enumerate(zip(inputs, candidates_a, candidates_b))]
        return np.asarray([r["logit"] for r in self._post("compare", items, "logit")], dtype=np.float32)

    def judge(self, prompts, completions, shuffle_order: bool = True, return_scores: bool = False,
              temperature: float = 1.0, seed: Optional[int] = None) -> list:
        """TRL's PairRMJudge.judge: per prompt the preferred completion index (0 or 1), or with
        return_scores the probability that completion 0 is better."""
        check_temperature(temperature), check_optional_seed(seed)  # as the server (and the Ranker) would
        items = [{"prompt": p, "completions": list(c), "shuffle_order": shuffle_order,
                  "return_scores": return_scores, "temperature": temperature, "seed": seed}
                 for p, c in zip(prompts, completions)]
        out = self._post("judge", items, "probability" if return_scores else "preferred")
        return [r["probability"] if return_scores else r["preferred"] for r in out]

    def fuse(self, inputs, candidates, instructions=None, top_k: int = 3, strategy: str = "tournament",
             seed: int = 0, budget: int | None = None, *, source_maxlength: Optional[int] = None,
             candidate_maxlength: Optional[int] = None, **generate) -> list[str]:
        """Select the top k of each prompt and fuse them (the server needs --fuser)."""
        _check_select(top_k, strategy, seed, budget)
        out = self._post("fuse", self._items(inputs, candidates, instructions, top_k=top_k, strategy=strategy,
                                             seed=seed, budget=budget,
                                             **_truncation(source_maxlength, candidate_maxlength), **generate),
                         "text")
        return [r["text"] for r in out]

    def health(self) -> bool:
        try:
            answer = self._request("GET", "/health")
            return isinstance(answer, dict) and answer.get("status") == "ok"
        except (OSError, ServerError):
            return False

    def ready(self) -> bool:
        try:
            answer = self._request("GET", "/ready")
            return isinstance(answer, dict) and bool(answer.get("ready"))
        except (OSError, ServerError):
            return False

    def wait_ready(self, timeout: float = 60.0, interval: float = 0.1) -> bool:
        """Poll /ready until it says ready or timeout seconds pass."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.ready():
                return True
            time.sleep(interval)
        return False
