"""Certified cascade benchmark: per fast variant, the per-pair logit error against exact
ONNX fp32 (median / p99 / max), the calibrated bound, the fraction of rows the cascade re-scored, wall time
vs fp32 on the same full ranking, whether ranks equal fp32's, and the process's peak RSS so far.

python -m benchmarks.cascade [--shape xsmall] [--prompts 4] [--candidates 6] [--threads 2]
Short by design (a few minutes on a busy 2-core machine); the CPU model and ISA are printed with it.
"""
from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--shape", default="xsmall")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--candidates", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--variants", default="torch bf16,openvino bf16,openvino fp32")
    args = ap.parse_args(argv)

    from benchmarks.common import candidates_for, default_data_path, load_prompts
    from blender_fast import Ranker
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.runtime.autoselect import cpu_features
    from blender_fast.runtime.calibration import measure_bound
    from blender_fast.synthetic.demo import demo_checkpoint

    feats = cpu_features()
    print(json.dumps({"cpu": feats["cpu_model"], "isa": feats["isa"], "threads": args.threads}))
    path = demo_checkpoint(args.shape)
    ckpt = load_checkpoint(path)
    prompts = load_prompts(default_data_path(), limit=args.prompts)
    inputs = [p.instruction for p in prompts]
    cands = [candidates_for(prompts, i, args.candidates) for i in range(len(prompts))]
    fp32 = Ranker.from_pretrained(path, backend="onnx", precision="fp32", threads=args.threads)
    fp32.rank(inputs[:1], [cands[0][:2]])  # warm-up
    t0 = time.perf_counter()
    want = fp32.rank(inputs, cands, return_scores=True)
    t_fp32 = time.perf_counter() - t0
    # Every ordered pair's fp32 logit, for the error distribution.
    src, a, b = [], [], []
    for p, cs in zip(inputs, cands):
        for i in range(len(cs)):
            for j in range(len(cs)):
                if i != j:
                    src.append(p), a.append(cs[i]), b.append(cs[j])
    exact_logits = fp32.compare(src, a, b, mode="[A,B]")
    print(json.dumps({"shape": args.shape, "prompts": len(inputs), "candidates": args.candidates,
                      "fp32_rank_s": round(t_fp32, 3), "fp32_logit_std": float(exact_logits.std())}))
    for variant in [v.strip() for v in args.variants.split(",") if v.strip()]:
        backend, precision = variant.split()
        try:
            fast = Ranker.from_pretrained(path, backend=backend, precision=precision, threads=args.threads)
        except Exception as e:  # noqa: BLE001 - reported, the other variants still run
            print(json.dumps({"variant": variant, "error": f"{type(e).__name__}: {e}"}))
            continue
        err = np.abs(fast.compare(src, a, b, mode="[A,B]") - exact_logits)
        t_cal = time.perf_counter()
        bound = measure_bound(fast.model, fp32.model, fp32.tokenizer, ckpt)
        t_cal = time.perf_counter() - t_cal
        casc = Ranker(fast.model, fast.tokenizer, fast.source_maxlength, fast.candidate_maxlength)
        casc.enable_cascade(fp32.model, bound["eps"])
        casc.rank(inputs[:1], [cands[0][:2]])  # warm-up
        t0 = time.perf_counter()  # fp32 timed again next to each variant: on a busy machine only interleaved
        fp32.rank(inputs, cands)   # timings compare
        t_fp32 = time.perf_counter() - t0
        t0 = time.perf_counter()
        sels = casc.select(inputs, cands, top_k=1, strategy="full")
        t_casc = time.perf_counter() - t0
        t0 = time.perf_counter()
        fast.rank(inputs, cands, return_scores=True)
        t_fast = time.perf_counter() - t0
        got = np.stack([s.scores for s in sels])
        from blender_fast.selection.strategies import ranks_from_scores
        rows = sum(s.forward_passes for s in sels)
        print(json.dumps({
            "variant": variant,
            "err_median": float(np.median(err)), "err_p99": float(np.quantile(err, 0.99)), "err_max": float(err.max()),
            "bound_eps": bound["eps"], "bound_covers_all_rows": bool(err.max() <= bound["eps"]),
            "calibration_s": round(t_cal, 2),
            "rescored_fraction": sum(s.rescored for s in sels) / rows,
            "fp32_s": round(t_fp32, 2), "fast_only_vs_fp32": round(t_fast / t_fp32, 3), "cascade_vs_fp32": round(t_casc / t_fp32, 3),
            "ranks_equal_fp32": bool((ranks_from_scores(got) == ranks_from_scores(want)).all()),
            "peak_rss_mb_so_far": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024}))


if __name__ == "__main__":
    main()
