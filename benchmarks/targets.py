"""The exact-at-speed targets (docs/exact-at-speed.md §6), measured side by side in one run: blender-fast (precision="auto", backend="auto")
against llm-blender 0.0.2 on generated random-weight checkpoints.

python -m benchmarks.targets --out DIR [--prompts 8] [--candidates 6] [--exact-prompts 20]
                             [--large-prompts 1] [--shape xsmall] [--large-shape large] [--quick]

Sections (all by default; --sections picks some):

1. ``speed``: xsmall, full ranking (``Blender.rank``), ours auto/auto loaded from a FRESH ONNX cache
   directory (the first load, with its export and any calibration, is timed apart as load time) against
   llm-blender ``batch_size=1`` and ``batch_size=8``, interleaved repeats, medians and paired ratios.
2. ``exactness``: ranks of ours auto = ours exact ONNX fp32 = llm-blender ``batch_size=1``, on further
   prompts; pairs whose fp32 scores are within 1e-3 of a tie are excepted and counted.
3. ``large``: PairRM's real shape (generated), full ranking, ours auto vs llm-blender ``batch_size=1``.
4. ``best``: best-of-n, ours bubble (llm-blender's start orders) and adaptive vs llm-blender's bubble
   (its default ``get_best_of_n``), picks compared.
5. ``rss``: peak RSS of each variant in its own subprocess (the child's VmHWM, its own high-water mark
   since exec, cross-checked by sampling from the parent), and of the export of the large shape
   (``export_command``, what ``blender-fast export`` runs) into an empty cache.
6. ``profile``: ONNX Runtime's per-node profile of ours (fp32, xsmall, the same prompts' packed batches),
   split into weight GEMMs, disentangled attention and the rest, with the weight-GEMM rate against an
   ORT MatMul peak measured in the same run, and what the targets would need.

Writes DIR/targets.md and DIR/targets.json. Prompts from --data / $BLENDER_FAST_DATA / the shared
AlpacaEval dev file; nothing is downloaded. The CPU model and ISA flags head the report.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SECTIONS = ("speed", "best", "exactness", "profile", "rss", "large")
TIE_EPS = 1e-3
EXPORT_RSS_LIMIT_GB = 12.0
TARGETS = {"speed_bs1": 2.5, "speed_bs8": 10.0, "large_bs1": 4.0, "best_of_n": 4.0}


# -- small helpers ----------------------------------------------------------------------------------

def _ranks(scores) -> np.ndarray:
    from blender_fast.selection.strategies import ranks_from_scores

    return np.stack([ranks_from_scores(np.asarray(s, dtype=np.float64)) for s in scores])


def pair_exactness(fp32_scores, other_scores, tie_eps: float = TIE_EPS) -> dict:
    """Does `other` order every pair of candidates as fp32 does? Pairs whose fp32 scores are within
    tie_eps are excepted (counted). Also: prompts with an identical rank vector, max |score diff|."""
    a, b = np.asarray(fp32_scores, np.float64), np.asarray(other_scores, np.float64)
    pairs = excepted = wrong = 0
    wrong_prompts = set()
    for p in range(a.shape[0]):
        n = a.shape[1]
        for i in range(n):
            for j in range(i + 1, n):
                pairs += 1
                d = a[p, i] - a[p, j]
                if abs(d) < tie_eps:
                    excepted += 1
                    continue
                if np.sign(b[p, i] - b[p, j]) != np.sign(d):
                    wrong += 1
                    wrong_prompts.add(p)
    same = np.all(_ranks(a) == _ranks(b), axis=1)
    return {"prompts": int(a.shape[0]), "candidate_pairs": pairs, "excepted_near_ties": excepted,
            "pairs_ordered_differently": wrong, "prompts_with_a_difference": sorted(wrong_prompts),
            "prompts_identical_ranks": int(same.sum()), "max_abs_score_diff": float(np.max(np.abs(a - b))),
            "equal_outside_ties": wrong == 0}


def run_child_process(cmd: list[str], env: dict | None = None, timeout: float = 1800) -> dict:
    """Run cmd; wall time, exit code, and the child's own peak RSS (os.wait4's ru_maxrss, which covers
    the process and its reaped descendants, never this parent). stdout's last line, if JSON, is parsed."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        killer = threading.Timer(timeout, proc.kill)
        killer.start()
        sampler = ChildRssSampler(proc.pid)
        sampler.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            killer.cancel()
            sampler.stop()
        proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4: Popen must not wait again
        wall = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    rec = {"cmd": [Path(c).name if i == 0 else c for i, c in enumerate(cmd)], "rc": proc.returncode,
           "wall_s": wall, "sampled_peak_rss_mb": sampler.peak / 2**20,
           # ru_maxrss of a child starts from its parent's RSS at the fork: an upper bound only.
           "wait4_ru_maxrss_mb": usage.ru_maxrss / 1024}
    last = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    try:
        rec["child"] = json.loads(last)
    except ValueError:
        pass
    # The peak: the child's own VmHWM (its address space's high-water mark, which exec resets) when it
    # reported one, else what the parent's sampler saw.
    hwm = rec.get("child", {}).get("vmhwm_mb")
    rec["peak_rss_mb"] = hwm if hwm else rec["sampled_peak_rss_mb"]
    rec["peak_source"] = "child VmHWM" if hwm else "parent sampling every 10 ms"
    if proc.returncode != 0:
        rec["stderr_tail"] = stderr[-2000:]
    return rec


class ChildRssSampler:
    """The RSS of a process (and its children), sampled every 10 ms from another thread."""

    def __init__(self, pid: int, interval_s: float = 0.01):
        self.pid, self.interval_s, self.peak = pid, interval_s, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        import psutil

        try:
            proc = psutil.Process(self.pid)
        except psutil.Error:
            return
        while not self._stop.is_set():
            try:
                rss = proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(recursive=True))
            except psutil.Error:
                return
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval_s)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()


