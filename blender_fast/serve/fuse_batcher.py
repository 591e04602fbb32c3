"""Fusion batched across concurrent requests: their prompts are collected and run as one ``Fuser.fuse``
(one seq2seq ``generate`` per batch) instead of one generate per request.

A batch starts when the first prompt arrives and waits at most ``max_wait_ms`` for others (or until
``max_batch`` prompts are there); prompts with different generate settings (num_beams, max_new_tokens)
never share a batch. Admission: at most ``max_queued`` prompts wait; beyond it ``Overloaded`` (429).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

from ..options import check_count, check_non_negative_number
from .engine import EngineClosed, Overloaded

DEFAULT_FUSE_MAX_BATCH = 8
DEFAULT_FUSE_MAX_WAIT_MS = 10.0
DEFAULT_FUSE_MAX_QUEUED = 64


@dataclass
class _Entry:
    inputs: list
    candidates: list
    instructions: list
    generate: dict
    key: str = ""
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


class FuseBatcher:
    """One model thread running ``fuser.fuse`` over the prompts of all requests waiting together.

    on_batch(prompts, requests, seconds) is called after each generate batch (for /metrics)."""

    def __init__(self, fuser, *, max_batch: int = DEFAULT_FUSE_MAX_BATCH,
                 max_wait_ms: float = DEFAULT_FUSE_MAX_WAIT_MS, max_queued: int = DEFAULT_FUSE_MAX_QUEUED,
                 on_batch: Optional[Callable] = None):
        check_count("max_batch", max_batch)
        check_count("max_queued", max_queued)
        check_non_negative_number("max_wait_ms", max_wait_ms)
        self.fuser = fuser
        self.max_batch, self.max_wait_s, self.max_queued = max_batch, max_wait_ms / 1000.0, max_queued
        self.on_batch = on_batch
        self.batches = 0                 # generate batches run so far
        self._pending: list[_Entry] = []
        self._cv = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="blender-fast-fuse", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        with self._cv:
            return sum(len(e.inputs) for e in self._pending)

    def submit(self, inputs, candidates, instructions, **generate) -> concurrent.futures.Future:
        """Queue one request's prompts; the future's result is their fused texts, in order."""
        entry = _Entry(list(inputs), [list(c) for c in candidates], list(instructions), dict(generate))
        entry.key = json.dumps(entry.generate, sort_keys=True)
        with self._cv:
            if self._closed:
                raise EngineClosed("the fuser is closed")
            queued = sum(len(e.inputs) for e in self._pending)
            if queued + len(entry.inputs) > self.max_queued:
                raise Overloaded(f"fusion queue full ({queued} prompts waiting, at most {self.max_queued}); "
                                 f"retry later", retry_after=1.0)
            self._pending.append(entry)
            self._cv.notify_all()
        return entry.future

    async def fuse(self, inputs, candidates, instructions, **generate) -> list[str]:
        future = self.submit(inputs, candidates, instructions, **generate)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # the client went away: a prompt not yet started is dropped
            raise

    def close(self) -> None:
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join(timeout=60)

    def _take(self) -> list[_Entry]:
        """The next batch: the oldest entry's generate settings, up to max_batch prompts (called locked)."""
        self._pending = [e for e in self._pending if not e.future.cancelled()]
        if not self._pending:
            return []
        key, taken, rows = self._pending[0].key, [], 0
        for e in self._pending:
            if e.key == key and (not taken or rows + len(e.inputs) <= self.max_batch):
                taken.append(e)
                rows += len(e.inputs)
        self._pending = [e for e in self._pending if all(e is not t for t in taken)]
        return taken

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not self._pending and not self._closed:
                    self._cv.wait()
                if self._closed and not self._pending:
                    return
                # Wait for company: a batch fills up or max_wait passes since the first prompt came.
                end = time.monotonic() + self.max_wait_s
                while (sum(len(e.inputs) for e in self._pending) < self.max_batch and not self._closed
                       and time.monotonic() < end):
                    self._cv.wait(max(0.0, end - time.monotonic()))
                batch = [e for e in self._take() if e.future.set_running_or_notify_cancel()]
            if batch:
                self._run(batch)

    def _run(self, batch: list[_Entry]) -> None:
        t0 = time.perf_counter()
        try:
            texts = self.fuser.fuse([i for e in batch for i in e.inputs], [c for e in batch for c in e.candidates],
                                    [s for e in batch for s in e.instructions], batch_size=self.max_batch,
                                    progress=False, **batch[0].generate)
        except BaseException as error:  # noqa: BLE001  (every waiting request gets its answer)
            for e in batch:
                e.future.set_exception(error)
            return
        self.batches += 1
        if self.on_batch is not None:  # before the answers: a client that reads /metrics next sees this batch
            self.on_batch(sum(len(e.inputs) for e in batch), len(batch), time.perf_counter() - t0)
        per = len(texts) // sum(len(e.inputs) for e in batch)  # num_return_sequences per prompt
        start = 0
        for e in batch:
            e.future.set_result(texts[start: start + per * len(e.inputs)])
            start += per * len(e.inputs)
