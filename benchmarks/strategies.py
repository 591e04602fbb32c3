"""Selection strategies: full (all n(n-1) ordered pairs) vs bubble vs tournament, n = 4 ... 32.

Counts (forward passes, sequential steps, comparisons) come from the selection code itself driven by a
random comparator: for top-1 they do not depend on the outcomes, so they are exact. Wall times run the
model in two modes: throughput (many prompts in flight, each step of all prompts in one packed call) and
latency (one prompt at a time; median per-prompt time). Cells over a model-row budget are skipped, and
say so: full ranking at n = 32 is 992 rows per prompt, hours on a 2-core CPU.
"""
from __future__ import annotations

import time

import numpy as np

from blender_fast import Ranker
from blender_fast.selection.strategies import select

from .common import RecordingModel, candidates_for, log, median, summarize_batches
from .engine import engine_plan
from .flops import ModelShape, run_flops
from .quality import start_orders

STRATEGIES = ("full", "bubble", "tournament")


def count_table(ns, top_ks=(1, 3), n_prompts: int = 64, seed: int = 0) -> list[dict]:
    """Forward passes / steps / comparisons per prompt for every (n, top_k, strategy)."""
    rows = []
    for n, k, strategy in ((n, k, s) for n in ns for k in top_ks if k <= n for s in STRATEGIES):
        rng = np.random.default_rng(seed)
        sels = select([n] * n_prompts, k, strategy, lambda r: rng.standard_normal(len(r)), orders="both",
                      initial_orders=None if strategy == "full" else start_orders(n_prompts, n, seed))
        fp, st = [s.forward_passes for s in sels], [s.steps for s in sels]
        rows.append({"n": n, "top_k": k, "strategy": strategy, "forward_passes": float(np.mean(fp)),
                     "forward_passes_max": int(max(fp)), "steps": float(np.mean(st)), "steps_max": int(max(st)),
                     "comparisons": float(np.mean([s.comparisons for s in sels]))})
    return rows


def _select_once(ranker, recorder, shape, inputs, cands, strategy, seed):
    first = len(recorder.batches)
    t0 = time.perf_counter()
    sels = ranker.select(inputs, cands, top_k=1, strategy=strategy, seed=seed)
    wall = time.perf_counter() - t0
    batches, st = recorder.batches[first:], ranker.last_stats
    return {"wall_s": wall, "forward_passes": int(sum(s.forward_passes for s in sels)),
            "steps": int(max(s.steps for s in sels)), "tokenize_s": st.tokenize_s, "pack_s": st.pack_s,
            **summarize_batches(batches), **run_flops(shape, batches)}


def run_timed(ckpt_path, prompts, ns, device: str, threads: int | None, throughput_prompts: int,
              latency_prompts: int, max_rows: int, counts: list[dict], seed: int = 0) -> list[dict]:
    """Wall time of every (n, mode, strategy) cell that fits the row budget, top-1, both orders, on our
    first engine for the device (CPU: ONNX fp32)."""
    _, _, backend, precision = engine_plan(device)[0]
    shape = ModelShape.from_checkpoint(ckpt_path)
    ranker = Ranker.from_pretrained(ckpt_path, backend=backend, device=device, precision=precision, threads=threads)
    recorder = ranker.model = RecordingModel(ranker.model)
    ranker.select([prompts[0].instruction], [prompts[0].candidates[:2]], strategy="full")  # warm-up
    passes = {(r["n"], r["strategy"]): r["forward_passes_max"] for r in counts if r["top_k"] == 1}
    results = []
    for n, (mode, n_prompts) in ((n, m) for n in ns for m in (("throughput", throughput_prompts),
                                                               ("latency", latency_prompts)) if m[1] > 0):
        inputs = [p.instruction for p in prompts[:n_prompts]]
        cands = [candidates_for(prompts, i, n) for i in range(len(inputs))]
        for strategy in STRATEGIES:
            rows_needed = int(passes[(n, strategy)] * len(inputs))
            cell = {"n": n, "mode": mode, "strategy": strategy, "prompts": len(inputs),
                    "engine": f"{backend} {precision}", "rows_needed": rows_needed}
            if rows_needed > max_rows:
                results.append({**cell, "skipped": f"{rows_needed} model rows > budget {max_rows}"})
                continue
            if mode == "throughput":
                cell.update(_select_once(ranker, recorder, shape, inputs, cands, strategy, seed))
                cell["prompts_per_s"] = len(inputs) / cell["wall_s"]
            else:
                runs = [_select_once(ranker, recorder, shape, [x], [c], strategy, seed) for x, c in zip(inputs, cands)]
                cell.update({k: sum(r[k] for r in runs) for k in ("wall_s", "forward_passes", "tokens", "padded_tokens",
                                                                  "model_s", "batches", "real_flops", "padded_flops")},
                            median_prompt_wall_s=median([r["wall_s"] for r in runs]),
                            steps=max(r["steps"] for r in runs))
                cell["pad_fraction"] = 1 - cell["tokens"] / cell["padded_tokens"] if cell["padded_tokens"] else 0.0
            log(f"strategies: n={n:<2} {mode:<10} {strategy:<10} {cell['forward_passes']:5d} rows {cell['wall_s']:7.2f}s")
            results.append(cell)
    return results


def run_strategies_section(ckpt_path, prompts, ns, device, threads, throughput_prompts, latency_prompts, max_rows,
                           seed: int = 0, timed_ns=()) -> dict:
    """Count tables for every n in ns; wall times for the n in timed_ns."""
    counts = count_table(ns, seed=seed)
    timed = run_timed(ckpt_path, prompts, timed_ns, device, threads, throughput_prompts, latency_prompts, max_rows,
                      counts, seed=seed) if timed_ns else []
    return {"settings": {"ns": list(ns), "timed_ns": list(timed_ns), "throughput_prompts": throughput_prompts,
                         "latency_prompts": latency_prompts, "max_rows_per_cell": max_rows, "orders": "both",
                         "top_k_timed": 1, "seed": seed},
            "counts": counts, "timed": timed}
