"""Model FLOPs of PairRM (DeBERTa-v2/v3 with disentangled attention) and the machine's GEMM peak.

The count (multiply-add = 2 FLOPs), per layer, for one sequence of T real tokens, hidden H, intermediate
I and relative-attention span 2k (position_buckets=256 → 2k = 512 relative positions):

* Q, K, V and output projections: 4 · 2·T·H² = 8·T·H²; QKᵀ and attention·V: 2 · 2·T²·H = 4·T²·H
* relative-position key and query projections of the 2k relative embeddings: 2 · 2·(2k)·H², but they do
  not depend on the input (our export computes them once, llm-blender once per batch): not counted, so
  the achieved rate is never flattered by work that need not be done
* c2p and p2c scores (queries against relative keys, keys against relative queries): 2 · 2·T·(2k)·H
* feed-forward H→I→H: 4·T·H·I
* head, per pair: Linear(2H→H) on each side's [source; candidate]: 8·H², plus Linear(H→n_tasks) twice

Left out (small, and not GEMM work): embeddings, LayerNorm, softmax, GELU, the bucket gather. "Real"
FLOPs count real tokens only; "padded" FLOPs every position of every batch (B × T_max), which is what
the hardware actually executes.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from blender_fast.model.checkpoint import load_checkpoint

from .common import BatchShape


@dataclass
class ModelShape:
    layers: int
    hidden: int
    intermediate: int
    att_span: int  # 2k: number of relative positions whose embeddings every layer projects
    n_tasks: int = 1

    @classmethod
    def from_checkpoint(cls, path) -> "ModelShape":
        ckpt = load_checkpoint(path)
        cfg = ckpt.backbone_config
        buckets, max_rel = (int(cfg.get(k, -1) or -1) for k in ("position_buckets", "max_relative_positions"))
        span = 2 * (buckets if buckets > 0 else max_rel if max_rel > 0 else int(cfg.get("max_position_embeddings", 512)))
        return cls(int(cfg["num_hidden_layers"]), int(cfg["hidden_size"]),
                   int(cfg.get("intermediate_size", 4 * cfg["hidden_size"])), span, ckpt.n_tasks)


def flop_terms(shape: ModelShape, rows: int, sum_t: float, sum_t2: float) -> dict:
    """FLOPs by term of one batch of `rows` sequences with sum of lengths sum_t and of squared lengths sum_t2."""
    h, i, s, n = shape.hidden, shape.intermediate, shape.att_span, shape.layers
    return {"qkvo_projections": n * 8 * h * h * sum_t, "qk_and_av": n * 4 * h * sum_t2,
            "relative_position_projections (input-independent, not counted)": n * 2 * 2 * s * h * h,
            "c2p_p2c": n * 2 * 2 * s * h * sum_t, "ffn": n * 4 * h * i * sum_t,
            "head": rows * (8 * h * h + 4 * h * shape.n_tasks)}


def batch_flops(shape: ModelShape, rows: int, sum_t: float, sum_t2: float) -> float:
    return sum(v for k, v in flop_terms(shape, rows, sum_t, sum_t2).items() if "not counted" not in k)


def run_flops(shape: ModelShape, batches: list[BatchShape]) -> dict:
    """Real-token and padded FLOPs of all batches of a run."""
    real = sum(batch_flops(shape, b.rows, b.sum_t, b.sum_t2) for b in batches)
    padded = sum(batch_flops(shape, b.rows, b.padded_tokens, b.rows * b.padded_len ** 2) for b in batches)
    return {"real_flops": float(real), "padded_flops": float(padded)}


# -- the machine's GEMM peak -----------------------------------------------------------------------

def _best_rate(fn, flops: float, reps: int, min_s: float = 0.5) -> float:
    """FLOP/s of the fastest of at least `reps` runs (more, up to 10x, until `min_s` has passed)."""
    fn()  # warm-up: thread pools, allocations
    best, done, t_start = float("inf"), 0, time.perf_counter()
    while done < reps or (time.perf_counter() - t_start < min_s and done < 10 * reps):
        t0 = time.perf_counter()
        fn()
        best, done = min(best, time.perf_counter() - t0), done + 1
    return flops / best


def _square_pair(n: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)


def numpy_gemm_peak(n: int, reps: int = 3) -> float:
    a, b = _square_pair(n)
    return _best_rate(lambda: a @ b, 2.0 * n ** 3, reps)


def onnxruntime_gemm_peak(n: int, threads: int | None, reps: int = 3) -> float | None:
    """fp32 MatMul through ONNX Runtime's CPU provider, with the thread count our engine uses."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 9)  # accepted by every ORT from 1.17 on
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    feeds = dict(zip("ab", _square_pair(n)))
    return _best_rate(lambda: sess.run(None, feeds), 2.0 * n ** 3, reps)


