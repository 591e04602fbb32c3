"""Where exact fp32 could still gain on this CPU: three probes, each timed side by side in one process.

python -m benchmarks.fp32_probes [--shape large] [--prompts 1] [--sections runtimes,relative,qkv]

* ``runtimes``: OpenVINO fp32 against ONNX Runtime fp32 on the same packed batches: the cascade's
  calibration rows and the real full-ranking batches of ``--prompts`` AlpacaEval prompts x 6. OpenVINO is
  a second fp32 implementation (within ~1e-4), so a certified cascade could run it for every pair with
  almost nothing re-scored; it pays only if it is faster.
* ``relative``: DeBERTa's c2p + p2c relative-position terms at PairRM's head shape (16 heads x 64, span
  256), 4 layers, as the export builds them (GatherElements over an int64 index expanded once per batch)
  and as three alternatives: int32 indices; a Gather of whole batch x head vectors over a small shared
  [L, L] index (with a Transpose before and after); the relative shift (every offset's keys gathered
  from the constants, one wider GEMM, then Reshape/Slice). Each is checked against a numpy reference.
* ``qkv``: the query, key and value projections as three [M, 1024] x [1024, 1024] MatMuls or as one
  [M, 1024] x [1024, 3072] MatMul and a Split.

Ratios > 1 mean the alternative is faster than what the export does today. Prints one JSON object (CPU
model and ISA features included). Results and reading: docs/exact-at-speed.md, section 6.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .common import candidates_for, default_data_path, generated_checkpoint, load_prompts, machine_info, median

HEADS, HEAD_SIZE, SPAN, LAYERS = 16, 64, 256, 4


def interleaved(fns: dict, repeats: int) -> dict:
    """{name: median seconds} over ``repeats`` interleaved rounds (after one warm-up call each)."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: median(ts) for name, ts in times.items()}


# -- runtimes -----------------------------------------------------------------------------------------

def probe_runtimes(shape: str, n_prompts: int, threads: int, repeats: int, data) -> dict:
    from blender_fast import Ranker
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.model.export import cached_export
    from blender_fast.model.tokenization import build_pair_tokenizer
    from blender_fast.runtime.calibration import calibration_batches
    from blender_fast.runtime.sessions import OnnxPairModel, OpenVinoPairModel

    ckpt_path = generated_checkpoint(shape, 0)
    ckpt = load_checkpoint(ckpt_path)
    out_dir, _ = cached_export(ckpt, "fp32")
    calibration, _ = calibration_batches(build_pair_tokenizer(ckpt), ckpt)
    prompts = load_prompts(data, limit=n_prompts)
    ranker = Ranker.from_pretrained(ckpt_path, backend="onnx", precision="fp32", threads=threads)
    real = []

    def record(ids, mask, pos):  # the packed batches a full ranking runs
        real.append((ids, mask, pos))
        return np.zeros(len(ids), np.float32)

    ranker.model = record
    ranker.rank([p.instruction for p in prompts], [candidates_for(prompts, i, 6) for i in range(len(prompts))])
    models = {"onnxruntime": OnnxPairModel(out_dir / "model.onnx", threads=threads),
              "openvino": OpenVinoPairModel(out_dir / "model.onnx", precision="fp32", threads=threads)}
    out = {"shape": shape}
    for label, batches in (("calibration rows", calibration), ("real batches", real)):
        logits = {n: np.concatenate([m(*b) for b in batches]) for n, m in models.items()}
        t = interleaved({n: (lambda m=m: [m(*b) for b in batches]) for n, m in models.items()}, repeats)
        out[label] = {"batches": len(batches), "rows": int(sum(len(b[0]) for b in batches)),
                      "mean_length": float(np.mean([b[0].shape[1] for b in batches])),
                      "seconds": t, "openvino_speedup": t["onnxruntime"] / t["openvino"],
                      "max_abs_diff": float(np.abs(logits["openvino"] - logits["onnxruntime"]).max())}
    return out


# -- relative-position terms --------------------------------------------------------------------------

