"""precision="auto" / backend="auto": the fastest variant this machine and checkpoint allow, and why.

1. The CPU's features are read from /proc/cpuinfo (never assumed): AMX, AVX512-BF16, AVX512-FP16,
   VNNI, AVX2. A CPU with bf16 units (AVX512-BF16 or AMX-BF16) may run torch bf16; one with VNNI (or
   AMX-INT8) may run ONNX Runtime int8; every CPU runs exact ONNX fp32.
2. Only variants that passed the agreement gate (agreement.py) for THIS checkpoint may be picked. The
   gate (>= 100 prompts x 12 candidates) is too long to run at load; it is run once with
   ``blender-fast gate --model PATH`` (agreement.py run_gate) and cached here.
   Without a record, auto stays on exact fp32 and says so.
3. A short calibration at first load times each remaining variant against fp32 on a fixed sample batch
   (interleaved, best of 3); a variant is taken only when it is >= 15% faster. The decision is cached
   (json, beside the exports in the cache) per checkpoint, CPU model and thread count.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import time
from pathlib import Path

from ..model.cache import auto_dir
from ..model.export import EXPORT_VERSION
from ..options import DEFAULT_PRECISION, POINTWISE_PRECISIONS, backend_for, check_backend_precision
from .model_files import model_files
from .sessions import open_session

ISA_FLAGS = ("amx_tile", "amx_bf16", "amx_int8", "avx512_fp16", "avx512_bf16", "avx512_vnni", "avx_vnni",
             "avx512f", "avx2")
MIN_SPEEDUP = 1.15  # calibration: a variant must beat fp32 by this much to be worth any risk
AUTO_VERSION = 2  # 2: exact fp32 per backend; the cascade measured only where bf16 can pay (AMX)


def cpu_features(cpuinfo: str | None = None) -> dict:
    """CPU model and the ISA flags that matter here, read from /proc/cpuinfo (or the given text)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and model in (platform.processor(), platform.machine()):
            model = value.strip()
        elif key.strip() == "flags" and not flags:
            flags = set(value.split())
    return {"cpu_model": model, "isa": [f for f in ISA_FLAGS if f in flags], "logical_cores": os.cpu_count()}


def candidate_variants(device: str, features: dict) -> list[tuple[str, str, str]]:
    """(backend, precision, why) the hardware allows, fastest-expected first; exact fp32 last."""
    isa = set(features["isa"])
    if device == "cuda":
        # Exact on a GPU: ONNX Runtime's CUDA/TensorRT providers when this onnxruntime has them (the
        # default before auto), else torch.
        import onnxruntime as ort

        ort_gpu = {"CUDAExecutionProvider", "TensorrtExecutionProvider"} & set(ort.get_available_providers())
        return [("torch", "fp16", "CUDA GPU: fp16 tensor cores (llm-blender's own GPU precision)"),
                ("onnx" if ort_gpu else "torch", "fp32", "exact")]
    out = []
    try:
        import openvino  # noqa: F401
        openvino_ok = True
    except ImportError:
        openvino_ok = False
    if {"avx512_bf16", "amx_bf16"} & isa:
        units = "AMX-BF16" if "amx_bf16" in isa else "AVX512-BF16"
        if openvino_ok:
            out.append(("openvino", "bf16", f"{units}: OpenVINO bf16 inference precision"))
        out.append(("torch", "bf16", f"{units}: bf16 GEMMs through oneDNN"))
    if openvino_ok:
        out.append(("openvino", "fp32", "OpenVINO fp32 (within ~1e-4 of ONNX Runtime; faster on some CPUs, not "
                                        "on every one: docs/exact-at-speed.md section 6)"))
    if {"avx512_vnni", "avx_vnni", "amx_int8"} & isa:
        units = "AMX-INT8" if "amx_int8" in isa else "AVX512-VNNI" if "avx512_vnni" in isa else "AVX-VNNI"
        out.append(("onnx", "int8", f"{units}: int8 dot products (ONNX Runtime dynamic quantization)"))
    out.append(("onnx", "fp32", "exact"))
    return out