def torch_cuda_gemm_peak(n: int, dtype: str, reps: int = 10) -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    a, b = (torch.randn(n, n, device="cuda", dtype=getattr(torch, {"fp32": "float32", "fp16": "float16"}[dtype]))
            for _ in range(2))

    def run():
        for _ in range(5):
            a @ b
        torch.cuda.synchronize()

    return _best_rate(run, 5 * 2.0 * n ** 3, reps)


def measure_peak(device: str, threads: int | None, quick: bool) -> dict:
    """GEMM peak of this machine, measured now (so it sees the same load as the runs)."""
    n = 512 if quick else 2048
    out = {"matrix_size": n, "numpy_fp32": numpy_gemm_peak(n), "onnxruntime_fp32": onnxruntime_gemm_peak(n, threads)}
    if device == "cuda":
        n_gpu = 1024 if quick else 8192
        fp32, fp16 = torch_cuda_gemm_peak(n_gpu, "fp32"), torch_cuda_gemm_peak(n_gpu, "fp16")
        out.update(cuda_matrix_size=n_gpu, torch_cuda_fp32=fp32, torch_cuda_fp16=fp16, peak_flops=fp32,
                   peak_source="torch_cuda_fp32", peak_fp16_flops=fp16)
    else:
        cands = {k: out[k] for k in ("numpy_fp32", "onnxruntime_fp32") if out.get(k)}
        out["peak_source"] = max(cands, key=cands.get)
        out["peak_flops"] = cands[out["peak_source"]]
    return out


def achieved(run: dict, peak: float, peak_fp16: float | None = None) -> dict:
    """Achieved FLOP/s of one timed run (dict with real_flops, padded_flops, wall_s, model_s)."""
    nan, wall = float("nan"), run["wall_s"]
    model_s = run.get("model_s") or wall
    ref_peak = peak_fp16 if (peak_fp16 and run.get("precision") == "fp16") else peak
    real_rate = run["real_flops"] / wall if wall else nan  # useful work per wall second
    padded_model_rate = run["padded_flops"] / model_s if model_s else nan  # what the hardware executes in the model
    return {"real_flops_per_s": real_rate, "padded_flops_per_s_in_model": padded_model_rate,
            "fraction_of_peak": real_rate / ref_peak if ref_peak else nan,
            "padded_model_fraction_of_peak": padded_model_rate / ref_peak if ref_peak else nan}


def run_flops_section(shape: ModelShape, engine: dict | None, strategies: dict | None, device: str,
                      threads: int | None, quick: bool, earlier_peak: dict | None = None) -> dict:
    """Achieved FLOP/s of every timed run of the other sections, against a peak measured now and,
    if given, at the start of the run: the higher of the two (on a shared machine the load drifts)."""
    peak = measure_peak(device, threads, quick)
    if earlier_peak:
        peak.update(at_end_of_run=dict(peak), at_start_of_run=earlier_peak)
        if earlier_peak["peak_flops"] > peak["peak_flops"]:
            peak.update({k: earlier_peak[k] for k in ("peak_flops", "peak_fp16_flops") if k in earlier_peak},
                        peak_source=earlier_peak["peak_source"] + " (start of run)")
    keys = ("real_flops", "padded_flops", "wall_s", "model_s")
    cells = [(f"{task} / {name} (median)", c, c["precision"]) for task, cs in (engine or {}).get("tasks", {}).items()
             for name, c in cs.items()]
    cells += [(f"strategies n={c['n']} {c['mode']} {c['strategy']}", c, c["engine"].split()[-1])
              for c in (strategies or {}).get("timed", []) if "wall_s" in c]
    runs = [{"run": run, **{k: c[k] for k in keys}, "precision": precision} for run, c, precision in cells]
    for r in runs:
        r.update(achieved(r, peak["peak_flops"], peak.get("peak_fp16_flops")))
    out = {"model_shape": shape, "peak": peak, "runs": runs}
    if engine and "tasks" in engine:
        first = next(iter(engine["tasks"]["rank"].values()))
        tokens = first["tokens"] / first["pairs"]
        t = round(tokens)
        f = batch_flops(shape, 1, t, t * t)
        out["per_pair"] = {"tokens": tokens, "flops": f, "gflop": f / 1e9, "breakdown": flop_terms(shape, 1, t, t * t)}
    return out
