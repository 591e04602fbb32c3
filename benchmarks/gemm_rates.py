"""fp32 vs bf16 GEMM rates and split-bf16 (bf16x3) accuracy on this CPU, 2 threads.

python -m benchmarks.gemm_rates   (about a minute; prints a table and the CPU model + ISA flags)
"""
import json
import time

import torch


def cpu_info():
    model, flags = "?", set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model == "?":
                model = line.split(":", 1)[1].strip()
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    isa = sorted(f for f in flags if f.startswith(("avx512", "amx", "avx_vnni", "avx2")))
    return model, isa


def rate(fn, flops, reps=5):
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def main():
    torch.set_num_threads(2)
    model, isa = cpu_info()
    print(f"CPU: {model}; ISA: {' '.join(isa)}; torch {torch.__version__}; threads 2")
    out = []
    for name, (m, k, n) in {"xsmall FFN": (2048, 384, 1536), "large FFN": (2048, 1024, 4096)}.items():
        g = torch.Generator().manual_seed(0)
        a = torch.randn(m, k, generator=g)
        b = torch.randn(k, n, generator=g) / k ** 0.5
        ref = (a.double() @ b.double())
        flops = 2 * m * k * n
        fp32 = a @ b
        res = {"shape": name, "M,K,N": [m, k, n]}
        res["fp32 GFLOP/s"] = rate(lambda: a @ b, flops)
        res["fp32 max err"] = float((fp32.double() - ref).abs().max())
        ab, bb = a.bfloat16(), b.bfloat16()
        res["bf16->bf16 GFLOP/s"] = rate(lambda: ab @ bb, flops)
        res["bf16->bf16 max err"] = float(((ab @ bb).double() - ref).abs().max())
        try:
            torch.mm(ab, bb, out_dtype=torch.float32)
            res["bf16->fp32 (out_dtype)"] = rate(lambda: torch.mm(ab, bb, out_dtype=torch.float32), flops)
        except Exception as e:  # noqa: BLE001 - recorded, not hidden
            res["bf16->fp32 (out_dtype)"] = f"unavailable: {type(e).__name__}"
        # split-bf16: x = hi + lo; a@b ~ a_hi@b_hi + a_lo@b_hi + a_hi@b_lo, fp32 accumulate via the flag
        a_hi = a.bfloat16(); a_lo = (a - a_hi.float()).bfloat16()
        b_hi = b.bfloat16(); b_lo = (b - b_hi.float()).bfloat16()
        A = torch.cat([a_hi, a_lo], 1).float(); B = torch.cat([b_hi, b_hi], 0).float()
        ah, bl = a_hi.float(), b_lo.float()
        prev = torch.backends.mkldnn.matmul.fp32_precision
        try:
            torch.backends.mkldnn.matmul.fp32_precision = "bf16"
            res["fp32 via bf16 flag GFLOP/s"] = rate(lambda: a @ b, flops)
            res["fp32 via bf16 flag max err"] = float(((a @ b).double() - ref).abs().max())
            x3 = lambda: A @ B + ah @ bl  # noqa: E731
            res["bf16x3 via flag (effective GFLOP/s)"] = rate(x3, flops)
            res["bf16x3 max err"] = float((x3().double() - ref).abs().max())
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = prev
        try:
            import onnx
            import onnxruntime as ort
            from onnx import TensorProto, helper
            node = helper.make_node("MatMul", ["A", "B"], ["C"])
            graph = helper.make_graph([node], "mm", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [m, k])],
                                      [helper.make_tensor_value_info("C", TensorProto.FLOAT, [m, n])],
                                      [onnx.numpy_helper.from_array(b.numpy(), "B")])
            mdl = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
            so = ort.SessionOptions(); so.intra_op_num_threads = 2; so.inter_op_num_threads = 1
            sess = ort.InferenceSession(mdl.SerializeToString(), so, providers=["CPUExecutionProvider"])
            an = a.numpy()
            res["ORT MatMul fp32 GFLOP/s"] = rate(lambda: sess.run(None, {"A": an}), flops)
        except Exception as e:  # noqa: BLE001
            res["ORT MatMul fp32 GFLOP/s"] = f"unavailable: {type(e).__name__}: {e}"
        out.append(res)
        print(json.dumps(res, indent=1))
    return out


if __name__ == "__main__":
    main()
