"""The certified cascade: every row is scored by the fast model ("default"); only the rows whose outcome
could change the answer are re-scored by the exact fp32 model ("exact"). Given a per-row bound
``|fast logit - exact logit| <= eps``, the answer equals what the plain twin (every row scored by the exact
model) returns. The argument is in docs/exact-at-speed.md; tests/selection/test_cascade.py checks it
against that twin.

``certified(inner, eps, mode)`` wraps a step generator (selection/steps.py) and returns one; the modes:

- "margins": full ranking with llm-blender's max_logits aggregation. Per-candidate score intervals from the
  per-row bound; candidates whose interval touches another's (ties included) get all their pairs re-scored
  exactly, repeated until every pair of candidates is ordered the same as fp32 orders it.
- "sign": strategies that use only the sign of each comparison's margin (bubble, tournament): a
  comparison is re-scored when |margin| <= 2*eps (orders="both", the margin is f(a,b) - f(b,a)) or
  <= eps (orders="one").
- "rowsign": full ranking with max_wins, which reads the sign of every single logit: rows with
  |logit| <= eps are re-scored.
- "exact": everything is scored by the exact model and the fast pass is skipped. Used for the budgeted
  strategies (swiss, knockout_rr, adaptive): their Massey ratings add margin *values* up, and pairings,
  picks and ties depend on them, so no per-row sign argument makes them exact.
"""
from __future__ import annotations

import math

import numpy as np

from .steps import Step

MODES = ("margins", "sign", "rowsign", "exact")
SIGN_STRATEGIES = ("bubble", "tournament")

# float32 unit roundoff; the aggregation's own rounding is covered with a factor 2 to spare (docs).
_U32 = 2.0 ** -24
# Below the smallest normal float32 a float64 logit may round to 0 when the aggregation casts it.
_TINY32 = float(np.finfo(np.float32).tiny)
# Relative slack on sign tests: a few float32 ulps (found by hypothesis: fast = exact + eps in float64
# can exceed the bound by one ulp, and a margin on the bound then looked certified).
_REL = 2.0 ** -21


def cascade_mode(strategy: str, policy: str = "max_logits") -> str:
    """The cascade mode that keeps ``strategy`` (with ``policy`` for full ranking) exact."""
    if strategy == "full":
        return "margins" if policy == "max_logits" else "rowsign"
    if strategy in SIGN_STRATEGIES:
        return "sign"
    return "exact"


def verb_mode(verb: str, strategy: str = "full", policy: str = "max_logits", values: bool = False) -> str:
    """The cascade mode of a verb: an answer that IS logit values (compare, rank or judge with scores) is
    scored by the exact model alone, so it equals fp32's; picks and ranks are certified."""
    if values or verb == "compare":
        return "exact"
    return cascade_mode(strategy, policy)


def check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(eps)) or eps < 0:
        raise ValueError(f"the cascade's error bound eps must be a finite number >= 0, got {eps!r}")
    return float(eps)


def certified(inner, eps: float, mode: str, exact_model: str = "exact"):
    """Wrap the step generator ``inner``: a step generator whose answer equals the one ``inner`` gives
    when every row is scored by ``exact_model``, provided each fast logit is within ``eps`` of the exact
    one. A returned list of Selection gets ``rescored`` (rows scored by the exact model) per prompt."""
    eps = check_eps(eps)
    if mode not in MODES:
        raise ValueError(f"cascade mode must be one of {MODES}, got {mode!r}")
    rescored: dict[int, int] = {}
    try:
        step = next(inner)
        while True:
            if mode == "exact" or not len(step.rows):
                out = yield Step(step.rows, group=step.group, model=exact_model)
                _count(rescored, step.rows)
            else:
                out = np.array((yield step), copy=True)  # scored by step.model (the fast "default")
                if mode == "margins":
                    yield from _certify_margins(step, out, eps, rescored, exact_model)
                else:
                    need = _uncertain_rows(step, out, eps, mode)
                    if need.size:
                        rows = step.rows[need]
                        out[need] = yield Step(rows, group=step.group if mode == "sign" else 1, model=exact_model)
                        _count(rescored, rows)
            step = inner.send(out)
    except StopIteration as stop:
        result = stop.value
    if isinstance(result, list):
        for p, sel in enumerate(result):
            if hasattr(sel, "rescored"):
                sel.rescored = rescored.get(p, 0)
    return result


def _count(rescored: dict, rows: np.ndarray) -> None:
    for p, c in zip(*np.unique(rows[:, 0], return_counts=True)):
        rescored[int(p)] = rescored.get(int(p), 0) + int(c)


