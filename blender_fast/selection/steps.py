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

Here: full ranking (one step of all pairs, aggregated like llm-blender), the ``_core.Selector``
strategies (bubble / tournament / swiss / knockout_rr / adaptive: a loop of steps) and
:func:`select_steps`, the validated entry that picks one of them. The verbs built on them (rank,
compare, judge) are in ``verbs.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Generator, Optional, Sequence

import numpy as np

from .. import _core
from ..options import ORDERS, POLICIES, STRATEGIES, check_choice, check_seed, check_top_k
from .aggregate import scores_from_cmps, top_k_from_scores
from .budgets import comparison_budgets, passes_per_comparison

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


def model_rows(rows: np.ndarray, orders: str) -> np.ndarray:
    """Comparisons (prompt, a, b) as the rows the model runs: as given with orders="one"; with "both",
    (a,b) then (b,a), adjacent, so a packer with group_size=2 keeps them in one batch."""
    if orders == "one":
        return rows
    both = np.empty((2 * len(rows), 3), dtype=np.int64)
    both[0::2] = rows
    both[1::2] = rows[:, [0, 2, 1]]
    return both


def margins(out: np.ndarray, orders: str) -> np.ndarray:
    """One decision value per comparison: f(a,b) ("one"), or f(a,b) - f(b,a) ("both", llm-blender's)."""
    return out if orders == "one" else out[0::2] - out[1::2]


def default_order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def starting_orders(ns: list[int], seed: int, initial_orders=None) -> list[np.ndarray]:
    """Each prompt's starting arrangement for the Selector: ``initial_orders`` as int64 arrays, or the
    seeded default (a prompt's arrangement depends only on (seed, n), not on its batch-mates)."""
    if initial_orders is None:
        cache: dict[int, np.ndarray] = {}
        for n in ns:
            if n not in cache:
                cache[n] = default_order(n, seed)
        return [cache[n] for n in ns]
    starts = [np.asarray(o) for o in initial_orders]
    if len(starts) != len(ns):
        raise ValueError(f"initial_orders has {len(starts)} entries for {len(ns)} prompts")
    # Any integer dtype is fine here; anything else is left for the core to reject by name.
    return [o.astype(np.int64) if o.dtype.kind in "iu" else o for o in starts]


# -- the strategies ---------------------------------------------------------------------------------

def full_steps(ns: list[int], top_k: int, orders: str = "both", policy: str = "max_logits",
               worst: bool = False) -> Steps:
    """Full ranking: one step with every pair of every prompt, aggregated with
    ``scores_from_cmps(M, policy)``; top_k = the first k of the stable ranking. No step when no prompt
    has a pair (n = 1 everywhere, or no prompts)."""
    per_row = passes_per_comparison(orders)
    tri = {n: np.triu_indices(n, 1) for n in set(ns)}
    counts = np.array([len(tri[n][0]) * per_row for n in ns], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    blocks = []
    for p, n in enumerate(ns):
        a, b = tri[n]
        rows = np.stack([np.full(len(a), p, dtype=np.int64), a.astype(np.int64), b.astype(np.int64)], axis=1)
        blocks.append(model_rows(rows, orders))
    rows = np.concatenate(blocks) if blocks else np.empty((0, 3), dtype=np.int64)
    out = np.empty(0)
    if len(rows):
        out = checked_logits(rows, (yield Step(rows, group=per_row)))
        out = (-out if worst else out).astype(np.float64, copy=False)

    result: list = [None] * len(ns)
    # Prompts with the same n share one [b, n, n] aggregation (bit-identical to one matrix at a time).
    for n, (a, b) in tri.items():
        ps = np.array([p for p, m in enumerate(ns) if m == n], dtype=np.int64)
        f = out[starts[ps][:, None] + np.arange(len(a) * per_row)].astype(np.float32)
        m = np.zeros((len(ps), n, n), dtype=np.float32)
        if orders == "both":
            m[:, a, b] = f[:, 0::2]
            m[:, b, a] = f[:, 1::2]
        else:
            m[:, a, b] = f
            m[:, b, a] = -f
        scores = scores_from_cmps(m, policy)
        for i, p in enumerate(ps.tolist()):
            result[p] = Selection(top_k=top_k_from_scores(scores[i], top_k), comparisons=len(a),
                                  forward_passes=len(a) * per_row, steps=1 if len(a) else 0,
                                  scores=scores[i].copy(), log=[])
    return result


def selector_steps(ns: list[int], selector, orders: str = "both", worst: bool = False) -> Steps:
    """A ``_core.Selector`` (bubble / tournament / swiss / knockout_rr / adaptive) driven step by step:
    each step is every comparison ready in every prompt."""
    per_row = passes_per_comparison(orders)
    passes = np.zeros(len(ns), dtype=np.int64)
    while not selector.done():
        rows = selector.next()
        if not len(rows):  # cannot happen: an unfinished prompt always has a comparison ready
            raise RuntimeError("selection stalled with unfinished prompts")
        rows = model_rows(rows, orders)
        out = checked_logits(rows, (yield Step(rows, group=per_row)))
        out = (-out if worst else out).astype(np.float64, copy=False)
        passes += np.bincount(rows[:, 0], minlength=len(ns))
        selector.feed(margins(out, orders))
    return [Selection(top_k=list(selector.top_k(p)), comparisons=selector.comparisons(p),
                      forward_passes=int(passes[p]), steps=selector.steps(p), scores=None, log=selector.log(p))
            for p in range(len(ns))]


def select_steps(n_candidates: Sequence[int], top_k: int, strategy: str, *, orders: str = "both", seed: int = 0,
                 initial_orders: Optional[Sequence] = None, policy: str = "max_logits",
                 budget: Optional[int] = None, worst: bool = False) -> Steps:
    """The step generator of ``selection.select`` (same arguments; see there), validated NOW: bad
    arguments (and bad initial_orders, which the core checks) raise here, in the caller's thread, not
    at the first step. worst=True selects the worst k (the logits are negated)."""
    check_choice("strategy", strategy, STRATEGIES)
    check_choice("orders", orders, ORDERS)
    check_choice("policy", policy, POLICIES)
    ns = [int(n) for n in n_candidates]
    top_k = check_top_k(top_k)
    seed = check_seed(seed)
    for p, n in enumerate(ns):
        if n < 1:
            raise ValueError(f"prompt {p} has {n} candidates; need at least 1")
        if top_k > n:
            raise ValueError(f"top_k = {top_k} exceeds the {n} candidates of prompt {p}")
    budgets = comparison_budgets(budget, strategy, ns, top_k, orders)
    if strategy == "full" or not ns:
        return full_steps(ns, top_k, orders, policy, worst)
    selector = _core.Selector(np.asarray(ns, dtype=np.int64), top_k, strategy,
                              starting_orders(ns, seed, initial_orders), budgets)
    return selector_steps(ns, selector, orders, worst)


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
