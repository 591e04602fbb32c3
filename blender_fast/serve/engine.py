"""BatchingEngine: one Ranker shared by many threads or asyncio tasks, with continuous batching.

    engine = BatchingEngine(Ranker.from_pretrained(path))
    ranks = await engine.rank(inputs, candidates)              # asyncio callers
    best = engine.select_sync(inputs, candidates, strategy="tournament")   # threads

One model worker thread owns the runtime session. Every request in flight holds its own state: the
rows of a full ranking, or a step-wise ``_core.Selector``. Each iteration the worker takes the ready
rows of *all* requests in flight (up to ``max_batch_tokens``), packs them together with the C++
packer, runs them, feeds every request its logits and answers those that finished. A new request
joins at the next iteration, so a tournament's log2(n) steps interleave with other requests' steps
instead of waiting behind them (continuous batching, as LLM servers do for decode steps).

Tokenizing happens in the caller's thread (or, for ``await``, in a small thread pool), so it
overlaps model work. Results are those of ``Ranker.rank`` / ``select`` / ``compare`` with the same
settings: only the batch composition differs, which changes float rounding, not the rows computed.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Generator, Optional

import numpy as np

from .. import _core
from ..options import COMPARE_MODES, ORDERS, POLICIES, STRATEGIES, check_choice
from ..ranker import Ranker, _stack_if_equal, check_prompts
from ..selection.strategies import (Selection, _as_model_rows, _budgets, _scores, _select_full, ranks_from_scores,
                        starting_orders)
from ..model.tokenization import EncodedPrompts

DEFAULT_MAX_BATCH_TOKENS = 16384
DEFAULT_MAX_WAIT_MS = 2.0
DEFAULT_MAX_QUEUED_PAIRS = 20000
DEFAULT_MAX_ROWS_PER_REQUEST = 64


class Overloaded(RuntimeError):
    """The engine's queue is full; try again after ``retry_after`` seconds (HTTP 429)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class DeadlineExceeded(TimeoutError):
    """The request's deadline passed before it finished; its remaining rows were dropped (HTTP 504)."""


class EngineClosed(RuntimeError):
    """The engine is draining or closed and accepts no new requests (HTTP 503)."""


@dataclass
class EngineStats:
    """Cumulative counters since the engine started (the server's /metrics reads them)."""

    requests: int = 0
    completed: int = 0
    failed: int = 0
    rejected: int = 0  # Overloaded
    iterations: int = 0
    batches: int = 0
    rows: int = 0  # model rows (forward passes)
    tokens: int = 0  # real tokens
    pad_tokens: int = 0
    model_s: float = 0.0

    @property
    def pad_fraction(self) -> float:
        total = self.tokens + self.pad_tokens
        return self.pad_tokens / total if total else 0.0


# A step generator yields (model rows int64[m, 3] of (prompt, left, right), group size) and receives
# the float32 logits of those rows; its return value is the request's result.
_Steps = Generator[tuple, np.ndarray, object]


def _full_steps(ns: list[int], top_k: int, orders: str, policy: str, worst: bool) -> _Steps:
    """Generator twin of selection.select(strategy="full"): one step with every pair."""
    if not ns:
        return []

    # _select_full is itself a step generator (selection/steps.py) now: forward its one step.
    inner = _select_full(ns, top_k, orders, policy)
    try:
        step = next(inner)
    except StopIteration as stop:  # no pairs at all (n = 1 everywhere)
        return stop.value
    out = yield step.rows, step.group
    try:
        inner.send(-out if worst else out)
    except StopIteration as stop:
        return stop.value
    raise RuntimeError("full selection asked for a second step")


