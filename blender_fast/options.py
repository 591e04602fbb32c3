"""One vocabulary of options, defined once: the Ranker, the Fuser, the CLI, the server and the C++
binding's error messages all take their choices from here, so a value means the same thing everywhere."""
from __future__ import annotations

import argparse
import math
import numbers

# Selection strategies (``Ranker.select``, ``Blender.get_best_of_n``, ``--strategy``).
STRATEGIES = ("bubble", "tournament", "full", "swiss", "knockout_rr", "adaptive")
# The ones the C++ Selector runs ("full" is one step of all pairs, done in Python).
SELECTOR_STRATEGIES = ("bubble", "tournament", "swiss", "knockout_rr", "adaptive")
# The ones that take a budget (forward passes per prompt) and never exceed it (check_strategy_budget).
BUDGETED = ("swiss", "knockout_rr", "adaptive")
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
# "auto" (the default everywhere): exact fp32, or the certified cascade (a fast pass, fp32 for the pairs
# it cannot certify) where a measured bound says it pays, or a variant that passed the agreement gate on
# this machine (runtime/autoselect.py, docs/exact-at-speed.md).
PRECISION_CHOICES = PRECISIONS + ("auto",)
DEFAULT_PRECISION = "auto"
# What each runtime runs (every other precision is refused by check_backend_precision, naming the backend).
BACKEND_PRECISIONS = {"onnx": ("fp32", "fp16", "int8"), "torch": ("fp32", "fp16", "bf16"), "openvino": ("fp32", "bf16")}
# What each runtime runs a pointwise reward model in (pointwise.PointwiseRanker, model/pointwise.py's export).
POINTWISE_PRECISIONS = {"onnx": ("fp32", "fp16"), "torch": ("fp32", "fp16", "bf16")}
# The fuser's (torch) precisions; the fuser's onnx backend runs fp32 only.
FUSER_PRECISIONS = ("fp32", "fp16", "bf16")
# Where the model runs; "auto" = cuda when torch or onnxruntime sees a GPU, else cpu.
DEVICES = ("cpu", "cuda")
DEVICE_CHOICES = DEVICES + ("auto",)
# The runtime that executes the ranker graph.
# openvino: OpenVINO's CPU plugin on the exported graph, fp32 or bf16 (extra [openvino]).
BACKENDS = ("onnx", "torch", "openvino")
BACKEND_CHOICES = BACKENDS + ("auto",)  # "auto": chosen with the precision (autoselect.py)
DEFAULT_BACKEND = "auto"

# -- batching: how the ranker cuts its rows into model calls -------------------------------------------
# Tokens per batch (rows x longest row). On a CPU bigger batches buy nothing once a batch holds a few
# sequences (each is already hundreds of GEMM rows) and cost cache misses in the T x T attention maps.
DEFAULT_TOKEN_BUDGET = {"cpu": 4096, "cuda": 32768}
DEFAULT_MAX_BATCH = 64
# The fixed cost of one model call, in tokens, for the batch planner: on a CPU a padded token costs as
# much as a real one and a call ~1 ms (about one token of xsmall); on a GPU calls dominate.
DEFAULT_BATCH_COST = {"cpu": 16, "cuda": 4096}


# -- numbers: one rule for every count, budget and seed ---------------------------------------------
#
# A count is an integer: a Python int or a numpy integer. bool is refused (True is not a count) and so
# is every float, 2.0 included (a float that happens to be whole is still a float: refusing it keeps
# "1.5", NaN and 1e30 from sneaking through a round-trip, and JSON / the CLI say what they mean). It is
# finite by construction and must lie within [minimum, maximum]; the maxima are far beyond any real
# call and keep every value inside int64 (the C++ core, numpy, Arrow). Wrong type: OptionTypeError (a
# TypeError); wrong value: ValueError. Messages name the parameter.