def relative_case(batch: int, length: int, seed: int = 0):
    """Inputs, per-layer constants, the index maps and the numpy reference of the c2p + p2c sum."""
    import warnings

    import torch

    with warnings.catch_warnings():  # transformers' DeBERTa module warns about torch.jit.script at import
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    rng = np.random.default_rng(seed)
    z = torch.zeros(1, length, 1)
    rel = build_relative_position(z, z, bucket_size=SPAN, max_position=2 * SPAN).reshape(length, length)
    rel = rel.numpy().astype(np.int64)  # r(i, j), log-bucketed
    c2p_col = np.clip(rel + SPAN, 0, 2 * SPAN - 1)  # c2p[i, j] = (q @ pos_key)[i, c2p_col[i, j]]
    p2c_col = np.clip(SPAN - rel, 0, 2 * SPAN - 1).T  # p2c[i, j] = (k @ pos_query)[j, p2c_col[i, j]]
    pos_key = [rng.standard_normal((HEADS, HEAD_SIZE, 2 * SPAN), dtype=np.float32) * 0.1 for _ in range(LAYERS)]
    pos_query = [rng.standard_normal((HEADS, HEAD_SIZE, 2 * SPAN), dtype=np.float32) * 0.1 for _ in range(LAYERS)]
    q = rng.standard_normal((batch, HEADS, length, HEAD_SIZE), dtype=np.float32)
    k = rng.standard_normal((batch, HEADS, length, HEAD_SIZE), dtype=np.float32)
    ref = np.zeros((batch, HEADS, length, length), np.float32)
    cols = np.arange(length)[None, :]
    for pk, pq in zip(pos_key, pos_query):
        c2p = np.take_along_axis(q @ pk, np.broadcast_to(c2p_col, ref.shape), 3)
        ref += c2p + (k @ pq)[:, :, cols, p2c_col]
    return {"q": q, "k": k, "rel": rel, "c2p_col": c2p_col, "p2c_col": p2c_col, "pos_key": pos_key,
            "pos_query": pos_query, "ref": ref}