def _uncertain_rows(step: Step, out: np.ndarray, eps: float, mode: str) -> np.ndarray:
    """Row indices whose sign decision the bound cannot certify (NaN and inf included: the exact model
    decides)."""
    f = out.astype(np.float64)
    if mode == "rowsign" or step.group == 1:
        # A margin of a single row: |fast| > eps gives the exact logit the same strict sign. The slack
        # _REL*|f| covers rounding in how the fast logit and eps were computed (float32 ulps): without it
        # a fast logit that sits exactly on the bound, rounded up by one ulp, would count as certified.
        return np.flatnonzero(~(np.abs(f) > eps + _REL * np.abs(f) + _TINY32) | ~np.isfinite(f))
    if len(f) % 2:
        raise ValueError(f"a group=2 step has an odd number of rows ({len(f)})")
    d = f[0::2] - f[1::2]  # each row is off by <= eps, so the margin by <= 2*eps
    # A non-finite fast logit bounds nothing (inf - exact is no error within eps): re-score its pair.
    slack = _REL * (np.abs(f[0::2]) + np.abs(f[1::2])) + _TINY32  # rounding of the margin and of its terms
    pairs = np.flatnonzero(~(np.abs(d) > 2 * eps + slack) | ~np.isfinite(f[0::2]) | ~np.isfinite(f[1::2]))
    return np.stack([2 * pairs, 2 * pairs + 1], axis=1).reshape(-1)


def _certify_margins(step: Step, out: np.ndarray, eps: float, rescored: dict, exact_model: str):
    """Re-score (into ``out``, in place) until the max_logits order of every prompt is certified."""
    rows, group = step.rows, step.group
    per = 2 if group == 2 else 1
    if len(rows) % per:
        raise ValueError(f"a group=2 step has an odd number of rows ({len(rows)})")
    first = rows[0::per]                                  # one (p, a, b) per unordered pair
    exact = np.zeros(len(first), dtype=bool)              # pair re-scored by the exact model
    by_prompt = [np.flatnonzero(first[:, 0] == p) for p in np.unique(first[:, 0])]
    while True:
        need_pairs = []
        f = out.astype(np.float64)
        fab = f[0::per]
        fba = f[1::2] if per == 2 else -fab
        d = fab - fba
        for idx in by_prompt:
            need_pairs.append(_uncertain_pairs(first[idx, 1], first[idx, 2], d[idx], fab[idx], fba[idx],
                                               exact[idx], eps, idx))
        need = np.concatenate(need_pairs) if need_pairs else np.empty(0, dtype=np.int64)
        if not need.size:
            return
        exact[need] = True
        rix = (np.stack([2 * need, 2 * need + 1], axis=1).reshape(-1) if per == 2 else need)
        out[rix] = yield Step(rows[rix], group=group, model=exact_model)
        _count(rescored, rows[rix])


def _uncertain_pairs(a, b, d, fab, fba, exact, eps, idx) -> np.ndarray:
    """Indices (into the step's pairs) of the not-yet-exact pairs of every candidate of one prompt whose
    score interval touches another candidate's interval."""
    if not (np.isfinite(fab).all() and np.isfinite(fba).all()):
        # A NaN/inf fast logit bounds nothing: the whole prompt goes to the exact model, whose answer (or
        # error) is then the twin's.
        return idx[~exact]
    n = int(max(a.max(), b.max())) + 1
    t = np.zeros(n)                                       # real-valued score from the merged logits (x n)
    np.add.at(t, a, d)
    np.add.at(t, b, -d)
    open_ = np.zeros(n)                                   # pairs of the candidate still on the fast model
    np.add.at(open_, a, ~exact)
    np.add.at(open_, b, ~exact)
    mag = np.abs(fab) + np.abs(fba) + 2 * eps
    absum = np.zeros(n)
    np.add.at(absum, a, mag)
    np.add.at(absum, b, mag)
    # Interval of the fp32 twin's float32 score: each open pair moves the margin by <= 2*eps; the float32
    # aggregation (casts, differences, the sum, the division) is covered by (n+4) * 2u * sum|terms| / n.
    r = 2 * eps * open_ / n + (n + 4) * 2 * _U32 * absum / n
    center = t / n
    done = open_ == 0
    # A fully exact candidate: its score is computed from exactly the twin's float32 values, so it is the
    # twin's bit for bit; compare it as a point.
    if done.any():
        m = np.zeros((n, n), dtype=np.float32)
        m[a, b] = fab.astype(np.float32)
        m[b, a] = fba.astype(np.float32)
        point = (m - m.T).mean(axis=-1).astype(np.float32).astype(np.float64)
        center = np.where(done, point, center)
        r = np.where(done, 0.0, r)
    lo, hi = center - r, center + r
    touch = (lo[:, None] <= hi[None, :]) & (lo[None, :] <= hi[:, None])
    np.fill_diagonal(touch, False)
    touch &= ~(done[:, None] & done[None, :])            # two exact points: ordered exactly already
    hot = touch.any(axis=1)
    if not hot.any():
        return np.empty(0, dtype=np.int64)
    sel = (~exact) & (hot[a] | hot[b])
    return idx[sel]
