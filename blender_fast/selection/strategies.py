"""Best-k selection over pairwise comparisons: ``select``, the public synchronous entry.

``select`` drives the strategy's step generator (steps.py: full ranking, or a ``_core.Selector`` for
bubble / tournament and the budgeted swiss / knockout_rr / adaptive) with ``run_steps``: each step hands
*all* ready comparisons of *all* prompts to ``compare`` in one call, so the caller can run the model on
one packed set of rows. The server's BatchingEngine drives the same generators.

The names that lived here before the split stay importable from here: aggregation (aggregate.py),
budgets (budgets.py), Selection / PromptError / starting_orders (steps.py).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np

from ..options import ORDERS, POLICIES, STRATEGIES  # noqa: F401  (re-exported: selection.STRATEGIES)
from .aggregate import ranks_from_scores, scores_from_cmps, stack_if_equal, top_k_from_scores  # noqa: F401
from .budgets import BUDGETED, comparison_budgets, min_passes  # noqa: F401
from .steps import ModelOutputError, PromptError, Selection, Step, run_steps, select_steps, starting_orders  # noqa: F401

Compare = Callable[[np.ndarray], np.ndarray]


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