# -- the gate records ---------------------------------------------------------------------------------

def gate_path(ckpt, cache_dir=None) -> Path:
    """Where the agreement gate's records of ``ckpt`` (a checkpoint, or a load's ModelFiles) are kept."""
    # Keyed on the export's version too: a verdict on one graph says nothing about a rewritten one.
    key = model_files(ckpt, cache_dir).key(purpose="agreement-gate", export_version=EXPORT_VERSION)
    return auto_dir(cache_dir) / f"gate-{key}.json"


def save_gate(ckpt, records: list[dict], cache_dir=None, settings: dict | None = None) -> Path:
    path = gate_path(ckpt, cache_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"records": records, "settings": settings or {}}, indent=1))
    os.replace(tmp, path)
    return path


def load_gate(ckpt, cache_dir=None) -> dict:
    """{"backend precision": record} for this checkpoint, {} when the gate never ran."""
    path = gate_path(ckpt, cache_dir)
    if not path.is_file():
        return {}
    return {r["variant"]: r for r in json.loads(path.read_text())["records"]}


# -- the choice ---------------------------------------------------------------------------------------

def _calibrate(files, variants, device, threads) -> dict:
    """Seconds per call of each variant on the export's sample batch, interleaved, best of 3."""
    models = {f"{b} {p}": build_model(files, b, p, device, threads)[0] for b, p, _ in variants}
    ids, mask, pos = files.sample_rows()
    for m in models.values():
        m(ids, mask, pos)  # warm-up
    best = {k: float("inf") for k in models}
    for _ in range(3):
        for k, m in models.items():
            t0 = time.perf_counter()
            m(ids, mask, pos)
            best[k] = min(best[k], time.perf_counter() - t0)
    return best


def build_model(files, backend: str, precision: str, device: str, threads):
    """The model callable and its tokenizer for one concrete (backend, precision), for a load's ModelFiles
    (a checkpoint of either kind): the graph asked of ``files``, its session opened here."""
    if backend == "openvino":
        check_backend_precision("openvino", precision)
    graph = files.graph(backend, precision)
    return open_session(graph, device, threads), graph.tokenizer


def reward_model_runtime(backend: str, precision: str) -> tuple[str, str, str]:
    """(backend, precision, reason) for a reward model: "auto" is ONNX fp32 (the cascade and the agreement
    gate cover PairRM only); an explicit choice runs where it can, else one error naming what runs."""
    reason = "as requested"
    if "auto" in (backend, precision):
        reason = "exact fp32: the cascade and auto-selection cover PairRM checkpoints only"
        backend = "onnx" if backend == "auto" else backend
        precision = "fp32" if precision == "auto" else precision
    if backend not in POINTWISE_PRECISIONS or precision not in POINTWISE_PRECISIONS[backend]:
        runs = "; ".join(f"backend={b!r} with precision in {p}" for b, p in POINTWISE_PRECISIONS.items())
        raise ValueError(f"a pointwise reward model runs with {runs}, not backend={backend!r} "
                         f"precision={precision!r}")
    return backend, precision, reason


def runtime_choice(files, backend: str, precision: str | None, device: str, threads=None, cache_dir=None) -> dict:
    """What a load's model (model/files.ModelFiles) runs in: {"backend", "precision", "reason", "cascade"}:
    an exported directory as exported; a checkpoint with the backend and precision as asked (None: "auto")
    or, for "auto", auto-selection's choice (PairRM) or exact ONNX fp32 (a reward model:
    reward_model_runtime). "cascade": the certified cascade's fast variant, or None."""
    if files.exported is not None:
        return {"backend": files.exported.backend, "precision": files.exported.precision,
                "reason": "an exported ONNX directory runs as exported", "cascade": None}
    precision = precision or DEFAULT_PRECISION
    backend = backend_for(backend, precision)
    if files.kind == "reward":
        backend, precision, reason = reward_model_runtime(backend, precision)
        return {"backend": backend, "precision": precision, "reason": reason, "cascade": None}
    if "auto" not in (backend, precision):
        return {"backend": backend, "precision": precision, "reason": "as requested", "cascade": None}
    decision = choose(files, device, backend, precision, threads, cache_dir)
    return {k: decision.get(k) for k in ("backend", "precision", "reason", "cascade")}


