"""python -m benchmarks: engine vs llm-blender, strategies, FLOPs vs peak, selection quality.

Writes OUT/results.md, OUT/results.json and OUT/*.png. See `python -m benchmarks --help`.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

from blender_fast import Ranker
from blender_fast.cluster.outputs import output_dir
from blender_fast.options import BACKENDS, PRECISIONS, HelpFormatter
from blender_fast.synthetic.demo import local_model

from . import coldstart, engine, flops, quality, ray_scaling, report, serve, strategies
from .common import (as_jsonable, default_data_path, generated_checkpoint, load_average, load_prompts, log,
                     machine_info, quiet_libraries, run_main)

# Never touch a hub unless told (HF_HUB_OFFLINE=0): checkpoints are generated, or given with --model (a
# directory or a hub id already in the HF cache).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTIONS = ("engine", "speed", "strategies", "flops", "quality", "frontier", "ray", "serve", "coldstart")
# speed (the README's table: tens of minutes), ray (needs [ray]), serve (needs [serve], minutes of HTTP load) and
# coldstart (from the clone: the hub stand-in is in tests/) run when asked, e.g. --sections flops,speed
DEFAULT_SECTIONS = ("engine", "strategies", "flops", "quality", "frontier")
ALL_NS = (4, 8, 12, 16, 24, 32)


@dataclass
class Sizes:
    """How much work each section does. The CPU defaults fit `python -m benchmarks` (xsmall) in 15 minutes
    on 2 cores: a pair of ~550 tokens costs ~34 GFLOP there, half a second to a second per model row."""

    shape: str
    prompts: int  # engine section: prompts ...
    candidates: int  # ... and candidates per prompt
    repeats: int
    timed_ns: tuple  # strategies wall-time grid (the count tables always cover ALL_NS)
    throughput_prompts: int
    latency_prompts: int
    max_rows: int  # strategies: skip a timed cell above this many model rows
    quality_seeds: int
    quality_prompts: int  # with --model: prompts whose n(n-1) pairs the checkpoint scores
    max_chars: int | None = None  # clip every text (smoke runs only: changes the workload)
    ray_prompts: int = 200  # ray section: prompts (tournament top-1) ...
    ray_candidates: int = 6  # ... and candidates per prompt


DEFAULTS = {
    # A smoke run: short texts (200 characters) and 2 repeats, so that even llm-blender is quick.
    "quick": Sizes("tiny", prompts=2, candidates=3, repeats=2, timed_ns=(4,), throughput_prompts=2,
                   latency_prompts=2, max_rows=100, quality_seeds=1, quality_prompts=2, max_chars=200,
                   ray_prompts=8, ray_candidates=4),
    "cpu": Sizes("xsmall", prompts=2, candidates=4, repeats=3, timed_ns=(4, 12), throughput_prompts=4,
                 latency_prompts=2, max_rows=200, quality_seeds=20, quality_prompts=4),
    "cuda": Sizes("xsmall", prompts=32, candidates=12, repeats=3, timed_ns=ALL_NS, throughput_prompts=64,
                  latency_prompts=8, max_rows=70000, quality_seeds=20, quality_prompts=405),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--shape", choices=("tiny", "xsmall", "base", "large"), default=None,
                   help="generated checkpoint size (large = PairRM's real size); default xsmall, tiny with --quick")
    p.add_argument("--model", default=None, help="use this checkpoint directory instead of generating one; the "
                   "quality section then also runs on its logits")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--data", default=None, help="prompts (AlpacaEval candidates format); default "
                   "$BLENDER_FAST_DATA or ../shared/data/alpaca_eval_candidates/candidates_dev.jsonl")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--sections", default=",".join(DEFAULT_SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    p.add_argument("--engines", default=None, help="engine section: our engines as BACKEND:PRECISION,... (the first "
                   "is the main one; default: every variant this device runs)")
    p.add_argument("--quick", action="store_true", help="tiny-shape smoke run (well under a minute)")
    for flag, what in (("--prompts", "engine: number of prompts"), ("--candidates", "engine: candidates per prompt"),
                       ("--repeats", "engine: interleaved repeats (median)"), ("--throughput-prompts", None),
                       ("--latency-prompts", None), ("--max-rows", "strategies: skip timed cells above this many model rows"),
                       ("--quality-seeds", None), ("--quality-prompts", "with --model: prompts scored by the checkpoint"),
                       ("--threads", "intra-op threads (ours and torch); default: runtime's"),
                       ("--ray-prompts", "ray section: prompts (default 200)")):
        p.add_argument(flag, type=int, default=None, help=what)
    p.add_argument("--speed-prompts", type=int, default=48, help="speed: prompts, sorted into --speed-bins "
                   "length bins (tokens per pair) of equal count")
    p.add_argument("--speed-bins", type=int, default=3, help="speed: length bins")
    p.add_argument("--speed-per-bin", type=int, default=None, help="speed: time only N prompts of each bin, "
                   "spread over its lengths (a shorter run over the same length range)")
    p.add_argument("--speed-batch-sizes", default="1,8", help="speed: llm-blender's batch sizes to time against "
                   "(1 is its fastest on a CPU, 8 its default and the slow part of the run)")
    p.add_argument("--strategy-ns", default=None, help="strategies: candidate counts to time, e.g. 4,8,12")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    if set(args.sections) - set(SECTIONS):
        p.error(f"unknown sections {sorted(set(args.sections) - set(SECTIONS))}; choose from {','.join(SECTIONS)}")
    return args


def engines_argument(text: str | None) -> list[tuple[str, str, str, str]] | None:
    """"onnx:fp32,openvino:bf16" → the engine section's plan entries; None when not given."""
    if not text:
        return None
    plan = []
    for item in text.split(","):
        backend, _, precision = item.strip().partition(":")
        if backend not in BACKENDS or precision not in PRECISIONS:
            raise SystemExit(f"--engines: {item!r} is not BACKEND:PRECISION with BACKEND in "
                             f"{BACKENDS} and PRECISION in {PRECISIONS}")
        plan.append((f"blender-fast {backend} {precision}", "ours", backend, precision))
    return plan


