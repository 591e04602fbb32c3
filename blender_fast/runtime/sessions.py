"""Running model rows: an ONNX Runtime session or a torch module, one interface for every kind of model.

Both take a kind's int64 row arrays (PairRM's packed ``(input_ids, attention_mask, positions)``, a reward
model's ``(input_ids, attention_mask, token_type_ids)``) and return float32 logits.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..model.pairrm import ONNX_INPUTS
from ..options import (DEVICE_CHOICES, DEVICES, check_backend_precision, check_choice,  # noqa: F401  (re-exported)
                       resolve_device)


def _check_device(device: str) -> str:
    return check_choice("device", device, DEVICES)


def choose_providers(device: str, available: list[str]) -> list[str]:
    """TensorRT, then CUDA, then CPU for device='cuda'; CPU only for device='cpu'."""
    if _check_device(device) == "cpu":
        return ["CPUExecutionProvider"]
    wanted = [p for p in ("TensorrtExecutionProvider", "CUDAExecutionProvider") if p in available]
    if not wanted:
        raise RuntimeError(
            "device='cuda' but this onnxruntime has no CUDA or TensorRT provider "
            f"(available: {available}); install onnxruntime-gpu, or use backend='torch'"
        )
    return wanted + ["CPUExecutionProvider"]


class OnnxModel:
    """An ONNX Runtime session over an exported graph: rows -> float32 logits (PairRM's pair logits, a reward
    model's scores). ``feeds``: the names of the arrays a call passes, in order (PairRM's
    ``(input_ids, attention_mask, positions)`` by default, a reward model's ``(input_ids, attention_mask,
    token_type_ids)``); the graph takes those of them it names (its inputs are read from the graph), and its
    one output is the answer."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", providers: list[str] | None = None,
                 threads: int | None = None, feeds: tuple = ONNX_INPUTS, label: str = "PairRM"):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: ONNX model not found")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Errors only: fp16 graphs on the CPU provider log one "can't constant fold" warning per layer.
        options.log_severity_level = 3
        if threads:
            options.intra_op_num_threads = int(threads)
        self.providers = providers or choose_providers(device, ort.get_available_providers())
        try:
            self.session = ort.InferenceSession(str(path), sess_options=options, providers=self.providers)
        except Exception as e:  # ORT raises InvalidProtobuf, InvalidGraph, Fail ...: one line naming the file
            if "provider" in str(e).lower() and "protobuf" not in str(e).lower():
                raise
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path}: not a usable ONNX model, damaged or foreign ({type(e).__name__}: "
                             f"{reason[:300]})") from None
        self.inputs = [i.name for i in self.session.get_inputs()]
        outputs = [o.name for o in self.session.get_outputs()]
        required = set(feeds) - {"token_type_ids"}  # a reward model without token types takes no token_type_ids
        if not required <= set(self.inputs) <= set(feeds) or len(outputs) != 1:
            # a valid graph, but another model's
            raise ValueError(f"{path}: not a {label} export (a foreign ONNX model: inputs {', '.join(self.inputs)}, "
                             f"outputs {', '.join(outputs)}; expected {', '.join(feeds)} -> one output)")
        self.feeds = tuple(feeds)
        self.output = outputs[0]
        self.device = device
        self.use_io_binding = self.session.get_providers()[0] != "CPUExecutionProvider"

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        feeds = {name: array for name, array in zip(self.feeds, arrays) if name in self.inputs}
        if not self.use_io_binding:
            return self.session.run([self.output], feeds)[0].astype(np.float32, copy=False)
        # On GPU providers, bind inputs once per call and let ORT keep intermediates on the device.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output(self.output, "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)


    @classmethod
    def from_graph(cls, graph, device: str = "cpu", threads: int | None = None) -> "OnnxModel":
        return cls(graph.onnx, device=device, threads=threads, feeds=graph.inputs)


OnnxPairModel = OnnxModel  # its old name (CHANGELOG)


# What stays in fp32 when the rest of the model runs in bf16, by default. Decided by measurement
# (docs/performance.md, "The agreement gate"): on the conditioned tiny
# checkpoint (100 prompts x 12) the head is the island the gate needs (all-bf16: tau 0.980, min 0.40, fails;
# fp32 head: tau 0.986, passes; layer norms alone change nothing there). On the 12-layer xsmall shape fp32
# layer norms halved the error (max |dlogit| 1.76 -> 1.00 x the logit std, unconditioned) at no measurable
# cost, so they stay too. Embeddings in fp32 changed nothing. Softmax and the relative-position terms run
# in HF's attention in the GEMMs' dtype; keeping them in fp32 would need a patched attention, not needed.
DEFAULT_FP32_ISLANDS = ("layernorm", "head")
FP32_ISLANDS = ("layernorm", "head", "embeddings")


