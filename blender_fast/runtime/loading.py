"""Loading a model, whatever its kind: files -> graph (or its cached export) -> session + tokenizer.

``Ranker.from_pretrained`` resolves the source (model/source.py) and hands the directory here; what comes
back is the model callable (rows -> logits), its tokenizer (whose ``kind`` picks the scorer), the
truncation lengths, and how and why it runs that way (``describe()``). The kinds differ only in what the
checkpoint allows: a PairRM checkpoint may take auto-selection and the certified cascade
(runtime/autoselect.py); a reward model runs as asked, "auto" being exact ONNX fp32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..model.source import is_exported_dir, load_any_checkpoint, read_export_meta, verify_exported_dir
from ..options import DEFAULT_PRECISION, POINTWISE_PRECISIONS, backend_for


@dataclass
class LoadedModel:
    """What a load produced: the model, its tokenizer and lengths, how it runs (``info``) and, for the
    certified cascade, the exact model and its trusted bound."""

    model: Callable
    tokenizer: object
    source_maxlength: int | None
    candidate_maxlength: int | None
    info: dict = field(default_factory=dict)
    exact_model: Callable | None = None
    cascade: dict | None = None


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


def load_model(path, backend: str, precision: str | None, device: str, threads=None, cache_dir=None) -> LoadedModel:
    """The model in local directory ``path`` (an exported one, a reward model or a PairRM checkpoint), on
    ``device`` (resolved), with ``backend`` / ``precision`` as checked by the caller (None: "auto")."""
    from .autoselect import build_model

    if is_exported_dir(path):
        return load_exported(Path(path), backend, precision, device, threads)
    ckpt = load_any_checkpoint(path)
    precision = precision or DEFAULT_PRECISION
    backend = backend_for(backend, precision)
    decision = None
    if ckpt.kind == "reward":
        backend, precision, reason = reward_model_runtime(backend, precision)
    else:
        reason = "as requested"
        if "auto" in (backend, precision):
            from .autoselect import choose

            decision = choose(ckpt, device, backend, precision, threads, cache_dir)
            backend, precision, reason = decision["backend"], decision["precision"], decision["reason"]
    model, tok = build_model(ckpt, backend, precision, device, threads, cache_dir)
    info = {"backend": backend, "precision": precision, "device": device, "threads": threads, "reason": reason,
            **ckpt.describe()}
    loaded = LoadedModel(model, tok, ckpt.source_maxlength, ckpt.candidate_maxlength, info)
    cascade = decision.get("cascade") if decision else None
    if cascade:  # the fast variant scores every pair; the fp32 model above re-scores the uncertain ones
        loaded.exact_model, loaded.cascade = model, cascade
        loaded.model, _ = build_model(ckpt, cascade["backend"], cascade["precision"], device, threads, cache_dir)
        info["cascade"] = {"fast": f"{cascade['backend']} {cascade['precision']}", "eps": cascade["eps"]}
    return loaded


def load_exported(path: Path, backend: str, precision: str | None, device: str, threads=None) -> LoadedModel:
    """An exported directory runs as exported, on ONNX Runtime, torch and transformers never imported."""
    from ..model.tokenization import PairTokenizer
    from .sessions import OnnxModel

    meta = read_export_meta(path)
    verify_exported_dir(path, meta)  # before the first use: never scores from a damaged file
    exported = meta.get("export", {}).get("precision", "fp32")
    if backend not in ("onnx", "auto"):
        raise ValueError(f"{path} is an exported ONNX model: it runs on backend='onnx', not {backend!r}")
    if precision not in (None, "auto", exported):
        raise ValueError(f"{path} was exported with precision {exported!r}; precision={precision!r} "
                         "needs its own export (blender-fast export --out DIR with that precision)")
    model = OnnxModel(path / "model.onnx", device=device, threads=threads)
    info = {"backend": "onnx", "precision": exported, "device": device, "threads": threads,
            "reason": "an exported ONNX directory runs as exported"}
    return LoadedModel(model, PairTokenizer.load(path), meta["source_maxlength"], meta["candidate_maxlength"], info)