def resolve_sizes(args) -> Sizes:
    """The device's (or --quick's) defaults, with every size given on the command line instead."""
    given = {f: getattr(args, f) for f in ("shape", "prompts", "candidates", "repeats", "throughput_prompts",
                                           "latency_prompts", "max_rows", "quality_seeds", "quality_prompts",
                                           "ray_prompts") if getattr(args, f) is not None}
    if args.strategy_ns:
        given["timed_ns"] = tuple(int(x) for x in args.strategy_ns.split(","))
    return replace(DEFAULTS["quick" if args.quick else args.device], **given)


def main(argv=None) -> int:
    args = parse_args(argv)
    sizes = resolve_sizes(args)
    quiet_libraries()
    started = time.perf_counter()

    out = output_dir(args.out, "--out", may_hold_files=True)  # a file there, or no way to write: refused now
    out.mkdir(exist_ok=True)
    data = Path(args.data) if args.data else default_data_path()
    prompts = load_prompts(data, max_chars=sizes.max_chars)
    need = max(sizes.prompts, sizes.throughput_prompts, sizes.latency_prompts)
    if len(prompts) < need:
        raise SystemExit(f"{data}: {len(prompts)} prompts, the settings need {need}")

    if args.model:
        # a directory, demo:SHAPE, or a hub id already in the HF cache (HF_HUB_OFFLINE=0 to let it download)
        ckpt, kind = local_model(args.model), "given with --model"
    else:
        ckpt, kind = generated_checkpoint(sizes.shape, args.seed), f"generated, shape {sizes.shape}, random weights"
    shape = flops.ModelShape.from_checkpoint(ckpt)
    machine = machine_info(args.device)
    load = machine["load_average_at_start"][0]
    results = {"meta": {
        "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine, "checkpoint": str(ckpt), "checkpoint_kind": kind, "model_shape": shape,
        "data": str(data), "settings": {**vars(args), **as_jsonable(sizes), "sections": args.sections},
        "note": (f"Provisional: the machine was busy at the start (load average {load:.1f} on "
                 f"{machine['logical_cores']} cores); timings are noisy." if load > 0.5 * machine["logical_cores"] else None),
        "section_seconds": {},
    }}

    def write(partial=None):
        """Outputs after every section (and every speed bin): a late failure keeps the earlier ones."""
        if partial is not None:
            results["speed"] = partial
        results["meta"].update(wall_s=time.perf_counter() - started, load_average_at_end=load_average())
        report.write_outputs(results, out)

    def section(name, measure, message=None):
        if name in args.sections:
            log(message or f"{name}: starting")
            t0 = time.perf_counter()
            results[name] = as_jsonable(measure())
            results["meta"]["section_seconds"][name] = time.perf_counter() - t0
            write()

    # The GEMM peak at the start of the run too (the flops section measures it again at the end).
    start_peak = flops.measure_peak(args.device, args.threads, args.quick) if {"flops", "speed"} & set(args.sections) else None
    section("engine", lambda: engine.run_engine_section(
        ckpt, prompts[:sizes.prompts], sizes.candidates, args.device, args.threads, sizes.repeats, seed=args.seed,
        plan=engines_argument(args.engines)),
        f"engine: {sizes.prompts} prompts × {sizes.candidates} candidates, {sizes.repeats} repeats")
    batch_sizes = tuple(int(x) for x in args.speed_batch_sizes.split(","))
    if not set(batch_sizes) <= {1, 8}:
        raise SystemExit(f"--speed-batch-sizes {args.speed_batch_sizes!r}: a comma-separated subset of 1,8")
    n_speed = min(args.speed_prompts, len(prompts)) if not args.quick else 2 * args.speed_bins
    section("speed", lambda: engine.run_speed_section(
        ckpt, prompts, n_speed, args.speed_bins, args.candidates or (3 if args.quick else 6), args.device,
        args.threads, args.repeats or 1, batch_sizes, start_peak, seed=args.seed, per_bin=args.speed_per_bin,
        on_bin=write), f"speed: {n_speed} prompts in {args.speed_bins} length bins, llm-blender batch sizes {batch_sizes}")
    section("strategies", lambda: strategies.run_strategies_section(
        ckpt, prompts, tuple(sorted(set(ALL_NS) | set(sizes.timed_ns))), args.device, args.threads,
        sizes.throughput_prompts, sizes.latency_prompts, sizes.max_rows, seed=args.seed, timed_ns=sizes.timed_ns),
        f"strategies: timing n in {sizes.timed_ns}")
    section("flops", lambda: flops.run_flops_section(shape, results.get("engine"), results.get("strategies"),
                                                     args.device, args.threads, args.quick, start_peak),
            "flops: measuring the GEMM peak (end of run)")
    ranker = None
    if args.model and {"quality", "frontier"} & set(args.sections):
        ranker = Ranker.from_pretrained(ckpt, device=args.device, threads=args.threads,
                                        backend="onnx" if args.device == "cpu" else "torch")
    # The synthetic comparator on every prompt; with --model also the checkpoint's logits on --quality-prompts.
    for name, synthetic, on_model in (("quality", quality.run_synthetic, quality.run_model),
                                      ("frontier", quality.run_frontier, quality.run_model_frontier)):
        section(name, lambda: {"synthetic": synthetic(prompts, seeds=sizes.quality_seeds), **(
            {"checkpoint": on_model(ranker, prompts[:sizes.quality_prompts], seeds=sizes.quality_seeds)} if ranker else {})})
    section("ray", lambda: ray_scaling.run_ray_section(ckpt, prompts, sizes.ray_prompts, sizes.ray_candidates,
                                                       repeats=sizes.repeats if args.repeats else 2),
            f"ray: {sizes.ray_prompts} prompts, single-process vs Ray with 1 and 2 actors")
    section("serve", lambda: serve.run_serve_section(ckpt, prompts, quick=args.quick, seed=args.seed))
    section("coldstart", lambda: coldstart.run_coldstart_section(ckpt, repeats=args.repeats or 1),
            f"coldstart: {coldstart.HUB_ID} through the hub stand-in, llm-blender and ours")
    write()
    log(f"wrote {out / 'results.md'} and {out / 'results.json'} in {results['meta']['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
