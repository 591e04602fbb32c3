"""Profile section: where the exact fp32 ONNX path spends its time, by operator (ONNX Runtime's profiler).

Runs the exported fp32 graph on real packed batches (full-ranking pairs of the benchmark prompts) with
SessionOptions.enable_profiling, sums the kernel time of every node by op type, and groups op types
into GEMMs, DeBERTa's relative-position gathers, softmax, layer norm and the rest.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

from .common import as_jsonable, candidates_for, log

GROUPS = {
    "GEMM (MatMul/Gemm/FusedMatMul)": ("MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul",
                                       "MatMulIntegerToFloat", "QGemm", "FusedGemm"),
    "relative-position gathers (Gather/GatherElements)": ("Gather", "GatherElements", "GatherND"),
    "softmax": ("Softmax",),
    "layer norm": ("LayerNormalization", "SkipLayerNormalization", "SimplifiedLayerNormalization"),
    "elementwise (Add/Mul/Div/Sub/Where/Erf/Gelu...)": ("Add", "Mul", "Div", "Sub", "Where", "Erf", "Gelu", "BiasGelu",
                                                       "FastGelu", "Sqrt", "Pow", "Tanh", "Cast", "Not", "Equal",
                                                       "Clip", "Neg", "Abs", "Less", "Greater", "Sign", "Log",
                                                       "Ceil", "Min", "Max", "And", "Or", "Expand"),
    "layout (Transpose/Reshape/Concat/Slice...)": ("Transpose", "Reshape", "Concat", "Slice", "Unsqueeze", "Squeeze",
                                                   "Shape", "Split", "Range", "ConstantOfShape", "Tile", "Flatten"),
}


def group_of(op: str) -> str:
    for name, ops in GROUPS.items():
        if op in ops:
            return name
    return "other"


def parse_profile(path: Path) -> dict:
    """{op_type: microseconds} summed over every node run in the profile but the first (warm-up) run."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    warm_end = runs[0][1] if len(runs) > 1 else -1  # the first run is a warm-up
    by_op: dict[str, float] = defaultdict(float)
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e.get("ts", 0) > warm_end:
            by_op[e.get("args", {}).get("op_name", "?")] += float(e.get("dur", 0))
    return dict(by_op)


