"""Budgets of the budgeted strategies (swiss / knockout_rr / adaptive): forward passes per prompt,
checked against each strategy's minimum and turned into comparisons per prompt for the core."""
from __future__ import annotations

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