def vmhwm_mb() -> float | None:
    """This process's peak RSS since its exec (VmHWM of /proc/self/status); None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


# -- loading the engines ------------------------------------------------------------------------------

def load_ours(path, backend: str, precision: str, threads, cache_dir):
    """A blender-fast Blender whose model calls are recorded (engine.py's Engine/timed_call read them)."""
    from blender_fast import Blender

    from .common import RecordingModel

    blender = Blender({"device": "cpu", "use_tqdm": False})
    blender.loadranker(str(path), device="cpu", backend=backend, precision=precision, threads=threads,
                       onnx_cache_dir=str(cache_dir) if cache_dir else None)
    recorder = RecordingModel(blender.ranker.model)
    blender.ranker.model = recorder
    return blender, recorder.batches


def ours_engine(name, path, backend, precision, threads, cache_dir):
    from .common import RssSampler, log
    from .engine import Engine

    log(f"targets: loading {name} (cache {cache_dir})")
    with RssSampler() as mem:
        t0 = time.perf_counter()
        blender, batches = load_ours(path, backend, precision, threads, cache_dir)
        load_s = time.perf_counter() - t0
    info = blender.ranker.describe()
    eng = Engine(name, "ours", info["backend"], info["precision"], blender=blender, batches=batches)
    eng.load_s = load_s
    desc = {k: info.get(k) for k in ("backend", "precision", "device", "threads", "reason", "cascade")}
    log(f"targets: {name} loaded in {load_s:.1f}s: {desc['backend']} {desc['precision']} ({desc['reason']})")
    return eng, {"load_s": load_s, "load_peak_rss_mb": mem.peak / 2**20, "describe": desc}


def reference_engines(path):
    """llm-blender once, as two Engines (batch_size 8 = its default, and 1)."""
    from .common import log
    from .engine import Engine, load_reference

    log("targets: loading llm-blender")
    t0 = time.perf_counter()
    ref, batches = load_reference(path, "cpu")
    load_s = time.perf_counter() - t0
    e8 = Engine("llm-blender (batch_size=8)", "reference", "torch", "fp32", batch_size=8, blender=ref, batches=batches)
    e1 = Engine("llm-blender (batch_size=1)", "reference", "torch", "fp32", batch_size=1, blender=ref, batches=batches)
    e8.load_s = e1.load_s = load_s
    return e8, e1


def rank_fn(engine, inputs, cands):
    if engine.side == "ours":
        return lambda: engine.blender.rank(inputs, cands, return_scores=True, disable_tqdm=True)
    return lambda: engine.blender.rank(inputs, cands, return_scores=True, batch_size=engine.batch_size,
                                       disable_tqdm=True)


def interleaved(schedule, repeats: int, shape, label: str) -> tuple[dict, dict]:
    """Run each (key, engine, fn) of schedule once per repeat, in order; runs and first outputs per key."""
    from .common import log
    from .engine import timed_call

    runs: dict[str, list[dict]] = {}
    outputs: dict[str, object] = {}
    for r in range(repeats):
        for key, engine, fn in schedule:
            # No RSS-sampling thread beside the timed call (peak RSS: section 5, one subprocess per
            # variant). An A/B on a quiet machine found the thread costs nothing (0.99, docs/exact-at-speed-
            # targets.md); timing alone keeps it that way on a busy one.
            out, rec = timed_call(engine, fn, "cpu", shape, sample_rss=False)
            rec["repeat"] = r
            runs.setdefault(key, []).append(rec)
            outputs.setdefault(key, out)
            log(f"targets: {label} repeat {r + 1}/{repeats} {key:<34} {rec['wall_s']:8.2f}s "
                f"(load {rec['load_average_1min']})")
    return runs, outputs


def ratio_cells(runs: dict, ours_key: str, ref_keys: list[str]) -> dict:
    """Median walls and ours-vs-theirs speedups: ratio of medians and median of per-repeat ratios."""
    from .common import median
    from .engine import summarize

    cells = {k: summarize(v) for k, v in runs.items()}
    for k, rs in runs.items():
        cells[k]["runs_s"] = [r["wall_s"] for r in rs]
    speedups = {}
    for rk in ref_keys:
        if rk in runs and ours_key in runs:
            paired = [b["wall_s"] / a["wall_s"] for a, b in zip(runs[ours_key], runs[rk])]
            speedups[rk] = {"ratio_of_medians": cells[rk]["wall_s"] / cells[ours_key]["wall_s"],
                            "paired_median": median(paired), "paired": paired}
    return {"cells": cells, "speedups": speedups}


# -- sections -----------------------------------------------------------------------------------------

def section_speed(ctx) -> dict:
    """1: xsmall full ranking, ours auto (fresh cache) vs llm-blender bs=1 and bs=8."""
    from .common import candidates_for, load_average
    from .flops import ModelShape

    prompts = ctx.prompts[:ctx.args.prompts]
    inputs = [p.instruction for p in prompts]
    cands = [candidates_for(ctx.prompts, i, ctx.args.candidates) for i in range(len(prompts))]
    la0 = load_average()
    ours, load = ours_engine("ours auto", ctx.xsmall, "auto", "auto", ctx.args.threads, ctx.fresh_cache)
    ctx.ours = ours
    ref8, ref1 = reference_engines(ctx.xsmall)
    ctx.ref8, ctx.ref1 = ref8, ref1
    warm_in, warm_c = inputs[:1], [cands[0][:2]]
    ours.blender.rank(warm_in, warm_c, return_scores=True, disable_tqdm=True)
    ref1.blender.rank(warm_in, warm_c, return_scores=True, batch_size=1, disable_tqdm=True)
    shape = ModelShape.from_checkpoint(ctx.xsmall)
    ctx.shape = shape
    schedule = [("ours auto", ours, rank_fn(ours, inputs, cands)),
                ("llm-blender bs=1", ref1, rank_fn(ref1, inputs, cands)),
                ("llm-blender bs=8", ref8, rank_fn(ref8, inputs, cands))]
    runs, outs = interleaved(schedule, ctx.args.repeats, shape, "speed")
    res = ratio_cells(runs, "ours auto", ["llm-blender bs=1", "llm-blender bs=8"])
    scores = {k: np.asarray(v, np.float64) for k, v in outs.items()}
    ctx.speed_scores = scores
    ctx.speed_inputs, ctx.speed_cands = inputs, cands
    res.update(
        prompts=len(inputs), candidates=ctx.args.candidates, pairs=len(inputs) * ctx.args.candidates * (ctx.args.candidates - 1),
        repeats=ctx.args.repeats, ours_load=load, reference_load_s=ref8.load_s,
        load_average_start=la0, load_average_end=load_average(),
        agreement={"ours auto vs llm-blender bs=1": pair_exactness(scores["llm-blender bs=1"], scores["ours auto"]),
                   "llm-blender bs=8 vs bs=1": pair_exactness(scores["llm-blender bs=1"], scores["llm-blender bs=8"])},
        runs={k: v for k, v in runs.items()})
    return res


def section_best(ctx) -> dict:
    """4: best-of-n, ours bubble (llm-blender's start orders) and adaptive vs llm-blender bubble (bs=8)."""
    import torch

    from .common import load_average
    from .engine import reference_bubble_orders

    inputs, cands = ctx.speed_inputs, ctx.speed_cands
    n = ctx.args.candidates
    seed = 0
    ours, ref = ctx.ours, ctx.ref8
    orders = reference_bubble_orders(len(inputs), n, 8, seed)
    la0 = load_average()

    def ref_run():
        torch.manual_seed(seed)  # the randperm its bubble pass draws (engine.reference_bubble_orders)
        return ref.blender.get_best_of_n(inputs, cands, pairrm_cmp_type="bubble")

    schedule = [
        ("ours bubble", ours, lambda: ours.blender.get_best_of_n(inputs, cands, pairrm_cmp_type="bubble", seed=seed,
                                                                 initial_orders=orders)),
        ("ours adaptive", ours, lambda: ours.blender.get_best_of_n(inputs, cands, pairrm_cmp_type="adaptive",
                                                                   seed=seed)),
        ("llm-blender bubble (bs=8)", ref, ref_run),
    ]
    runs, outs = interleaved(schedule, ctx.args.best_repeats, ctx.shape, "best-of-n")
    res = ratio_cells(runs, "ours bubble", ["llm-blender bubble (bs=8)"])
    adaptive = ratio_cells(runs, "ours adaptive", ["llm-blender bubble (bs=8)"])
    res["speedups_adaptive"] = adaptive["speedups"]
    picks = {k: [cands[p].index(t) for p, t in enumerate(v)] for k, v in outs.items()}
    full_top1 = [int(i) for i in np.argmax(ctx.speed_scores["ours auto"], axis=1)]
    ref_picks = picks["llm-blender bubble (bs=8)"]

    def same(a, b):
        return int(sum(x == y for x, y in zip(a, b)))

    res.update(prompts=len(inputs), candidates=n, repeats=ctx.args.best_repeats, picks=picks,
               full_rank_top1=full_top1, load_average_start=la0, load_average_end=load_average(),
               pick_equality={
                   "ours bubble = llm-blender bubble": same(picks["ours bubble"], ref_picks),
                   "ours adaptive = llm-blender bubble": same(picks["ours adaptive"], ref_picks),
                   "ours bubble = full-rank top-1": same(picks["ours bubble"], full_top1),
                   "ours adaptive = full-rank top-1": same(picks["ours adaptive"], full_top1),
                   "llm-blender bubble = full-rank top-1": same(ref_picks, full_top1)},
               forward_passes={k: v[0]["rows"] for k, v in runs.items()},
               runs=runs)
    return res


def section_exactness(ctx) -> dict:
    """2: ranks of ours auto = ours exact fp32 = llm-blender bs=1 on further prompts."""
    from .common import candidates_for, load_average, log

    start = ctx.args.prompts
    prompts = ctx.prompts[start:start + ctx.args.exact_prompts]
    inputs = [p.instruction for p in prompts]
    cands = [candidates_for(ctx.prompts, start + i, ctx.args.candidates) for i in range(len(prompts))]
    la0 = load_average()
    fp32, fp32_load = ours_engine("ours onnx fp32", ctx.xsmall, "onnx", "fp32", ctx.args.threads, ctx.fresh_cache)
    out, walls = {}, {}
    for key, eng in (("ours auto", ctx.ours), ("ours onnx fp32", fp32), ("llm-blender bs=1", ctx.ref1)):
        t0 = time.perf_counter()
        out[key] = np.asarray(rank_fn(eng, inputs, cands)(), np.float64)
        walls[key] = time.perf_counter() - t0
        log(f"targets: exactness {key:<20} {walls[key]:8.2f}s")
    del fp32
    gc.collect()
    comp = {
        "ours auto vs ours onnx fp32": pair_exactness(out["ours onnx fp32"], out["ours auto"]),
        "ours auto vs llm-blender bs=1": pair_exactness(out["ours onnx fp32"], out["llm-blender bs=1"]),
        "ours onnx fp32 vs llm-blender bs=1 (llm-blender's scores as the reference)":
            pair_exactness(out["llm-blender bs=1"], out["ours onnx fp32"]),
    }
    # The speed section's prompts too (ours auto vs llm-blender bs=1), for the record.
    comp["speed-section prompts: ours auto vs llm-blender bs=1"] = ctx.speed_agreement()
    return {"prompts": len(inputs), "first_prompt_index": start, "candidates": ctx.args.candidates,
            "tie_eps": TIE_EPS, "comparisons": comp, "wall_s": walls, "fp32_load": fp32_load,
            "load_average_start": la0, "load_average_end": load_average(), "scores": out}


def section_profile(ctx) -> dict:
    """6: where ours spends its time (ORT fp32 profile of the same prompts' packed batches)."""
    import onnxruntime as ort

    from blender_fast import Ranker
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.model.export import cached_export

    from .common import load_average, log
    from .flops import batch_flops, onnxruntime_gemm_peak

    la0 = load_average()
    ckpt = load_checkpoint(ctx.xsmall)
    out_dir, _ = cached_export(ckpt, "fp32", ctx.fresh_cache)
    ranker = Ranker.from_pretrained(ctx.xsmall, backend="onnx", precision="fp32", threads=ctx.args.threads,
                                    cache_dir=ctx.fresh_cache)
    recorded = []

    def record(ids, mask, pos):
        recorded.append((ids, mask, pos))
        return np.zeros(len(ids), np.float32)

    ranker.model = record
    ranker.rank(ctx.speed_inputs, ctx.speed_cands)
    so = ort.SessionOptions()
    so.log_severity_level = 3
    if ctx.args.threads:
        so.intra_op_num_threads = int(ctx.args.threads)
    so.enable_profiling = True
    prof_dir = tempfile.mkdtemp(prefix="blender_fast_targets_prof_")
    so.profile_file_prefix = str(Path(prof_dir) / "ort")
    sess = ort.InferenceSession(str(out_dir / "model.onnx"), sess_options=so, providers=["CPUExecutionProvider"])
    feeds = [{"input_ids": a, "attention_mask": b, "positions": c} for a, b, c in recorded]
    sess.run(None, feeds[0])  # warm-up, skipped by the parser
    t0 = time.perf_counter()
    for f in feeds:
        sess.run(None, f)
    wall = time.perf_counter() - t0
    prof = Path(sess.end_profiling())
    groups, sub, top = parse_profile_nodes(prof)
    prof.unlink(missing_ok=True)
    os.rmdir(prof_dir)
    log(f"targets: profile {len(feeds)} batches, wall {wall:.2f}s: "
        + ", ".join(f"{g} {s:.2f}s" for g, s in groups.items()))
    peak = onnxruntime_gemm_peak(512 if ctx.args.quick else 2048, ctx.args.threads)
    shape = ctx.shape
    h, i = shape.hidden, shape.intermediate
    weight_flops = attn_flops = total_flops = 0.0
    for ids, mask, _ in recorded:
        rows, tlen = ids.shape
        tokens = rows * tlen  # what the hardware runs: padded positions included
        w = shape.layers * (8 * h * h + 4 * h * i) * tokens + rows * (8 * h * h + 4 * h * shape.n_tasks)
        tot = batch_flops(shape, rows, tokens, rows * tlen * tlen)
        weight_flops += w
        total_flops += tot
        attn_flops += tot - w
    kernel = sum(groups.values())
    gemm_s = groups.get("weight GEMMs (QKV/output projections, FFN, head)", 0.0)
    return {"batches": len(feeds), "batch_shapes": [list(f["input_ids"].shape) for f in feeds], "wall_s": wall,
            "kernel_s": kernel, "groups_s": groups, "attention_split_s": sub, "top_nodes_by_op": top,
            "ort_matmul_peak_flops": peak, "peak_matrix": 512 if ctx.args.quick else 2048,
            "padded_flops": {"weight_gemm": weight_flops, "attention": attn_flops, "total": total_flops},
            "weight_gemm_rate": weight_flops / gemm_s if gemm_s else None,
            "weight_gemm_fraction_of_peak": (weight_flops / gemm_s / peak) if gemm_s and peak else None,
            "load_average_start": la0, "load_average_end": load_average()}


GEMM_OPS = ("MatMul", "Gemm", "FusedMatMul", "FusedGemm", "MatMulInteger", "QGemm")
ATTENTION_SELF = "/attention/self/"
PROJECTIONS = ("query_proj", "key_proj", "value_proj")


def node_group(name: str, op: str) -> tuple[str, str | None]:
    """(group, attention subgroup) of a profiled node, by the exported node name (model/export.py keeps
    the module path, e.g. /pretrained_model/encoder/layer.0/attention/self/MatMul_1)."""
    projection = any(p in name for p in PROJECTIONS)
    if op in GEMM_OPS and (ATTENTION_SELF not in name or projection):
        return "weight GEMMs (QKV/output projections, FFN, head)", None
    if ATTENTION_SELF in name and not projection:
        sub = "score/context MatMuls (QK, c2p, p2c, AV)" if op in GEMM_OPS else (
            "softmax" if op == "Softmax" else "relative-position gathers, masks, layout")
        return "disentangled attention (all but the QKV projections)", sub
    return "other (layer norms, GELU, embeddings, residual adds, pooling)", None


def parse_profile_nodes(path: Path) -> tuple[dict, dict, list]:
    """Kernel seconds by group and by attention subgroup, and the 15 heaviest op types, from an ORT
    profile (the first model_run is a warm-up and is skipped)."""
    events = json.loads(Path(path).read_text())
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    warm_end = runs[0][1] if len(runs) > 1 else -1
    groups: dict[str, float] = {}
    sub: dict[str, float] = {}
    by_op: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) <= warm_end:
            continue
        op = e.get("args", {}).get("op_name", "?")
        s = float(e.get("dur", 0)) / 1e6
        g, sg = node_group(e["name"], op)
        groups[g] = groups.get(g, 0.0) + s
        if sg:
            sub[sg] = sub.get(sg, 0.0) + s
        by_op[op] = by_op.get(op, 0.0) + s
    top = sorted(by_op.items(), key=lambda kv: -kv[1])[:15]
    return dict(sorted(groups.items(), key=lambda kv: -kv[1])), dict(sorted(sub.items(), key=lambda kv: -kv[1])), top


