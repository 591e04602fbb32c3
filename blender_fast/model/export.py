"""PairRM as one torch module, and its export to ONNX (fp32 / fp16 / dynamic int8), cached.

The module computes exactly llm-blender's ``CrossCompareReranker._forward`` for one packed sequence
``[CLS] <|source|> s [SEP] [CLS] <|candidate1|> a [SEP] [CLS] <|candidate2|> b [SEP]``: the last hidden
states at the three prefix tokens, ``head([src; c1]) - head([src; c2])``, mean over tasks. The prefix
positions are inputs (the packer knows them), and the head runs once on the two stacked halves: dynamic
int8 quantization breaks when a Linear node is called twice in the graph.
"""
from __future__ import annotations

import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from . import cache
from .attention import UnsupportedAttention, use_export_attention
from .cache import checkpoint_fingerprint
from .checkpoint import (CheckpointError, RankerCheckpoint, check_weight_shapes, has_random_weights, load_checkpoint,
                         shard_files)
from .tokenization import PairTokenizer, build_pair_tokenizer

from ..options import PRECISIONS, check_backend_precision  # noqa: F401  (PRECISIONS re-exported)
ONNX_INPUTS = ("input_ids", "attention_mask", "positions")
OPSET = 17
# How far the exported graph may be from torch fp32 on the sample batch, as a fraction of the sample's
# logit spread (max - min, at least 1). Measured on the tiny generated checkpoint: fp32 1e-5, fp16 0.017,
# int8 0.38 (random weights quantize badly; real PairRM far less): each limit leaves room above that.
EXPORT_TOLERANCE = {"fp32": 1e-3, "fp16": 0.1, "int8": 0.75}
EXPORT_VERSION = 2  # bump when the exported graph changes, to invalidate caches (2: attention.py's rewrite)
EXPORT_META = "export.json"
EXPORT_FILES = ("model.onnx", "tokenizer.json", "pair_tokenizer.json")  # what a served entry needs


def _require_torch():
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"{e.name} is needed to export or run a checkpoint with torch: "
            "pip install 'blender-fast[export]'"
        ) from None


def load_state_dict(ckpt: RankerCheckpoint) -> dict:
    """The checkpoint's tensors (torch), with a clear error for a broken or foreign file."""
    _require_torch()
    import torch

    path = ckpt.weights_path
    state = {}
    for f in shard_files(path):  # one file, or every shard of a sharded index
        try:
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                part = load_file(str(f))
            else:
                part = torch.load(str(f), map_location="cpu", weights_only=True)
        except Exception as e:  # corrupt or truncated files surface as many exception types
            raise CheckpointError(f"{f}: cannot read weights ({type(e).__name__}: {e})") from None
        if not isinstance(part, dict):
            raise CheckpointError(f"{f}: expected a state dict, got {type(part).__name__}")
        state.update(part)
    for required in ("pretrained_model.embeddings.word_embeddings.weight", "head_layer.1.weight", "head_layer.4.weight"):
        if required not in state:
            raise CheckpointError(f"{path}: missing tensor {required!r}; is this a PairRM checkpoint?")
    check_weight_shapes(ckpt, {k: tuple(v.shape) for k, v in state.items() if hasattr(v, "shape")})
    return state


def pairrm_module(config, n_tasks: int = 1):
    """llm-blender's ``CrossCompareReranker`` as one torch module (random init, train mode): a DeBERTa-v2
    backbone (``config``, a DebertaV2Config) as ``pretrained_model`` and the pair head as ``head_layer``,
    with llm-blender's parameter names. Its forward computes the pair logit of packed sequences. The
    synthetic checkpoints are made from this same module."""
    _require_torch()
    import torch

    with warnings.catch_warnings():
        # transformers' DeBERTa decorates helpers with torch.jit.script, which torch 2.x deprecates at
        # import: noise about transformers' code, not the user's.
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        from transformers import DebertaV2Model

    class PairRMModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pretrained_model = DebertaV2Model(config)
            hidden = config.hidden_size
            self.head_layer = torch.nn.Sequential(
                torch.nn.Dropout(0.0),
                torch.nn.Linear(2 * hidden, hidden),
                torch.nn.Tanh(),
                torch.nn.Dropout(0.0),
                torch.nn.Linear(hidden, n_tasks),
            )

        def forward(self, input_ids, attention_mask, positions):
            hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            rows = torch.arange(hidden.shape[0], device=hidden.device).unsqueeze(1)
            picked = hidden[rows, positions]  # [B, 3, H]: source, candidate1, candidate2
            src = picked[:, 0]
            pairs = torch.cat([torch.cat([src, picked[:, 1]], -1), torch.cat([src, picked[:, 2]], -1)], 0)
            scores = self.head_layer(pairs)  # one call on [2B, 2H]
            half = hidden.shape[0]
            return (scores[:half] - scores[half:]).mean(-1).float()

    return PairRMModule()