def relative_graphs(case) -> dict:
    """{name: serialized ONNX model} computing sum over layers of c2p + p2c from inputs q, k."""
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper

    b, _, length, _ = case["q"].shape
    two_s = 2 * SPAN

    def build(nodes, inits, terms):
        acc = terms[0]
        for n, t in enumerate(terms[1:]):
            nodes.append(oh.make_node("Add", [acc, t], [f"acc{n}"]))
            acc = f"acc{n}"
        nodes.append(oh.make_node("Identity", [acc], ["out"]))
        inputs = [oh.make_tensor_value_info(x, TensorProto.FLOAT, list(case[x].shape)) for x in ("q", "k")]
        graph = oh.make_graph(nodes, "relative", inputs, [oh.make_tensor_value_info("out", TensorProto.FLOAT, None)],
                              initializer=[numpy_helper.from_array(np.asarray(v), n) for n, v in inits.items()])
        model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
        model.ir_version = 8
        return model.SerializeToString()

    def constants():
        return {**{f"pk{i}": v for i, v in enumerate(case["pos_key"])},
                **{f"pq{i}": v for i, v in enumerate(case["pos_query"])}}

    def gather_elements(dtype):  # what the export does (blender_fast/model/attention.py)
        p_flat = (np.arange(length)[None, :] * two_s + case["p2c_col"]).reshape(1, 1, -1)
        inits = {"ci": case["c2p_col"].astype(dtype)[None, None], "pi": p_flat.astype(dtype),
                 "shape_c": np.array([b, HEADS, length, length]), "shape_p": np.array([b, HEADS, length * length]),
                 "flat": np.array([b, HEADS, length * two_s]), **constants()}
        nodes = [oh.make_node("Expand", ["ci", "shape_c"], ["cie"]), oh.make_node("Expand", ["pi", "shape_p"], ["pie"])]
        for i in range(LAYERS):
            nodes += [oh.make_node("MatMul", ["q", f"pk{i}"], [f"ca{i}"]),
                      oh.make_node("GatherElements", [f"ca{i}", "cie"], [f"c{i}"], axis=3),
                      oh.make_node("MatMul", ["k", f"pq{i}"], [f"pa{i}"]),
                      oh.make_node("Reshape", [f"pa{i}", "flat"], [f"paf{i}"]),
                      oh.make_node("GatherElements", [f"paf{i}", "pie"], [f"pg{i}"], axis=2),
                      oh.make_node("Reshape", [f"pg{i}", "shape_c"], [f"p{i}"]),
                      oh.make_node("Add", [f"c{i}", f"p{i}"], [f"t{i}"])]
        return build(nodes, inits, [f"t{i}" for i in range(LAYERS)])

    def block_gather():
        rows = np.arange(length)
        inits = {"cf": rows[:, None] * two_s + case["c2p_col"], "pf": rows[None, :] * two_s + case["p2c_col"],
                 "rows": np.array([length * two_s, b * HEADS]), "back": np.array([length, length, b, HEADS]),
                 **constants()}
        nodes = []
        for i in range(LAYERS):
            for term, src, w, index in (("c", "q", f"pk{i}", "cf"), ("p", "k", f"pq{i}", "pf")):
                nodes += [oh.make_node("MatMul", [src, w], [f"{term}a{i}"]),
                          oh.make_node("Transpose", [f"{term}a{i}"], [f"{term}t{i}"], perm=[2, 3, 0, 1]),
                          oh.make_node("Reshape", [f"{term}t{i}", "rows"], [f"{term}r{i}"]),
                          oh.make_node("Gather", [f"{term}r{i}", index], [f"{term}g{i}"], axis=0)]  # [L, L, B*H]
            nodes += [oh.make_node("Add", [f"cg{i}", f"pg{i}"], [f"s{i}"]),
                      oh.make_node("Reshape", [f"s{i}", "back"], [f"sb{i}"]),
                      oh.make_node("Transpose", [f"sb{i}"], [f"t{i}"], perm=[2, 3, 0, 1])]
        return build(nodes, inits, [f"t{i}" for i in range(LAYERS)])

    def relative_shift():
        # F[i, c] = q_i . key(offset L-1-c), c in 0..2L-2, so c2p[i, j] = F[i, L-1-i+j]: a Slice of F's flat
        # view read with row stride 2L-2. The key of each offset is a Gather of the constants' columns.
        offsets = (length - 1) - np.arange(2 * length - 1)
        r_of_offset = np.array([case["rel"][max(d, 0), max(-d, 0)] for d in offsets])
        inits = {"colc": np.clip(r_of_offset + SPAN, 0, two_s - 1), "colp": np.clip(SPAN - r_of_offset, 0, two_s - 1),
                 "flat": np.array([b, HEADS, length * (2 * length - 1)]), "start": np.array([length - 1]),
                 "end": np.array([length - 1 + length * (2 * length - 2)]), "ax2": np.array([2]),
                 "ax3": np.array([3]), "zero": np.array([0]), "len": np.array([length]),
                 "skewed": np.array([b, HEADS, length, 2 * length - 2]), **constants()}
        nodes = []
        for i in range(LAYERS):
            for term, src, w, col in (("c", "q", f"pk{i}", "colc"), ("p", "k", f"pq{i}", "colp")):
                nodes += [oh.make_node("Gather", [w, col], [f"{term}w{i}"], axis=2),
                          oh.make_node("MatMul", [src, f"{term}w{i}"], [f"{term}F{i}"]),
                          oh.make_node("Reshape", [f"{term}F{i}", "flat"], [f"{term}f{i}"]),
                          oh.make_node("Slice", [f"{term}f{i}", "start", "end", "ax2"], [f"{term}s{i}"]),
                          oh.make_node("Reshape", [f"{term}s{i}", "skewed"], [f"{term}r{i}"]),
                          oh.make_node("Slice", [f"{term}r{i}", "zero", "len", "ax3"], [f"{term}x{i}"])]
            nodes += [oh.make_node("Transpose", [f"px{i}"], [f"pT{i}"], perm=[0, 1, 3, 2]),
                      oh.make_node("Add", [f"cx{i}", f"pT{i}"], [f"t{i}"])]
        return build(nodes, inits, [f"t{i}" for i in range(LAYERS)])

    return {"gather_elements int64 (today)": gather_elements(np.int64),
            "gather_elements int32": gather_elements(np.int32),
            "block gather": block_gather(), "relative shift": relative_shift()}


def session(model_bytes, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model_bytes, so, providers=["CPUExecutionProvider"])


