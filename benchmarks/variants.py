"""Variants section: every backend x precision this machine allows, timed interleaved on the same full
ranking, with the ratio to exact ONNX fp32 and the agreement of its ranking (no reference engine, so it is
quick enough for the large shape too)."""
from __future__ import annotations

import os
import time

import numpy as np

from .common import as_jsonable, candidates_for, log, median
from .engine import SETTLE_S, engine_plan


def run_variants_section(ckpt_path, prompts, n_candidates: int, threads, repeats: int) -> dict:
    from blender_fast import Ranker
    from blender_fast.runtime.agreement import ranking_agreement
    from blender_fast.runtime.autoselect import cpu_features

    inputs = [p.instruction for p in prompts]
    cands = [candidates_for(prompts, i, n_candidates) for i in range(len(prompts))]
    rankers = {}
    for name, _, backend, precision in engine_plan("cpu"):
        rankers[f"{backend} {precision}"] = Ranker.from_pretrained(ckpt_path, backend=backend, precision=precision,
                                                                   threads=threads)
    for r in rankers.values():  # warm-up
        r.rank(inputs[:1], [cands[0][:2]])
    times = {k: [] for k in rankers}
    scores = {}
    load = [os.getloadavg()[0]]
    for rep in range(repeats):
        for k, r in rankers.items():
            time.sleep(SETTLE_S)
            t0 = time.perf_counter()
            scores[k] = r.rank(inputs, cands, return_scores=True)
            times[k].append(time.perf_counter() - t0)
            log(f"variants: repeat {rep + 1}/{repeats} {k:<14} {times[k][-1]:7.2f}s")
        load.append(os.getloadavg()[0])
    base = "onnx fp32"
    rows = {}
    for k in rankers:
        a = ranking_agreement(k, scores[base], scores[k])
        rows[k] = {"median_s": median(times[k]), "runs_s": times[k],
                   "x_onnx_fp32_paired": median([b / t for b, t in zip(times[base], times[k])]),
                   "top1_pct": a.top1_pct, "kendall_tau_mean": a.kendall_tau_mean,
                   "max_abs_score_diff": float(np.max(np.abs(np.asarray(scores[k]) - np.asarray(scores[base]))))}
    return as_jsonable({"prompts": len(prompts), "candidates": n_candidates, "repeats": repeats, "threads": threads,
                        "pairs": len(prompts) * n_candidates * (n_candidates - 1), "cpu": cpu_features(),
                        "load_average": load, "variants": rows})


def variants_markdown(sec: dict) -> list[str]:
    lines = [f"{sec['prompts']} prompts × {sec['candidates']} candidates ({sec['pairs']} pairs), {sec['repeats']} interleaved "
             f"repeats, threads {sec['threads'] or 'default'}, load average {['%.1f' % x for x in sec['load_average']]}; "
             f"CPU {sec['cpu']['cpu_model']} ({', '.join(sec['cpu']['isa'])}). Agreement here is on these few prompts "
             "only; the gate (agreement section) decides what auto may pick.", "",
             "| variant | median s | × ONNX fp32 (paired median) | top-1 vs fp32 | τ | max \\|Δscore\\| |", "|---|---|---|---|---|---|"]
    for k, r in sec["variants"].items():
        lines.append(f"| {k} | {r['median_s']:.2f} | {r['x_onnx_fp32_paired']:.2f}× | {r['top1_pct']:.0f}% | "
                     f"{r['kendall_tau_mean']:.3f} | {r['max_abs_score_diff']:.3g} |")
    return lines + [""]