def build_torch_model(ckpt: RankerCheckpoint, state: dict | None = None):
    """PairRMModule with the checkpoint's weights, in eval mode (fp32, CPU)."""
    _require_torch()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        from transformers import DebertaV2Config

    state = load_state_dict(ckpt) if state is None else state
    backbone = dict(ckpt.backbone_config)
    for key in ("architectures", "auto_map", "transformers_version", "torch_dtype", "dtype"):
        backbone.pop(key, None)
    # Like llm-blender, the vocabulary is whatever the embedding matrix holds (it resizes the backbone to
    # len(tokenizer) before loading the ranker weights over it).
    backbone["vocab_size"] = int(state["pretrained_model.embeddings.word_embeddings.weight"].shape[0])
    model = pairrm_module(DebertaV2Config(**backbone), ckpt.n_tasks)
    # Keys like embeddings.position_ids differ across transformers versions; everything that has a
    # shape in the model must be there.
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("position_ids")]
    if missing:
        raise CheckpointError(f"{ckpt.weights_path}: missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}")
    return model.eval()


class ExportCheckError(RuntimeError):
    """The exported model does not reproduce torch within tolerance (or gives NaN)."""


@dataclass
class ExportReport:
    path: str
    precision: str
    max_abs_diff: float  # ORT vs torch fp32 on a sample batch
    seconds: float
    cached: bool


def sample_batch(tok: PairTokenizer, ckpt: RankerCheckpoint):
    """A small packed batch of real-looking pairs, used to trace the export and to check it."""
    from .. import _core
    from .tokenization import encode_prompts

    sources = ["Explain why the sky is blue to a child.", "Write a haiku about autumn leaves falling."]
    cands = [
        ["Sunlight scatters off air, and blue light scatters the most.", "Because it is.", "Air molecules bounce blue light around the sky more than red light, so we see blue everywhere."],
        ["Red leaves drift down / the cold wind carries them far / the branch waits for spring", "Leaves fall.", "Autumn is a season."],
    ]
    enc = encode_prompts(tok, sources, cands, ckpt.source_maxlength, ckpt.candidate_maxlength)
    packer = _core.PairPacker(enc.tokens, enc.offsets, enc.limits, cand1_id=tok.cand1_id, cand2_id=tok.cand2_id, pad_id=tok.pad_id, prefix_offset=tok.prefix_offset)
    rows = []
    for p in range(len(sources)):
        for i in range(3):
            for j in range(3):
                if i != j:
                    rows.append((enc.source_index[p], enc.candidate_index(p, i), enc.candidate_index(p, j)))
    pairs = np.asarray(rows, dtype=np.int64)
    ids, mask, pos = packer.build(pairs, np.arange(len(pairs), dtype=np.int64))[:3]
    return ids, mask, pos


def export_onnx(ckpt: RankerCheckpoint, out_dir: Path, precision: str = "fp32", tok: PairTokenizer | None = None,
                *, final_dir: Path | None = None, rewrite_attention: bool = True) -> ExportReport:
    """Write ``model.onnx`` (+ tokenizer) into out_dir and check ORT against torch on a sample batch.

    ``export.json`` records the report, and the size and sha256 of every file written (the cache checks
    them before serving the entry); ``final_dir``: where out_dir will be renamed to (the recorded path).
    ``rewrite_attention=False`` exports transformers' attention as it is (the profile's "before")."""
    check_backend_precision("onnx", precision)
    _require_torch()
    import torch

    t0 = time.perf_counter()
    tok = tok or build_pair_tokenizer(ckpt)
    model = build_torch_model(ckpt)
    ids, mask, pos = sample_batch(tok, ckpt)
    with torch.no_grad():
        reference = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos)).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = out_dir / ("model.onnx" if precision != "int8" else "model.fp32.onnx")
    # The reference above is transformers' attention; the graph gets the cheaper rewrite of the same
    # math (attention.py), and the check below holds the two together.
    attention = "transformers"
    try:
        if rewrite_attention:
            use_export_attention(model)
            attention = "blender_fast.model.attention"
    except UnsupportedAttention as e:
        warnings.warn(f"{ckpt.path}: {e}; exporting transformers' attention as it is (slower graph)", stacklevel=2)
    export_model = model.half() if precision == "fp16" else model
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "positions": {0: "batch"}, "logits": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated (still the faster, equally exact one here), and warns that
        # advanced indexing breaks on negative indices: the packer's positions are never negative.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        # Tracer warnings flag Python control flow in transformers' DeBERTa that is constant for our
        # inputs (the graph is checked against torch right below); they are not the user's concern.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            export_model,
            (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos)),
            str(fp32_path),
            input_names=list(ONNX_INPUTS),
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter: 15x faster here, same graph accuracy (~1e-7)
        )
    final_path = out_dir / "model.onnx"
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        import logging

        # onnxruntime logs "Please consider to run pre-processing before quantization" on the root logger
        # for every model: advice for image models, not for us.
        advice = _DropMessage("pre-processing before quantization")
        logging.getLogger().addFilter(advice)
        try:
            quantize_dynamic(str(fp32_path), str(final_path), weight_type=QuantType.QInt8,
                             nodes_to_exclude=relative_position_matmuls(fp32_path))
        finally:
            logging.getLogger().removeFilter(advice)
        fp32_path.unlink()
    tok.save(out_dir)
    got = run_exported(final_path, {"input_ids": ids, "attention_mask": mask, "positions": pos})
    diff = float(np.max(np.abs(got - reference)))
    check_export_diff(diff, reference, precision, Path(final_dir or out_dir) / "model.onnx")
    report = ExportReport(str(Path(final_dir or out_dir) / "model.onnx"), precision, diff, time.perf_counter() - t0, cached=False)
    meta = {"export": asdict(report), "attention": attention, "checkpoint": str(ckpt.path), "source_maxlength": ckpt.source_maxlength, "candidate_maxlength": ckpt.candidate_maxlength, "n_tasks": ckpt.n_tasks,
            "random_weights": has_random_weights(ckpt.path),  # the notice follows the model into its export
            "files": cache.record_files(out_dir, exclude=(EXPORT_META,))}
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


