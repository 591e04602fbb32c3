"""One vocabulary of options, defined once: the Ranker, the Fuser, the CLI, the server and the C++
binding's error messages all take their choices from here, so a value means the same thing everywhere."""
from __future__ import annotations

import argparse
import numbers

# Selection strategies (``Ranker.select``, ``Blender.get_best_of_n``, ``--strategy``).
STRATEGIES = ("bubble", "tournament", "full", "swiss", "knockout_rr", "adaptive")
# The ones the C++ Selector runs ("full" is one step of all pairs, done in Python).
SELECTOR_STRATEGIES = ("bubble", "tournament", "swiss", "knockout_rr", "adaptive")
# "both": run (a, b) and (b, a), decide on f(a,b) - f(b,a) (llm-blender's); "one": (a, b) only.
ORDERS = ("both", "one")
# How full ranking aggregates the comparison matrix (llm-blender's names).
POLICIES = ("max_logits", "max_wins")
# llm-blender's compare modes.
COMPARE_MODES = ("[A,B]", "[B,A]", "[A,B]+[B,A]")
# Numeric precision of the model; "int8" is ONNX Runtime dynamic quantization (CPU).
PRECISIONS = ("fp32", "fp16", "int8", "bf16")
# bf16: torch bf16 GEMMs with fp32 layer norms and head (runtime.lower_precision); CPUs with AVX512-BF16
# or AMX, and CUDA.
# "auto": the fastest precision that passed the agreement gate on this machine (autoselect.py).
PRECISION_CHOICES = PRECISIONS + ("auto",)
# The fuser's (torch) precisions; the fuser's onnx backend runs fp32 only.
FUSER_PRECISIONS = ("fp32", "fp16", "bf16")
# Where the model runs; "auto" = cuda when torch or onnxruntime sees a GPU, else cpu.
DEVICES = ("cpu", "cuda")
DEVICE_CHOICES = DEVICES + ("auto",)
# The runtime that executes the ranker graph.
# openvino: OpenVINO's CPU plugin on the exported graph, fp32 or bf16 (extra [openvino]).
BACKENDS = ("onnx", "torch", "openvino")
BACKEND_CHOICES = BACKENDS + ("auto",)  # "auto": chosen with the precision (autoselect.py)


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1, else a ValueError naming the argument (None, NaN, 1.5, 0, -1, True...)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def non_negative_int(name: str, value) -> int:
    """``value`` as an int >= 0, else a ValueError naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def int_argument(minimum: int):
    """An argparse ``type=`` for integers >= minimum: the command line's spelling of the checks above."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def check_choice(name: str, value, choices) -> str:
    """``value`` if it is one of ``choices``, else a ValueError naming the option and the choices."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help names each default once: argparse's "(default: X)" is added only where the help text does not
    already say its default, and never for None or a flag's False (they say nothing)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)