def section_rss(ctx) -> dict:
    """5: peak RSS of each variant in its own subprocess, and of the large export."""
    from .common import load_average, log

    la0 = load_average()
    n_prompts = ctx.args.rss_prompts
    spec_base = {"ckpt": str(ctx.xsmall), "cache_dir": str(ctx.fresh_cache), "threads": ctx.args.threads,
                 "inputs": [p.instruction for p in ctx.prompts[:n_prompts]],
                 "cands": [ctx.candidates(i) for i in range(n_prompts)]}
    variants = [("ours onnx fp32", "onnx", "fp32"), ("ours auto", "auto", "auto"), ("ours torch fp32", "torch", "fp32")]
    try:
        import openvino  # noqa: F401

        variants.append(("ours openvino fp32", "openvino", "fp32"))
    except ImportError:
        pass
    variants.append(("llm-blender (batch_size=8)", "llm-blender", "fp32"))
    out = {"prompts": n_prompts, "candidates": ctx.args.candidates, "variants": {}}
    with tempfile.TemporaryDirectory(prefix="blender_fast_targets_rss_") as tmp:
        for name, backend, precision in variants:
            spec = Path(tmp) / "spec.json"
            spec.write_text(json.dumps({**spec_base, "backend": backend, "precision": precision}))
            rec = run_child_process([sys.executable, "-m", "benchmarks.targets", "--rss-child", str(spec)],
                                    env=child_env())
            out["variants"][name] = rec
            log(f"targets: rss {name:<28} peak {rec['peak_rss_mb']:8.0f} MB, rc {rec['rc']}, {rec['wall_s']:.1f}s")
    # The export of the large shape into an empty cache (which section 'large' then reuses).
    env = child_env()
    env["BLENDER_FAST_CACHE"] = str(ctx.large_cache_root)
    rec = run_child_process([sys.executable, "-m", "benchmarks.targets", "--export-child", str(ctx.large)], env=env)
    rec["limit_gb"] = EXPORT_RSS_LIMIT_GB
    rec["under_limit"] = rec["rc"] == 0 and rec["peak_rss_mb"] / 1024 < EXPORT_RSS_LIMIT_GB
    out["export_large"] = rec
    log(f"targets: rss export of {ctx.args.large_shape}: peak {rec['peak_rss_mb']:.0f} MB, rc {rec['rc']}, "
        f"{rec['wall_s']:.1f}s")
    out.update(load_average_start=la0, load_average_end=load_average())
    return out