def relative_position_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes against the constant per-head relative-position keys/queries (rank-3 initializers).

    int8 keeps them in fp32, as it did when those projections were computed in the graph: they are
    small, and the relative-position scores carry the ordering information the gate checks."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    rank3 = {init.name for init in model.graph.initializer if len(init.dims) == 3}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in rank3]


def check_export(out_dir: Path) -> str | None:
    """None when ``out_dir`` is a complete, intact export; else what is wrong, naming the file."""
    meta, problem = cache.read_manifest(Path(out_dir) / EXPORT_META)
    if problem:
        return problem
    files = meta.get(cache.MANIFEST_FILES_KEY)
    if not isinstance(meta.get("export"), dict) or not isinstance(files, dict) or not set(EXPORT_FILES) <= set(files):
        return f"{Path(out_dir) / EXPORT_META} does not list {', '.join(EXPORT_FILES)} (an older or damaged entry)"
    return cache.verify_files(out_dir, files)


def check_export_diff(diff: float, reference: np.ndarray, precision: str, path) -> None:
    """The exported graph must reproduce torch: |ORT - torch| at most EXPORT_TOLERANCE[precision] times
    the sample's logit spread (at least 1), and never NaN. Raised before export.json is written, so a
    failed export is never taken for a good one."""
    spread = float(np.ptp(reference)) if np.isfinite(reference).all() else float("nan")
    tolerance = EXPORT_TOLERANCE[precision] * max(spread, 1.0)
    if not np.isfinite(diff) or not diff <= tolerance:
        raise ExportCheckError(
            f"{path}: the exported {precision} model disagrees with torch on the sample batch: "
            f"max |ORT - torch| = {diff:.3g}, tolerance {tolerance:.3g} ({EXPORT_TOLERANCE[precision]} x the "
            f"logit spread {spread:.3g}). The checkpoint's weights may hold NaN/inf, or this onnxruntime "
            "mis-runs the graph; try another precision or backend='torch'")


class _DropMessage:
    def __init__(self, text: str):
        self.text = text

    def filter(self, record) -> bool:
        return self.text not in str(record.msg)


def export_key(ckpt: RankerCheckpoint, precision: str) -> str:
    return checkpoint_fingerprint(ckpt, precision=precision, opset=OPSET, export_version=EXPORT_VERSION)


def cached_export(ckpt: RankerCheckpoint, precision: str = "fp32", cache_dir: Path | None = None) -> tuple[Path, ExportReport]:
    """The exported model directory for this checkpoint and precision, exporting on first use.

    Keyed by a hash of the weights, tokenizer files, backbone config and export options, so an edited
    checkpoint is re-exported and an unchanged one never is. A truncated or corrupt entry (checked
    against the sizes and hashes in its export.json) is exported again; where that is impossible (no
    torch here), the error names the file and the directory to delete. The export runs in a temporary
    directory renamed into place (``cache.publish_dir``): concurrent exports of one model all succeed.
    """
    root = Path(cache_dir) if cache_dir else cache.cache_root() / "onnx"
    out_dir = root / export_key(ckpt, precision)
    return cached_entry(out_dir, lambda tmp: export_onnx(ckpt, tmp, precision, final_dir=out_dir), check_export,
                        ExportReport)


def cached_entry(out_dir: Path, export: Callable, check: Callable, report_cls) -> tuple[Path, object]:
    """The export cache's rules for one entry (``cached_export`` here, the reward model's in
    model/pointwise.py): an intact entry is used as it is; a missing or damaged one is exported again by
    ``export(tmp)`` (which returns its report) and published atomically (``cache.publish_dir``), except
    where torch is missing: then the error names the damaged file and the directory to delete."""
    problem = check(out_dir) if out_dir.exists() else None
    if problem is not None:
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
