"""The step protocol (PROTOCOL.md): a selection strategy is a generator that yields :class:`Step` objects,
receives one float32 logit per row through ``.send()``, and returns its result.

Minimal version written against the shared contract (helper R1 writes the full one); drivers: the
Ranker (synchronous, :func:`run_steps`) and the serving engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Step:
    rows: np.ndarray          # int64 [m, 3]: (prompt, left, right) candidate indices within the call
    group: int = 1            # 2 when rows come as adjacent (a,b),(b,a) pairs that must share a batch
    model: str = "default"    # which of the ranker's models scores these rows ("default", "exact", ...)


def run_steps(steps, score: Callable[[Step], np.ndarray]):
    """Drive one step generator to its end with a synchronous scorer; returns the generator's result."""
    try:
        step = next(steps)
        while True:
            if len(step.rows):
                # No cast: a scorer's dtype is kept (the model's is float32; synthetic twins use float64).
                out = np.asarray(score(step))
                if out.shape != (len(step.rows),):
                    raise ValueError(f"the scorer returned shape {out.shape} for {len(step.rows)} rows; "
                                     f"expected ({len(step.rows)},)")
            else:
                out = np.empty(0, dtype=np.float32)
            step = steps.send(out)
    except StopIteration as stop:
        return stop.value
