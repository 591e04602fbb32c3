"""The agreement gate: does a faster precision/runtime rank like exact fp32?

A variant (backend, precision) is compared with the fp32 ONNX path on the same prompts: top-1 agreement
of the full rankings, Kendall's tau of the rankings (tau-b, per prompt, mean and min), and the largest
|pair logit difference| relative to the spread (std) of the fp32 pair logits. Only a variant with
top-1 >= 99% and mean tau >= 0.98 passes; ``precision="auto"`` picks among passing variants only.
Records are cached per checkpoint (see autoselect.py), so the gate runs once per checkpoint and machine.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

GATE_TOP1_PCT = 99.0
GATE_KENDALL_TAU = 0.98


def kendall_tau(a, b) -> float:
    """Kendall's tau-b between two score vectors (ties counted as ties; 1.0 when both are constant)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    i, j = np.triu_indices(len(a), 1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    n_a, n_b = np.count_nonzero(da), np.count_nonzero(db)
    if n_a == 0 and n_b == 0:
        return 1.0
    if n_a == 0 or n_b == 0:
        return 0.0
    return float(np.sum(da * db) / np.sqrt(n_a * n_b))


@dataclass
class Agreement:
    variant: str
    prompts: int
    candidates: int
    top1_pct: float
    kendall_tau_mean: float
    kendall_tau_min: float
    max_abs_dlogit: float | None  # max |pair logit - fp32 pair logit| (None when no logits were given)
    logit_spread: float | None  # std of the fp32 pair logits
    max_rel_dlogit: float | None  # max_abs_dlogit / logit_spread
    passed: bool

    def as_dict(self) -> dict:
        return asdict(self)


def ranking_agreement(variant: str, ref_scores, got_scores, ref_logits=None, got_logits=None) -> Agreement:
    """Compare one variant's full-ranking scores (and optionally its pair logits) with fp32's."""
    ref = [np.asarray(s, np.float64) for s in ref_scores]
    got = [np.asarray(s, np.float64) for s in got_scores]
    if len(ref) != len(got) or any(r.shape != g.shape for r, g in zip(ref, got)):
        raise ValueError("ref_scores and got_scores must hold the same prompts and candidates")
    top1 = 100.0 * float(np.mean([int(np.argmax(r) == np.argmax(g)) for r, g in zip(ref, got)]))
    taus = [kendall_tau(r, g) for r, g in zip(ref, got)]
    max_abs = spread = rel = None
    if ref_logits is not None and got_logits is not None:
        rl, gl = np.asarray(ref_logits, np.float64).ravel(), np.asarray(got_logits, np.float64).ravel()
        max_abs, spread = float(np.max(np.abs(rl - gl))), float(np.std(rl))
        rel = max_abs / spread if spread > 0 else float("inf")
    tau_mean = float(np.mean(taus))
    return Agreement(variant, len(ref), int(max(len(r) for r in ref)), top1, tau_mean, float(np.min(taus)),
                     max_abs, spread, rel, passed=top1 >= GATE_TOP1_PCT and tau_mean >= GATE_KENDALL_TAU)


def full_rank_logits(ranker, inputs, candidates, **kwargs) -> tuple[list[np.ndarray], np.ndarray]:
    """Full-ranking scores per prompt and every ordered pair's logit, in one pass of the ranker."""
    from ..selection.steps import recorded
    from ..selection.strategies import select_steps

    # The gate's own prompts (package data), as plain lists: the ranker's run() takes them as they are.
    sources, cands = list(inputs), [list(c) for c in candidates]
    logged: list = []
    steps = recorded(select_steps([len(c) for c in cands], 1, "full", orders="both"), logged)
    sels = ranker.run(sources, cands, steps, desc="Gate", progress=False,
                      source_maxlength=kwargs.get("source_maxlength"),
                      candidate_maxlength=kwargs.get("candidate_maxlength"))
    rows = np.concatenate([r for r, _ in logged])
    logits = np.concatenate([o for _, o in logged])
    order = np.lexsort((rows[:, 2], rows[:, 1], rows[:, 0]))  # a fixed order, comparable across variants
    return [s.scores for s in sels], logits[order]