MAX_COUNT = 10**9       # a generic count (threads, batch sizes, limits, lengths, ...)
MAX_TOP_K = 10**6       # candidates to select per prompt
MAX_BUDGET = 10**9      # forward passes per prompt (swiss / knockout_rr / adaptive)
# The truncation maximum of a tokenizer that names no limit of its own (a reward model whose
# model_max_length is unbounded): the tokens a piece may keep when a call asks for more.
MAXLENGTH_WHEN_UNBOUNDED = 2048
MAX_SEED = 2**63 - 1    # seeds of numpy's default_rng, and int64 wherever they are stored


class OptionTypeError(TypeError, ValueError):
    """A parameter of the wrong type (e.g. top_k=1.5, seed=True). A TypeError; also a ValueError, so
    that code written when these were ValueErrors keeps catching them."""


def check_count(name: str, value, maximum: int = MAX_COUNT, minimum: int = 1) -> int:
    """``value`` as an int in [minimum, maximum], else OptionTypeError (not an integer: floats, bools,
    None, strings) or ValueError (out of range), naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OptionTypeError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value


def check_bool(name: str, value) -> bool:
    """``value`` if it is a bool (True or False; numpy's bool_ too), else a ValueError naming ``name``: a
    string such as "no" is truthy, so taking it as a flag would silently answer the opposite."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise ValueError(f"{name} must be True or False, got {value!r}")


def check_maxlength(name: str, value, minimum: int, maximum: int, why_minimum: str, where_maximum: str) -> int:
    """A truncation length (tokens) in [minimum, maximum], in the user's words: ``why_minimum`` says what
    the minimum holds, ``where_maximum`` where the maximum comes from and how to raise it."""
    value = check_count(name, value, maximum=MAX_COUNT, minimum=-MAX_COUNT)
    if value < minimum:
        raise ValueError(f"{name} = {value} is too small: it must be >= {minimum} ({why_minimum})")
    if value > maximum:
        raise ValueError(f"{name} = {value} is above the maximum, {maximum} ({where_maximum})")
    return value


def check_optional_count(name: str, value, maximum: int = MAX_COUNT, minimum: int = 1):
    """None, or ``check_count``."""
    return None if value is None else check_count(name, value, maximum, minimum)


def check_top_k(value, name: str = "top_k") -> int:
    return check_count(name, value, MAX_TOP_K)


def check_top_k_fits(top_k, n: int, where: str) -> int:
    """The one rule of top_k against the candidates it picks from: ``top_k`` checked (check_top_k) and at
    most ``n``, else one ValueError naming ``where`` (e.g. "prompt 3") and both numbers."""
    top_k = check_top_k(top_k)
    if top_k > n:
        raise ValueError(f"top_k = {top_k} exceeds the {n} candidates of {where}")
    return top_k


def check_seed(value, name: str = "seed") -> int:
    return check_count(name, value, MAX_SEED, minimum=0)


def check_optional_seed(value, name: str = "seed"):
    """None (fresh entropy) or a seed."""
    return None if value is None else check_seed(value, name)


def check_budget(value, name: str = "budget"):
    """None (the strategy's default) or forward passes per prompt, 1..MAX_BUDGET. (A budget below a
    strategy's minimum is refused later, by selection.budgets, with that minimum in the message.)"""
    return None if value is None else check_count(name, value, MAX_BUDGET)


def check_strategy_budget(strategy: str, budget, name: str = "strategy"):
    """``budget`` (check_budget) where ``strategy`` takes one; a budget given to any other strategy is a
    ValueError. One rule and one message for every entry point; ``name`` is what the caller calls its
    strategy (``pairrm_cmp_type`` in the llm-blender facade)."""
    if budget is not None and strategy not in BUDGETED:
        raise ValueError(f"budget applies to the strategies {BUDGETED}, not to {name}={strategy!r}")
    return check_budget(budget)


def check_positive_number(name: str, value) -> float:
    """A finite real number > 0 (int or float; bool refused), as float: e.g. the judge's temperature."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionTypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def check_non_negative_number(name: str, value) -> float:
    """A finite real number >= 0 (int or float; bool refused), as float: e.g. a wait in milliseconds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise OptionTypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


def number_argument(minimum: float = 0.0):
    """An argparse ``type=`` for finite numbers >= minimum (nan and inf refused, one line, exit status 2)."""
    import argparse

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value) or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a finite number >= {minimum:g}, got {text}")
        return value

    parse.__name__ = f"number >= {minimum:g}"
    return parse


