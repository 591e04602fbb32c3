"""llm-blender's score / rank aggregation and the one top-k rule: pure functions of logits and scores."""
from __future__ import annotations

import numpy as np

from ..options import POLICIES


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


def stack_if_equal(rows: list):
    """llm-blender returns one array when every prompt has n candidates; ragged input gets a list."""
    if rows and all(len(r) == len(rows[0]) for r in rows):
        return np.stack(rows)
    return rows


def relevance_from_aggregate(scores) -> np.ndarray:
    """[0, 1] scores from PairRM's max_logits aggregate s_i = mean_j (M[i,j] - M[j,i]) (j over all n,
    the diagonal 0): sigmoid(s_i * n / (2 (n - 1))) is the sigmoid of the mean over the other documents
    of the pair's logit averaged over both orders. Strictly increasing in s_i, so the order is kept."""
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if n < 2:
        return np.full(n, 0.5)
    return 1.0 / (1.0 + np.exp(-s * n / (2.0 * (n - 1))))
