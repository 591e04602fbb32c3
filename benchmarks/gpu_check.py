"""GPU check: our torch fp16 / bf16 CUDA path against llm-blender fp16 on the same GPU, one command.

    bash benchmarks/gpu_check.sh                      # on a machine with a CUDA GPU (see that file)
    python -m benchmarks.gpu_check --dry-run          # the same driver on the CPU, tiny shape, seconds

Per shape (default xsmall and large, PairRM's size; the generator needs transformers<5, which gpu_check.sh
puts first on the path) it times, interleaved, full ranking of P prompts x N candidates and best-of-B
(bubble): ours torch fp16, bf16 and fp32 against llm-blender fp16 at batch_size=8 (and 1, for parity);
then the certified cascade (fp16 for every pair, fp32 on ONNX Runtime's TensorRT/CUDA providers where
present for the pairs its measured bound cannot certify) against fp32 alone. Parity passes when ours fp16
and llm-blender fp16 differ by under 5% of the scores' std and every top-1 mismatch is a near-tie (scores
closer than twice that difference). Writes OUT/gpu_check.md and OUT/gpu_check.json.

``--phase t5`` reruns ours (fp16) under the image's own transformers 5 against the main run's scores.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from blender_fast import Ranker
from blender_fast.cluster.outputs import output_dir, write_text
from blender_fast.model.checkpoint import load_checkpoint
from blender_fast.runtime.calibration import measure_bound

from .common import (as_jsonable, candidates_for, default_data_path, generated_checkpoint, load_prompts, log,
                     machine_info, quiet_libraries, run_main)
from .engine import onnxruntime_has_gpu, run_engine_section, score_agreement
from .tables import md_table

# Before transformers or huggingface_hub is imported (lazily): checkpoints are generated or given as directories.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Parity: scores may differ by rounding (fp16 both sides, different padding) by at most this share of their std.
MAX_REL_SCORE_DIFF = 0.05


def plan_for(device: str) -> list[tuple[str, str, str, str]]:
    """Ours, torch: the first is the one compared with llm-blender, in its precision (fp16 on a GPU, fp32
    on the CPU of a dry run)."""
    order = ("fp16", "bf16", "fp32") if device == "cuda" else ("fp32", "fp16", "bf16")
    return [(f"blender-fast torch {p}", "ours", "torch", p) for p in order]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--shapes", default="xsmall,large", help="generated checkpoint shapes, comma-separated")
    p.add_argument("--model", default=None, help="a checkpoint directory instead of generated ones")
    p.add_argument("--prompts", type=int, default=None, help="prompts (default 8; llm-blender's default batch is 8)")
    p.add_argument("--candidates", type=int, default=None, help="candidates per prompt for full ranking (default 6)")
    p.add_argument("--best-of", type=int, default=None, help="candidates per prompt for best-of-n, bubble (default 12)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved repeats (default 2)")
    p.add_argument("--max-chars", type=int, default=None, help="clip texts (dry runs)")
    p.add_argument("--data", default=None)
    p.add_argument("--out", default="gpu_out")
    p.add_argument("--phase", choices=("main", "t5"), default="main")
    p.add_argument("--dry-run", action="store_true",
                   help="CPU, tiny shape, 2 prompts x 3 candidates, best-of-4, 1 repeat, short texts")
    args = p.parse_args(argv)
    # Dry run: the same driver on the CPU with a tiny checkpoint and short texts; explicit sizes win.
    for name, dry, real in (("prompts", 2, 8), ("candidates", 3, 6), ("best_of", 4, 12), ("repeats", 1, 2)):
        if getattr(args, name) is None:
            setattr(args, name, dry if args.dry_run else real)
    if args.dry_run:
        args.device, args.shapes, args.max_chars = "cpu", "tiny", args.max_chars or 200
    return args


def parity(ours: np.ndarray, ref: np.ndarray) -> dict:
    """engine.score_agreement, and whether the difference is small and each top-1 mismatch a near-tie."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    agree = score_agreement(ours, ref)
    diff, spread = agree["max_abs_score_diff"], float(np.std(ref))
    top_o, top_r = ours.argmax(1), ref.argmax(1)
    mismatches = np.flatnonzero(top_o != top_r)
    near_ties = all(abs(ref[p, top_r[p]] - ref[p, top_o[p]]) <= 2 * diff for p in mismatches)
    small = diff <= MAX_REL_SCORE_DIFF * spread if spread > 0 else diff == 0.0
    return {**agree, "score_spread": spread, "top1_mismatches": int(len(mismatches)),
            "mismatches_all_near_ties": bool(near_ties), "pass": bool(small and near_ties)}


