"""One vocabulary of options, defined once: the Ranker, the Fuser, the CLI, the server and the C++
binding's error messages all take their choices from here, so a value means the same thing everywhere."""
from __future__ import annotations

# Selection strategies (``Ranker.select``, ``Blender.get_best_of_n``, ``--strategy``).
STRATEGIES = ("bubble", "tournament", "full")
# "both": run (a, b) and (b, a), decide on f(a,b) - f(b,a) (llm-blender's); "one": (a, b) only.
ORDERS = ("both", "one")
# How full ranking aggregates the comparison matrix (llm-blender's names).
POLICIES = ("max_logits", "max_wins")
# llm-blender's compare modes.
COMPARE_MODES = ("[A,B]", "[B,A]", "[A,B]+[B,A]")
# Numeric precision of the model; "int8" is ONNX Runtime dynamic quantization (CPU).
PRECISIONS = ("fp32", "fp16", "int8")
PRECISIONS += ("bf16",)  # torch bf16 GEMMs with fp32 layer norms and head (runtime.lower_precision); CPU with AVX512-BF16/AMX, or CUDA
PRECISION_CHOICES = PRECISIONS + ("auto",)  # "auto": the fastest precision that passed the agreement gate here (autoselect.py)
# Where the model runs; "auto" = cuda when torch or onnxruntime sees a GPU, else cpu.
DEVICES = ("cpu", "cuda")
DEVICE_CHOICES = DEVICES + ("auto",)
# The runtime that executes the ranker graph.
BACKENDS = ("onnx", "torch")
BACKENDS += ("openvino",)  # OpenVINO CPU plugin on the exported graph, fp32 or bf16 (extra [openvino])
BACKEND_CHOICES = BACKENDS + ("auto",)  # "auto": chosen with the precision (autoselect.py)


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming the option and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value