def child_env() -> dict:
    env = dict(os.environ)
    repo = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = repo + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def rss_child(spec_path: str) -> int:
    """In a subprocess: load one variant, warm it up, rank the spec's prompts; print a JSON line."""
    from .common import quiet_libraries

    quiet_libraries()
    spec = json.loads(Path(spec_path).read_text())
    t0 = time.perf_counter()
    if spec["backend"] == "llm-blender":
        from .engine import load_reference

        ref, _ = load_reference(spec["ckpt"], "cpu")
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):
            scores = ref.rank(spec["inputs"], spec["cands"], return_scores=True, batch_size=8, disable_tqdm=True)
        desc = {"backend": "torch (llm-blender 0.0.2)", "precision": "fp32", "batch_size": 8}
    else:
        blender, _ = load_ours(spec["ckpt"], spec["backend"], spec["precision"], spec["threads"], spec["cache_dir"])
        load_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = blender.rank(spec["inputs"], spec["cands"], return_scores=True, disable_tqdm=True)
        info = blender.ranker.describe()
        desc = {k: info.get(k) for k in ("backend", "precision", "reason", "cascade")}
    print(json.dumps({"load_s": load_s, "rank_s": time.perf_counter() - t0, "describe": desc,
                      "scores_shape": list(np.asarray(scores).shape), "vmhwm_mb": vmhwm_mb()}))
    return 0