def choose_cascade(ckpt, variants, exact, device, threads, features, cache_dir) -> tuple:
    """(cascade dict or None, why not): the fast variant whose measured bound makes the certified cascade
    expected to beat plain fp32 by MIN_GAIN. Only on CPUs with bf16 units (a flag check first, so
    elsewhere nothing is measured); int8 is left out (it needs its own export, and its error was measured
    at 0.42 median / 1.70 max logit, far too loose to pay)."""
    from .calibration import MIN_GAIN, cached_bound

    isa = set(features["isa"])
    if device != "cpu":
        return None, "no cascade on a GPU (benchmarks/gpu_check.py measures one)"
    if not {"avx512_bf16", "amx_bf16"} & isa:
        return None, "no cascade: this CPU has no bf16 units"
    if "amx_bf16" not in isa:
        # Measured (docs/exact-at-speed.md sections 1 and 5): without AMX a bf16 product is at most 2x an
        # fp32 one, and bf16's logit error (0.6-0.7 max on the generated checkpoints) puts every comparison
        # inside the bound, so the cascade re-scores ~100% and loses. Nothing is built or measured.
        return None, ("no cascade: bf16 without AMX (AVX512-BF16) is at most 2x fp32 and too coarse to "
                      "certify, measured: the cascade would re-score ~100% of the pairs")
    fast_variants = [v for v in variants if v[2] != "exact" and v[1] != "int8"]
    if not fast_variants:
        return None, "no cascade: no fast variant available"
    files = model_files(ckpt, cache_dir)
    exact_model, tok = build_model(files, exact[0], exact[1], device, threads)
    best, notes = None, []
    for b, p, why in fast_variants:
        fast_model = None
        try:
            fast_model, _ = build_model(files, b, p, device, threads)
            rec = cached_bound(files, f"{b} {p}", fast_model, exact_model, tok, device, threads, features, cache_dir)
        except Exception as e:  # noqa: BLE001 - a variant that cannot run is skipped, and the reason kept
            notes.append(f"{b} {p}: {type(e).__name__}: {e}")
            continue
        finally:
            # One fast model at a time beside the exact one: on the large shape each holds GBs (a
            # benchmark's process peaked at 13.2 GB with all of them alive).
            del fast_model
            gc.collect()
        speed = "speed not timed" if rec["speed_vs_fp32"] is None else f"{rec['speed_vs_fp32']:.2f}x fp32"
        notes.append(f"{b} {p}: eps {rec['eps']:.3g}, {speed}, ~{100 * rec['rescore_fraction_estimate']:.0f}% re-scored")
        if rec["expected_time_vs_fp32"] * MIN_GAIN <= 1.0 and (best is None or rec["expected_time_vs_fp32"] < best[
                "expected_time_vs_fp32"]):
            best = {**rec, "backend": b, "precision": p}
    if best is None:
        return None, "no cascade pays (" + "; ".join(notes) + ")"
    best["why"] = "; ".join(notes)
    return best, ""


NO_GATE = "no agreement-gate record for this checkpoint"


def _verdicts(gate: dict) -> list[str]:
    return sorted(f"{name}={'pass' if rec['passed'] else 'fail'}" for name, rec in gate.items())


