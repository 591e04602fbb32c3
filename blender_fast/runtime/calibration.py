"""The certified cascade's error bound: measured once per checkpoint, fast variant, runtime versions and CPU,
and cached as JSON beside the exports.

``measure_bound`` scores calibration pairs (the export's sample prompts plus the synthetic calibration
examples: every ordered pair of their candidates) with the fast variant and with exact fp32, and keeps:
  eps = SAFETY * max |fast - fp32| + FLOOR   (per-row logit bound the cascade trusts)
  the fraction of calibration comparisons whose |fp32 margin| is within 2*eps (an estimate of what the
  cascade re-scores) and, only when that fraction leaves room for a gain, the measured speed ratio (best
  of 3, interleaved; otherwise speed_vs_fp32 is None and no time is spent on it).
The cache key holds the checkpoint fingerprint, the variant, torch/onnxruntime/openvino versions and the
CPU model + ISA flags, so a new runtime or another CPU measures again.

This is a measured bound, not a proof: the cascade's answer equals fp32's whenever every fast logit is
within eps of fp32's (docs/exact-at-speed.md); the margin and the floor cover inputs unlike the
calibration pairs, and nothing more can be promised of a measurement.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np

from ..model.cache import auto_dir
from .model_files import model_files

SAFETY = 2.0
FLOOR = 1e-3
CALIBRATION_VERSION = 2  # 2: speed timed only when the re-score estimate leaves room
# The cascade is taken only when it is expected to be this much faster than plain fp32.
MIN_GAIN = 1.15


def runtime_versions() -> dict:
    out = {}
    for name in ("torch", "onnxruntime", "openvino"):
        try:
            mod = __import__(name)
            out[name] = getattr(mod, "__version__", None) or getattr(mod, "get_version", lambda: "?")()
        except ImportError:
            out[name] = None
    return out


def calibration_batches(tok, ckpt, max_rows: int = 64):
    """Packed batches of every ordered candidate pair of the calibration prompts, and their (prompt, a, b).
    ``ckpt``: a checkpoint, or a load's ModelFiles (its truncation lengths apply)."""
    from .. import _core
    from ..synthetic.common import CALIBRATION_EXAMPLES

    sources = [s for s, _ in CALIBRATION_EXAMPLES]
    cands = [list(c) for _, c in CALIBRATION_EXAMPLES]
    enc = model_files(ckpt).encode(tok, sources, cands)
    packer = _core.PairPacker(enc.tokens, enc.offsets, enc.limits, cand1_id=tok.cand1_id, cand2_id=tok.cand2_id,
                              pad_id=tok.pad_id, prefix_offset=tok.prefix_offset)
    rows, trip = [], []
    for p, cs in enumerate(cands):
        for i in range(len(cs)):
            for j in range(len(cs)):
                if i != j:
                    rows.append((enc.source_index[p], enc.candidate_index(p, i), enc.candidate_index(p, j)))
                    trip.append((p, i, j))
    pairs = np.asarray(rows, dtype=np.int64)
    batches = []
    for s in range(0, len(pairs), max_rows):
        idx = np.arange(s, min(s + max_rows, len(pairs)), dtype=np.int64)
        batches.append(packer.build(pairs, idx)[:3])
    return batches, np.asarray(trip, dtype=np.int64)


def _timed(model, batches) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    out = np.concatenate([np.asarray(model(*b), dtype=np.float64) for b in batches])
    return out, time.perf_counter() - t0


def measure_bound(fast, exact, tok, ckpt) -> dict:
    """Per-row error of ``fast`` against ``exact`` on the calibration pairs, the bound, speed and re-score
    estimate (see the module docstring)."""
    batches, trip = calibration_batches(tok, ckpt)
    f, _ = _timed(fast, batches)  # the first pass (warm-up) already gives the errors
    e, _ = _timed(exact, batches)
    err = np.abs(f - e)
    if not np.all(np.isfinite(err)):
        raise ValueError("the fast variant returned non-finite logits on the calibration pairs")
    eps = SAFETY * float(err.max()) + FLOOR
    # Margins f(a,b) - f(b,a) of the exact model per unordered pair (rows are all ordered pairs).
    key = {tuple(t): k for k, t in enumerate(trip.tolist())}
    margins = np.array([e[k] - e[key[(p, b, a)]] for k, (p, a, b) in enumerate(trip.tolist()) if a < b])
    inside = float(np.mean(np.abs(margins) <= 2 * eps)) if margins.size else 1.0
    rec = {"eps": eps, "max_err": float(err.max()), "median_err": float(np.median(err)),
           "p99_err": float(np.quantile(err, 0.99)), "rows": int(err.size), "speed_vs_fp32": None,
           "rescore_fraction_estimate": inside, "expected_time_vs_fp32": inside, "seconds": None}
    if inside * MIN_GAIN >= 1.0:
        # Re-scoring alone would cost at least 1/MIN_GAIN of fp32: no speed of the fast pass can pay, so
        # the timing rounds are skipped (the expected time above is then a lower bound).
        return rec
    t_fast, t_exact = float("inf"), float("inf")
    for _ in range(3):  # interleaved, best of 3: a busy machine slows both alike
        t_fast = min(t_fast, _timed(fast, batches)[1])
        t_exact = min(t_exact, _timed(exact, batches)[1])
    speed = t_exact / t_fast
    # cascade time / fp32 time: the fast pass, plus re-scored rows at fp32 cost
    return {**rec, "speed_vs_fp32": speed, "expected_time_vs_fp32": 1.0 / speed + inside,
            "seconds": {"fast": t_fast, "exact": t_exact}}


def bound_path(ckpt, variant: str, device: str, threads, features: dict, cache_dir=None) -> Path:
    key = model_files(ckpt, cache_dir).key(purpose="cascade-bound", variant=variant, device=device,
                                           threads=threads or 0, cpu=features["cpu_model"],
                                           isa=",".join(features["isa"]),
                                           versions=json.dumps(runtime_versions(), sort_keys=True),
                                           version=CALIBRATION_VERSION)
    return auto_dir(cache_dir) / f"bound-{key}.json"


def cached_bound(ckpt, variant: str, fast, exact, tok, device: str, threads, features: dict, cache_dir=None) -> dict:
    """The bound record for this checkpoint + variant + runtime versions + CPU: read, or measured and stored."""
    path = bound_path(ckpt, variant, device, threads, features, cache_dir)
    if path.is_file():
        try:
            return {**json.loads(path.read_text()), "cached": True}
        except (OSError, ValueError):
            pass  # unreadable: measure again and overwrite
    rec = {**measure_bound(fast, exact, tok, ckpt), "variant": variant, "versions": runtime_versions(),
           "cpu": features}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    os.replace(tmp, path)
    return {**rec, "cached": False}
