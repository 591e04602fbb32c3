"""BatchingEngine: one Ranker shared by many threads or asyncio tasks, with continuous batching.

    engine = BatchingEngine(Ranker.from_pretrained(path))
    ranks = await engine.rank(inputs, candidates)              # asyncio callers
    best = engine.select_sync(inputs, candidates, strategy="tournament")   # threads

One model worker thread owns the runtime session. Every request in flight holds its own state: its
step generator (selection/steps.py and verbs.py, the very generators the Ranker drives) and the rows
of its current step. Each iteration the worker takes the ready rows of *all* requests in flight whose
step names the same model (up to ``max_batch_tokens``), packs them together with the C++ packer, runs
them, sends every request its logits and answers those that finished. A new request
joins at the next iteration, so a tournament's log2(n) steps interleave with other requests' steps
instead of waiting behind them (continuous batching, as LLM servers do for decode steps).

Tokenizing happens in the caller's thread (or, for ``await``, in a small thread pool), so it
overlaps model work. Results are those of ``Ranker.rank`` / ``select`` / ``compare`` with the same
settings: only the batch composition differs, which changes float rounding, not the rows computed.
``run_sync`` / ``run`` take any step generator (e.g. a wrapper that re-scores rows on another model).

The engine never asks which kind of model the ranker holds: a request is the ranker's plan for its verb
(Ranker.plan: the checks, a step generator and its cost), and its ranker's scorer says which model rows
a step needs and runs the rows of many requests together (scorer.py). A reward model's plan is
one step of (prompt, candidate) rows, batched across requests like PairRM's pair rows.
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
from typing import Callable, Optional

import numpy as np

from ..options import check_count, check_non_negative_number
from ..ranker import Ranker
from ..scorer import Plan
from ..selection.steps import DEFAULT_MODEL, Selection, Step, Steps

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


_SERIAL = itertools.count()


class _Job:
    """One request in flight: its encoded texts, its step generator and the rows of its current step
    (the scorer's rows: what ``scorer.step_rows`` makes of the step)."""

    def __init__(self, scorer, enc, steps: Steps, reserved: int, deadline: Optional[float]):
        self.serial = next(_SERIAL)  # names the job in the packer cache (ids of freed objects get reused)
        self.reserved = reserved  # rows still counted against the queue bound
        self.deadline = deadline
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        self.cancelled = False
        self.started = False  # has run at least one row (the batching delay is for new arrivals only)
        self.arrival = time.monotonic()
        self.rows = self.text_rows = self.row_len = self.logits = self.back = None
        self.group = 1
        self.model = DEFAULT_MODEL  # the model the current step's rows run on (Step.model)
        self.cursor = 0
        self.scorer = scorer
        self.enc = enc
        self.steps = steps
        self.n_tokens = scorer.n_tokens(enc)

    def cancel(self) -> None:
        self.cancelled = True

    def remaining(self) -> int:
        return 0 if self.rows is None else len(self.rows) - self.cursor

    def _set_step(self, step: Step) -> None:
        self.model = step.model
        self.group = step.group if len(step.rows) % step.group == 0 else 1
        # The scorer's model rows: one per step row (PairRM), or each distinct one once (a reward model),
        # sent back to the step in its own order (``back``).
        self.text_rows, self.row_len, self.back = self.scorer.step_rows(self.enc, step)
        self.rows = self.text_rows
        self.logits = np.empty(len(self.text_rows), dtype=np.float32)
        self.cursor = 0

    def advance(self, value=None) -> bool:
        """Start the next step (feeding the last one's logits); True when the request has finished."""
        try:
            if value is not None and self.back is not None:
                value = value[self.back]
            step = next(self.steps) if value is None else self.steps.send(value)
            while not len(step.rows):  # a step with no rows (no prompts at all): answer it at once
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
            check_count(name, value)
        max_wait_ms = check_non_negative_number("max_wait_ms", max_wait_ms)
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
        self._forward_cache: dict = {}  # the scorer's (e.g. the packer over the texts of the last iteration's jobs)
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
                    worst: bool = False, budget: int | None = None, *, source_maxlength=None,
                    candidate_maxlength=None, timeout: float | None = None) -> list[Selection]:
        """``Ranker.select`` through the engine; blocks the calling thread."""
        return self._submit_select(inputs, candidates, top_k, strategy, orders, seed, instructions, initial_orders,
                                   policy, worst, source_maxlength, candidate_maxlength, timeout,
                                   budget).future.result()

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

    def run_sync(self, sources, candidates, steps: Steps, *, cost: int | None = None, source_maxlength=None,
                 candidate_maxlength=None, timeout: float | None = None):
        """Any step generator (selection.steps / verbs, or a wrapper of them) through the engine, as
        ``Ranker.run``: ``sources`` / ``candidates`` already checked (check_prompts). Its steps share
        iterations with every other request whose step names the same model. cost: the model rows to
        hold against max_queued_pairs (None: every ordered pair of every prompt)."""
        return self._submit_steps(sources, candidates, steps, cost, source_maxlength, candidate_maxlength,
                                  timeout).future.result()

    def _submit_steps(self, sources, candidates, steps, cost, src_len, cand_len, timeout):
        plan = self.ranker.scorer.plan_steps(self.ranker, sources, candidates, steps, cost)
        plan.cost = check_count("cost", plan.cost, minimum=0)
        plan.source_maxlength, plan.candidate_maxlength = src_len, cand_len
        return self._enqueue(plan, timeout)

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

    async def run(self, sources, candidates, steps: Steps, *, cost: int | None = None, source_maxlength=None,
                  candidate_maxlength=None, timeout: float | None = None):
        """``await engine.run(...)``: as run_sync."""
        return await self._await(self._submit_steps, (sources, candidates, steps, cost, source_maxlength,
                                                      candidate_maxlength, timeout), {})

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

    def _submit(self, verb: str, args: tuple, timeout, **kwargs) -> _Job:
        """A verb's request: the ranker's plan checks it (in the caller's thread, as the offline verb does)
        and gives its steps and its cost against max_queued_pairs; the engine queues and runs its rows."""
        return self._enqueue(self.ranker.plan(verb, *args, **kwargs), timeout)

    def _submit_rank(self, inputs, candidates, instructions, return_scores, policy, src_len, cand_len, timeout):
        return self._submit("rank", (inputs, candidates, instructions, return_scores, policy), timeout,
                            source_maxlength=src_len, candidate_maxlength=cand_len)

    def _submit_select(self, inputs, candidates, top_k, strategy, orders, seed, instructions, initial_orders,
                       policy, worst, src_len, cand_len, timeout, budget=None):
        return self._submit("select", (inputs, candidates, top_k, strategy, orders, seed, instructions,
                                       initial_orders, policy, worst, budget), timeout,
                            source_maxlength=src_len, candidate_maxlength=cand_len)

    def _submit_compare(self, inputs, candidates_a, candidates_b, instructions, mode, src_len, cand_len, timeout):
        return self._submit("compare", (inputs, candidates_a, candidates_b, instructions, mode), timeout,
                            source_maxlength=src_len, candidate_maxlength=cand_len)

    def _submit_judge(self, prompts, completions, shuffle_order, return_scores, temperature, seed, timeout):
        return self._submit("judge", (prompts, completions, shuffle_order, return_scores, temperature), timeout,
                            seed=seed)

    def _enqueue(self, plan: Plan, timeout) -> _Job:
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        src_len, cand_len, cost = plan.source_maxlength, plan.candidate_maxlength, plan.cost
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
            enc = self.ranker.encode(plan.sources, plan.candidates, src_len, cand_len)
            job = _Job(self.ranker.scorer, enc, plan.steps, cost, deadline)
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
        # One model per iteration: the first ready request's step names it (Step.model); requests whose
        # step runs on another model wait for a following iteration (they come first there, in turn).
        first = next((job for job in self._jobs if job.remaining()), None)
        model = first.model if first is not None else DEFAULT_MODEL
        ready = sum(1 for job in self._jobs if job.remaining() and job.model == model)
        cap = self.max_rows_per_request if ready > 1 else None
        for job in self._jobs:
            if job.remaining() == 0 or job.model != model:
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

    def _count_batch(self, rows: int, real: int, pad: int, seconds: float) -> None:
        """After each model call: the engine's counters and the on_batch hook (metrics)."""
        with self._cv:
            st = self.stats
            st.batches += 1
            st.rows += rows
            st.tokens += real
            st.pad_tokens += pad
            st.model_s += seconds
        if self.on_batch is not None:
            self.on_batch(rows, real, pad, seconds)

    def _forward(self, picked) -> np.ndarray:
        """The picked rows of every request, run together by the ranker's scorer; their logits."""
        ranker = self.ranker
        parts = [(job.serial, job.enc, job.text_rows[start:stop]) for job, start, stop in picked]
        group = 2 if all(job.group == 2 and (stop - start) % 2 == 0 for job, start, stop in picked) else 1
        model = ranker.model_for(picked[0][0].model)  # _pick takes rows of one model per iteration
        return ranker.scorer.forward(ranker, model, parts, group,
                                     lambda rows, real, pad, model_s, pack_s: self._count_batch(rows, real, pad, model_s),
                                     self._forward_cache)

    def _run_iteration(self, picked) -> None:
        try:
            t_iter = time.perf_counter()
            logits = self._forward(picked)
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
            rate = len(logits) / elapsed
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