def check_shape(ckpt: Path, shape: str, args, prompts) -> dict:
    out = {"checkpoint": str(ckpt), "shape": shape}
    for task, n in (("rank", args.candidates), ("best_of", args.best_of)):
        log(f"gpu_check: {shape} {task}: {len(prompts)} prompts x {n} candidates")
        out[task] = run_engine_section(ckpt, prompts, n, args.device, None, args.repeats, plan=plan_for(args.device),
                                       best_of_n=(task == "best_of"), tournament=False)
    return out


def cascade_check(ckpt: Path, prompts, n: int, device: str, repeats: int) -> dict:
    """The certified cascade on this device: a fast pass (torch fp16 on a GPU; torch bf16 in a CPU dry run)
    for every pair, fp32 again for the pairs its measured bound cannot certify. Measures the bound on the
    calibration rows (runtime/calibration.py), then times, interleaved, full ranking (ranks, which the
    cascade certifies; scores come from fp32 anyway) and best-of-n bubble on: fp32 alone, the fast pass
    alone, and the cascade; checks the cascade's ranks and picks equal fp32's and counts re-scored rows."""
    fast_precision = "fp16" if device == "cuda" else "bf16"
    # The exact model on ONNX Runtime where it has a GPU provider (TensorRT first, as runtime/sessions orders them).
    exact_backend = "onnx" if device == "cpu" or onnxruntime_has_gpu() else "torch"
    exact = Ranker.from_pretrained(ckpt, backend=exact_backend, precision="fp32", device=device)
    fast = Ranker.from_pretrained(ckpt, backend="torch", precision=fast_precision, device=device)
    bound = measure_bound(fast.model, exact.model, exact.tokenizer, load_checkpoint(ckpt))
    cascade = copy.copy(fast)
    cascade.enable_cascade(exact.model, bound["eps"])
    inputs = [p.instruction for p in prompts]
    cands = [candidates_for(prompts, i, n) for i in range(len(prompts))]
    rankers = {f"{exact.engine_info['backend']} fp32": exact, f"torch {fast_precision}": fast, "cascade": cascade}
    tasks = {"rank": lambda r: r.rank(inputs, cands),
             "best_of bubble": lambda r: r.select(inputs, cands, top_k=1, strategy="bubble")}
    out = {"fast": f"torch {fast_precision}", "exact": f"{exact.engine_info['backend']} fp32",
           "providers": getattr(exact.model, "providers", None), "bound": bound, "tasks": {}}
    for task, fn in tasks.items():
        walls, results = {name: [] for name in rankers}, {}
        for _ in range(max(1, repeats)):
            for name, r in rankers.items():
                t0 = time.perf_counter()
                results[name] = fn(r)
                walls[name].append(time.perf_counter() - t0)
        base = float(np.median(walls[out["exact"]]))
        cell = {name: {"wall_s": float(np.median(w)), "speedup_vs_fp32": base / float(np.median(w))}
                for name, w in walls.items()}
        if task == "rank":
            same = [np.array_equal(a, b) for a, b in zip(results["cascade"], results[out["exact"]])]
            sels = cascade.select(inputs, cands, top_k=1, strategy="full")
        else:
            same = [a.top_k == b.top_k for a, b in zip(results["cascade"], results[out["exact"]])]
            sels = results["cascade"]
        cell["cascade"].update(equal_to_fp32_pct=100.0 * float(np.mean(same)), rescored_pct=100.0 * sum(
            s.rescored for s in sels) / max(sum(s.forward_passes for s in sels), 1))
        out["tasks"][task] = cell
        log(f"gpu_check: cascade {task}: {cell}")
    return out


def cascade_table(shape: str, c: dict) -> list[str]:
    b = c["bound"]
    return [f"{shape}: certified cascade, fast {c['fast']}, exact {c['exact']} (providers {c['providers']}); "
            f"fast-pass error vs fp32 on the calibration rows: median {b['median_err']:.2g}, p99 {b['p99_err']:.2g}, "
            f"max {b['max_err']:.2g}; bound eps {b['eps']:.3g}", ""] + md_table(
        ["shape", "task", "engine", "wall s (median)", "× fp32", "ranks/picks = fp32", "re-scored"],
        [[shape, task, name, f"{cell['wall_s']:.3f}", f"{cell['speedup_vs_fp32']:.2f}",
          f"{cell['equal_to_fp32_pct']:.0f}%" if "equal_to_fp32_pct" in cell else "—",
          f"{cell['rescored_pct']:.1f}%" if "rescored_pct" in cell else "—"]
         for task, cells in c["tasks"].items() for name, cell in cells.items()])


def ref_scores_of(res: dict, device: str) -> tuple[np.ndarray, np.ndarray]:
    """(ours, llm-blender batch_size=1) full-ranking scores: ours in the reference's precision."""
    ours = plan_for(device)[0][0]
    return np.asarray(res["scores"][ours]), np.asarray(res["scores"]["llm-blender (batch_size=1)"])


