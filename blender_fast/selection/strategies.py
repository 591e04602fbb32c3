"""Best-k selection over pairwise comparisons, and llm-blender's score/rank aggregation.

``select`` drives :class:`blender_fast._core.Selector` (bubble / tournament, and the budgeted swiss /
knockout_rr / adaptive) or a full n(n-1) comparison matrix for many prompts at once: each step hands
*all* ready comparisons of *all* prompts to ``compare`` in one call, so the caller can run the model on
one packed set of rows.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from .. import _core
from .steps import Step, run_steps
from ..options import ORDERS, POLICIES, STRATEGIES  # noqa: F401  (re-exported: selection.STRATEGIES)

# Strategies that take a budget (forward passes per prompt) and never exceed it.
BUDGETED = ("swiss", "knockout_rr", "adaptive")


@dataclass
class Selection:
    top_k: list[int]            # candidate indices, best first
    comparisons: int            # comparisons decided (unordered pairs)
    forward_passes: int         # model rows run for this prompt (comparisons * 2 when orders="both")
    steps: int                  # sequential model rounds this prompt took part in
    scores: "np.ndarray | None" = None  # strategy="full" only: per-candidate aggregate scores, float32
    log: list[tuple[int, int, int]] = field(default_factory=list)  # (a, b, winner), resolution order
    rescored: int = 0           # model rows re-scored by the exact model (the certified cascade), extra
                                # to forward_passes


# -- llm-blender aggregation -----------------------------------------------------------------------

def scores_from_cmps(cmp, policy: str = "max_logits") -> np.ndarray:
    """Per-candidate scores from comparison matrices, as llm-blender's ``get_scores_from_cmps``.

    cmp: [c, c] or [b, c, c]; cmp[i, j] > 0 means i beats j. Returns float32 of shape [c] / [b, c].
    max_logits: (M - M.T).mean(-1), computed in M's dtype then stored as float32 (like theirs);
    max_wins: (M > 0).sum(-1) + (M < 0).mean(-2). For ragged prompts pass one matrix per prompt.
    """
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    m = np.asarray(cmp)
    if m.ndim not in (2, 3) or m.shape[-1] != m.shape[-2]:
        raise ValueError(f"cmp must have shape [c, c] or [b, c, c], got {m.shape}")
    if policy == "max_logits":
        out = (m - np.swapaxes(m, -1, -2)).mean(axis=-1)
    else:
        out = (m > 0).sum(axis=-1) + (m < 0).mean(axis=-2)
    return out.astype(np.float32)


def ranks_from_scores(scores) -> np.ndarray:
    """Ranks (int32, 1 = best) as llm-blender's ``get_ranks_from_scores``: tied scores share the
    better rank, i.e. rank = 1 + number of strictly greater scores. Shape [c] or [b, c]."""
    s = np.asarray(scores)
    if s.ndim not in (1, 2):
        raise ValueError(f"scores must have shape [c] or [b, c], got {s.shape}")
    if s.dtype.kind == "f" and np.isnan(s).any():
        # llm-blender fails on NaN too (list.index never finds it); say why.
        raise ValueError("scores contain NaN; ranks are undefined")
    s2 = s.reshape(-1, s.shape[-1])
    b, c = s2.shape
    ranks = np.empty((b, c), dtype=np.int32)
    if c:
        order = np.argsort(s2, axis=-1, kind="stable")[:, ::-1]  # best first
        v = np.take_along_axis(s2, order, axis=-1)
        pos = np.broadcast_to(np.arange(c), (b, c))
        new = np.ones((b, c), dtype=bool)
        new[:, 1:] = v[:, 1:] != v[:, :-1]
        # Each run of equal scores takes the position of its first member.
        first = np.maximum.accumulate(np.where(new, pos, 0), axis=-1)
        np.put_along_axis(ranks, order, (first + 1).astype(np.int32), axis=-1)
    return ranks.reshape(s.shape)


def top_k_from_scores(scores, k: int | None = None) -> list[int]:
    """THE rule for "the best k" from per-candidate scores (higher is better), used everywhere (full
    selection, the CLI, the facade): indices best first, ties to the lower index; k=None: all of them.
    For ranks (lower is better) pass ``-ranks``."""
    s = np.asarray(scores)
    if s.ndim != 1:
        raise ValueError(f"scores must have shape [c], got {s.shape}")
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise ValueError("scores contain NaN; the top k is undefined")
    order = np.argsort(-s, kind="stable")  # stable: equal scores keep index order
    return [int(i) for i in (order if k is None else order[:k])]


class PromptError(ValueError):
    """An error about one prompt of a call: ``prompt`` is its index in that call, so callers that know
    where the prompt came from (a file and line) can say so."""

    def __init__(self, message: str, prompt: int):
        super().__init__(message)
        self.prompt = prompt


# -- selection -------------------------------------------------------------------------------------

_Compare = Callable[[np.ndarray], np.ndarray]


def _default_order(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(n).astype(np.int64)


def _run_compare(compare: _Compare, rows: np.ndarray) -> np.ndarray:
    out = np.asarray(compare(rows))
    if out.shape != (len(rows),):
        raise ValueError(f"compare returned shape {out.shape} for {len(rows)} rows; expected ({len(rows)},)")
    out = out.astype(np.float64, copy=False)
    bad = np.flatnonzero(np.isnan(out))
    if bad.size:
        p, a, b = (int(x) for x in rows[bad[0]])
        raise PromptError(f"compare returned NaN for prompt {p} (row {p}, {a}, {b})", p)
    return out


def _as_model_rows(rows: np.ndarray, orders: str) -> np.ndarray:
    if orders == "one":
        return rows
    # (a,b) then (b,a), adjacent, so a packer with group_size=2 keeps them in one batch.
    both = np.empty((2 * len(rows), 3), dtype=np.int64)
    both[0::2] = rows
    both[1::2] = rows[:, [0, 2, 1]]
    return both


def _scores(out: np.ndarray, orders: str) -> np.ndarray:
    return out if orders == "one" else out[0::2] - out[1::2]  # f(a,b) - f(b,a), llm-blender's


def select(n_candidates: Sequence[int], top_k: int, strategy: str, compare: _Compare, *,
           orders: str = "both", seed: int = 0, initial_orders: Optional[Sequence] = None,
           policy: str = "max_logits", budget: Optional[int] = None) -> list[Selection]:
    """Select the best ``top_k`` candidates of every prompt with pairwise comparisons.

    n_candidates: candidates per prompt (ragged is fine); top_k: 1 <= top_k <= n for every prompt.
    strategy: "bubble" (k pipelined bubble rounds: k(2n-k-1)/2 comparisons in n+min(k,n-1)-2 steps),
      "tournament" (knockout bracket, top-1 in ceil(log2 n) steps with n-1 comparisons; later places by
      replaying the winner's path) or "full" (all pairs in one step, aggregated with
      ``scores_from_cmps(M, policy)`` like llm-blender's rank; top_k = first k of the stable ranking).
    compare(rows int64[m, 3]) -> float[m]: rows are ordered (prompt, left, right); returns the logit
      "left is better than right". Called once per step with every row ready in that step.
      For worst-of-n pass a compare that returns -logits.
    orders: "both" runs (p,a,b) and (p,b,a) as adjacent rows and decides on f(a,b) - f(b,a);
      "one" runs (p,a,b) only and decides on f(a,b). A score of exactly 0 goes to the lower index.
    Budgeted strategies (they never exceed ``budget`` forward passes per prompt; a comparison costs 2
      passes with orders="both", 1 with "one", so an odd budget with "both" leaves one pass unused):
      "swiss" (Swiss-system rounds: everyone is paired with a candidate of the same loss count and
      similar rating that it has not met; a loss does not eliminate; pick: the only unbeaten candidate
      if exactly one is left, else by rating), "knockout_rr" (knockout down to the m survivors the budget
      affords a round robin for, then that round robin; pick: its Condorcet winner, else the largest
      margin sum) and "adaptive" (a first matching, a knockout round among its winners, then each
      step compares the leaders (top k + 1 by rating) against the candidates whose rating gap to them
      is smallest for its uncertainty; pick: rating). Ratings are least-squares fits of the
      comparison margins f(a,b) - f(b,a) (Massey ratings with a ridge of one game), so they use how
      decided each comparison was, as full ranking's max_logits does. No pair is compared twice.
    budget: forward passes per prompt for swiss / knockout_rr / adaptive; None = 4(n-1) (twice a
      knockout's comparisons, with orders="both"), or the strategy's minimum if that is more. The
      minimum is n-1 comparisons (knockout_rr: n-k + k(k-1)/2).
    initial_orders: starting arrangement per prompt (bubble/tournament; ignored by full). Default:
      ``np.random.default_rng(seed).permutation(n)``, a fresh generator per prompt, so a prompt's
      arrangement depends only on (seed, n) and not on how prompts are batched.
    """
    ns, top_k, budgets = _check_args(n_candidates, top_k, strategy, orders, seed, policy, budget)
    return run_steps(_steps(ns, top_k, strategy, orders, seed, initial_orders, policy, budgets),
                     lambda step: _run_compare(compare, step.rows))


def _check_args(n_candidates, top_k, strategy, orders, seed, policy, budget):
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if orders not in ORDERS:
        raise ValueError(f"orders must be one of {ORDERS}, got {orders!r}")
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    ns = [int(n) for n in n_candidates]
    if isinstance(top_k, bool) or not isinstance(top_k, (int, float, np.integer, np.floating)) \
            or not np.isfinite(top_k) or int(top_k) != top_k:
        raise ValueError(f"top_k must be an integer, got {top_k!r}")
    top_k = int(top_k)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    for p, n in enumerate(ns):
        if n < 1:
            raise ValueError(f"prompt {p} has {n} candidates; need at least 1")
        if top_k > n:
            raise ValueError(f"top_k = {top_k} exceeds the {n} candidates of prompt {p}")
    return ns, top_k, _budgets(budget, strategy, ns, top_k, orders)


def select_steps(n_candidates: Sequence[int], top_k: int, strategy: str, *, orders: str = "both", seed: int = 0,
                 initial_orders: Optional[Sequence] = None, policy: str = "max_logits",
                 budget: Optional[int] = None):
    """``select`` as a step generator (selection/steps.py): same arguments, less ``compare``; it yields
    Step objects and returns the list of Selection. Arguments are checked here, before the first step."""
    ns, top_k, budgets = _check_args(n_candidates, top_k, strategy, orders, seed, policy, budget)
    return _steps(ns, top_k, strategy, orders, seed, initial_orders, policy, budgets)


def _steps(ns, top_k, strategy, orders, seed, initial_orders, policy, budgets):
    group = 2 if orders == "both" else 1
    if not ns:
        return []
    if strategy == "full":
        return (yield from _select_full(ns, top_k, orders, policy))

    sel = _core.Selector(np.asarray(ns, dtype=np.int64), top_k, strategy, starting_orders(ns, seed, initial_orders),
                         budgets)
    passes = np.zeros(len(ns), dtype=np.int64)
    while not sel.done():
        rows = sel.next()
        if not len(rows):  # cannot happen: an unfinished prompt always has a comparison ready
            raise RuntimeError("selection stalled with unfinished prompts")
        model_rows = _as_model_rows(rows, orders)
        out = _checked(model_rows, (yield Step(model_rows, group=group)))
        passes += np.bincount(model_rows[:, 0], minlength=len(ns))
        sel.feed(_scores(out, orders))
    return [Selection(top_k=list(sel.top_k(p)), comparisons=sel.comparisons(p), forward_passes=int(passes[p]),
                      steps=sel.steps(p), scores=None, log=sel.log(p)) for p in range(len(ns))]


def _checked(rows: np.ndarray, out) -> np.ndarray:
    """The logits a driver sent for ``rows``, as float64; NaN is an error naming the prompt."""
    out = np.asarray(out).astype(np.float64, copy=False)
    bad = np.flatnonzero(np.isnan(out))
    if bad.size:
        p, a, b = (int(x) for x in rows[bad[0]])
        raise PromptError(f"compare returned NaN for prompt {p} (row {p}, {a}, {b})", p)
    return out


def min_passes(strategy: str, n: int, top_k: int, orders: str = "both") -> int:
    """Fewest forward passes ``budget`` may be for a budgeted strategy, top_k of n candidates."""
    return int(_core.min_budget(strategy, n, top_k)) * (2 if orders == "both" else 1)


def _budgets(budget, strategy: str, ns: list[int], top_k: int, orders: str) -> "np.ndarray | None":
    """Comparisons per prompt for the budgeted strategies (None for the others), checked against each
    prompt's minimum; the errors speak in forward passes, the unit of ``budget``."""
    if strategy not in BUDGETED:
        if budget is not None:
            raise ValueError(f"budget applies to the strategies {BUDGETED}, not to strategy={strategy!r}")
        return None
    per_row = 2 if orders == "both" else 1
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, np.integer, float, np.floating)) \
                or int(budget) != budget:
            raise ValueError(f"budget must be an integer number of forward passes per prompt, got {budget!r}")
        budget = int(budget)
        if budget < 0:
            raise ValueError(f"budget must be >= 0 forward passes, got {budget}")
    out = np.empty(len(ns), dtype=np.int64)
    for p, n in enumerate(ns):
        need = _core.min_budget(strategy, n, top_k)
        if budget is None:
            out[p] = max(need, 2 * (n - 1))
            continue
        if budget // per_row < need:
            raise ValueError(
                f"budget = {budget} forward passes is below the minimum of {need * per_row} that strategy="
                f"{strategy!r} needs for top_k = {top_k} of the {n} candidates of prompt {p} ({need} comparisons "
                f"x {per_row} pass{'es' if per_row == 2 else ''} with orders={orders!r})")
        out[p] = budget // per_row
    return out