def lower_precision(module, dtype, keep_fp32=DEFAULT_FP32_ISLANDS):
    """Cast a PairRM module to ``dtype`` (torch.bfloat16 / float16), keeping ``keep_fp32`` parts in fp32.

    An fp32 island gets its input upcast and returns its output cast back, so its neighbours see the
    lower dtype; the head returns fp32 logits, so the final subtraction (left - right) is fp32 too."""
    import torch

    unknown = set(keep_fp32) - set(FP32_ISLANDS)
    if unknown:
        raise ValueError(f"keep_fp32 entries must be among {FP32_ISLANDS}, got {sorted(unknown)}")
    module = module.to(dtype)

    def upcast(mod, cast_back):
        mod.float()
        inner = mod.forward

        def forward(*args, **kwargs):
            args = [a.float() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
            out = inner(*args, **kwargs)
            return out.to(dtype) if cast_back else out

        mod.forward = forward

    if "layernorm" in keep_fp32:
        for mod in module.modules():
            if isinstance(mod, torch.nn.LayerNorm):
                upcast(mod, cast_back=True)
    if "head" in keep_fp32 and hasattr(module, "head_layer"):
        upcast(module.head_layer, cast_back=False)
    if "embeddings" in keep_fp32 and hasattr(module, "pretrained_model"):
        upcast(module.pretrained_model.embeddings, cast_back=True)
    return module


class OpenVinoPairModel:
    """OpenVINO's CPU plugin over the exported fp32 graph.

    precision "fp32" runs it exactly (max |dlogit| vs ORT ~3e-5); "bf16" sets INFERENCE_PRECISION_HINT=bf16
    (its own choice of what stays fp32). Dynamic shapes: one compiled model serves every batch."""

    def __init__(self, onnx_path: str | os.PathLike, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        try:
            import openvino as ov
        except ImportError:
            raise ImportError("backend='openvino' needs OpenVINO: pip install 'blender-fast[openvino]'") from None
        if _check_device(device) != "cpu":
            raise ValueError("backend='openvino' runs on device='cpu' only here")
        check_backend_precision("openvino", precision)
        config = {"INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        core = ov.Core()
        model = core.read_model(str(onnx_path))
        if any(op.get_type_name() == "If" for op in model.get_ops()):
            # transformers' attention (exported only for configurations attention.py does not cover)
            # has an If with dynamic rank, which OpenVINO's CPU plugin refuses.
            raise ValueError(f"{onnx_path}: this graph has transformers' attention (its export warned why), which "
                             "OpenVINO's CPU plugin cannot run; use backend='onnx'")
        self.compiled = core.compile_model(model, "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.device, self.precision = device, precision

    @classmethod
    def from_graph(cls, graph, device: str = "cpu", threads: int | None = None) -> "OpenVinoPairModel":
        return cls(graph.onnx, device=device, precision=graph.precision, threads=threads)

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        out = self.request.infer({"input_ids": input_ids, "attention_mask": attention_mask, "positions": positions})
        return np.asarray(out[self.compiled.output(0)], dtype=np.float32).copy()


class TorchModel:
    """The same computation in torch eager (fp32, fp16 or bf16), for users without ONNX Runtime, on GPUs,
    and for bf16 on CPUs with bf16 units (oneDNN): a module ``(*rows) -> float32 logits`` (PairRM's
    pair module or a reward model's classifier). fp16 halves everything (llm-blender's fp16); bf16 keeps
    ``keep_fp32``'s parts in fp32 (lower_precision: the parts the module has)."""

    def __init__(self, module, device: str = "cpu", precision: str = "fp32", threads: int | None = None,
                 keep_fp32=DEFAULT_FP32_ISLANDS):
        import torch

        _check_device(device)
        check_backend_precision("torch", precision)
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA device")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.device = device
        self.precision = precision
        self.module = module.to(device)
        self.keep_fp32 = ()
        if precision == "fp16":
            self.module = self.module.half()  # llm-blender's fp16: everything halved
        elif precision == "bf16":
            self.keep_fp32 = tuple(keep_fp32)
            self.module = lower_precision(self.module, torch.bfloat16, self.keep_fp32)
        self.module.eval()

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.module(*(torch.from_numpy(a).to(self.device, non_blocking=True) for a in arrays))
        return out.float().cpu().numpy()


    @classmethod
    def from_graph(cls, graph, device: str = "cpu", threads: int | None = None) -> "TorchModel":
        return cls(graph.module, device=device, precision=graph.precision, threads=threads,
                   keep_fp32=DEFAULT_FP32_ISLANDS if graph.fp32_islands else ())


TorchPairModel = TorchModel  # its old name (CHANGELOG)


def open_session(graph, device: str = "cpu", threads: int | None = None):
    """The model callable (rows -> float32 logits) over a model/export.ModelGraph: an ONNX Runtime session,
    OpenVINO's compiled model, or the torch module (the plain twin), by the graph's backend. Every session
    class opens a graph the same way (``from_graph``)."""
    return SESSIONS[graph.backend].from_graph(graph, device, threads)


# The session class of each backend (model/export.ModelGraph.backend).
SESSIONS = {"onnx": OnnxModel, "openvino": OpenVinoPairModel, "torch": TorchModel}