def choose(ckpt, device: str, backend: str = "auto", precision: str = "auto", threads: int | None = None,
           cache_dir=None) -> dict:
    """{"backend", "precision", "reason", "cpu", "calibration"}: the auto choice for ``ckpt`` (a checkpoint,
    or a load's ModelFiles), cached per checkpoint+machine."""
    files = model_files(ckpt, cache_dir)
    features = cpu_features()
    gate = load_gate(files, cache_dir)
    key = files.key(purpose="auto", device=device, backend=backend, precision=precision, threads=threads or 0,
                    cpu=features["cpu_model"], isa=",".join(features["isa"]), version=AUTO_VERSION,
                    export_version=EXPORT_VERSION)
    decision_path = auto_dir(cache_dir) / f"auto-{key}.json"
    if decision_path.is_file():
        decision = json.loads(decision_path.read_text())
        # A gate run after the decision may allow more (or less): decide again when its verdicts changed.
        if decision.get("gate_verdicts") == _verdicts(gate):
            return {**decision, "cached": True}
    variants = candidate_variants(device, features)
    if backend != "auto":  # this backend's own lower precisions, and its own fp32 as the exact one
        variants = [v for v in variants if v[0] == backend and v[1] != "fp32"] + [(backend, "fp32", "exact")]
    variants = [v for v in variants if precision == "auto" or v[1] == precision]
    if not variants:
        raise ValueError(f"no variant with backend={backend!r}, precision={precision!r} on device={device!r}")
    exact = variants[-1] if variants[-1][2] == "exact" else None
    skipped, allowed = [], []
    for b, p, why in variants:
        rec = gate.get(f"{b} {p}")
        if why == "exact":
            continue
        if rec is None:
            skipped.append(f"{b} {p}: {NO_GATE}")
        elif not rec["passed"]:
            skipped.append(f"{b} {p}: failed the gate (top-1 {rec['top1_pct']:.1f}%, tau {rec['kendall_tau_mean']:.3f})")
        else:
            allowed.append((b, p, why, rec))
    calibration = {}
    chosen = exact or variants[-1]
    ungated = [s.split(":")[0] for s in skipped if s.endswith(NO_GATE)]
    why = [s for s in skipped if not s.endswith(NO_GATE)] + ([f"no agreement-gate record for {', '.join(ungated)}"]
                                                             if ungated else [])
    reason = "exact fp32: " + ("; ".join(why) if why else "no faster variant on this hardware")
    if allowed and exact:
        calibration = _calibrate(files, [(b, p, w) for b, p, w, _ in allowed] + [exact], device, threads)
        base = calibration[f"{exact[0]} {exact[1]}"]
        ranked = sorted(allowed, key=lambda v: calibration[f"{v[0]} {v[1]}"])
        b, p, why, rec = ranked[0]
        speedup = base / calibration[f"{b} {p}"]
        if speedup >= MIN_SPEEDUP:
            chosen = (b, p, why)
            reason = (f"{why}; passed the agreement gate (top-1 {rec['top1_pct']:.1f}%, tau {rec['kendall_tau_mean']:.3f} "
                      f"on {rec['prompts']} prompts x {rec['candidates']}); {speedup:.2f}x fp32 in calibration")
        else:
            reason = f"exact fp32: the best gated variant ({b} {p}) was only {speedup:.2f}x fp32 in calibration"
    elif allowed and not exact:  # an explicit lower precision that passed: nothing to calibrate against
        chosen = allowed[0][:3]
        reason = f"{chosen[2]}; passed the agreement gate"
    cascade = None
    if precision == "auto" and exact and chosen == exact:
        cascade, why_not = choose_cascade(files, variants, exact, device, threads, features, cache_dir)
        reason = (f"certified cascade: {cascade['backend']} {cascade['precision']} for every pair, fp32 for the "
                  f"pairs within eps={cascade['eps']:.3g} ({cascade['why']})") if cascade else f"{reason}; {why_not}"
    decision = {"backend": chosen[0], "precision": chosen[1], "reason": reason, "cpu": features,
                "calibration_s": calibration, "skipped": skipped, "gate_verdicts": _verdicts(gate), "cached": False,
                "cascade": cascade}
    decision_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = decision_path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(decision, indent=1))
    os.replace(tmp, decision_path)
    return decision
