"""Selection strategies: full (all n(n-1) ordered pairs) vs bubble vs tournament, n = 4 ... 32.

Two parts. The counts (forward passes, sequential steps, comparisons) come from the selection code
itself driven by a random comparator: for top-1 they do not depend on the comparison outcomes, so
they are exact. The wall times run the model, in two modes: throughput (many prompts in flight, all
prompts of a step in one packed call) and latency (one prompt at a time; median per-prompt time).
Cells whose model rows would exceed a budget are skipped, and say so, because full ranking at n = 32
is 992 rows per prompt: hours on a 2-core CPU.
"""
from __future__ import annotations

import time

import numpy as np

from .common import RecordingModel, candidates_for, log, median, summarize_batches
from .flops import ModelShape, run_flops

STRATEGIES = ("full", "bubble", "tournament")


def random_orders(n_prompts: int, n: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.permutation(n).astype(np.int64) for _ in range(n_prompts)]


def count_table(ns, top_ks=(1, 3), n_prompts: int = 64, seed: int = 0) -> list[dict]:
    """Forward passes / steps / comparisons per prompt for every (n, top_k, strategy)."""
    from blender_fast.selection.strategies import select

    rows = []
    for n in ns:
        for k in top_ks:
            if k > n:
                continue
            for strategy in STRATEGIES:
                rng = np.random.default_rng(seed)
                sels = select([n] * n_prompts, k, strategy, lambda r: rng.standard_normal(len(r)),
                              orders="both", initial_orders=None if strategy == "full" else random_orders(n_prompts, n, seed))
                fp = [s.forward_passes for s in sels]
                st = [s.steps for s in sels]
                rows.append({"n": n, "top_k": k, "strategy": strategy,
                             "forward_passes": float(np.mean(fp)), "forward_passes_max": int(max(fp)),
                             "steps": float(np.mean(st)), "steps_max": int(max(st)),
                             "comparisons": float(np.mean([s.comparisons for s in sels]))})
    return rows


def passes_per_prompt(counts: list[dict], n: int, strategy: str, top_k: int = 1) -> float:
    for row in counts:
        if row["n"] == n and row["strategy"] == strategy and row["top_k"] == top_k:
            return row["forward_passes_max"]
    raise KeyError((n, strategy, top_k))


def _select_once(ranker, recorder, shape, inputs, cands, strategy, seed):
    first = len(recorder.batches)
    t0 = time.perf_counter()
    sels = ranker.select(inputs, cands, top_k=1, strategy=strategy, seed=seed)
    wall = time.perf_counter() - t0
    batches = recorder.batches[first:]
    st = ranker.last_stats
    return {"wall_s": wall, "forward_passes": int(sum(s.forward_passes for s in sels)),
            "steps": int(max(s.steps for s in sels)), "tokenize_s": st.tokenize_s, "pack_s": st.pack_s,
            **summarize_batches(batches), **run_flops(shape, batches)}


def run_timed(ckpt_path, prompts, ns, device: str, threads: int | None, throughput_prompts: int,
              latency_prompts: int, max_rows: int, counts: list[dict], seed: int = 0) -> list[dict]:
    """Wall time of every (n, mode, strategy) cell that fits the row budget, top-1, both orders, on our
    first engine for the device (CPU: ONNX fp32)."""
    from blender_fast import Ranker

    from .engine import engine_plan

    _, _, backend, precision = engine_plan(device)[0]
    shape = ModelShape.from_checkpoint(ckpt_path)
    ranker = Ranker.from_pretrained(ckpt_path, backend=backend, device=device, precision=precision, threads=threads)
    recorder = RecordingModel(ranker.model)
    ranker.model = recorder
    ranker.select([prompts[0].instruction], [prompts[0].candidates[:2]], strategy="full")  # warm-up

    results = []
    for n in ns:
        for mode, n_prompts in (("throughput", throughput_prompts), ("latency", latency_prompts)):
            if n_prompts <= 0:
                continue
            inputs = [p.instruction for p in prompts[:n_prompts]]
            cands = [candidates_for(prompts, i, n) for i in range(len(inputs))]
            for strategy in STRATEGIES:
                rows_needed = int(passes_per_prompt(counts, n, strategy) * len(inputs))
                cell = {"n": n, "mode": mode, "strategy": strategy, "prompts": len(inputs),
                        "engine": f"{backend} {precision}", "rows_needed": rows_needed}
                if rows_needed > max_rows:
                    cell["skipped"] = f"{rows_needed} model rows > budget {max_rows}"
                    results.append(cell)
                    continue
                if mode == "throughput":
                    rec = _select_once(ranker, recorder, shape, inputs, cands, strategy, seed)
                    cell.update(rec)
                    cell["prompts_per_s"] = len(inputs) / rec["wall_s"]
                else:
                    per_prompt = [_select_once(ranker, recorder, shape, [x], [c], strategy, seed)
                                  for x, c in zip(inputs, cands)]
                    cell.update({
                        "wall_s": sum(r["wall_s"] for r in per_prompt),
                        "median_prompt_wall_s": median([r["wall_s"] for r in per_prompt]),
                        "forward_passes": sum(r["forward_passes"] for r in per_prompt),
                        "steps": max(r["steps"] for r in per_prompt),
                        "tokens": sum(r["tokens"] for r in per_prompt),
                        "padded_tokens": sum(r["padded_tokens"] for r in per_prompt),
                        "model_s": sum(r["model_s"] for r in per_prompt),
                        "batches": sum(r["batches"] for r in per_prompt),
                        "real_flops": sum(r["real_flops"] for r in per_prompt),
                        "padded_flops": sum(r["padded_flops"] for r in per_prompt),
                    })
                    cell["pad_fraction"] = 1 - cell["tokens"] / cell["padded_tokens"] if cell["padded_tokens"] else 0.0
                log(f"strategies: n={n:<2} {mode:<10} {strategy:<10} {cell['forward_passes']:5d} rows "
                    f"{cell['wall_s']:7.2f}s")
                results.append(cell)
    return results


def run_strategies_section(ckpt_path, prompts, ns, device, threads, throughput_prompts, latency_prompts, max_rows,
                           seed: int = 0, timed_ns=()) -> dict:
    """Count tables for every n in ns; wall times for the n in timed_ns."""
    counts = count_table(ns, seed=seed)
    timed_rows = []
    if timed_ns:
        timed_rows = run_timed(ckpt_path, prompts, timed_ns, device, threads, throughput_prompts, latency_prompts,
                               max_rows, counts, seed=seed)
    return {
        "settings": {"ns": list(ns), "timed_ns": list(timed_ns), "throughput_prompts": throughput_prompts,
                     "latency_prompts": latency_prompts,
                     "max_rows_per_cell": max_rows, "orders": "both", "top_k_timed": 1, "seed": seed},
        "counts": counts,
        "timed": timed_rows,
    }