def _selector_steps(ns: list[int], selector, orders: str, worst: bool) -> _Steps:
    """Generator twin of selection.select's bubble / tournament loop over a `_core.Selector`."""
    passes = np.zeros(len(ns), dtype=np.int64)
    while not selector.done():
        rows = selector.next()
        if not len(rows):
            raise RuntimeError("selection stalled with unfinished prompts")
        model_rows = _as_model_rows(rows, orders)
        out = yield model_rows, (2 if orders == "both" else 1)
        out = (-out if worst else out).astype(np.float64)
        if np.isnan(out).any():
            p = int(model_rows[np.flatnonzero(np.isnan(out))[0], 0])
            raise ValueError(f"the model returned NaN for prompt {p}")
        passes += np.bincount(model_rows[:, 0], minlength=len(ns))
        selector.feed(_scores(out, orders))
    return [Selection(top_k=list(selector.top_k(p)), comparisons=selector.comparisons(p),
                      forward_passes=int(passes[p]), steps=selector.steps(p), scores=None, log=selector.log(p))
            for p in range(len(ns))]


def _rank_steps(ns, policy, return_scores) -> _Steps:
    sels = yield from _full_steps(ns, 1, "both", policy, False)
    scores = [s.scores for s in sels]
    if return_scores:
        return _stack_if_equal(scores)
    return _stack_if_equal([ranks_from_scores(s) for s in scores])


def _compare_steps(n: int, mode: str) -> _Steps:
    prompts = np.arange(n, dtype=np.int64)
    ab = np.stack([prompts, np.zeros(n, np.int64), np.ones(n, np.int64)], axis=1)
    if mode == "[A,B]":
        return (yield ab, 1)
    if mode == "[B,A]":
        return (yield ab[:, [0, 2, 1]], 1)
    rows = np.empty((2 * n, 3), dtype=np.int64)
    rows[0::2], rows[1::2] = ab, ab[:, [0, 2, 1]]
    both = yield rows, 2
    return both[0::2] - both[1::2]


def _judge_steps(ns, flips: np.ndarray, return_scores: bool, temperature: float) -> _Steps:
    """TRL's PairRMJudge on top of a full ranking of each (prompt, 2 completions)."""
    sels = yield from _full_steps(ns, 1, "both", "max_logits", False)
    scores = np.stack([s.scores for s in sels]).astype(np.float64) if sels else np.zeros((0, 2))
    if not return_scores:
        ranks = np.stack([ranks_from_scores(s) for s in scores]) - 1 if len(scores) else np.zeros((0, 2), int)
        ranks[flips] = ranks[flips][:, ::-1]
        return [int(r) for r in ranks[:, 0]]
    logits = scores / temperature
    logits[flips] = logits[flips][:, ::-1]
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return [float(p) for p in (shifted / shifted.sum(axis=-1, keepdims=True))[:, 0]]


def _row_cost(strategy: str, n: int, top_k: int, per_row: int) -> int:
    """Model rows a selection will run (an upper estimate for tournaments beyond top-1)."""
    if n < 2:
        return 0
    if strategy == "full":
        comparisons = n * (n - 1) // 2
    elif strategy == "bubble":
        comparisons = top_k * (2 * n - top_k - 1) // 2
    else:
        comparisons = n - 1 + (top_k - 1) * math.ceil(math.log2(n))
    return comparisons * per_row


_SERIAL = itertools.count()


class _Job:
    """One request in flight: its encoded texts, its step generator and the rows of its current step."""

    def __init__(self, enc: EncodedPrompts, steps: _Steps, reserved: int, deadline: Optional[float]):
        self.serial = next(_SERIAL)  # names the job in the packer cache (ids of freed objects get reused)
        self.enc = enc
        self.steps = steps
        self.reserved = reserved  # rows still counted against the queue bound
        self.deadline = deadline
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.cancelled = False
        self.started = False  # has run at least one row (the batching delay is for new arrivals only)
        self.arrival = time.monotonic()
        self.n_tokens = int(enc.tokens.size)
        self._eff_len = np.minimum(np.diff(enc.offsets), enc.limits)
        self.rows = self.text_pairs = self.row_len = self.logits = None
        self.group = 1
        self.cursor = 0

    def cancel(self) -> None:
        self.cancelled = True

    def remaining(self) -> int:
        return 0 if self.rows is None else len(self.rows) - self.cursor

    def _set_step(self, step) -> None:
        rows, group = step
        enc = self.enc
        prompts = rows[:, 0]
        self.rows = rows
        self.group = group if len(rows) % group == 0 else 1
        self.text_pairs = np.stack([enc.source_index[prompts], enc.candidate_start[prompts] + rows[:, 1],
                                    enc.candidate_start[prompts] + rows[:, 2]], axis=1)
        self.row_len = self._eff_len[self.text_pairs].sum(axis=1)
        self.logits = np.empty(len(rows), dtype=np.float32)
        self.cursor = 0

    def advance(self, value=None) -> bool:
        """Start the next step (feeding the last one's logits); True when the request has finished."""
        try:
            step = next(self.steps) if value is None else self.steps.send(value)
            while not len(step[0]):  # a step with no rows (no prompts at all): answer it at once
                step = self.steps.send(np.empty(0, dtype=np.float32))
        except StopIteration as stop:
            self.rows = None
            _settle(self.future, result=stop.value)
            return True
        self._set_step(step)
        return False


