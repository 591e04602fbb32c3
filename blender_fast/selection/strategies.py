"""The selection strategies, each written once as a step generator (steps.py's protocol): full ranking (one
step of all pairs, aggregated like llm-blender), the ``_core.Selector`` strategies (bubble / tournament and
the budgeted swiss / knockout_rr / adaptive: a loop of steps), :func:`select_steps`, the validated entry
that picks one of them, and :func:`select`, the synchronous entry over a ``compare`` function.

``select`` drives the strategy's step generator with ``run_steps``: each step hands *all* ready
comparisons of *all* prompts to ``compare`` in one call, so the caller can run the model on one packed set
of rows. The Ranker and the server's BatchingEngine drive the same generators.

Names that lived here before the split stay importable from here: aggregation (aggregate.py), budgets
(budgets.py), Selection / PromptError / ModelOutputError (steps.py).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from .. import _core
from ..options import (ORDERS, POLICIES, STRATEGIES, check_choice, check_seed, check_top_k,  # noqa: F401
                       check_top_k_fits)
from .aggregate import ranks_from_scores, scores_from_cmps, stack_if_equal, top_k_from_scores  # noqa: F401
from .budgets import BUDGETED, comparison_budgets, min_passes, passes_per_comparison  # noqa: F401
from .steps import ModelOutputError, PromptError, Selection, Step, Steps, checked_logits, run_steps  # noqa: F401

Compare = Callable[[np.ndarray], np.ndarray]


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
        check_top_k_fits(top_k, n, f"prompt {p}")
    budgets = comparison_budgets(budget, strategy, ns, top_k, orders)
    if strategy == "full" or not ns:
        return full_steps(ns, top_k, orders, policy, worst)
    selector = _core.Selector(np.asarray(ns, dtype=np.int64), top_k, strategy,
                              starting_orders(ns, seed, initial_orders), budgets)
    return selector_steps(ns, selector, orders, worst)


def select(n_candidates: Sequence[int], top_k: int, strategy: str, compare: Compare, *,
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
    steps = select_steps(n_candidates, top_k, strategy, orders=orders, seed=seed, initial_orders=initial_orders,
                         policy=policy, budget=budget)
    return run_steps(steps, lambda step: compare(step.rows))
