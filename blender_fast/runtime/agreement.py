"""The agreement gate: does a faster precision/runtime rank like exact fp32?

A variant (backend, precision) is compared with the fp32 ONNX path on the same prompts: top-1 agreement
of the full rankings, Kendall's tau of the rankings (tau-b, per prompt, mean and min), and the largest
|pair logit difference| relative to the spread (std) of the fp32 pair logits. Only a variant with
top-1 >= 99% and mean tau >= 0.98 passes; ``precision="auto"`` picks among passing variants only.
Records are cached per checkpoint (see autoselect.py), so the gate runs once per checkpoint and machine.
"""
from __future__ import annotations

import time
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
    from ..selection.steps import recorded, select_steps

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


def run_gate(path, inputs, candidates, variants=(("torch", "bf16"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "bf16")), threads: int | None = 1,
             cache_dir=None, source_maxlength=None, candidate_maxlength=None, save: bool = True, extra=None) -> list[dict]:
    """Rank ``inputs`` x ``candidates`` with fp32 ONNX and each variant; the gate's verdicts (cached).

    extra: {name: model} more variants to measure (e.g. other fp32 islands), recorded but never picked."""
    from .autoselect import load_gate, save_gate
    from ..model.checkpoint import load_checkpoint
    from ..ranker import Ranker

    ckpt = load_checkpoint(path)
    kw = dict(source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength)
    base = Ranker.from_pretrained(path, backend="onnx", precision="fp32", threads=threads, cache_dir=cache_dir)
    ref_scores, ref_logits = full_rank_logits(base, inputs, candidates, **kw)
    records = []
    models = {f"{b} {p}": None for b, p in variants}
    models.update(extra or {})
    for name, model in models.items():
        t0 = time.perf_counter()
        if model is None:
            backend, precision = name.split()
            ranker = Ranker.from_pretrained(path, backend=backend, precision=precision, threads=threads, cache_dir=cache_dir)
        else:
            ranker = Ranker(model, base.tokenizer, base.source_maxlength, base.candidate_maxlength)
        scores, logits = full_rank_logits(ranker, inputs, candidates, **kw)
        rec = ranking_agreement(name, ref_scores, scores, ref_logits, logits).as_dict()
        rec["seconds"] = time.perf_counter() - t0
        rec["pickable"] = model is None
        records.append(rec)
    if save:
        keep = [r for r in records if r["pickable"]]
        old = load_gate(ckpt, cache_dir)
        old.update({r["variant"]: r for r in keep})
        save_gate(ckpt, list(old.values()), cache_dir, {"prompts": len(inputs), "threads": threads, **kw})
    return records