def export_child(ckpt: str) -> int:
    """In a subprocess: what `blender-fast export CKPT` runs (cli.cmd_export's export_command, into the
    cache of $BLENDER_FAST_CACHE), then the process's peak RSS as a JSON line."""
    from blender_fast.model.export import export_command

    from .common import quiet_libraries

    quiet_libraries()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        report = export_command(ckpt, precision="fp32")
    print(json.dumps({"export_s": time.perf_counter() - t0, "cached": bool(getattr(report, "cached", False)),
                      "vmhwm_mb": vmhwm_mb()}))
    return 0


def section_large(ctx) -> dict:
    """3: the large shape, ours auto vs llm-blender bs=1."""
    from .common import load_average
    from .flops import ModelShape

    prompts = ctx.prompts[:ctx.args.large_prompts]
    inputs = [p.instruction for p in prompts]
    cands = [ctx.candidates(i) for i in range(len(prompts))]
    la0 = load_average()
    # Drop the xsmall engines first: the large ones need the memory.
    ctx.ours = ctx.ref1 = ctx.ref8 = None
    gc.collect()
    cache = ctx.large_cache_root / "onnx"
    variant = ("auto", "auto") if ctx.args.large_variant == "auto" else ("onnx", "fp32")
    ours, load = ours_engine(f"ours {ctx.args.large_variant} (large)", ctx.large, *variant, ctx.args.threads, cache)
    _, ref1 = reference_engines(ctx.large)
    ours.blender.rank(inputs[:1], [cands[0][:2]], return_scores=True, disable_tqdm=True)
    ref1.blender.rank(inputs[:1], [cands[0][:2]], return_scores=True, batch_size=1, disable_tqdm=True)
    shape = ModelShape.from_checkpoint(ctx.large)
    ours_key = f"ours {ctx.args.large_variant}"
    schedule = [(ours_key, ours, rank_fn(ours, inputs, cands)),
                ("llm-blender bs=1", ref1, rank_fn(ref1, inputs, cands))]
    runs, outs = interleaved(schedule, ctx.args.large_repeats, shape, "large")
    res = ratio_cells(runs, ours_key, ["llm-blender bs=1"])
    res.update(shape=ctx.args.large_shape, prompts=len(inputs), candidates=ctx.args.candidates,
               pairs=len(inputs) * ctx.args.candidates * (ctx.args.candidates - 1), repeats=ctx.args.large_repeats,
               ours_load=load, export_reused_from_rss_section=ctx.large_exported, reference_load_s=ref1.load_s,
               variant=ctx.args.large_variant,
               agreement=pair_exactness(np.asarray(outs["llm-blender bs=1"]), np.asarray(outs[ours_key])),
               load_average_start=la0, load_average_end=load_average(), runs=runs)
    return res


# -- the run --------------------------------------------------------------------------------------------

class Context:
    def __init__(self, args, prompts, xsmall, large, tmp: Path):
        self.args, self.prompts, self.xsmall, self.large = args, prompts, xsmall, large
        self.fresh_cache = tmp / "xsmall-cache"  # empty: the first auto load exports and decides here
        self.large_cache_root = tmp / "large-cache"
        self.large_exported = False
        self.ours = self.ref1 = self.ref8 = None
        self.speed_scores = None
        self.shape = None

    def candidates(self, i):
        from .common import candidates_for

        return candidates_for(self.prompts, i, self.args.candidates)

    def speed_agreement(self):
        return pair_exactness(self.speed_scores["llm-blender bs=1"], self.speed_scores["ours auto"])


