"""Budgets of the budgeted strategies (swiss / knockout_rr / adaptive): forward passes per prompt,
checked against each strategy's minimum and turned into comparisons per prompt for the core."""
from __future__ import annotations

import math

import numpy as np

from .. import _core
from ..options import BUDGETED, check_strategy_budget  # noqa: F401  (BUDGETED re-exported: selection.budgets.BUDGETED)


def passes_per_comparison(orders: str) -> int:
    """Model rows one comparison costs: (a,b) and (b,a) with orders="both", (a,b) alone with "one"."""
    return 2 if orders == "both" else 1


def min_passes(strategy: str, n: int, top_k: int, orders: str = "both") -> int:
    """Fewest forward passes ``budget`` may be for a budgeted strategy, top_k of n candidates."""
    return int(_core.min_budget(strategy, n, top_k)) * passes_per_comparison(orders)


def comparison_budgets(budget, strategy: str, ns: list[int], top_k: int, orders: str) -> "np.ndarray | None":
    """Comparisons per prompt for the budgeted strategies (None for the others), checked against each
    prompt's minimum; the errors speak in forward passes, the unit of ``budget``."""
    budget = check_strategy_budget(strategy, budget)
    if strategy not in BUDGETED:
        return None
    per_row = passes_per_comparison(orders)
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


def selection_cost(strategy: str, ns: list[int], top_k: int, orders: str = "both", budget=None) -> int:
    """Model rows a pairwise selection runs at most over prompts of ``ns`` candidates: exact for full and
    bubble, an upper bound for the tournament (its later places replay at most ceil(log2 n) matches each),
    and the comparison budget for swiss / knockout_rr / adaptive. The one cost model (the engine's queue
    bound and the CLI's progress bars)."""
    per_row = passes_per_comparison(orders)
    budgets = comparison_budgets(budget, strategy, ns, top_k, orders)
    if budgets is not None:
        return int(sum(min(int(b), n * (n - 1) // 2) * per_row for b, n in zip(budgets, ns)))
    total = 0
    for n in ns:
        if n < 2:
            continue
        k = min(top_k, n)
        if strategy == "full":
            comparisons = n * (n - 1) // 2
        elif strategy == "bubble":
            comparisons = k * (2 * n - k - 1) // 2
        else:
            comparisons = n - 1 + (k - 1) * math.ceil(math.log2(n))
        total += comparisons * per_row
    return total
