"""The agreement gate: does a faster precision/runtime rank like exact fp32?

A variant (backend, precision) is compared with the fp32 ONNX path on the same prompts: top-1 agreement
of the full rankings, Kendall's tau of the rankings (tau-b, per prompt, mean and min), and the largest
|pair logit difference| relative to the spread (std) of the fp32 pair logits. Only a variant with
top-1 >= 99% and mean tau >= 0.98 passes; ``precision="auto"`` picks among passing variants only.
Records are cached per checkpoint (see autoselect.py), so the gate runs once per checkpoint and machine:
``run_gate`` measures and writes them; ``blender-fast gate`` (cli.py) calls it. The thresholds and the gate's size are defined here and nowhere else.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

GATE_TOP1_PCT = 99.0
GATE_KENDALL_TAU = 0.98
# The size a verdict should rest on: fewer prompts (blender-fast gate --prompts N) make a weaker record,
# and the record says how many it was measured on.
GATE_PROMPTS = 100
GATE_CANDIDATES = 12
# Every faster variant auto may pick on some CPU (autoselect.candidate_variants); the gate measures them all.
GATE_VARIANTS = (("torch", "bf16"), ("onnx", "int8"), ("openvino", "fp32"), ("openvino", "bf16"))


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


def machine_variants(device: str = "cpu") -> tuple:
    """(backend, precision) of every faster variant auto may pick on this machine: what the gate measures
    by default (a record for a variant this CPU cannot run would never be read)."""
    from .autoselect import candidate_variants, cpu_features

    return tuple((b, p) for b, p, why in candidate_variants(device, cpu_features()) if why != "exact")


def gate_thresholds() -> dict:
    """The pass rule, as stored beside the records and printed in reports."""
    return {"top1_pct": GATE_TOP1_PCT, "kendall_tau_mean": GATE_KENDALL_TAU}


def describe_record(rec: dict) -> str:
    """One line per verdict, for the CLI and the benchmark log."""
    rel = rec.get("max_rel_dlogit")
    return (f"{rec['variant']:<12} top-1 {rec['top1_pct']:5.1f}%  tau {rec['kendall_tau_mean']:.3f} "
            f"(min {rec['kendall_tau_min']:.3f})" + (f"  max|dlogit|/spread {rel:.3f}" if rel is not None else "")
            + f"  {'PASS' if rec['passed'] else 'fail'}  ({rec['prompts']} prompts x {rec['candidates']}, "
            f"{rec['seconds']:.0f}s)")


def run_gate(ckpt, load_ranker, inputs, candidates, variants=GATE_VARIANTS, cache_dir=None, save: bool = True, settings: dict | None = None, source_maxlength=None,
             candidate_maxlength=None) -> list[dict]:
    """Rank ``inputs`` x ``candidates`` with exact fp32 ONNX and with each (backend, precision) of
    ``variants``; the gate's verdicts, saved where ``precision="auto"`` reads them (autoselect.load_gate).

    ckpt: the checkpoint (model.checkpoint.load_checkpoint) the records are keyed on. load_ranker(backend,
    precision) returns a ranker of that checkpoint: the caller (a higher layer: the CLI, the benchmarks)
    builds it."""
    import time

    from .autoselect import load_gate, save_gate

    if len(inputs) != len(candidates) or not inputs:
        raise ValueError(f"the gate needs prompts with candidates; got {len(inputs)} inputs and "
                         f"{len(candidates)} candidate lists")
    kw = dict(source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength)
    ref_scores, ref_logits = full_rank_logits(load_ranker("onnx", "fp32"), inputs, candidates, **kw)
    records = []
    for backend, precision in variants:
        t0 = time.perf_counter()
        scores, logits = full_rank_logits(load_ranker(backend, precision), inputs, candidates, **kw)
        rec = ranking_agreement(f"{backend} {precision}", ref_scores, scores, ref_logits, logits).as_dict()
        rec["seconds"] = time.perf_counter() - t0
        records.append(rec)
    if save:
        old = load_gate(ckpt, cache_dir)
        old.update({r["variant"]: r for r in records})
        save_gate(ckpt, list(old.values()), cache_dir,
                  {"prompts": len(inputs), **gate_thresholds(), **(settings or {}), **kw})
    return records