def parse_args(argv=None):
    from blender_fast.options import HelpFormatter

    ap = argparse.ArgumentParser(prog="python -m benchmarks.targets", description=__doc__.split("\n\n")[0],
                                 formatter_class=HelpFormatter)
    ap.add_argument("--out", help="output folder (targets.md, targets.json)")
    ap.add_argument("--data", default=None, help="prompt file (default $BLENDER_FAST_DATA or the shared dev file)")
    ap.add_argument("--shape", default="xsmall", help="shape of the generated checkpoint for sections 1, 2, 4-6")
    ap.add_argument("--large-shape", default="large", help="shape of section 3 and the export's RSS")
    ap.add_argument("--model", default=None, help="a checkpoint instead of the generated --shape one (llm-blender loadable)")
    ap.add_argument("--large-model", default=None, help="a checkpoint instead of the generated --large-shape one")
    ap.add_argument("--prompts", type=int, default=8, help="prompts of the speed and best-of-n sections")
    ap.add_argument("--candidates", type=int, default=6, help="candidates per prompt (every section)")
    ap.add_argument("--exact-prompts", type=int, default=20, help="further prompts of the exactness section")
    ap.add_argument("--large-prompts", type=int, default=1, help="prompts of the large section")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved repeats of the speed section")
    ap.add_argument("--best-repeats", type=int, default=2, help="interleaved repeats of best-of-n")
    ap.add_argument("--large-variant", choices=("auto", "fp32"), default=None,
                    help="ours in the large section: auto/auto from an empty cache (its first load calibrates "
                         "on the large shape: minutes), or exact onnx fp32 (default: auto; fp32 with --quick)")
    ap.add_argument("--large-repeats", type=int, default=1, help="interleaved repeats of the large section")
    ap.add_argument("--rss-prompts", type=int, default=2, help="prompts each RSS subprocess ranks")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads of ours (default: the runtime's)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {SECTIONS}")
    ap.add_argument("--max-chars", type=int, default=None, help="clip every text (smoke runs)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: tiny shapes, 1 prompt x 3 candidates, short texts, 1 repeat (under a minute)")
    ap.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--export-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.rss_child or args.export_child:
        return args
    if not args.out:
        ap.error("--out is required")
    if args.quick:
        args.shape, args.large_shape = "tiny", "tiny"
        args.prompts, args.candidates, args.exact_prompts, args.large_prompts = 1, 3, 1, 1
        args.repeats = args.best_repeats = args.large_repeats = 1
        args.rss_prompts = 1
        args.max_chars = args.max_chars or 200
        args.threads = args.threads or 1
        args.large_variant = args.large_variant or "fp32"  # the speed section already runs auto's first load
    args.large_variant = args.large_variant or "auto"
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = set(args.sections) - set(SECTIONS)
    if bad:
        ap.error(f"unknown sections {sorted(bad)}; choose from {SECTIONS}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.rss_child:
        return rss_child(args.rss_child)
    if args.export_child:
        return export_child(args.export_child)
    from blender_fast.cluster.outputs import output_dir

    from .common import (as_jsonable, default_data_path, generated_checkpoint, load_average, load_prompts, log,
                         machine_info, quiet_libraries)

    out = output_dir(args.out, "--out", may_hold_files=True)
    out.mkdir(parents=True, exist_ok=True)
    quiet_libraries()
    data = Path(args.data) if args.data else default_data_path()
    need = max(args.prompts + (args.exact_prompts if "exactness" in args.sections else 0), args.large_prompts,
               args.rss_prompts)
    prompts = load_prompts(data, limit=need, max_chars=args.max_chars)
    if len(prompts) < need:
        raise ValueError(f"{data} holds {len(prompts)} prompts, the sizes asked for need {need}")
    xsmall = Path(args.model) if args.model else generated_checkpoint(args.shape, 0)
    large = Path(args.large_model) if args.large_model else generated_checkpoint(args.large_shape, 0)
    t_start = time.perf_counter()
    meta = {"started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine_info("cpu"),
            "command": "python -m benchmarks.targets " + " ".join(sys.argv[1:] if argv is None else argv),
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k not in ("rss_child", "export_child")},
            "data": data.name, "checkpoints": {"small": str(xsmall), "large": str(large)}}
    results = {"meta": meta}
    with tempfile.TemporaryDirectory(prefix="blender_fast_targets_") as tmp:
        ctx = Context(args, prompts, xsmall, large, Path(tmp))
        order = [s for s in SECTIONS if s in args.sections]
        needs_speed = {"best", "exactness", "profile"} & set(order)
        if needs_speed and "speed" not in order:
            order.insert(0, "speed")
        fns = {"speed": section_speed, "best": section_best, "exactness": section_exactness,
               "profile": section_profile, "rss": section_rss, "large": section_large}
        for name in order:
            log(f"targets: section {name} (load average {load_average()})")
            t0 = time.perf_counter()
            results[name] = fns[name](ctx)
            results[name]["section_wall_s"] = time.perf_counter() - t0
            if name == "rss":
                ctx.large_exported = results["rss"]["export_large"]["rc"] == 0
            (out / "targets.json").write_text(json.dumps(as_jsonable(results), indent=1))  # partial results survive
    meta["load_average_at_end"] = load_average()
    meta["wall_s"] = time.perf_counter() - t_start
    if results.get("profile"):
        results["profile"]["gap_arithmetic"] = gap_arithmetic(results["profile"], results)
    results["verdicts"] = verdicts(results)
    (out / "targets.json").write_text(json.dumps(as_jsonable(results), indent=1))
    (out / "targets.md").write_text("\n".join(markdown(results)) + "\n")
    log(f"targets: wrote {out / 'targets.md'} and targets.json in {meta['wall_s']:.0f}s")
    return 0


# -- verdicts and report ------------------------------------------------------------------------------

def verdicts(res: dict) -> list[dict]:
    """One row per exact-at-speed target: measured value, target, met or not (None: section not run)."""
    rows = []

    def add(name, value, target, met=None, note=""):
        rows.append({"target": name, "value": value, "goal": target,
                     "met": (value is not None and value >= target) if met is None else met, "note": note})

    sp = res.get("speed")
    if sp:
        add("xsmall full ranking ≥ 2.5× llm-blender bs=1", sp["speedups"]["llm-blender bs=1"]["paired_median"],
            TARGETS["speed_bs1"])
        add("xsmall full ranking ≥ 10× llm-blender bs=8", sp["speedups"]["llm-blender bs=8"]["paired_median"],
            TARGETS["speed_bs8"])
    ex = res.get("exactness")
    if ex:
        c = ex["comparisons"]
        ok = c["ours auto vs ours onnx fp32"]["equal_outside_ties"] and c["ours auto vs llm-blender bs=1"]["equal_outside_ties"]
        add(f"exact: auto ranks = fp32 = llm-blender bs=1 on {ex['prompts']} more prompts", None, None, met=bool(ok),
            note=f"{c['ours auto vs llm-blender bs=1']['excepted_near_ties']} pairs within {TIE_EPS:g} of a tie excepted")
    lg = res.get("large")
    if lg:
        add(f"{lg['shape']} full ranking ≥ 4× llm-blender bs=1", lg["speedups"]["llm-blender bs=1"]["paired_median"],
            TARGETS["large_bs1"])
    be = res.get("best")
    if be:
        add("best-of-n bubble ≥ 4× llm-blender get_best_of_n", be["speedups"]["llm-blender bubble (bs=8)"]["paired_median"],
            TARGETS["best_of_n"])
        add("best-of-n adaptive ≥ 4× llm-blender get_best_of_n",
            be["speedups_adaptive"]["llm-blender bubble (bs=8)"]["paired_median"], TARGETS["best_of_n"])
    rs = res.get("rss")
    if rs:
        e = rs["export_large"]
        add(f"export of {res['meta']['settings']['large_shape']} < {EXPORT_RSS_LIMIT_GB:g} GB peak RSS",
            e["peak_rss_mb"] / 1024, EXPORT_RSS_LIMIT_GB, met=bool(e["under_limit"]))
    return rows


def _f(x, d=2):
    return "—" if x is None else f"{x:.{d}f}"


def markdown(res: dict) -> list[str]:
    from .tables import md_table

    m = res["meta"]["machine"]
    s = res["meta"]["settings"]
    L = ["# Exact-at-speed targets: blender-fast vs llm-blender 0.0.2", "",
         f"CPU: **{m['cpu_model']}**, {m['logical_cores']} logical cores ({m['cpu_affinity']} usable), "
         f"{m['memory_gb']} GB. ISA: {', '.join(m['isa'])}.",
         "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
         f"Command: `{res['meta']['command']}`. Started {res['meta']['started']}, {res['meta'].get('wall_s', 0) / 60:.1f} min; "
         f"load average at start {m['load_average_at_start']}, at end {res['meta'].get('load_average_at_end')}.",
         "Checkpoints: generated random weights (real architecture). Timings on a shared machine: only the "
         "interleaved ratios mean anything.", ""]
    L += ["## Targets", ""]
    L += md_table(["target", "measured", "goal", "met", "note"],
                  [[v["target"], _f(v["value"]) if v["value"] is not None else "—",
                    "—" if v["goal"] is None else v["goal"], "**yes**" if v["met"] else "**no**", v["note"]]
                   for v in res.get("verdicts", [])])
    sp = res.get("speed")
    if sp:
        d = sp["ours_load"]["describe"]
        L += [f"## 1. Speed: {s['shape']}, {sp['prompts']} prompts × {sp['candidates']} ({sp['pairs']} pairs), full ranking", "",
              f"Ours: `Blender.loadranker(backend=\"auto\", precision=\"auto\")` from an empty cache: first load "
              f"{sp['ours_load']['load_s']:.1f} s (export + decision + calibration), peak RSS during it "
              f"{sp['ours_load']['load_peak_rss_mb']:.0f} MB. auto resolved to **{d['backend']} {d['precision']}**"
              f"{' with cascade ' + json.dumps(d['cascade']) if d.get('cascade') else ''}: {d['reason']}.",
              f"llm-blender load {sp['reference_load_s']:.1f} s. {sp['repeats']} interleaved repeats; load average "
              f"{sp['load_average_start']} → {sp['load_average_end']}.", ""]
        rows = []
        for k, c in sp["cells"].items():
            sup = sp["speedups"].get(k)
            rows.append([k, _f(c["wall_s"]), ", ".join(_f(x) for x in c["runs_s"]), c["batches"], _f(100 * c["pad_fraction"], 1)])
        L += md_table(["engine", "median s", "runs s", "model calls", "pad %"], rows)
        L += md_table(["ours auto vs", "ratio of medians", "median of paired ratios", "paired ratios"],
                      [[k, _f(v["ratio_of_medians"]), f"**{_f(v['paired_median'])}×**", ", ".join(_f(x) for x in v["paired"])]
                       for k, v in sp["speedups"].items()])
        a = sp["agreement"]["ours auto vs llm-blender bs=1"]
        L += [f"Ranks on these prompts: ours auto vs llm-blender bs=1: {a['prompts_identical_ranks']}/{a['prompts']} identical, "
              f"max |Δscore| {a['max_abs_score_diff']:.2g}.", ""]
    ex = res.get("exactness")
    if ex:
        L += [f"## 2. Exactness: {ex['prompts']} further prompts (from index {ex['first_prompt_index']}) × {ex['candidates']}, full ranking", "",
              f"A pair of candidates counts when its fp32 scores differ by ≥ {ex['tie_eps']:g}; closer pairs are excepted "
              "and counted. Load average " f"{ex['load_average_start']} → {ex['load_average_end']}.", ""]
        L += md_table(["comparison (first = reference)", "prompts identical ranks", "pairs", "excepted near-ties",
                       "pairs ordered differently", "max |Δscore|"],
                      [[k, f"{c['prompts_identical_ranks']}/{c['prompts']}", c["candidate_pairs"], c["excepted_near_ties"],
                        c["pairs_ordered_differently"], f"{c['max_abs_score_diff']:.2g}"] for k, c in ex["comparisons"].items()])
        L += ["Wall s (single run each, not interleaved): " + ", ".join(f"{k} {_f(v)}" for k, v in ex["wall_s"].items()), ""]
    lg = res.get("large")
    if lg:
        d = lg["ours_load"]["describe"]
        L += [f"## 3. Large shape ({lg['shape']}), {lg['prompts']} prompt(s) × {lg['candidates']} ({lg['pairs']} pairs), full ranking", "",
              f"Ours ({lg['variant']}) ran as **{d['backend']} {d['precision']}** ({d['reason']}); load {lg['ours_load']['load_s']:.1f} s "
              f"({'export reused from the RSS section, so calibration/decision only' if lg['export_reused_from_rss_section'] else 'incl. export'}). "
              f"{lg['repeats']} repeat(s); load average {lg['load_average_start']} → {lg['load_average_end']}.", ""]
        L += md_table(["engine", "median s", "runs s", "pad %"],
                      [[k, _f(c["wall_s"]), ", ".join(_f(x) for x in c["runs_s"]), _f(100 * c["pad_fraction"], 1)]
                       for k, c in lg["cells"].items()])
        v = lg["speedups"]["llm-blender bs=1"]
        a = lg["agreement"]
        L += [f"Ours ({lg['variant']}) vs llm-blender bs=1: **{_f(v['paired_median'])}×** (paired), ratio of medians {_f(v['ratio_of_medians'])}. "
              f"Ranks identical on {a['prompts_identical_ranks']}/{a['prompts']} prompts, {a['pairs_ordered_differently']} pairs "
              f"ordered differently ({a['excepted_near_ties']} near-ties excepted), max |Δscore| {a['max_abs_score_diff']:.2g}.", ""]
    be = res.get("best")
    if be:
        L += [f"## 4. Best-of-{be['candidates']}: {be['prompts']} prompts, {be['repeats']} interleaved repeats", "",
              "Ours bubble gets llm-blender's start orders (the randperm its bubble pass draws after torch.manual_seed(0)), "
              "so the two make the same comparisons. Adaptive: `get_best_of_n(pairrm_cmp_type=\"adaptive\")`, default "
              f"budget 4(n−1) forward passes per prompt. Load average {be['load_average_start']} → {be['load_average_end']}.", ""]
        sup = {"ours bubble": be["speedups"]["llm-blender bubble (bs=8)"],
               "ours adaptive": be["speedups_adaptive"]["llm-blender bubble (bs=8)"]}
        L += md_table(["engine", "median s", "runs s", "forward passes", "× llm-blender (paired median)"],
                      [[k, _f(c["wall_s"]), ", ".join(_f(x) for x in c["runs_s"]), be["forward_passes"][k],
                        f"**{_f(sup[k]['paired_median'])}×**" if k in sup else "1.00×"] for k, c in be["cells"].items()])
        L += ["Pick equality (prompts out of " + str(be["prompts"]) + "): "
              + "; ".join(f"{k}: {v}" for k, v in be["pick_equality"].items()) + ".", ""]
    rs = res.get("rss")
    if rs:
        L += [f"## 5. Peak RSS, one subprocess per variant ({rs['prompts']} prompt(s) × {rs['candidates']}, full ranking)", "",
              "Peak = the child's VmHWM (its own peak RSS since exec: load + warm-up + ranking); the parent's 10 ms "
              "sampling of the child as a cross-check. Exports come from the speed section's cache (warm). "
              f"Load average {rs['load_average_start']} → {rs['load_average_end']}.", ""]
        rows = []
        for k, r in rs["variants"].items():
            ch = r.get("child", {})
            dsc = ch.get("describe", {})
            rows.append([k, f"**{_f(r['peak_rss_mb'], 0)}**", _f(r["sampled_peak_rss_mb"], 0),
                         f"{dsc.get('backend', '?')} {dsc.get('precision', '')}", _f(ch.get("load_s")),
                         _f(ch.get("rank_s")), r["rc"]])
        L += md_table(["variant", "peak RSS MB (VmHWM)", "sampled MB", "ran as", "load s", "rank s", "rc"], rows)
        e = rs["export_large"]
        L += [f"Export of the {s['large_shape']} checkpoint into an empty cache (`export_command`, what `blender-fast "
              f"export` runs, with its check against torch, in a subprocess): peak RSS **{e['peak_rss_mb'] / 1024:.2f} GB** "
              f"(sampled {e['sampled_peak_rss_mb'] / 1024:.2f} GB) (limit {EXPORT_RSS_LIMIT_GB:g} GB: "
              f"{'under' if e['under_limit'] else 'NOT under'}), {e['wall_s']:.0f} s, rc {e['rc']}.", ""]
    pr = res.get("profile")
    if pr:
        L += profile_markdown(pr, res)
    return L


def gap_arithmetic(pr: dict, res: dict) -> dict | None:
    """What the xsmall bs=1 target would need, from the profile split and the measured GEMM peak (an
    estimate: it scales the measured wall time by the profile's fractions)."""
    sp = res.get("speed")
    peak = pr.get("ort_matmul_peak_flops")
    if not sp or not peak or not pr["kernel_s"]:
        return None
    g = pr["groups_s"]
    gemm_s = g.get("weight GEMMs (QKV/output projections, FFN, head)", 0.0)
    kernel = pr["kernel_s"]
    cell = sp["cells"]["ours auto"]
    ours_wall = cell["wall_s"]
    model_s = min(cell["model_s"], ours_wall)  # time inside the model calls; the rest (tokenize, pack) stays
    rest_s = ours_wall - model_s
    gemm_at_peak = pr["padded_flops"]["weight_gemm"] / peak
    # (a) weight GEMMs at the measured peak, everything else as profiled.
    t_a = rest_s + model_s * ((kernel - gemm_s) + min(gemm_s, gemm_at_peak)) / kernel
    # (b) every FLOP (GEMMs and attention) at the peak, no other kernel costs anything: the fp32 floor.
    t_b = rest_s + model_s * (pr["padded_flops"]["total"] / peak) / kernel
    out = {"ours_wall_s": ours_wall, "ours_model_s": model_s, "ours_outside_model_s": rest_s,
           "time_gemms_at_peak_s": t_a, "time_floor_s": t_b}
    for ref in ("llm-blender bs=1", "llm-blender bs=8"):
        ref_wall = sp["cells"][ref]["wall_s"]
        out[ref] = {"now": ref_wall / ours_wall, "gemms_at_peak": ref_wall / t_a, "all_flops_at_peak_floor": ref_wall / t_b}
    return out


def profile_markdown(pr: dict, res: dict) -> list[str]:
    from .tables import md_table

    k = pr["kernel_s"]
    L = [f"## 6. Where the time goes: ONNX Runtime fp32 profile, {pr['batches']} packed batches of the speed section's prompts", "",
         f"Profiled wall {pr['wall_s']:.2f} s, kernel time {k:.2f} s. Load average {pr['load_average_start']} → "
         f"{pr['load_average_end']}.", ""]
    L += md_table(["group", "kernel s", "%"], [[g, _f(v), _f(100 * v / k, 1)] for g, v in pr["groups_s"].items()])
    if pr["attention_split_s"]:
        L += ["Inside the disentangled attention:", ""]
        L += md_table(["part", "kernel s", "% of all"], [[g, _f(v), _f(100 * v / k, 1)] for g, v in pr["attention_split_s"].items()])
    peak = pr["ort_matmul_peak_flops"]
    L += [f"Weight GEMMs: {pr['padded_flops']['weight_gemm'] / 1e12:.2f} TFLOP (padded positions included) in their kernel "
          f"time → {_f((pr['weight_gemm_rate'] or 0) / 1e9, 0)} GFLOP/s, **{_f(100 * (pr['weight_gemm_fraction_of_peak'] or 0), 0)}%** "
          f"of the ORT MatMul fp32 peak measured in this run ({_f((peak or 0) / 1e9, 0)} GFLOP/s, {pr['peak_matrix']}², "
          f"threads {res['meta']['settings']['threads'] or 'default'}). All model FLOPs: {pr['padded_flops']['total'] / 1e12:.2f} TFLOP.", ""]
    gap = gap_arithmetic(pr, res)
    if gap:
        L += [f"What fp32 at peak could reach (estimated: of ours' median {gap['ours_wall_s']:.2f} s, the "
              f"{gap['ours_model_s']:.2f} s inside the model is rescaled by the profile's fractions, the "
              f"{gap['ours_outside_model_s']:.2f} s outside it (tokenize, pack) kept):", ""]
        L += md_table(["vs", "now", "weight GEMMs at peak, rest as profiled", "every FLOP at peak, nothing else (fp32 floor)"],
                      [[r, f"{_f(v['now'])}×", f"{_f(v['gemms_at_peak'])}×", f"{_f(v['all_flops_at_peak_floor'])}×"]
                       for r, v in gap.items() if r.startswith("llm-blender")])
    return L


if __name__ == "__main__":
    from .common import run_main

    sys.exit(run_main(main))