def starting_orders(ns: list[int], seed: int, initial_orders=None) -> list[np.ndarray]:
    """Each prompt's starting arrangement for the Selector: ``initial_orders`` as int64 arrays, or the
    seeded default (a prompt's arrangement depends only on (seed, n), not on its batch-mates)."""
    if initial_orders is None:
        cache: dict[int, np.ndarray] = {}
        for n in ns:
            if n not in cache:
                cache[n] = _default_order(n, seed)
        return [cache[n] for n in ns]
    starts = [np.asarray(o) for o in initial_orders]
    if len(starts) != len(ns):
        raise ValueError(f"initial_orders has {len(starts)} entries for {len(ns)} prompts")
    # Any integer dtype is fine here; anything else is left for the core to reject by name.
    return [o.astype(np.int64) if o.dtype.kind in "iu" else o for o in starts]


def _select_full(ns: list[int], top_k: int, orders: str, policy: str):
    per_row = 2 if orders == "both" else 1
    tri = {n: np.triu_indices(n, 1) for n in set(ns)}
    counts = np.array([len(tri[n][0]) * per_row for n in ns], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    blocks = []
    for p, n in enumerate(ns):
        a, b = tri[n]
        rows = np.stack([np.full(len(a), p, dtype=np.int64), a.astype(np.int64), b.astype(np.int64)], axis=1)
        blocks.append(_as_model_rows(rows, orders))
    model_rows = np.concatenate(blocks)
    out = _checked(model_rows, (yield Step(model_rows, group=per_row))) if len(model_rows) else np.empty(0)

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
            result[p] = Selection(top_k=top_k_from_scores(scores[i], top_k), comparisons=len(a), forward_passes=len(a) * per_row,
                                  steps=1 if len(a) else 0, scores=scores[i].copy(), log=[])
    return result