def table(results: dict) -> str:
    lines = [f"GPU check on {results['machine'].get('gpu', 'no GPU (CPU dry run)')} ({results['machine']['versions']})", ""]
    for shape, sres in results["shapes"].items():
        rows = []
        for task in ("rank", "best_of"):
            res = sres[task]
            for tname, cells in res["tasks"].items():
                if task == "best_of" and tname == "rank":
                    continue  # best_of runs at n = best-of; its full ranking is only there for the picks
                bs1 = cells.get("llm-blender (batch_size=1)", {}).get("wall_s")
                rows += [[shape, f"{tname} n={res['settings']['candidates_per_prompt']}", name, f"{c['wall_s']:.3f}",
                          f"{c['pairs_per_s']:.0f}", f"{c.get('speedup_vs_reference', float('nan')):.2f}",
                          f"{bs1 / c['wall_s']:.2f}" if bs1 else "—"] for name, c in cells.items()]
        p = sres["parity"]
        lines += md_table(["shape", "task", "engine", "wall s (median)", "pairs/s", "× llm-blender fp16 bs=8", "× bs=1"],
                          rows)
        lines += [f"{shape}: parity ours vs llm-blender, same precision ({sres['reference_precision']}): top-1 "
                  f"{p['top1_agreement_pct']:.1f}% ({p['top1_mismatches']} mismatches, all near-ties: "
                  f"{p['mismatches_all_near_ties']}), identical ranks {p['identical_ranks_pct']:.1f}%, max |Δscore| "
                  f"{p['max_abs_score_diff']:.3g} (score std {p['score_spread']:.3g}) -> {'PASS' if p['pass'] else 'FAIL'}",
                  ""] + (cascade_table(shape, sres["cascade"]) if "cascade" in sres else [])
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()
    out = output_dir(args.out, "--out", may_hold_files=True)  # a file there, or no way to write: refused now
    out.mkdir(exist_ok=True)
    prompts = load_prompts(Path(args.data) if args.data else default_data_path(), max_chars=args.max_chars)[:args.prompts]
    started = time.perf_counter()

    def report(name, text):
        write_text(out / name, text + "\n")
        print(text)

    if args.phase == "t5":
        # Ours under whatever transformers this interpreter has (the image's 5.x), on the main run's
        # checkpoints and prompts, against the main run's scores.
        import transformers

        saved = json.loads((out / "gpu_check.json").read_text())
        lines = [f"transformers {transformers.__version__}: ours torch fp16 vs the main run"]
        for shape, sres in saved["shapes"].items():
            ranker = Ranker.from_pretrained(sres["checkpoint"], backend="torch", device=args.device,
                                            precision="fp16" if args.device == "cuda" else "fp32")
            cands = [c[:args.candidates] for c in sres["rank"]["candidates"]]
            scores = ranker.rank(sres["rank"]["inputs"], cands, return_scores=True)
            ours_main, ref = ref_scores_of(sres["rank"], args.device)
            p_main, p_ref = parity(scores, ours_main), parity(scores, ref)
            lines.append(f"{shape}: vs ours (main run) max |Δ| {p_main['max_abs_score_diff']:.3g}, top-1 "
                         f"{p_main['top1_agreement_pct']:.0f}%; vs llm-blender fp16 top-1 {p_ref['top1_agreement_pct']:.0f}% "
                         f"-> {'PASS' if p_ref['pass'] else 'FAIL'}")
        report("gpu_check_t5.md", "\n".join(lines))
        return 0

    results = {"command": "python -m benchmarks.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
               "machine": machine_info(args.device), "shapes": {}}
    for shape in [s for s in args.shapes.split(",") if s]:
        t0 = time.perf_counter()
        ckpt = Path(args.model) if args.model else generated_checkpoint(shape, 0)
        log(f"gpu_check: {shape} checkpoint ready in {time.perf_counter() - t0:.0f} s")
        sres = check_shape(ckpt, shape, args, prompts)
        sres.update(parity=parity(*ref_scores_of(sres["rank"], args.device)),
                    reference_precision=sres["rank"]["settings"]["reference_precision"])
        log(f"gpu_check: {shape} certified cascade")
        sres["cascade"] = cascade_check(ckpt, prompts, args.candidates, args.device, args.repeats)
        results["shapes"][shape] = sres
        results["wall_s"] = time.perf_counter() - started
        write_text(out / "gpu_check.json", json.dumps(as_jsonable(results), indent=1))
        if args.model:
            break
    report("gpu_check.md", table(results))
    log(f"gpu_check: done in {time.perf_counter() - started:.0f} s")
    exact_cascade = all(c["equal_to_fp32_pct"] == 100.0 for s in results["shapes"].values()
                        for c in (s["cascade"]["tasks"][t]["cascade"] for t in s["cascade"]["tasks"]))
    return 0 if exact_cascade and all(s["parity"]["pass"] for s in results["shapes"].values()) else 1


if __name__ == "__main__":
    sys.exit(run_main(main))