def probe_relative(batch: int, lengths, threads: int, repeats: int) -> dict:
    out = {}
    for length in lengths:
        case = relative_case(batch, length)
        feeds = {"q": case["q"], "k": case["k"]}
        sessions = {name: session(g, threads) for name, g in relative_graphs(case).items()}
        errors = {name: float(np.abs(s.run(None, feeds)[0] - case["ref"]).max()) for name, s in sessions.items()}
        t = interleaved({name: (lambda s=s: s.run(None, feeds)) for name, s in sessions.items()}, repeats)
        today = t["gather_elements int64 (today)"]
        out[f"B={batch} L={length}"] = {name: {"ms": 1e3 * t[name], "speedup": today / t[name],
                                               "max_abs_err": errors[name]} for name in sessions}
    return out


# -- fused QKV ----------------------------------------------------------------------------------------

def probe_qkv(rows, threads: int, repeats: int, hidden: int = 1024) -> dict:
    from onnx import TensorProto
    from onnx import helper as oh
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    w = [rng.standard_normal((hidden, hidden), dtype=np.float32) * 0.03 for _ in range(3)]
    bias = [rng.standard_normal(hidden, dtype=np.float32) for _ in range(3)]
    out = {}
    for m in rows:
        def build(nodes, inits):
            graph = oh.make_graph(nodes, "qkv", [oh.make_tensor_value_info("x", TensorProto.FLOAT, [1, m, hidden])],
                                  [oh.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in ("o0", "o1", "o2")],
                                  initializer=[numpy_helper.from_array(v, n) for n, v in inits.items()])
            model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
            model.ir_version = 8
            return model.SerializeToString()

        separate = build([n for i in range(3) for n in (oh.make_node("MatMul", ["x", f"w{i}"], [f"m{i}"]),
                                                        oh.make_node("Add", [f"m{i}", f"b{i}"], [f"o{i}"]))],
                         {**{f"w{i}": w[i] for i in range(3)}, **{f"b{i}": bias[i] for i in range(3)}})
        fused = build([oh.make_node("MatMul", ["x", "w"], ["m"]), oh.make_node("Add", ["m", "b"], ["a"]),
                       oh.make_node("Split", ["a", "split"], ["o0", "o1", "o2"], axis=2)],
                      {"w": np.concatenate(w, 1), "b": np.concatenate(bias), "split": np.array([hidden] * 3)})
        x = {"x": rng.standard_normal((1, m, hidden), dtype=np.float32)}
        sessions = {"three MatMuls (today)": session(separate, threads), "one fused MatMul": session(fused, threads)}
        a, b = (s.run(None, x) for s in sessions.values())
        diff = max(float(np.abs(p - q).max()) for p, q in zip(a, b))
        t = interleaved({n: (lambda s=s: [s.run(None, x) for _ in range(5)]) for n, s in sessions.items()}, repeats)
        out[f"M={m}"] = {"fused_speedup": t["three MatMuls (today)"] / t["one fused MatMul"],
                         "gflops_today": 2 * m * hidden * hidden * 3 * 5 / t["three MatMuls (today)"] / 1e9,
                         "max_abs_diff": diff}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fp32_probes", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="runtimes,relative,qkv")
    parser.add_argument("--shape", default="large", help="generated checkpoint for the runtimes probe")
    parser.add_argument("--prompts", type=int, default=1, help="runtimes probe: AlpacaEval prompts x 6, full ranking")
    parser.add_argument("--lengths", default="300,700", help="relative probe: sequence lengths")
    parser.add_argument("--batch", type=int, default=2, help="relative probe: batch size")
    parser.add_argument("--rows", default="400,1160", help="qkv probe: token rows M")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--data", default=None, help="prompts file (default: $BLENDER_FAST_DATA or ../shared/data)")
    args = parser.parse_args(argv)
    sections = set(args.sections.split(","))
    result = {"machine": machine_info("cpu"), "threads": args.threads, "repeats": args.repeats}
    if "runtimes" in sections:
        result["runtimes"] = probe_runtimes(args.shape, args.prompts, args.threads, args.repeats,
                                            args.data or default_data_path())
    if "relative" in sections:
        result["relative"] = probe_relative(args.batch, [int(x) for x in args.lengths.split(",")], args.threads,
                                            args.repeats)
    if "qkv" in sections:
        result["qkv"] = probe_qkv([int(x) for x in args.rows.split(",")], args.threads, args.repeats)
    print(json.dumps(result, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
