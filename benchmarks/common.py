"""Shared pieces of the benchmarks: prompt data, machine info, timing, memory sampling, batch recording."""
from __future__ import annotations

import itertools
import logging
import os
import platform
import sys
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from blender_fast.cluster.outputs import OutputError
from blender_fast.jsonl.prompts import iter_prompts
from blender_fast.runtime.autoselect import cpu_features
from blender_fast.synthetic.demo import demo_checkpoint

REPO = Path(__file__).resolve().parents[1]
DATA_FILE_NAME = "candidates_dev.jsonl"
_T0 = time.perf_counter()


def log(msg: str) -> None:
    """Progress on stderr, stamped with seconds since start (a benchmark run takes minutes)."""
    print(f"[bench {time.perf_counter() - _T0:7.1f}s] {msg}", file=sys.stderr, flush=True)


# -- data ------------------------------------------------------------------------------------------

def default_data_path() -> Path:
    """$BLENDER_FAST_DATA (the file, or the folder holding it), else ../shared/data/... of the repo."""
    env = os.environ.get("BLENDER_FAST_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "alpaca_eval_candidates"
    return path / DATA_FILE_NAME if path.is_dir() else path


@dataclass
class BenchPrompt:
    id: str
    instruction: str
    candidates: list[str]
    judge_pref: list[float] | None  # AlpacaEval judge score per candidate, in [1, 2]; None if absent


def load_prompts(path: Path, limit: int | None = None, max_chars: int | None = None) -> list[BenchPrompt]:
    """Prompts of a JSON Lines file (the shared AlpacaEval format, or any the CLI reads), with their judge
    scores when every candidate has one. max_chars clips every text (smoke runs: even the reference is fast)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: prompt file not found; pass --data FILE or set BLENDER_FAST_DATA "
                                "(the shared AlpacaEval candidates_dev.jsonl or any file in that format)")
    clip = (lambda t: t[:max_chars]) if max_chars else (lambda t: t)
    out = []
    for p in iter_prompts(path, limit=limit):
        prefs = [c.get("judge_pref") if isinstance(c, dict) else None for c in p.record["candidates"]]
        out.append(BenchPrompt(str(p.record.get("id", p.where)), clip(p.instruction + p.input),
                               [clip(t) for t in p.candidates], None if None in prefs else [float(x) for x in prefs]))
    return out


def candidates_for(prompts: list[BenchPrompt], index: int, n: int) -> list[str]:
    """n candidate texts for prompt `index`: its own first, then those of the following prompts
    (wrapping around), so n can exceed the 12 answers the data holds per prompt."""
    texts = (t for k in range(index, index + len(prompts)) for t in prompts[k % len(prompts)].candidates)
    out = list(itertools.islice(texts, n))
    if len(out) < n:
        raise ValueError(f"the data holds fewer than {n} candidates in total")
    return out


# -- machine ---------------------------------------------------------------------------------------

def machine_info(device: str) -> dict:
    import psutil

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return None

    cpu = cpu_features()  # /proc/cpuinfo, read by the one parser auto uses too
    info = {"cpu_model": cpu["cpu_model"], "isa": cpu["isa"],  # AMX / AVX512-BF16 / VNNI / AVX2 flags
            "physical_cores": psutil.cpu_count(logical=False), "logical_cores": psutil.cpu_count(logical=True),
            "cpu_affinity": len(os.sched_getaffinity(0)), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
            "platform": platform.platform(), "python": platform.python_version(),
            "load_average_at_start": load_average(),
            "versions": {m: installed(m) for m in ("blender-fast", "llm-blender", "numpy", "onnxruntime", "onnxruntime-gpu",
                                                   "torch", "transformers", "tokenizers", "openvino")}}
    try:
        import onnxruntime as ort

        info["onnxruntime_providers"] = ort.get_available_providers()
        import torch

        info["torch_threads"] = torch.get_num_threads()
        info["versions"]["cuda"] = torch.version.cuda
        if device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
            info["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    except ImportError:
        pass
    return info


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


# -- timing and memory -----------------------------------------------------------------------------

class RssSampler:
    """Peak RSS of this process while a block runs, sampled every 5 ms by a thread (ru_maxrss is a
    high-water mark for the whole process life: after the first big run it would never move again)."""

    def __enter__(self):
        import psutil

        self._proc, self._stop = psutil.Process(), threading.Event()
        self.before = self.peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


@dataclass
class BatchShape:
    """One model call: enough to count FLOPs with real lengths (sum_t, sum_t2) and as padded."""

    rows: int
    padded_len: int
    sum_t: int  # real tokens
    sum_t2: int  # sum of squared real lengths (attention is quadratic in each sequence's length)
    seconds: float = 0.0

    @property
    def padded_tokens(self) -> int:
        return self.rows * self.padded_len


def shape_of(mask: np.ndarray, seconds: float = 0.0) -> BatchShape:
    lens = np.asarray(mask).sum(axis=1).astype(np.int64)
    return BatchShape(int(mask.shape[0]), int(mask.shape[1]), int(lens.sum()), int((lens * lens).sum()), seconds)


class RecordingModel:
    """Wraps a blender-fast model callable (ids, mask, positions) -> logits and records each batch."""

    def __init__(self, model):
        self.model = model
        self.batches: list[BatchShape] = []

    def __call__(self, ids, mask, positions):
        t0 = time.perf_counter()
        out = self.model(ids, mask, positions)
        self.batches.append(shape_of(mask, time.perf_counter() - t0))
        return out


def record_reference_batches(ref_blender, device: str) -> list[BatchShape]:
    """Instrument llm-blender's backbone call (its pretrained_model.forward) to record every batch:
    shape, real tokens (attention_mask ones) and time. Returns the list it appends to."""
    batches: list[BatchShape] = []
    module = ref_blender.ranker.pretrained_model
    original = module.forward

    def forward(*args, **kwargs):
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        t0 = time.perf_counter()
        out = original(*args, **kwargs)
        if device == "cuda":
            import torch

            torch.cuda.synchronize()
        batches.append(shape_of(mask.detach().cpu().numpy(), time.perf_counter() - t0))
        return out

    module.forward = forward
    return batches


def summarize_batches(batches: list[BatchShape]) -> dict:
    real = sum(b.sum_t for b in batches)
    padded = sum(b.padded_tokens for b in batches)
    return {"batches": len(batches), "rows": sum(b.rows for b in batches), "tokens": real, "padded_tokens": padded,
            "pad_fraction": (1 - real / padded) if padded else 0.0, "model_s": sum(b.seconds for b in batches)}


def median(xs) -> float:
    return float(np.median(np.asarray(xs, dtype=np.float64))) if len(xs) else float("nan")


def as_jsonable(obj):
    """dataclasses, numpy scalars/arrays and Paths → plain JSON types."""
    if hasattr(obj, "__dataclass_fields__"):
        return as_jsonable(asdict(obj))
    if isinstance(obj, dict):
        return {str(k): as_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [as_jsonable(v) for v in obj]
    if isinstance(obj, (np.generic, Path)):
        return str(obj) if isinstance(obj, Path) else as_jsonable(obj.item())
    return None if isinstance(obj, float) and not np.isfinite(obj) else obj


def generated_checkpoint(shape: str, seed: int) -> Path:
    """A random-weight checkpoint, generated once into the blender-fast cache and reused (with the
    backbone weights llm-blender's loader reads: the reference runs on it too)."""
    return demo_checkpoint(shape, seed, llm_blender_loadable=True,
                           announce=lambda p: log(f"generating a random-weight {shape} checkpoint in {p}"))


def quiet_libraries() -> None:
    for category in (UserWarning, FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    logging.getLogger().setLevel(logging.ERROR)  # llm-blender logs through the root logger
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # read when transformers is first imported
    if "transformers" in sys.modules:
        sys.modules["transformers"].logging.set_verbosity_error()


def run_main(main, argv=None) -> int:
    """``main(argv)``, with the user's errors (an output path that cannot be written, a missing data file)
    as one line and rc 2, as the blender-fast CLI does. Every benchmark entry point runs through it."""
    try:
        return main(argv)
    except (OutputError, FileNotFoundError) as e:
        print(f"benchmarks: error: {e}", file=sys.stderr)
        return 2