def _settle(future: concurrent.futures.Future, result=None, error: BaseException | None = None) -> None:
    if future.done():
        return
    try:
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:  # cancelled by its caller meanwhile
        pass


class BatchingEngine:
    """Continuous batching over a Ranker for many concurrent callers (threads or asyncio tasks).

    max_batch_tokens: real tokens one scheduler iteration runs (all its model calls together; each
      model call still stays under the ranker's token_budget / max_batch_size).
    max_wait_ms: when the engine was idle, how long the first new request waits for others to join
      its batch (running requests never wait). Trades a little latency for fuller batches.
    max_queued_pairs: the bound on model rows admitted but not yet run; past it, requests fail with
      Overloaded (one request is always admitted into an empty queue).
    max_rows_per_request: the most rows one request contributes to an iteration it shares with others
      (a request alone takes what max_batch_tokens allows).
    cross_request: False runs one request at a time (a naive wrapper; benchmarks only).
    on_batch(rows, tokens, pad_tokens, seconds): called after each model call (metrics).

    Fairness: requests are served in arrival order, and each contributes at most
    max_rows_per_request rows to an iteration it shares, so a 12-candidate full ranking (132 rows) cannot fill
    the iterations ahead of a 2-candidate judge that arrives just after it: the judge joins the next
    iteration. Arrival order (not shortest-first) keeps the latency of large requests bounded too.
    """

    def __init__(self, ranker: Ranker, *, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 max_wait_ms: float = DEFAULT_MAX_WAIT_MS, max_queued_pairs: int = DEFAULT_MAX_QUEUED_PAIRS,
                 max_rows_per_request: int = DEFAULT_MAX_ROWS_PER_REQUEST, cross_request: bool = True,
                 tokenize_threads: int = 2, on_batch: Optional[Callable] = None):
        for name, value in (("max_batch_tokens", max_batch_tokens), ("max_queued_pairs", max_queued_pairs),
                            ("max_rows_per_request", max_rows_per_request)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.ranker = ranker
        self.max_batch_tokens = max_batch_tokens
        self.max_wait_s = max_wait_ms / 1000.0
        self.max_queued_pairs = max_queued_pairs
        # Rows come in (a,b),(b,a) pairs that must stay together: at least one pair per request.
        self.max_rows_per_request = max(2, max_rows_per_request)
        self.cross_request = cross_request
        self.on_batch = on_batch
        self.stats = EngineStats()
        self._cv = threading.Condition()
        self._jobs: deque[_Job] = deque()  # in flight, in arrival order
        self._queued_pairs = 0  # rows reserved by admitted requests, not yet run
        self._admitted = 0  # requests admitted (tokenizing or in flight) and not yet answered
        self._closing = False
        self._stopped = False
        self._rows_per_s = 0.0  # recent model throughput, for Retry-After
        self._last_iteration_jobs = 0  # requests that shared the last iteration
        self._packer_key: tuple = ()  # the jobs whose texts the cached packer holds, and where each starts
        self._packer = self._packer_bases = None
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=tokenize_threads,
                                                           thread_name_prefix="blender-fast-tokenize")
        self._worker = threading.Thread(target=self._loop, name="blender-fast-model", daemon=True)
        self._worker.start()

    # -- gauges ---------------------------------------------------------------------------------

    @property
    def queued_pairs(self) -> int:
        """Model rows admitted and not yet run (the quantity max_queued_pairs bounds)."""
        return self._queued_pairs

    @property
    def queued_tokens(self) -> int:
        """Tokens held by the requests in flight (their encoded texts)."""
        with self._cv:
            return sum(j.n_tokens for j in self._jobs)

    @property
    def in_flight(self) -> int:
        return self._admitted

    @property
    def accepting(self) -> bool:
        return not self._closing

    # -- blocking API ---------------------------------------------------------------------------

    def rank_sync(self, inputs, candidates, instructions=None, return_scores: bool = False,
                  policy: str = "max_logits", *, source_maxlength=None, candidate_maxlength=None,
                  timeout: float | None = None):
        """``Ranker.rank`` through the engine; blocks the calling thread. timeout: the deadline, seconds."""
        return self._submit_rank(inputs, candidates, instructions, return_scores, policy, source_maxlength,
                                 candidate_maxlength, timeout).future.result()

    def select_sync(self, inputs, candidates, top_k: int = 1, strategy: str = "bubble", orders: str = "both",
                    seed: int = 0, instructions=None, initial_orders=None, policy: str = "max_logits",
                    worst: bool = False, *, source_maxlength=None, candidate_maxlength=None,
                    timeout: float | None = None) -> list[Selection]:
        """``Ranker.select`` through the engine; blocks the calling thread."""
        return self._submit_select(inputs, candidates, top_k, strategy, orders, seed, instructions, initial_orders,
                                   policy, worst, source_maxlength, candidate_maxlength, timeout).future.result()

    def compare_sync(self, inputs, candidates_a, candidates_b, instructions=None, mode: str = "[A,B]+[B,A]", *,
                     source_maxlength=None, candidate_maxlength=None, timeout: float | None = None) -> np.ndarray:
        """``Ranker.compare`` through the engine; blocks the calling thread."""
        return self._submit_compare(inputs, candidates_a, candidates_b, instructions, mode, source_maxlength,
                                    candidate_maxlength, timeout).future.result()

    def judge_sync(self, prompts, completions, shuffle_order: bool = True, return_scores: bool = False,
                   temperature: float = 1.0, *, seed: int | None = None, timeout: float | None = None) -> list:
        """TRL's PairRMJudge.judge: per (prompt, [c0, c1]) the preferred index (0 or 1), or with
        return_scores the probability that c0 is better, softmax(scores / temperature)[0]."""
        return self._submit_judge(prompts, completions, shuffle_order, return_scores, temperature, seed,
                                  timeout).future.result()

    # -- asyncio API ----------------------------------------------------------------------------

    async def rank(self, *args, **kwargs):
        """``await engine.rank(...)``: same arguments and result as rank_sync."""
        return await self._await(self._submit_rank_kw, args, kwargs)

    async def select(self, *args, **kwargs) -> list[Selection]:
        return await self._await(self._submit_select_kw, args, kwargs)

    async def compare(self, *args, **kwargs) -> np.ndarray:
        return await self._await(self._submit_compare_kw, args, kwargs)

    async def judge(self, *args, **kwargs) -> list:
        return await self._await(self._submit_judge_kw, args, kwargs)

    async def _await(self, submit, args, kwargs):
        # Validation and tokenization run in the pool, off the event loop and off the model thread.
        submitted = self._pool.submit(submit, *args, **kwargs)
        try:
            job = await asyncio.wrap_future(submitted)
        except asyncio.CancelledError:
            submitted.add_done_callback(lambda f: f.cancelled() or f.exception() or f.result().cancel())
            raise
        try:
            return await asyncio.wrap_future(job.future)
        except asyncio.CancelledError:
            # The caller went away (client disconnect, task cancelled): drop the remaining rows.
            job.cancel()
            with self._cv:
                self._cv.notify_all()
            raise

    # keyword adapters: the async verbs take the sync verbs' signatures
    def _submit_rank_kw(self, inputs, candidates, instructions=None, return_scores=False, policy="max_logits", *,
                        source_maxlength=None, candidate_maxlength=None, timeout=None):
        return self._submit_rank(inputs, candidates, instructions, return_scores, policy, source_maxlength,
                                 candidate_maxlength, timeout)

    def _submit_select_kw(self, inputs, candidates, top_k=1, strategy="bubble", orders="both", seed=0,
                          instructions=None, initial_orders=None, policy="max_logits", worst=False, budget=None, *,
                          source_maxlength=None, candidate_maxlength=None, timeout=None):
        return self._submit_select(inputs, candidates, top_k, strategy, orders, seed, instructions, initial_orders,
                                   policy, worst, source_maxlength, candidate_maxlength, timeout, budget)

    def _submit_compare_kw(self, inputs, candidates_a, candidates_b, instructions=None, mode="[A,B]+[B,A]", *,
                           source_maxlength=None, candidate_maxlength=None, timeout=None):
        return self._submit_compare(inputs, candidates_a, candidates_b, instructions, mode, source_maxlength,
                                    candidate_maxlength, timeout)

    def _submit_judge_kw(self, prompts, completions, shuffle_order=True, return_scores=False, temperature=1.0, *,
                         seed=None, timeout=None):
        return self._submit_judge(prompts, completions, shuffle_order, return_scores, temperature, seed, timeout)

    # -- submission (caller's thread): validate, reserve, tokenize, enqueue ----------------------

    def _submit_rank(self, inputs, candidates, instructions, return_scores, policy, src_len, cand_len, timeout):
        check_choice("policy", policy, POLICIES)
        sources, cands = check_prompts(inputs, candidates, instructions)
        ns = [len(c) for c in cands]
        cost = sum(_row_cost("full", n, 1, 2) for n in ns)
        return self._enqueue(sources, cands, src_len, cand_len, cost, timeout,
                             lambda: _rank_steps(ns, policy, return_scores))

    def _submit_select(self, inputs, candidates, top_k, strategy, orders, seed, instructions, initial_orders,
                       policy, worst, src_len, cand_len, timeout, budget=None):
        check_choice("strategy", strategy, STRATEGIES)
        check_choice("orders", orders, ORDERS)
        check_choice("policy", policy, POLICIES)
        if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)):
            raise ValueError(f"top_k must be an integer, got {top_k!r}")
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        sources, cands = check_prompts(inputs, candidates, instructions)
        ns = [len(c) for c in cands]
        for p, n in enumerate(ns):
            if top_k > n:
                raise ValueError(f"top_k = {top_k} exceeds the {n} candidates of prompt {p}")
        per_row = 2 if orders == "both" else 1
        # Comparisons per prompt for swiss / knockout_rr / adaptive (None for the others), checked like
        # Ranker.select's; they are also what such a request can cost at most.
        budgets = _budgets(budget, strategy, ns, top_k, orders)
        if budgets is not None:
            cost = int(sum(min(int(b), n * (n - 1) // 2) * per_row for b, n in zip(budgets, ns)))
        else:
            cost = sum(_row_cost(strategy, n, top_k, per_row) for n in ns)
        if strategy == "full" or not ns:
            make = lambda: _full_steps(ns, top_k, orders, policy, worst)  # noqa: E731
        else:
            # Built here, so that bad initial_orders fail in the caller's thread with the core's message.
            selector = _core.Selector(np.asarray(ns, dtype=np.int64), top_k, strategy,
                                      starting_orders(ns, seed, initial_orders), budgets)
            make = lambda: _selector_steps(ns, selector, orders, worst)  # noqa: E731
        return self._enqueue(sources, cands, src_len, cand_len, cost, timeout, make)

    def _submit_compare(self, inputs, candidates_a, candidates_b, instructions, mode, src_len, cand_len, timeout):
        check_choice("mode", mode, COMPARE_MODES)
        if isinstance(candidates_a, str) or isinstance(candidates_b, str):
            raise TypeError("candidates_a and candidates_b must be lists of strings, one per input")
        if len(candidates_a) != len(candidates_b):
            raise ValueError(f"got {len(candidates_a)} candidates_a but {len(candidates_b)} candidates_b")
        sources, cands = check_prompts(inputs, [[a, b] for a, b in zip(candidates_a, candidates_b)], instructions)
        n = len(sources)
        cost = n * (2 if mode == "[A,B]+[B,A]" else 1)
        return self._enqueue(sources, cands, src_len, cand_len, cost, timeout, lambda: _compare_steps(n, mode))

    def _submit_judge(self, prompts, completions, shuffle_order, return_scores, temperature, seed, timeout):
        if isinstance(completions, str) or not hasattr(completions, "__len__"):
            raise TypeError(f"completions must be a list of [completion_0, completion_1] pairs, got "
                            f"{type(completions).__name__}")
        for p, pair in enumerate(completions):
            if isinstance(pair, str) or not hasattr(pair, "__len__") or len(pair) != 2:
                raise ValueError(f"completions[{p}] must hold exactly 2 completions (the PairRM judge compares "
                                 "two), got " + (f"{len(pair)}" if hasattr(pair, "__len__") and not
                                                 isinstance(pair, str) else type(pair).__name__))
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a positive number, got {temperature!r}")
        sources, cands = check_prompts(prompts, completions)
        flips = (np.random.default_rng(seed).random(len(sources)) < 0.5 if shuffle_order
                 else np.zeros(len(sources), dtype=bool))
        # As TRL: flipped pairs are ranked as [c1, c0] and their results flipped back.
        cands = [c[::-1] if f else c for c, f in zip(cands, flips)]
        ns = [2] * len(sources)
        return self._enqueue(sources, cands, None, None, 2 * len(sources), timeout,
                             lambda: _judge_steps(ns, flips, return_scores, float(temperature)))

    def _enqueue(self, sources, cands, src_len, cand_len, cost: int, timeout, make_steps) -> _Job:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        self.ranker.truncation(src_len, cand_len)  # bad lengths fail before anything is reserved
        with self._cv:
            if self._closing:
                raise EngineClosed("the engine is draining and accepts no new requests")
            if self._queued_pairs > 0 and self._queued_pairs + cost > self.max_queued_pairs:
                self.stats.rejected += 1
                raise Overloaded(f"queue full: {self._queued_pairs} pairs queued, this request needs {cost}, "
                                 f"the bound is {self.max_queued_pairs}", self._retry_after())
            self._queued_pairs += cost
            self._admitted += 1
            self.stats.requests += 1
        try:
            enc = self.ranker.encode(sources, cands, src_len, cand_len)
            job = _Job(enc, make_steps(), cost, deadline)
            finished = job.advance()
        except BaseException:
            self._release(cost, failed=True)
            raise
        if finished:  # nothing to run (e.g. one candidate each)
            self._release(cost, failed=False)
            return job
        with self._cv:
            self._jobs.append(job)
            self._cv.notify_all()
        return job

    def _release(self, rows: int, failed: bool) -> None:
        with self._cv:
            self._forget(rows, failed)
            self._cv.notify_all()

    def _forget(self, reserved: int, failed: bool) -> None:
        """A request leaves (answered, failed, cancelled or past its deadline): the rows it reserved and
        did not run go back under the queue bound, and it is counted once. Holds self._cv."""
        self._queued_pairs -= reserved
        self._admitted -= 1
        if failed:
            self.stats.failed += 1
        else:
            self.stats.completed += 1

    def _retry_after(self) -> float:
        rate = self._rows_per_s or 50.0
        return float(min(60, max(1, math.ceil(self._queued_pairs / rate))))

    # -- the model worker -----------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._jobs and not self._stopped:
                    self._cv.wait()
                if self._stopped and not self._jobs:
                    return
                self._wait_for_company()
                self._reap()
                picked = self._pick()
            if picked:
                self._run_iteration(picked)

    def _wait_for_company(self) -> None:
        """Batching delay: when every ready request is new (the engine was idle) and the last iteration
        was shared by several requests (there is concurrency to gather), give others up to max_wait_ms
        to arrive, or until the ready rows fill an iteration. A lone client never waits. Holds self._cv."""
        if self.max_wait_s <= 0 or self._last_iteration_jobs < 2 or any(j.started for j in self._jobs):
            return
        until = min(j.arrival for j in self._jobs) + self.max_wait_s
        for _ in range(1000):  # bounded: each pass waits or returns
            now = time.monotonic()
            ready = sum(int(j.row_len[j.cursor:].sum()) for j in self._jobs if j.rows is not None)
            if now >= until or ready >= self.max_batch_tokens or self._stopped:
                return
            self._cv.wait(until - now)

    def _reap(self) -> None:
        """Drop cancelled requests and those past their deadline. Holds self._cv."""
        now = time.monotonic()
        for job in list(self._jobs):
            if job.cancelled or job.future.cancelled():
                error = concurrent.futures.CancelledError()
            elif job.deadline is not None and now > job.deadline:
                error = DeadlineExceeded(f"the request's deadline passed with {job.remaining()} rows of its "
                                         "current step still to run; they were dropped")
            else:
                continue
            self._jobs.remove(job)
            self._forget(job.reserved, failed=True)
            _settle(job.future, error=error)
        self._cv.notify_all()

    def _pick(self) -> list[tuple[_Job, int, int]]:
        """(job, start, stop) row ranges for this iteration, in arrival order. Holds self._cv."""
        picked, tokens = [], 0
        # The per-request cap is there to share iterations; a request running alone takes what the
        # token budget allows.
        ready = sum(1 for job in self._jobs if job.remaining())
        cap = self.max_rows_per_request if ready > 1 else None
        for job in self._jobs:
            if job.remaining() == 0:
                continue
            if not self.cross_request:
                return [(job, job.cursor, len(job.rows))]
            take = job.remaining() if cap is None else min(job.remaining(), cap)
            take -= take % job.group
            take = max(take, job.group)
            stop = job.cursor + take
            cost = int(job.row_len[job.cursor:stop].sum())
            if tokens + cost > self.max_batch_tokens:
                # Fill what is left of the budget with this request's leading rows, whole groups only
                # (at least one group when it comes first, so that every iteration makes progress).
                room = int(np.searchsorted(np.cumsum(job.row_len[job.cursor:stop]), self.max_batch_tokens - tokens,
                                           side="right"))
                room -= room % job.group
                if not picked:
                    room = max(room, job.group)
                if room > 0:
                    picked.append((job, job.cursor, job.cursor + int(room)))
                break
            picked.append((job, job.cursor, stop))
            tokens += cost
            if tokens >= self.max_batch_tokens:
                break
        return picked

    def _packer_for(self, jobs: list) -> tuple:
        """One packer over the texts of the participating requests, back to back (each request's text
        indices shifted by the texts before it); reused while the same requests take part (a lone
        client's selection steps)."""
        unique = list({job.serial: job for job in jobs}.values())
        key = tuple(job.serial for job in unique)
        if key != self._packer_key:
            tok = self.ranker.tokenizer
            tokens, offsets, limits, bases = [], [np.zeros(1, np.int64)], [], {}
            n_texts = n_tok = 0
            for job in unique:
                bases[job.serial] = n_texts
                tokens.append(job.enc.tokens)
                offsets.append(job.enc.offsets[1:] + n_tok)
                limits.append(job.enc.limits)
                n_texts += len(job.enc.limits)
                n_tok += int(job.enc.tokens.size)
            self._packer = _core.PairPacker(np.concatenate(tokens), np.concatenate(offsets), np.concatenate(limits),
                                            cand1_id=tok.cand1_id, cand2_id=tok.cand2_id, pad_id=tok.pad_id,
                                            prefix_offset=tok.prefix_offset)
            self._packer_key, self._packer_bases = key, bases
        return self._packer, self._packer_bases

    def _run_iteration(self, picked) -> None:
        ranker = self.ranker
        # This engine does not drive the certified cascade yet (Step.model): a cascade ranker serves its
        # exact fp32 model, never its fast one alone (which would give uncertified answers).
        run_model = ranker.models["exact"] if getattr(ranker, "cascade_eps", None) is not None else ranker.model
        try:
            packer, bases = self._packer_for([job for job, _, _ in picked])
            pairs = [job.text_pairs[start:stop] + bases[job.serial] for job, start, stop in picked]
            text_pairs = np.concatenate(pairs)
            group = 2 if all(job.group == 2 and (stop - start) % 2 == 0 for job, start, stop in picked) else 1
            order, bounds = packer.plan(text_pairs, ranker.token_budget, max(ranker.max_batch_size, group), group,
                                        ranker.batch_cost)
            logits = np.empty(len(text_pairs), dtype=np.float32)
            t_iter = time.perf_counter()
            for b in range(len(bounds) - 1):
                batch_rows = order[bounds[b]:bounds[b + 1]]
                ids, mask, pos, pad = packer.build(text_pairs, batch_rows)
                t0 = time.perf_counter()
                logits[batch_rows] = run_model(ids, mask, pos)
                seconds = time.perf_counter() - t0
                real = int(ids.size - pad)
                with self._cv:
                    st = self.stats
                    st.batches += 1
                    st.rows += len(batch_rows)
                    st.tokens += real
                    st.pad_tokens += int(pad)
                    st.model_s += seconds
                if self.on_batch is not None:
                    self.on_batch(len(batch_rows), real, int(pad), seconds)
            elapsed = time.perf_counter() - t_iter
        except Exception as e:  # the model failed: fail the requests of this iteration, keep serving
            with self._cv:
                for job in {id(j): j for j, _, _ in picked}.values():
                    if job in self._jobs:
                        self._jobs.remove(job)
                        self._forget(job.reserved, failed=True)
                    _settle(job.future, error=e)
                self._cv.notify_all()
            return
        if elapsed > 0:
            rate = len(text_pairs) / elapsed
            self._rows_per_s = rate if not self._rows_per_s else 0.8 * self._rows_per_s + 0.2 * rate
        # Feed every request its logits; advance those whose step is complete.
        at = 0
        finished, failed = [], []
        for job, start, stop in picked:
            job.logits[start:stop] = logits[at:at + stop - start]
            at += stop - start
            job.cursor = stop
            job.started = True
            with self._cv:
                ran = min(stop - start, job.reserved)
                job.reserved -= ran
                self._queued_pairs -= ran
            if job.cursor == len(job.rows) and not job.cancelled:
                try:
                    if job.advance(job.logits):
                        finished.append(job)
                except Exception as e:
                    _settle(job.future, error=e)
                    failed.append(job)
        with self._cv:
            self.stats.iterations += 1
            self._last_iteration_jobs = len({job.serial for job, _, _ in picked})
            for job in finished + failed:
                self._jobs.remove(job)
                self._forget(job.reserved, failed=job in failed)
            self._cv.notify_all()

    # -- lifecycle ------------------------------------------------------------------------------

    def warmup(self) -> None:
        """One tiny request end to end (allocations, the runtime's first-call cost) before serving."""
        self.rank_sync(["warm-up"], [["a", "b"]])

    def drain(self, timeout: float | None = None) -> bool:
        """Stop accepting requests (EngineClosed) and wait until every admitted one is answered.
        True when the engine is idle; False when timeout passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            self._closing = True
            while self._admitted > 0:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left if left is not None else 1.0)
        return True

    def close(self, timeout: float | None = None) -> None:
        """Drain, then stop the model worker and the tokenizer pool."""
        self.drain(timeout)
        with self._cv:
            self._stopped = True
            for job in list(self._jobs):  # only left when the drain timed out
                _settle(job.future, error=EngineClosed("the engine was closed before the request finished"))
            self._jobs.clear()
            self._cv.notify_all()
        self._worker.join(timeout=10)
        self._pool.shutdown(wait=False)

    def __enter__(self) -> "BatchingEngine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