def run_profile_section(ckpt_path: Path, prompts, n_candidates: int, threads, batches: int = 4,
                        opt_levels=("ORT_ENABLE_ALL", "ORT_ENABLE_EXTENDED", "ORT_ENABLE_BASIC"),
                        before: bool = True) -> dict:
    """Profile the export at each graph optimization level, and (``before``) transformers' attention
    exported as it is, at the first level: what attention.py's rewrite changed, on the same batches."""
    import tempfile

    import onnxruntime as ort

    from blender_fast import Ranker
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.model.export import cached_export, export_onnx

    ckpt = load_checkpoint(ckpt_path)
    out_dir, _ = cached_export(ckpt, "fp32")
    graphs = {level: (out_dir / "model.onnx", level) for level in opt_levels}
    tmp = None
    if before:
        tmp = tempfile.TemporaryDirectory(prefix="blender_fast_profile_")
        export_onnx(ckpt, Path(tmp.name), "fp32", rewrite_attention=False)
        graphs[f"transformers attention, {opt_levels[0]}"] = (Path(tmp.name) / "model.onnx", opt_levels[0])
    ranker = Ranker.from_pretrained(ckpt_path, backend="onnx", precision="fp32", threads=threads)
    # The packed batches ranking would run: record them through a recording model.
    recorded = []

    def record(ids, mask, pos):
        recorded.append((ids, mask, pos))
        return np.zeros(len(ids), np.float32)

    ranker.model = record
    inputs = [p.instruction for p in prompts]
    cands = [candidates_for(prompts, i, n_candidates) for i in range(len(prompts))]
    ranker.rank(inputs, cands)
    step = max(1, len(recorded) // batches)
    sample = recorded[::step][:batches]
    log(f"profile: {len(sample)} batches, shapes {[b[0].shape for b in sample]}")
    result = {"batches": [list(b[0].shape) for b in sample], "levels": {}}
    for name, (graph, level) in graphs.items():
        so = ort.SessionOptions()
        so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        so.log_severity_level = 3
        if threads:
            so.intra_op_num_threads = int(threads)
        so.enable_profiling = True
        so.profile_file_prefix = f"/tmp/blender_fast_ort_profile_{level}"
        sess = ort.InferenceSession(str(graph), sess_options=so, providers=["CPUExecutionProvider"])
        feeds = [{"input_ids": a, "attention_mask": b, "positions": c} for a, b, c in sample]
        sess.run(None, feeds[0])  # warm-up: parse_profile skips the first run
        t0 = time.perf_counter()
        for f in feeds:
            sess.run(None, f)
        wall = time.perf_counter() - t0
        prof = sess.end_profiling()
        by_op = parse_profile(Path(prof))
        Path(prof).unlink(missing_ok=True)
        total = sum(by_op.values())
        groups: dict[str, float] = defaultdict(float)
        for op, us in by_op.items():
            groups[group_of(op)] += us
        result["levels"][name] = {
            "wall_s": wall, "kernel_s": total / 1e6,
            "groups": {g: {"s": us / 1e6, "pct": 100.0 * us / total} for g, us in sorted(groups.items(), key=lambda kv: -kv[1])},
            "ops": {op: {"s": us / 1e6, "pct": 100.0 * us / total} for op, us in sorted(by_op.items(), key=lambda kv: -kv[1])[:15]},
        }
        log(f"profile: {name}: wall {wall:.2f}s, kernels {total / 1e6:.2f}s, "
            + ", ".join(f"{g.split(' ')[0]} {v['pct']:.0f}%" for g, v in result["levels"][name]["groups"].items()))
    if tmp is not None:
        result["rewrite_speedup"] = interleaved_ratio(graphs[f"transformers attention, {opt_levels[0]}"][0],
                                                      out_dir / "model.onnx", sample, threads)
        tmp.cleanup()
        log(f"profile: attention.py's rewrite: {result['rewrite_speedup']:.2f}x transformers' attention "
            "(same batches, interleaved, median of 3)")
    return as_jsonable(result)


def interleaved_ratio(before: Path, after: Path, sample, threads, repeats: int = 3) -> float:
    """Median over interleaved repeats of time(before) / time(after) on the same batches, no profiler."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 3
    if threads:
        so.intra_op_num_threads = int(threads)
    sessions = [ort.InferenceSession(str(g), sess_options=so, providers=["CPUExecutionProvider"]) for g in (before, after)]
    feeds = [{"input_ids": a, "attention_mask": b, "positions": c} for a, b, c in sample]
    for sess in sessions:
        sess.run(None, feeds[0])
    ratios = []
    for _ in range(repeats):
        walls = []
        for sess in sessions:
            t0 = time.perf_counter()
            for f in feeds:
                sess.run(None, f)
            walls.append(time.perf_counter() - t0)
        ratios.append(walls[0] / walls[1])
    return float(np.median(ratios))


def profile_markdown(sec: dict) -> list[str]:
    lines = [f"Batches (rows × tokens): {sec['batches']}", ""]
    levels = list(sec["levels"])
    lines += ["| group | " + " | ".join(f"{lv} (s, %)" for lv in levels) + " |", "|---|" + "---|" * len(levels)]
    groups = list(sec["levels"][levels[0]]["groups"])
    for g in groups:
        cells = []
        for lv in levels:
            v = sec["levels"][lv]["groups"].get(g)
            cells.append(f"{v['s']:.3f} ({v['pct']:.0f}%)" if v else "—")
        lines.append(f"| {g} | " + " | ".join(cells) + " |")
    lines.append("| wall (4 batches) | " + " | ".join(f"{sec['levels'][lv]['wall_s']:.3f}" for lv in levels) + " |")
    if sec.get("rewrite_speedup"):
        lines += ["", f"attention.py's rewrite vs transformers' attention exported as it is: "
                      f"{sec['rewrite_speedup']:.2f}× (same batches, 3 interleaved repeats, median of the ratios)."]
    lines += ["", f"Top operators ({levels[0]}):", "", "| op | s | % |", "|---|---|---|"]
    lines += [f"| {op} | {v['s']:.3f} | {v['pct']:.1f}% |" for op, v in sec["levels"][levels[0]]["ops"].items()]
    return lines + [""]
