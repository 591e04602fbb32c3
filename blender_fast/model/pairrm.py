"""PairRM as one torch module, and its graph for the export pipeline (model/export.py).

The module computes exactly llm-blender's ``CrossCompareReranker._forward`` for one packed sequence
``[CLS] <|source|> s [SEP] [CLS] <|candidate1|> a [SEP] [CLS] <|candidate2|> b [SEP]``: the last hidden
states at the three prefix tokens, ``head([src; c1]) - head([src; c2])``, mean over tasks. The prefix
positions are inputs (the packer knows them), and the head runs once on the two stacked halves: dynamic
int8 quantization breaks when a Linear node is called twice in the graph.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .attention import UnsupportedAttention, use_export_attention
from .checkpoint import EXPORT_FILES, CheckpointError, RankerCheckpoint, check_weight_shapes, shard_files  # noqa: F401
from .errors import require_torch as _require_torch
from .tokenization import PairTokenizer, build_pair_tokenizer
from ..options import check_backend_precision

# The exported graph: these inputs -> "logits" (the one name: runtime/sessions.py reads inputs from the graph).
ONNX_INPUTS = ("input_ids", "attention_mask", "positions")
# How far the exported graph may be from torch fp32 on the sample batch, as a fraction of the sample's
# logit spread (max - min, at least 1). Measured on the tiny generated checkpoint: fp32 1e-5, fp16 0.017,
# int8 0.38 (random weights quantize badly; real PairRM far less): each limit leaves room above that.
EXPORT_TOLERANCE = {"fp32": 1e-3, "fp16": 0.1, "int8": 0.75}
EXPORT_VERSION = 2  # bump when the exported graph changes, to invalidate caches (2: attention.py's rewrite)


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


def export_graph(ckpt: RankerCheckpoint, out_dir: Path, precision: str = "fp32", tok: PairTokenizer | None = None,
                 rewrite_attention: bool = True) -> dict:
    """PairRM's graph maker for the export pipeline (model/export.export_onnx): writes ``model.onnx`` and
    the tokenizer into out_dir; returns the sample feeds, torch fp32's logits on them (the reference the
    pipeline checks the graph against) and what export.json records of this graph.
    ``rewrite_attention=False`` exports transformers' attention as it is (the profile's "before")."""
    check_backend_precision("onnx", precision)
    _require_torch()
    import torch

    tok = tok or build_pair_tokenizer(ckpt)
    model = build_torch_model(ckpt)
    ids, mask, pos = sample_batch(tok, ckpt)
    with torch.no_grad():
        reference = model(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos)).numpy()
    out_dir.mkdir(parents=True, exist_ok=True)
    fp32_path = out_dir / ("model.onnx" if precision != "int8" else "model.fp32.onnx")
    # The reference above is transformers' attention; the graph gets the cheaper rewrite of the same
    # math (attention.py), and the pipeline's check holds the two together.
    attention = "transformers"
    try:
        if rewrite_attention:
            use_export_attention(model)
            attention = "blender_fast.model.attention"
    except UnsupportedAttention as e:
        warnings.warn(f"{ckpt.path}: {e}; exporting transformers' attention as it is (slower graph)", stacklevel=3)
    export_model = model.half() if precision == "fp16" else model
    dynamic = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}, "positions": {0: "batch"}, "logits": {0: "batch"}}
    with torch.no_grad(), warnings.catch_warnings():
        # The TorchScript exporter is deprecated (still the faster, equally exact one here), and warns that
        # advanced indexing breaks on negative indices: the packer's positions are never negative.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message="Exporting aten::index operator")
        # Tracer warnings flag Python control flow in transformers' DeBERTa that is constant for our
        # inputs (the graph is checked against torch right after); they are not the user's concern.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            export_model,
            (torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos)),
            str(fp32_path),
            input_names=list(ONNX_INPUTS),
            output_names=["logits"],
            dynamic_axes=dynamic,
            opset_version=17,
            dynamo=False,  # the TorchScript exporter: 15x faster here, same graph accuracy (~1e-7)
        )
    if precision == "int8":
        # The builder's quantizer (the same quantize_dynamic call): what onnxruntime logs on the root logger
        # for each model ("run pre-processing", "Inference failed or unsupported type to quantize" with the
        # tensor's type in protobuf text) is captured, not printed; the check against torch measures the result.
        from .onnx_builder import quantize_int8

        quantize_int8(fp32_path, out_dir / "model.onnx", relative_position_matmuls(fp32_path))
        fp32_path.unlink()
    tok.save(out_dir)
    return {"feeds": {"input_ids": ids, "attention_mask": mask, "positions": pos}, "reference": reference,
            "meta": {"attention": attention, "checkpoint": str(ckpt.path), "source_maxlength": ckpt.source_maxlength,
                     "candidate_maxlength": ckpt.candidate_maxlength, "n_tasks": ckpt.n_tasks}}


def build_graph(ckpt: RankerCheckpoint, out_dir: Path, precision: str = "fp32", tok: PairTokenizer | None = None) -> dict:
    """PairRM's torch-free graph maker (the pipeline's default): ``model.onnx`` written from the weights by
    onnx_builder, and the tokenizer, into out_dir. With no torch to hold it to, the reference is the built
    fp32 graph itself: for fp32 None (the pipeline then checks only that the outputs are finite), for
    fp16 / int8 the fp32 graph's logits on the sample batch. UnsupportedGraph: the caller falls back to
    ``export_graph`` (torch)."""
    from .onnx_builder import BUILDER_VERSION, build_ranker_onnx, graph_config, run_graph

    check_backend_precision("onnx", precision)
    graph_config(ckpt.backbone_config)  # UnsupportedGraph before anything is written
    tok = tok or build_pair_tokenizer(ckpt)
    ids, mask, pos = sample_batch(tok, ckpt)
    feeds = {"input_ids": ids, "attention_mask": mask, "positions": pos}
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = None
    if precision != "fp32":
        reference = _built_fp32_reference(lambda path: build_ranker_onnx(ckpt, path, "fp32"), out_dir, feeds, run_graph)
    build_ranker_onnx(ckpt, out_dir / "model.onnx", precision)
    tok.save(out_dir)
    return {"feeds": feeds, "reference": reference,
            "meta": {"attention": "blender_fast.model.onnx_builder", "builder_version": BUILDER_VERSION,
                     "checkpoint": str(ckpt.path), "source_maxlength": ckpt.source_maxlength,
                     "candidate_maxlength": ckpt.candidate_maxlength, "n_tasks": ckpt.n_tasks}}


def _built_fp32_reference(build, out_dir: Path, feeds: dict, run_graph) -> np.ndarray:
    """The built fp32 graph's output on ``feeds``: a variant's reference. Written beside the entry and removed."""
    path = out_dir / "reference.fp32.onnx"
    try:
        build(path)
        return run_graph(path, feeds)
    finally:
        path.unlink(missing_ok=True)
        path.with_name(path.name + ".data").unlink(missing_ok=True)


def relative_position_matmuls(onnx_path: Path) -> list[str]:
    """MatMul nodes against the constant per-head relative-position keys/queries (rank-3 initializers).

    int8 keeps them in fp32, as it did when those projections were computed in the graph: they are
    small, and the relative-position scores carry the ordering information the gate checks."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    rank3 = {init.name for init in model.graph.initializer if len(init.dims) == 3}
    return [n.name for n in model.graph.node if n.op_type == "MatMul" and len(n.input) > 1 and n.input[1] in rank3]
