"""The step protocol: every selection strategy written once, as a generator of model steps.

A strategy is a generator. It yields :class:`Step` objects (the rows it needs scored), receives the
float32 logits of those rows through ``.send()`` (one per row: "left is better than right"), and
returns its result (``StopIteration.value``), e.g. a list of :class:`Selection`. A step with no rows is
allowed; a driver answers it with an empty array.

Drivers: :func:`run_steps` (synchronous: ``select()`` and the Ranker, whose scorer packs the rows and
runs the named model) and the server's BatchingEngine (many generators at once; it batches the ready
rows of the same ``Step.model`` across requests). A wrapper generator (e.g. a cascade that re-scores
some rows with an exact model) may interpose its own steps, so a strategy never assumes which model
scored its rows, and a driver honours ``Step.model``.

Here: the protocol (Step, run_steps, Selection, the errors a step may raise). The strategies written
in it are in ``strategies.py``; the verbs built on them (rank, compare, judge) in ``verbs.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generator

import numpy as np


DEFAULT_MODEL = "default"


@dataclass(frozen=True)
class Step:
    rows: np.ndarray          # int64 [m, 3]: (prompt, left, right) candidate indices within the call
    group: int = 1            # 2 when rows come as adjacent (a,b),(b,a) pairs that must share a batch
    model: str = DEFAULT_MODEL  # which of the ranker's models scores these rows ("default", or a name it holds)


# A step generator: yields Step, is sent float32 logits [len(step.rows)], returns its result.
Steps = Generator[Step, np.ndarray, object]


def run_steps(steps: Steps, score: Callable[[Step], np.ndarray]):
    """Drive one step generator to its end with a synchronous scorer; returns the generator's result."""
    try:
        step = next(steps)
        while True:
            step = steps.send(score(step) if len(step.rows) else np.empty(0, dtype=np.float32))
    except StopIteration as stop:
        return stop.value


def recorded(steps: Steps, log: list) -> Steps:
    """``steps`` unchanged, appending (rows, logits) of every step it runs to ``log`` (copies): e.g.
    every logit of a full ranking, for the agreement gate."""
    try:
        step = next(steps)
        while True:
            out = yield step
            log.append((step.rows.copy(), np.array(out, copy=True)))
            step = steps.send(out)
    except StopIteration as stop:
        return stop.value


@dataclass
class Selection:
    top_k: list[int]            # candidate indices, best first
    comparisons: int            # comparisons decided (unordered pairs)
    forward_passes: int         # model rows run for this prompt (comparisons * 2 when orders="both")
    steps: int                  # sequential model rounds this prompt took part in
    scores: "np.ndarray | None" = None  # strategy="full" only: per-candidate aggregate scores, float32
    log: list[tuple[int, int, int]] = field(default_factory=list)  # (a, b, winner), resolution order
    rescored: int = 0           # rows the certified cascade re-ran on the exact model, beyond forward_passes


class PromptError(ValueError):
    """An error about one prompt of a call: ``prompt`` is its index in that call, so callers that know
    where the prompt came from (a file and line) can say so."""

    def __init__(self, message: str, prompt: int):
        super().__init__(message)
        self.prompt = prompt


def model_nan_message(where: str) -> str:
    """THE wording of a NaN from the model, wherever it surfaces (Python, the server, the CLI, Ray): the
    model is blamed, never the input, and ``where`` only says which prompt it happened on ("prompt 3",
    "the prompt at in.jsonl:7")."""
    return (f"the model returned NaN on {where}: the model is at fault, not the input; its weights or ONNX "
            "export are damaged (re-export or re-download it)")


class ModelOutputError(PromptError):
    """The MODEL gave an unusable output (NaN) on one prompt: the model's fault (damaged weights or export),
    not the input's, so callers blame the model and only name the prompt it happened on. The message is
    built here so every raiser words it the same; ``where`` overrides "prompt N" when the caller knows
    better (a conversation, a reference comparison)."""

    def __init__(self, prompt: int, where: "str | None" = None):
        super().__init__(model_nan_message(where or f"prompt {prompt}"), prompt)
        self.where = where

    def __reduce__(self):  # pickled (process pools, Ray) by its own arguments, not by the message
        return type(self), (self.prompt, self.where)


def checked_logits(rows: np.ndarray, out) -> np.ndarray:
    """The logits a driver sent for ``rows``: the right shape, no NaN (a NaN is an error naming the
    prompt, never a silent "left loses"). Every step generator reads its logits through this."""
    out = np.asarray(out)
    if out.shape != (len(rows),):
        raise ValueError(f"compare returned shape {out.shape} for {len(rows)} rows; expected ({len(rows)},)")
    bad = np.flatnonzero(np.isnan(out))
    if bad.size:
        raise ModelOutputError(int(rows[bad[0]][0]))
    return out


@dataclass
class RunStats:
    """Where the time of the last call went, and how much of its batches was padding."""

    pairs: int = 0
    batches: int = 0
    tokens: int = 0  # real tokens run through the model
    pad_tokens: int = 0
    tokenize_s: float = 0.0
    pack_s: float = 0.0
    model_s: float = 0.0
    steps: int = 0

    @property
    def pad_fraction(self) -> float:
        total = self.tokens + self.pad_tokens
        return self.pad_tokens / total if total else 0.0
