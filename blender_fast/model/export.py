"""The one export pipeline: a model's graph to ONNX, checked against torch, cached.

A *graph maker* writes a model's ONNX graph and tokenizer into a directory and returns sample feeds, torch
fp32's outputs on them and what export.json records of the graph: model/pairrm.py's for PairRM (fp32 /
fp16 / dynamic int8), model/reward.py's for a pointwise reward model (fp32 / fp16). The pipeline is the
same for every maker: run the graph on the sample with ONNX Runtime and hold it to torch
(``check_export_diff``), record the size and sha256 of every file in export.json, key the cache entry
by a hash of the weights, tokenizer files, config and options, verify an entry before serving it, and
publish it atomically. ``export_onnx(..., graph=maker)`` takes any other maker with the same contract.

The default maker is the torch-free graph builder (model/onnx_builder.py through ``pairrm.build_graph`` /
``reward.build_graph``): it needs neither torch nor transformers, and its entries are keyed by
BUILDER_VERSION. The torch export stays as the oracle and the fallback: for a configuration the
builder does not know (UnsupportedGraph, one line on stderr says so), and when ``BLENDER_FAST_EXPORT=torch``
forces it.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import cache, pairrm, reward
from .cache import checkpoint_fingerprint
from .checkpoint import EXPORT_META, has_random_weights, load_checkpoint
from .errors import require_torch
from .onnx_builder import BUILDER_VERSION, UnsupportedGraph, graph_config
# PairRM's module and graph, re-exported from their old home here.
from .pairrm import (EXPORT_FILES, EXPORT_VERSION, ONNX_INPUTS, build_torch_model, load_state_dict,  # noqa: F401
                     pairrm_module, relative_position_matmuls, sample_batch)
from .tokenization import PairTokenizer, build_pair_tokenizer

from ..options import PRECISIONS, check_backend_precision  # noqa: F401  (PRECISIONS re-exported)

OPSET = 17
# BLENDER_FAST_EXPORT=torch: export through torch.onnx (the oracle) instead of the graph builder.
EXPORT_ENV = "BLENDER_FAST_EXPORT"
EXPORT_MAKERS = ("builder", "torch")
# How far the exported graph may be from torch fp32 on the sample batch, as a fraction of the sample's
# spread (at least 1): PairRM's limits (pairrm.EXPORT_TOLERANCE) by default.
EXPORT_TOLERANCE = pairrm.EXPORT_TOLERANCE


@dataclass(frozen=True)
class GraphKind:
    """What the pipeline needs to know of one kind of model: its graph maker, what a served entry holds,
    the tolerance of the check and what its cache key holds beside the checkpoint."""

    make: Callable  # (ckpt, out_dir, precision) -> {"feeds", "reference", "meta"}
    files: tuple
    tolerance: dict
    key_options: dict
    label: str  # in messages: "model", "reward model"
    # What the runtimes need of the kind (runtime/autoselect.build_model): the arrays a model call passes,
    # the tokenizer of an export and of a checkpoint, the torch module (the plain twin), and whether bf16
    # keeps fp32 islands (measured for PairRM by the agreement gate; a reward model's bf16 is all bf16).
    inputs: tuple
    load_tokenizer: Callable
    build_tokenizer: Callable
    torch_module: Callable
    fp32_islands: bool
    build: Callable = None  # the torch-free graph maker (ckpt, out_dir, precision) -> as ``make``
    config: Callable = None  # ckpt -> the backbone config the builder reads (graph_config)


GRAPHS = {
    "pair": GraphKind(pairrm.export_graph, pairrm.EXPORT_FILES, pairrm.EXPORT_TOLERANCE,
                      {"opset": OPSET, "export_version": pairrm.EXPORT_VERSION}, "model",
                      pairrm.ONNX_INPUTS, PairTokenizer.load, build_pair_tokenizer, build_torch_model, True,
                      pairrm.build_graph, lambda ckpt: ckpt.backbone_config),
    "reward": GraphKind(reward.export_graph, reward.EXPORT_FILES, reward.EXPORT_TOLERANCE,
                        {"kind": "pointwise", "opset": OPSET, "export_version": reward.EXPORT_VERSION}, "reward model",
                        reward.ONNX_INPUTS, reward.PointwiseTokenizer.load, reward.build_pointwise_tokenizer,
                        reward.build_torch_scorer, False, reward.build_graph, lambda ckpt: ckpt.config),
}


def _require_torch():
    require_torch()


def forced_maker() -> str:
    """The maker BLENDER_FAST_EXPORT names ('builder' when unset), checked."""
    value = os.environ.get(EXPORT_ENV, "builder").strip().lower() or "builder"
    if value not in EXPORT_MAKERS:
        raise ValueError(f"{EXPORT_ENV}={value!r}: expected one of {', '.join(EXPORT_MAKERS)}")
    return value


def graph_maker(ckpt) -> str:
    """Which maker writes this checkpoint's graph: 'builder' when it knows the configuration (read from
    config.json, no weights) and BLENDER_FAST_EXPORT does not force torch; else 'torch'."""
    if forced_maker() == "torch":
        return "torch"
    try:
        graph_config(GRAPHS[ckpt.kind].config(ckpt))
    except UnsupportedGraph:
        return "torch"
    return "builder"


def _torch_fallback(ckpt, why: UnsupportedGraph) -> None:
    """One line saying the builder does not know this model and the torch export takes over (or, without
    torch, an ImportError naming the extra that brings it)."""
    try:
        require_torch()
    except ImportError as e:
        raise ImportError(f"{ckpt.path}: the graph builder does not handle this model ({why}); the torch export "
                          f"does, which needs {e}") from None
    print(f"blender-fast: {ckpt.path}: the graph builder does not handle this model ({why}); exporting through torch",
          file=sys.stderr)


@dataclass
class ModelGraph:
    """What a runtime session is opened on (runtime/sessions.open_session): the exported graph (``onnx``)
    or the torch module (the plain twin), the arrays a model call passes, the tokenizer, and the backend
    and precision it runs in."""

    backend: str
    precision: str
    tokenizer: object
    inputs: tuple
    onnx: Path | None = None
    module: object = None
    fp32_islands: bool = True


def model_graph(ckpt, backend: str, precision: str, cache_dir=None) -> ModelGraph:
    """The graph one concrete (backend, precision) runs for a checkpoint of either kind: its cached ONNX
    export (onnx; openvino runs the fp32 export) or its torch module, with its tokenizer."""
    kind = GRAPHS[ckpt.kind]
    if backend in ("onnx", "openvino"):
        if backend == "onnx":
            check_backend_precision("onnx", precision)
        out_dir, _ = cached_export(ckpt, precision if backend == "onnx" else "fp32", cache_dir)
        return ModelGraph(backend, precision, kind.load_tokenizer(out_dir), kind.inputs, onnx=out_dir / "model.onnx")
    if precision == "int8":
        raise ValueError("precision='int8' needs backend='onnx' (ONNX Runtime dynamic quantization)")
    return ModelGraph(backend, precision, kind.build_tokenizer(ckpt), kind.inputs, module=kind.torch_module(ckpt),
                      fp32_islands=kind.fp32_islands)


def exported_graph(path: Path, meta: dict) -> ModelGraph:
    """The graph of an exported directory (model/source.py checked it): it runs as exported, on ONNX Runtime."""
    return ModelGraph("onnx", meta.get("export", {}).get("precision", "fp32"), PairTokenizer.load(path),
                      pairrm.ONNX_INPUTS, onnx=path / "model.onnx")


class ExportCheckError(RuntimeError):
    """The exported model does not reproduce torch within tolerance (or gives NaN)."""


@dataclass
class ExportReport:
    path: str
    precision: str
    max_abs_diff: float  # ORT vs the reference on a sample batch
    seconds: float
    cached: bool
    # What max_abs_diff had to stay within, and what the graph was held to: "torch" (torch fp32), "fp32
    # graph" (a built fp16 / int8 against the built fp32 graph), or "" (a built fp32: no torch here, its
    # outputs are only checked to be finite). None: a cache entry written before they were recorded.
    tolerance: float | None = None
    reference: str | None = None

    def check_line(self) -> str:
        """The check in one line, with its tolerance and verdict (a failed check raised ExportCheckError)."""
        if self.reference is None or self.tolerance is None:
            return (f"max |ORT {self.precision} - its reference| on a sample batch = {self.max_abs_diff:.3g}: pass "
                    "(an older cache entry, which does not record its tolerance)")
        if not self.reference:
            return "built from the weights (no torch to compare with): outputs finite on a sample batch: pass"
        held_to = "torch fp32" if self.reference == "torch" else self.reference
        return (f"max |ORT {self.precision} - {held_to}| on a sample batch = {self.max_abs_diff:.3g}, "
                f"tolerance {self.tolerance:.3g}: pass")


def export_onnx(ckpt, out_dir: Path, precision: str = "fp32", tok: PairTokenizer | None = None,
                *, final_dir: Path | None = None, rewrite_attention: bool = True, graph: Callable | None = None) -> ExportReport:
    """Write ``model.onnx`` (+ tokenizer) into out_dir with the checkpoint kind's graph maker (or ``graph``)
    and check ORT against torch on its sample batch (a built fp16 / int8: against the built fp32 graph).

    ``export.json`` records the report, and the size and sha256 of every file written (the cache checks
    them before serving the entry); ``final_dir``: where out_dir will be renamed to (the recorded path).
    ``tok`` / ``rewrite_attention=False`` (PairRM): the tokenizer to save, and transformers' attention
    exported as it is (the profile's "before")."""
    kind = GRAPHS[ckpt.kind]
    t0 = time.perf_counter()
    made = None
    held_to = "torch"
    if graph is not None:
        made = graph(ckpt, out_dir, precision)
    elif rewrite_attention and forced_maker() == "builder":
        try:
            made = kind.build(ckpt, out_dir, precision, tok=tok) if ckpt.kind == "pair" else kind.build(ckpt, out_dir, precision)
            held_to = "fp32 graph" if made["reference"] is not None else ""
        except UnsupportedGraph as e:
            _torch_fallback(ckpt, e)
    if made is None:
        made = (kind.make(ckpt, out_dir, precision, tok=tok, rewrite_attention=rewrite_attention)
                if ckpt.kind == "pair" else kind.make(ckpt, out_dir, precision))
    where = Path(final_dir or out_dir) / "model.onnx"
    got = run_exported(out_dir / "model.onnx", made["feeds"])
    # A built fp32 graph has no torch to hold it to: its own outputs, checked for NaN/inf.
    reference = got if made["reference"] is None else made["reference"]
    diff = float(np.max(np.abs(got - reference)))
    tolerance = check_export_diff(diff, reference, precision, where, kind.tolerance, kind.label,
                                  "the fp32 graph" if held_to == "fp32 graph" else held_to or "its own outputs")
    report = ExportReport(str(where), precision, diff, time.perf_counter() - t0, cached=False, tolerance=tolerance,
                          reference=held_to)
    meta = {"export": asdict(report), **made["meta"],
            "random_weights": has_random_weights(ckpt.path),  # the notice follows the model into its export
            cache.MANIFEST_FILES_KEY: cache.record_files(out_dir, exclude=(EXPORT_META,))}
    (out_dir / EXPORT_META).write_text(json.dumps(meta, indent=1))
    return report


def run_exported(onnx_path: Path, feeds: dict) -> np.ndarray:
    """The exported graph's output on ``feeds`` (those of its inputs it takes), float32, run once on the CPU
    by plain ONNX Runtime with the runtimes' session settings: an export's check against torch. The
    sessions that serve a model (runtime/sessions.py) stand above the model files, so an export does not
    import them."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only, as the runtimes: fp16 graphs warn once per layer otherwise
    session = ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: feeds[name] for name in names})[0].astype(np.float32, copy=False)


def check_export(out_dir: Path, kind: str = "pair") -> str | None:
    """None when ``out_dir`` is a complete, intact export of a ``kind`` model; else what is wrong, naming the file."""
    meta, problem = cache.read_manifest(Path(out_dir) / EXPORT_META)
    if problem:
        return problem
    files = meta.get(cache.MANIFEST_FILES_KEY)
    wanted = GRAPHS[kind].files
    kind_ok = (meta.get("kind") == "pointwise") == (kind == "reward")
    if not isinstance(meta.get("export"), dict) or not kind_ok or not isinstance(files, dict) or not set(wanted) <= set(files):
        return f"{Path(out_dir) / EXPORT_META} does not list {', '.join(wanted)} (an older or damaged entry)"
    return cache.verify_files(out_dir, files)


def check_export_diff(diff: float, reference: np.ndarray, precision: str, path, tolerances: dict = EXPORT_TOLERANCE,
                      label: str = "model", reference_name: str = "torch") -> float:
    """The exported graph must reproduce its reference (torch fp32, or the built fp32 graph): |ORT -
    reference| at most tolerances[precision] times the sample's spread (at least 1), and never NaN.
    Returns that tolerance. Raised before export.json is written, so a failed export is never taken for a
    good one."""
    spread = float(np.ptp(reference)) if np.isfinite(reference).all() else float("nan")
    tolerance = tolerances[precision] * max(spread, 1.0)
    if not np.isfinite(diff) or not diff <= tolerance:
        raise ExportCheckError(
            f"{path}: the exported {precision} {label} disagrees with {reference_name} on the sample batch: "
            f"max |ORT - {reference_name}| = {diff:.3g}, tolerance {tolerance:.3g} ({tolerances[precision]} "
            f"x the logit spread {spread:.3g}): FAIL. The checkpoint's weights may hold NaN/inf, or this "
            "onnxruntime mis-runs the graph; try another precision or backend='torch'")
    return tolerance


def export_key(ckpt, precision: str) -> str:
    """The cache key: the checkpoint's fingerprint, the precision and the maker's version (a built graph:
    BUILDER_VERSION; a torch export: the kind's key options, unchanged, so its old entries stay valid)."""
    options = dict(GRAPHS[ckpt.kind].key_options)
    if graph_maker(ckpt) == "builder":
        options.pop("export_version", None)
        options["builder_version"] = BUILDER_VERSION
    return checkpoint_fingerprint(ckpt, precision=precision, **options)


def cached_export(ckpt, precision: str = "fp32", cache_dir: Path | None = None) -> tuple[Path, ExportReport]:
    """The exported model directory for this checkpoint (either kind) and precision, exporting on first use.

    Keyed by a hash of the weights, tokenizer files, backbone config and export options, so an edited
    checkpoint is re-exported and an unchanged one never is. A truncated or corrupt entry (checked
    against the sizes and hashes in its export.json) is exported again; where that is impossible (no
    torch here), the error names the file and the directory to delete. The export runs in a temporary
    directory renamed into place (``cache.publish_dir``): concurrent exports of one model all succeed.
    """
    root = Path(cache_dir) if cache_dir else cache.cache_root() / "onnx"
    out_dir = root / export_key(ckpt, precision)
    return cached_entry(out_dir, lambda tmp: export_onnx(ckpt, tmp, precision, final_dir=out_dir),
                        lambda d: check_export(d, ckpt.kind), ExportReport, needs_torch=graph_maker(ckpt) == "torch")


def cached_entry(out_dir: Path, export: Callable, check: Callable, report_cls, *, needs_torch: bool = True) -> tuple[Path, object]:
    """The export cache's rules for one entry: an intact entry is used as it is; a missing or damaged one is exported again by
    ``export(tmp)`` (which returns its report) and published atomically (``cache.publish_dir``), except
    where torch is missing: then the error names the damaged file and the directory to delete."""
    problem = check(out_dir) if out_dir.exists() else None
    if problem is not None and needs_torch:
        try:
            _require_torch()
        except ImportError as e:
            raise cache.CacheError(
                f"the cached export {out_dir} is damaged: {problem}. Delete that directory (rm -r '{out_dir}') "
                f"to export it again, which needs torch ({e})"
            ) from None
    reports = []
    path, cached = cache.publish_dir(out_dir, lambda tmp: reports.append(export(tmp)), check)
    if reports and not cached:
        report = reports[0]
    else:
        report = report_cls(**{**json.loads((path / EXPORT_META).read_text())["export"], "cached": True})
    report.path = str(path / "model.onnx")  # where it is now, even if the cache directory was moved
    return path, report


def export_command(path: str, precision: str = "fp32", out: str | None = None) -> ExportReport:
    ckpt = load_checkpoint(path)
    if out:
        return export_onnx(ckpt, Path(out), precision)
    return cached_export(ckpt, precision)[1]