def check_temperature(value) -> float:
    return check_positive_number("temperature", value)


def check_precision(value, choices=PRECISION_CHOICES, name: str = "precision") -> str:
    """One of the model precisions (``choices``: PRECISION_CHOICES, with "auto", unless a caller runs
    only a fixed precision, e.g. an export)."""
    return check_choice(name, value, choices)


def backend_for(backend: str, precision: str) -> str:
    """The backend that runs an explicit ``precision`` when ``backend`` is "auto": ONNX Runtime where it runs
    it (fp32, fp16, int8), else torch (bf16). backend="auto" with precision="auto" stays "auto" (chosen
    together, runtime/autoselect.py); an explicit backend stays itself."""
    if backend != "auto" or precision == "auto":
        return backend
    return "onnx" if precision in BACKEND_PRECISIONS["onnx"] else "torch"


def check_backend_precision(backend: str, precision: str) -> str:
    """``precision`` if the ``backend`` runs it (BACKEND_PRECISIONS), else one ValueError naming both:
    the one list every runtime, the export and autoselect check against."""
    check_choice("backend", backend, BACKENDS)
    check_precision(precision, PRECISIONS)
    allowed = BACKEND_PRECISIONS[backend]
    if precision not in allowed:
        why = (" (ONNX Runtime has no fast bf16 CPU kernels; precision='bf16' needs backend='torch')"
               if (backend, precision) == ("onnx", "bf16") else "")
        raise ValueError(f"the {backend} backend supports precision {', '.join(map(repr, allowed))}, got "
                         f"{precision!r}{why}")
    return precision


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1 (check_count)."""
    return check_count(name, value)


def non_negative_int(name: str, value) -> int:
    """``value`` as an int >= 0 (check_count)."""
    return check_count(name, value, minimum=0)


def int_argument(minimum: int, maximum: int = MAX_COUNT):
    """An argparse ``type=`` for integers in [minimum, maximum]: the command line's spelling of
    check_count (argparse reports a failure as one line naming the flag, exit status 2)."""
    import argparse

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, got {value}")
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


def add_engine_options(p: argparse.ArgumentParser) -> None:
    """--backend, --device, --precision and --threads: how the ranker runs, one set of flags for every command
    that loads one (rank, serve)."""
    p.add_argument("--backend", choices=BACKEND_CHOICES, default=DEFAULT_BACKEND,
                   help="runtime of the ranker graph (default auto: chosen with the precision)")
    p.add_argument("--device", choices=DEVICE_CHOICES, default="auto", help="auto = cuda when available, else cpu")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=DEFAULT_PRECISION,
                   help="model precision; int8 = ONNX Runtime dynamic quantization (CPU); auto (default) = exact "
                        "fp32, or the certified cascade where it pays on this CPU (the startup line says which and why)")
    p.add_argument("--threads", type=int_argument(1), default=None, help="intra-op threads (default: the runtime's)")


def resolve_device(device: str, backend: str = "onnx", *, device_index: bool = False) -> str:
    """``device``, with "auto" resolved: "cuda" when the backend can use a GPU here, else "cpu". The one
    device resolver (the ranker, the fuser, the CLI and the server).

    For the ONNX backend that means onnxruntime has a CUDA/TensorRT provider (torch is not imported:
    the runtime path stays torch-free); for torch, ``torch.cuda.is_available()``. device_index=True also
    takes "cuda:N" as given (the fuser places a torch model on one GPU)."""
    if device_index and isinstance(device, str) and device.startswith("cuda:") and device[5:].isdigit():
        return device
    check_choice("device", device, DEVICE_CHOICES)
    if device != "auto":
        return device
    if backend == "torch":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    import onnxruntime as ort

    gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())
    return "cuda" if gpu else "cpu"
