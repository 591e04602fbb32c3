"""Running packed pair batches: an ONNX Runtime session or a torch module, one interface.

Both take ``(input_ids, attention_mask, positions)`` int64 numpy arrays and return float32 logits.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .options import DEVICE_CHOICES, DEVICES, check_choice  # noqa: F401  (re-exported)


def _check_device(device: str) -> str:
    return check_choice("device", device, DEVICES)


def resolve_device(device: str, backend: str = "onnx") -> str:
    """``device``, with "auto" resolved: "cuda" when the backend can use a GPU here, else "cpu".

    For the ONNX backend that means onnxruntime has a CUDA/TensorRT provider (torch is not imported:
    the runtime path stays torch-free); for torch, ``torch.cuda.is_available()``."""
    check_choice("device", device, DEVICE_CHOICES)
    if device != "auto":
        return device
    if backend == "torch":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    import onnxruntime as ort

    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())
    return "cuda" if gpu else "cpu"


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


class OnnxPairModel:
    """An ONNX Runtime session over an exported PairRM graph."""

    def __init__(self, path: str | os.PathLike, device: str = "cpu", providers: list[str] | None = None, threads: int | None = None):
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
        self.session = ort.InferenceSession(str(path), sess_options=options, providers=self.providers)
        self.device = device
        self.use_io_binding = self.session.get_providers()[0] != "CPUExecutionProvider"

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": attention_mask, "positions": positions}
        if not self.use_io_binding:
            return self.session.run(["logits"], feeds)[0].astype(np.float32, copy=False)
        # On GPU providers, bind inputs once per call and let ORT keep intermediates on the device.
        binding = self.session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        binding.bind_output("logits", "cpu")
        self.session.run_with_iobinding(binding)
        return binding.copy_outputs_to_cpu()[0].astype(np.float32, copy=False)


class TorchPairModel:
    """The same computation in torch eager (fp32 or fp16), for users without ONNX Runtime or on GPUs."""

    def __init__(self, module, device: str = "cpu", precision: str = "fp32", threads: int | None = None):
        import torch

        _check_device(device)
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"the torch backend supports precision 'fp32' or 'fp16', got {precision!r}")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("device='cuda' but torch sees no CUDA device")
        if threads:
            torch.set_num_threads(int(threads))
        self.torch = torch
        self.device = device
        self.module = module.to(device)
        if precision == "fp16":
            self.module = self.module.half()
        self.module.eval()

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray, positions: np.ndarray) -> np.ndarray:
        torch = self.torch
        with torch.inference_mode():
            out = self.module(
                torch.from_numpy(input_ids).to(self.device, non_blocking=True),
                torch.from_numpy(attention_mask).to(self.device, non_blocking=True),
                torch.from_numpy(positions).to(self.device, non_blocking=True),
            )
        return out.float().cpu().numpy()
