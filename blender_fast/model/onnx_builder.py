"""The ONNX graph written from a checkpoint's config.json and weights: no torch, no transformers.

It computes what ``export.export_onnx`` (PairRM) and ``pointwise.export_pointwise_onnx`` (the reward
model) get from ``torch.onnx``, with the attention form of ``attention.py`` (relative-position
projections as per-head constants, the 1/sqrt(3d) scale on the queries, an additive key bias for the
mask, GatherElements over indices built once per batch), and the same inputs, outputs, dtypes and
dynamic axes, so the runtimes' sessions run either graph unchanged. The torch export is the oracle:
tests/model/test_onnx_builder.py holds the two together (max |Δ logit| <= 1e-5 in fp32).

What differs from the torch graph, on purpose:

* The bucketed relative positions are a constant table over clipped distances (``relative_tables``),
  read with one Gather per batch: past the distance where the clamp to [0, 2k) saturates, every
  bucket is the same, so a table of 2D+1 entries is exact at any sequence length.
* Initializers are streamed to the file one at a time (``write_model``): the graph without
  initializers is serialized first, then each initializer as a ModelProto fragment that protobuf merges
  into the same graph when the file is parsed (repeated fields append). Nothing holds a second copy of
  the weights; above ``EXTERNAL_DATA_ABOVE`` bytes (512 MiB: every large model) they go to
  ``<name>.data`` beside the graph, which ONNX Runtime maps rather than parses (3.6x faster session
  creation, half the memory, on PairRM's size).

Public: ``build_ranker_onnx(ckpt, out_path, precision)``, ``build_reward_onnx(ckpt, out_path,
precision)`` (a checkpoint from checkpoint.load_checkpoint / pointwise.load_pointwise_checkpoint), and
below them ``build_pairrm_graph`` / ``build_reward_graph`` (config dict + {name: array}).
``graph_config(config)`` raises UnsupportedGraph, one line naming the field, for a configuration the
builder does not know: the caller then falls back to the torch export.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .errors import CheckpointError
from .weights import read_weights

OPSET = 17  # the torch export's opset
IR_VERSION = 8
BUILDER_VERSION = 1  # bump when the written graph changes (a cache key, like export.EXPORT_VERSION)
BUILD_PRECISIONS = ("fp32", "fp16", "int8")
# Above this many bytes of initializers the weights go to external data (``model.onnx.data``): required
# above protobuf's 2 GB message limit, and chosen well below it because ONNX Runtime maps external
# data instead of parsing it out of the protobuf: on PairRM's size (1.84 GB written) session creation
# took 3.1 s at 1.26 GB peak RSS from external data, 11.1 s at 2.66 GB from one inline file.
EXTERNAL_DATA_ABOVE = 512 * 1024**2
# Small initializers (shapes, axes, scalars) stay in the graph even with external data: shape inference
# reads them, and cannot from external data (onnx's own size_threshold is the same 1 KiB).
EXTERNAL_MIN_BYTES = 1024
PAIR_INPUTS = ("input_ids", "attention_mask", "positions")
PAIRRM_PREFIX = "pretrained_model."
REWARD_PREFIX = "deberta."


class UnsupportedGraph(ValueError):
    """A checkpoint configuration the builder does not write (the torch export may still handle it)."""


@dataclass(frozen=True)
class GraphConfig:
    """The DeBERTa-v2 fields the graph depends on, read as transformers' DebertaV2Config reads them."""

    hidden: int
    layers: int
    heads: int
    head_size: int
    intermediate: int
    embedding_size: int
    layer_norm_eps: float
    span: int  # attention.py's pos_ebd_size: position_buckets if > 0, else max_relative_positions
    position_buckets: int
    max_relative_positions: int
    max_position_embeddings: int
    position_biased_input: bool
    type_vocab_size: int
    norm_rel_ebd: bool  # LayerNorm on the relative embeddings


def _field(config: dict, name: str, default, kinds=(int,)):
    value = config.get(name, default)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        raise UnsupportedGraph(f"config field {name!r} = {value!r} is not a {' or '.join(k.__name__ for k in kinds)}")
    return value


def graph_config(config: dict) -> GraphConfig:
    """The config's graph fields, with DebertaV2Config's defaults; UnsupportedGraph (one line naming the
    field) for anything the builder does not write."""
    model_type = config.get("model_type")
    if model_type != "deberta-v2":
        raise UnsupportedGraph(f"config field 'model_type' = {model_type!r}: the graph builder writes DeBERTa-v2/v3 "
                               "('deberta-v2') only")
    hidden = _field(config, "hidden_size", 1536)
    heads = _field(config, "num_attention_heads", 24)
    layers = _field(config, "num_hidden_layers", 24)
    for name, value in (("hidden_size", hidden), ("num_attention_heads", heads), ("num_hidden_layers", layers)):
        if value <= 0:
            raise UnsupportedGraph(f"config field {name!r} = {value!r} must be positive")
    if hidden % heads:
        raise UnsupportedGraph(f"config field 'hidden_size' = {hidden} is not a multiple of num_attention_heads = {heads}")
    head_size = _field(config, "attention_head_size", hidden // heads)
    if not config.get("relative_attention", False):
        raise UnsupportedGraph("config field 'relative_attention' is off: the graph builder writes relative "
                               "(disentangled) attention only")
    pos_att_type = config.get("pos_att_type")
    if isinstance(pos_att_type, str):
        pos_att_type = [x.strip() for x in pos_att_type.lower().split("|")]
    if not isinstance(pos_att_type, list) or sorted(pos_att_type) != ["c2p", "p2c"]:
        raise UnsupportedGraph(f"config field 'pos_att_type' = {config.get('pos_att_type')!r}: the graph builder "
                               "writes c2p|p2c only")
    if not config.get("share_att_key", False):
        raise UnsupportedGraph("config field 'share_att_key' is off: the graph builder writes shared attention keys only")
    if _field(config, "conv_kernel_size", 0) > 0:
        raise UnsupportedGraph("config field 'conv_kernel_size' > 0: the graph builder writes no conv layer")
    if config.get("hidden_act", "gelu") != "gelu":
        raise UnsupportedGraph(f"config field 'hidden_act' = {config.get('hidden_act')!r}: only 'gelu' is written")
    norm = [x.strip() for x in str(config.get("norm_rel_ebd", "none")).lower().split("|")]
    if not set(norm) <= {"none", "layer_norm"}:
        raise UnsupportedGraph(f"config field 'norm_rel_ebd' = {config.get('norm_rel_ebd')!r}: only 'layer_norm' or "
                               "'none' is written")
    max_pos = _field(config, "max_position_embeddings", 512)
    max_rel = _field(config, "max_relative_positions", -1)
    if max_rel < 1:
        max_rel = max_pos
    buckets = _field(config, "position_buckets", -1)
    return GraphConfig(
        hidden=hidden, layers=layers, heads=heads, head_size=head_size,
        intermediate=_field(config, "intermediate_size", 6144),
        embedding_size=_field(config, "embedding_size", hidden),
        layer_norm_eps=float(_field(config, "layer_norm_eps", 1e-7, (int, float))),
        span=buckets if buckets > 0 else max_rel, position_buckets=buckets, max_relative_positions=max_rel,
        max_position_embeddings=max_pos,
        position_biased_input=bool(_field(config, "position_biased_input", True, (bool,))),
        type_vocab_size=_field(config, "type_vocab_size", 0), norm_rel_ebd="layer_norm" in norm)


# -- constants computed from the config ----------------------------------------------------------------

def log_bucket_position(relative_pos: np.ndarray, bucket_size: int, max_position: int) -> np.ndarray:
    """transformers' ``make_log_bucket_position`` in numpy, in float32 as torch computes it."""
    rel = relative_pos.astype(np.int64)
    sign = np.sign(rel)
    mid = bucket_size // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    denom = np.log(np.float32((max_position - 1) / mid))
    log_pos = np.ceil(np.log(abs_pos.astype(np.float32) / np.float32(mid)) / denom * np.float32(mid - 1)) + np.float32(mid)
    return np.where(abs_pos <= mid, rel.astype(np.float32), log_pos * sign).astype(np.int64)


def relative_tables(cfg: GraphConfig) -> tuple[int, np.ndarray, np.ndarray]:
    """(D, c2p table, p2c table) over distances d = i - j clipped to [-D, D], index d + D:
    c2p[d] = clamp(bucket(d) + k, 0, 2k - 1) and p2c[d] = clamp(k - bucket(-d), 0, 2k - 1), attention.py's
    gather indices. D is the first distance where both clamps saturate (buckets grow with |d|)."""
    k = cfg.span
    limit = 4 * max(k, cfg.max_relative_positions) + 8
    while True:
        d = np.arange(-limit, limit + 1, dtype=np.int64)
        bucket = log_bucket_position(d, cfg.position_buckets, cfg.max_relative_positions) \
            if cfg.position_buckets > 0 and cfg.max_relative_positions > 0 else d
        c2p = np.clip(bucket + k, 0, 2 * k - 1)
        if c2p[0] == 0 and c2p[-1] == 2 * k - 1 and c2p[1] == 0 and c2p[-2] == 2 * k - 1:
            break
        limit *= 2
    p2c = np.clip(k - bucket[::-1], 0, 2 * k - 1)
    return limit, c2p.astype(np.int64), p2c.astype(np.int64)


def _layer_norm(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, eps: float) -> np.ndarray:
    """LayerNorm over the last axis in float32 (torch's float32 LayerNorm: the graph's constants are
    computed as the torch export computes them, so the two graphs agree to float32 rounding)."""
    x = x.astype(np.float32)
    mean = x.mean(-1, keepdims=True, dtype=np.float32)
    centered = x - mean
    var = (centered * centered).mean(-1, keepdims=True, dtype=np.float32)
    return (centered / np.sqrt(var + np.float32(eps)) * gamma.astype(np.float32) + beta.astype(np.float32)).astype(np.float32)


# -- writing ---------------------------------------------------------------------------------------------

class GraphWriter:
    """Nodes plus initializers given as thunks (computed, cast and written one at a time)."""

    def __init__(self, float_type: np.dtype):
        from onnx import helper

        self.helper = helper
        self.float_type = np.dtype(float_type)
        self.nodes = []
        self.initializers: list[tuple[str, Callable[[], np.ndarray], bool]] = []
        self._names: set[str] = set()
        self._count = 0

    def name(self, base: str) -> str:
        self._count += 1
        return f"{base}_{self._count}"

    def op(self, op_type: str, inputs: list[str], base: str | None = None, **attrs) -> str:
        out = self.name(base or op_type.lower())
        self.nodes.append(self.helper.make_node(op_type, inputs, [out], name=f"n_{out}", **attrs))
        return out

    def weight(self, name: str, thunk: Callable[[], np.ndarray], floating: bool = True) -> str:
        """An initializer (floating ones are cast to the graph's float type when written)."""
        if name in self._names:
            return name
        self._names.add(name)
        self.initializers.append((name, thunk, floating))
        return name

    def const(self, value, dtype=None) -> str:
        # numpy arrays keep their dtype (indices, shapes); Python/numpy floats take the graph's float type
        arr = value if isinstance(value, np.ndarray) else np.asarray(value, dtype=dtype or self.float_type)
        return self.weight(self.name("const"), lambda: arr, floating=False)


def _tensor_proto(name: str, arr: np.ndarray):
    from onnx import TensorProto, helper

    t = TensorProto()
    t.name = name
    t.data_type = helper.np_dtype_to_tensor_dtype(arr.dtype)
    t.dims.extend(arr.shape)
    return t


def protobuf_varint(n: int) -> bytes:
    """n as a protobuf base-128 varint (the builder and the synthetic spm writer both write protobuf by hand)."""
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _write_inline(f, tensor, arr: np.ndarray) -> None:
    """Append ``ModelProto{graph{initializer: tensor + raw_data=arr}}`` in protobuf's wire format, the
    array's bytes written straight from its buffer (no serialized copy of a 500 MB embedding). Tags:
    ModelProto.graph = 7, GraphProto.initializer = 5, TensorProto.raw_data = 9, all length-delimited."""
    head = tensor.SerializeToString()
    raw_tag = b"\x4a" + protobuf_varint(arr.nbytes)
    tensor_len = len(head) + len(raw_tag) + arr.nbytes
    graph_part = b"\x2a" + protobuf_varint(tensor_len)
    f.write(b"\x3a" + protobuf_varint(len(graph_part) + tensor_len) + graph_part + head + raw_tag)
    f.write(memoryview(arr).cast("B") if arr.size else b"")


def write_model(w: GraphWriter, inputs, outputs, path: Path, external_data: bool) -> tuple[int, bool]:
    """Write the graph to ``path`` with its initializers streamed one at a time (see the module docstring);
    returns (initializer bytes, whether they went to external data)."""
    from onnx import ModelProto, TensorProto, helper

    graph = helper.make_graph(w.nodes, "blender_fast_graph", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="blender_fast.model.onnx_builder", producer_version=str(BUILDER_VERSION))
    model.ir_version = IR_VERSION
    path = Path(path)
    data_path = path.with_name(path.name + ".data")
    total = 0
    if data_path.exists():
        data_path.unlink()
    data = open(data_path, "wb") if external_data else None
    try:
        with open(path, "wb") as f:
            f.write(model.SerializeToString())
            for name, thunk, floating in w.initializers:
                arr = np.asarray(thunk())
                if floating and arr.dtype != w.float_type:
                    arr = arr.astype(w.float_type)
                if not arr.flags.c_contiguous:  # (not np.ascontiguousarray: it turns a scalar into shape [1])
                    arr = arr.copy(order="C")
                t = _tensor_proto(name, arr)
                if data is not None and arr.nbytes >= EXTERNAL_MIN_BYTES:
                    offset = data.tell()
                    data.write(memoryview(arr).cast("B"))
                    t.data_location = TensorProto.EXTERNAL
                    for key, value in (("location", data_path.name), ("offset", str(offset)), ("length", str(arr.nbytes))):
                        entry = t.external_data.add()
                        entry.key, entry.value = key, value
                    data.write(b"\0" * ((-data.tell()) % 64))  # every tensor 64-byte aligned (mmap-friendly)
                    fragment = ModelProto()
                    fragment.graph.initializer.append(t)
                    f.write(fragment.SerializeToString())
                else:
                    _write_inline(f, t, arr)
                total += arr.nbytes
                del arr, t
    finally:
        if data is not None:
            data.close()
    return total, bool(external_data)


# -- the graph -------------------------------------------------------------------------------------------

class WeightError(CheckpointError):
    pass


def _get(weights: Mapping[str, np.ndarray], name: str, shape: tuple | None = None) -> np.ndarray:
    if name not in weights:
        raise WeightError(f"missing tensor {name!r}")
    arr = weights[name]
    if shape is not None and tuple(arr.shape) != tuple(shape):
        raise WeightError(f"tensor {name!r} has shape {list(arr.shape)}, the config needs {list(shape)}")
    if not np.issubdtype(arr.dtype, np.floating):
        raise WeightError(f"tensor {name!r} has dtype {arr.dtype}, expected floating point")
    return arr


def _encoder(w: GraphWriter, cfg: GraphConfig, weights, prefix: str, token_types: str | None) -> tuple[str, str, str]:
    """Nodes from input_ids / attention_mask (/ token types) to the last hidden states [B, L, H];
    returns (hidden states, batch [1], length [1]), the last two for the head's indexing."""
    H, E, h, d, k = cfg.hidden, cfg.embedding_size, cfg.heads, cfg.head_size, cfg.span
    all_head = h * d
    ft = w.float_type
    p = prefix
    g = lambda name, shape=None: _get(weights, p + name, shape)  # noqa: E731
    T = lambda name, shape: (lambda: np.ascontiguousarray(g(name, shape).T))  # noqa: E731  (Linear: x @ Wᵀ)
    V = lambda name, shape=None: (lambda: g(name, shape))  # noqa: E731
    # Every tensor is checked now (name, shape, dtype), before anything is written.
    vocab = g("embeddings.word_embeddings.weight").shape[0]
    g("embeddings.word_embeddings.weight", (vocab, E))

    shape = w.op("Shape", ["input_ids"])
    batch = w.op("Gather", [shape, w.const(np.array([0], np.int64))], axis=0)
    length = w.op("Gather", [shape, w.const(np.array([1], np.int64))], axis=0)
    length_scalar = w.op("Squeeze", [length, w.const(np.array([0], np.int64))])
    one_i, zero_i = w.const(np.array(1, np.int64)), w.const(np.array(0, np.int64))
    positions_1d = w.op("Range", [zero_i, length_scalar, one_i])  # [L]

    # Embeddings (transformers' order: words, + positions, + token types; projection; LayerNorm; * mask)
    x = w.op("Gather", [w.weight(p + "embeddings.word_embeddings.weight", V("embeddings.word_embeddings.weight")), "input_ids"], axis=0)
    if cfg.position_biased_input:
        name = "embeddings.position_embeddings.weight"
        g(name, (cfg.max_position_embeddings, E))
        x = w.op("Add", [x, w.op("Gather", [w.weight(p + name, V(name)), positions_1d], axis=0)])
    if cfg.type_vocab_size > 0:
        name = "embeddings.token_type_embeddings.weight"
        g(name, (cfg.type_vocab_size, E))
        if token_types is None:  # PairRM passes none: transformers adds row 0 everywhere
            x = w.op("Add", [x, w.weight(p + name + ".row0", lambda: g(name)[0].copy())])
        else:
            x = w.op("Add", [x, w.op("Gather", [w.weight(p + name, V(name)), token_types], axis=0)])
    if E != H:
        x = w.op("MatMul", [x, w.weight(p + "embeddings.embed_proj.weight.T", T("embeddings.embed_proj.weight", (H, E)))])
    x = w.op("LayerNormalization", [x, w.weight(p + "embeddings.LayerNorm.weight", V("embeddings.LayerNorm.weight", (H,))),
                                    w.weight(p + "embeddings.LayerNorm.bias", V("embeddings.LayerNorm.bias", (H,)))],
             axis=-1, epsilon=cfg.layer_norm_eps)
    mask_f = w.op("Cast", ["attention_mask"], to=_onnx_type(ft))
    x = w.op("Mul", [x, w.op("Unsqueeze", [mask_f, w.const(np.array([2], np.int64))])])

    # attention.py's additive key bias [B, 1, 1, L]: half the dtype's range where the mask is 0
    blocked = w.op("Cast", [w.op("Equal", ["attention_mask", w.const(np.array(0, np.int64))])], to=_onnx_type(ft))
    key_bias = w.op("Unsqueeze", [w.op("Mul", [blocked, w.const(np.finfo(ft).min / 2)]), w.const(np.array([1, 2], np.int64))])

    # Gather indices, once per batch for all layers (attention.gather_indices)
    D, c2p_table, p2c_table = relative_tables(cfg)
    dist = w.op("Sub", [w.op("Unsqueeze", [positions_1d, w.const(np.array([1], np.int64))]),
                        w.op("Unsqueeze", [positions_1d, w.const(np.array([0], np.int64))])])  # [L, L]: i - j
    at = w.op("Add", [w.op("Clip", [dist, w.const(np.array(-D, np.int64)), w.const(np.array(D, np.int64))]),
                      w.const(np.array(D, np.int64))])
    heads_c = w.const(np.array([h], np.int64))
    c2p_full = w.op("Concat", [batch, heads_c, length, length], axis=0)
    c2p_index = w.op("Expand", [w.op("Gather", [w.weight("c2p_table", lambda: c2p_table, floating=False), at], axis=0), c2p_full])
    # p2c[i, j] = p2c_att[j, p2c_table[i - j]] read from the flat [B, h, L·2k] scores: j·2k + that
    row_start = w.op("Mul", [positions_1d, w.const(np.array(2 * k, np.int64))])
    p2c_local = w.op("Gather", [w.weight("p2c_table", lambda: p2c_table, floating=False), at], axis=0)
    p2c_flat = w.op("Reshape", [w.op("Add", [w.op("Unsqueeze", [row_start, w.const(np.array([0], np.int64))]), p2c_local]),
                                w.const(np.array([1, 1, -1], np.int64))])
    p2c_index = w.op("Expand", [p2c_flat, w.op("Concat", [batch, heads_c, w.op("Mul", [length, length])], axis=0)])

    # Relative-position keys/queries: constants per layer (attention.py's export_pos_key / export_pos_query)
    scale = math.sqrt(d * 3)
    inv_scale = w.const(1.0 / scale)
    rel_cache: dict = {}

    def rel_embeddings() -> np.ndarray:
        if "rel" not in rel_cache:
            rel = g("encoder.rel_embeddings.weight").astype(np.float32)
            if cfg.norm_rel_ebd:
                rel = _layer_norm(rel, g("encoder.LayerNorm.weight", (H,)), g("encoder.LayerNorm.bias", (H,)), cfg.layer_norm_eps)
            rel_cache["rel"] = rel[: 2 * k]
        return rel_cache["rel"]

    g("encoder.rel_embeddings.weight")
    if g("encoder.rel_embeddings.weight").shape[0] < 2 * k or g("encoder.rel_embeddings.weight").shape[1] != H:
        raise WeightError(f"tensor {p}encoder.rel_embeddings.weight has shape {list(g('encoder.rel_embeddings.weight').shape)}, "
                          f"the config needs at least [{2 * k}, {H}]")

    def pos_proj(layer: str, which: str, divide: float) -> Callable[[], np.ndarray]:
        def make():
            wt = g(f"{layer}.attention.self.{which}.weight").astype(np.float32)
            b = g(f"{layer}.attention.self.{which}.bias").astype(np.float32)
            proj = rel_embeddings() @ wt.T + b  # [2k, h·d], float32 as torch's Linear
            per_head = proj.reshape(2 * k, h, d).transpose(1, 2, 0)  # [h, d, 2k]
            return np.ascontiguousarray(per_head / np.float32(divide) if divide != 1 else per_head)
        return make

    heads_shape = w.const(np.array([0, 0, h, d], np.int64))
    flat_shape = w.const(np.array([0, 0, -1], np.int64))
    merge_shape = w.const(np.array([0, 0, all_head], np.int64))

    def linear(x, name, shape, bias=True):
        y = w.op("MatMul", [x, w.weight(p + name + ".weight.T", T(name + ".weight", shape))], base="matmul")
        if bias:
            y = w.op("Add", [y, w.weight(p + name + ".bias", V(name + ".bias", (shape[0],)))])
        return y

    def layer_norm(x, name):
        return w.op("LayerNormalization", [x, w.weight(p + name + ".weight", V(name + ".weight", (H,))),
                                           w.weight(p + name + ".bias", V(name + ".bias", (H,)))],
                    axis=-1, epsilon=cfg.layer_norm_eps)

    for i in range(cfg.layers):
        L = f"encoder.layer.{i}"
        att = f"{L}.attention.self"
        q = w.op("Transpose", [w.op("Reshape", [w.op("Mul", [linear(x, f"{att}.query_proj", (all_head, H)), inv_scale]), heads_shape])], perm=[0, 2, 1, 3])
        kk = w.op("Transpose", [w.op("Reshape", [linear(x, f"{att}.key_proj", (all_head, H)), heads_shape])], perm=[0, 2, 1, 3])
        v = w.op("Transpose", [w.op("Reshape", [linear(x, f"{att}.value_proj", (all_head, H)), heads_shape])], perm=[0, 2, 1, 3])
        scores = w.op("MatMul", [q, w.op("Transpose", [kk], perm=[0, 1, 3, 2])])
        pos_key = w.weight(f"{p}{att}.pos_key", pos_proj(L, "key_proj", 1.0))
        pos_query = w.weight(f"{p}{att}.pos_query", pos_proj(L, "query_proj", scale))
        c2p = w.op("GatherElements", [w.op("MatMul", [q, pos_key], base="rel_matmul"), c2p_index], axis=3)
        p2c_att = w.op("Reshape", [w.op("MatMul", [kk, pos_query], base="rel_matmul"), flat_shape])
        p2c = w.op("Reshape", [w.op("GatherElements", [p2c_att, p2c_index], axis=2), w.op("Shape", [c2p])])
        scores = w.op("Add", [w.op("Add", [scores, w.op("Add", [c2p, p2c])]), key_bias])
        probs = w.op("Softmax", [scores], axis=-1)
        context = w.op("Reshape", [w.op("Transpose", [w.op("MatMul", [probs, v])], perm=[0, 2, 1, 3]), merge_shape])
        attended = layer_norm(w.op("Add", [linear(context, f"{L}.attention.output.dense", (H, all_head)), x]),
                              f"{L}.attention.output.LayerNorm")
        inner = _gelu(w, linear(attended, f"{L}.intermediate.dense", (cfg.intermediate, H)))
        x = layer_norm(w.op("Add", [linear(inner, f"{L}.output.dense", (H, cfg.intermediate)), attended]), f"{L}.output.LayerNorm")
    return x, batch, length


def _gelu(w: GraphWriter, x: str) -> str:
    """Exact (erf) GELU in torch.onnx's form, x · (erf(x / √2) + 1) · 0.5, which ONNX Runtime fuses."""
    erf = w.op("Erf", [w.op("Div", [x, w.const(np.sqrt(2.0))])])
    return w.op("Mul", [w.op("Mul", [x, w.op("Add", [erf, w.const(1.0)])]), w.const(0.5)])


def _onnx_type(dtype) -> int:
    from onnx import helper

    return helper.np_dtype_to_tensor_dtype(np.dtype(dtype))


@dataclass
class VariantCheck:
    """A variant graph against its fp32 graph on a sample batch: max |Δ| and the tolerance it must meet
    (``tolerance_fraction`` × the fp32 logit spread, at least 1: export.EXPORT_TOLERANCE's rule)."""

    precision: str
    max_abs_diff: float
    tolerance: float
    passed: bool

    def line(self) -> str:
        verdict = "pass" if self.passed else "FAIL"
        return (f"{self.precision}: max |{self.precision} - fp32| = {self.max_abs_diff:.3g} on the sample batch, "
                f"tolerance {self.tolerance:.3g}: {verdict}")


def run_graph(path, feeds: dict) -> np.ndarray:
    """The graph's first output on ``feeds`` (those of its inputs it takes), float32, on the CPU with the
    runtimes' optimization level."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: fp16 graphs warn once per layer otherwise
    session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    return session.run(None, {i.name: feeds[i.name] for i in session.get_inputs()})[0].astype(np.float32, copy=False)


def compare_graphs(fp32_path, variant_path, feeds: dict, precision: str, tolerance_fraction: float) -> VariantCheck:
    """``variant_path`` (fp16 / int8) against ``fp32_path`` on ``feeds``; NaN never passes."""
    reference = run_graph(fp32_path, feeds)
    got = run_graph(variant_path, feeds)
    diff = float(np.max(np.abs(got - reference))) if got.shape == reference.shape else float("nan")
    spread = float(np.ptp(reference)) if np.isfinite(reference).all() else float("nan")
    tolerance = tolerance_fraction * max(spread, 1.0)
    return VariantCheck(precision, diff, tolerance, bool(np.isfinite(diff) and diff <= tolerance))


@dataclass
class BuildReport:
    path: str
    precision: str
    seconds: float
    initializer_bytes: int
    external_data: bool
    check: VariantCheck | None = None  # int8 built with check_feeds: against the fp32 graph it came from


def build_pairrm_graph(config: dict, weights: Mapping[str, np.ndarray], out_path, precision: str = "fp32", *,
                       external_data: bool | None = None, check_feeds: dict | None = None,
                       tolerance: float = 0.75) -> BuildReport:
    """PairRM (llm-blender's CrossCompareReranker) from its backbone config and state dict (keys
    ``pretrained_model.*``, ``head_layer.1/4.*``): inputs input_ids, attention_mask [batch, seq] and
    positions [batch, 3] (int64), output logits [batch] (float32), as export.export_onnx writes."""
    return _build(config, weights, out_path, precision, "pairrm", external_data, check_feeds, tolerance)


def build_reward_graph(config: dict, weights: Mapping[str, np.ndarray], out_path, precision: str = "fp32", *,
                       external_data: bool | None = None, check_feeds: dict | None = None,
                       tolerance: float = 0.75) -> BuildReport:
    """DebertaV2ForSequenceClassification with one label (keys ``deberta.*``, ``pooler.dense.*``,
    ``classifier.*``): inputs input_ids, attention_mask (+ token_type_ids when type_vocab_size > 0),
    output scores [batch] (float32), as pointwise.export_pointwise_onnx writes."""
    return _build(config, weights, out_path, precision, "reward", external_data, check_feeds, tolerance)


def _build(config, weights, out_path, precision, head, external_data, check_feeds=None, tolerance=None) -> BuildReport:
    from onnx import TensorProto, helper

    if precision not in BUILD_PRECISIONS:
        raise ValueError(f"precision {precision!r}: the graph builder writes {', '.join(BUILD_PRECISIONS)}")
    t0 = time.perf_counter()
    cfg = graph_config(config)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    w = GraphWriter(np.float16 if precision == "fp16" else np.float32)
    if external_data is None:  # the written initializers are about the checkpoint's tensors, in w.float_type
        size = sum(int(v.size) for v in weights.values() if np.issubdtype(v.dtype, np.floating))
        external_data = size * w.float_type.itemsize > EXTERNAL_DATA_ABOVE
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    H = cfg.hidden
    if head == "pairrm":
        positions = helper.make_tensor_value_info("positions", TensorProto.INT64, ["batch", 3])
        inputs = [ids, mask, positions]
        hidden, batch, length = _encoder(w, cfg, weights, PAIRRM_PREFIX, None)
        out = _pairrm_head(w, cfg, weights, hidden, batch, length)
        outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch"])]
    elif head == "reward":
        inputs = [ids, mask]
        types = None
        if cfg.type_vocab_size > 0:
            types = "token_type_ids"
            inputs.append(helper.make_tensor_value_info(types, TensorProto.INT64, ["batch", "seq"]))
        hidden = _encoder(w, cfg, weights, REWARD_PREFIX, types)[0]
        pooled = w.op("Gather", [hidden, w.const(np.array(0, np.int64))], axis=1)  # [B, H]: the [CLS] state
        ph = config.get("pooler_hidden_size", H)
        if ph != H:
            raise UnsupportedGraph(f"config field 'pooler_hidden_size' = {ph!r} differs from hidden_size {H}")
        if config.get("pooler_hidden_act", "gelu") != "gelu":
            raise UnsupportedGraph(f"config field 'pooler_hidden_act' = {config.get('pooler_hidden_act')!r}: only 'gelu' is written")
        dense_w = _get(weights, "pooler.dense.weight", (H, H))
        pooled = w.op("Add", [w.op("MatMul", [pooled, w.weight("pooler.dense.weight.T", lambda: np.ascontiguousarray(dense_w.T))]),
                              w.weight("pooler.dense.bias", lambda: _get(weights, "pooler.dense.bias", (H,)))])
        pooled = _gelu(w, pooled)
        cls_w = _get(weights, "classifier.weight")
        if cls_w.ndim != 2 or cls_w.shape[1] != H:
            raise WeightError(f"tensor 'classifier.weight' has shape {list(cls_w.shape)}, the config needs [labels, {H}]")
        logits = w.op("Add", [w.op("MatMul", [pooled, w.weight("classifier.weight.T", lambda: np.ascontiguousarray(cls_w.T))]),
                              w.weight("classifier.bias", lambda: _get(weights, "classifier.bias", (cls_w.shape[0],)))])
        out = w.op("Gather", [logits, w.const(np.array(0, np.int64))], axis=1)
        outputs = [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch"])]
    else:
        raise ValueError(f"head {head!r}: 'pairrm' or 'reward'")
    # The output is float32 in every precision (the export's trailing .float())
    final = outputs[0].name
    w.nodes.append(helper.make_node("Cast", [out], [final], name="n_output_cast", to=TensorProto.FLOAT))
    if precision == "int8":
        fp32_path = out_path.with_name(out_path.stem + ".fp32.onnx")
        total, external = write_model(w, inputs, outputs, fp32_path, external_data)
        check = None
        try:
            quantize_int8(fp32_path, out_path, exclude=[n.name for n in w.nodes if n.op_type == "MatMul" and "rel_matmul" in n.output[0]])
            if check_feeds is not None:
                check = compare_graphs(fp32_path, out_path, check_feeds, precision, tolerance)
        finally:
            fp32_path.unlink(missing_ok=True)
            fp32_path.with_name(fp32_path.name + ".data").unlink(missing_ok=True)
    else:
        check = None
        total, external = write_model(w, inputs, outputs, out_path, external_data)
    return BuildReport(str(out_path), precision, time.perf_counter() - t0, total, external, check)


def _pairrm_head(w: GraphWriter, cfg: GraphConfig, weights, hidden: str, batch: str, length: str) -> str:
    """export.pairrm_module's head: the states at the three prefix positions, head([src; c1]) and
    head([src; c2]) in one call on the stacked halves, their difference averaged over tasks."""
    H = cfg.hidden
    w1 = _get(weights, "head_layer.1.weight", (H, 2 * H))
    w4 = _get(weights, "head_layer.4.weight")
    if w4.ndim != 2 or w4.shape[1] != H:
        raise WeightError(f"tensor 'head_layer.4.weight' has shape {list(w4.shape)}, the config needs [n_tasks, {H}]")
    _get(weights, "head_layer.1.bias", (H,))
    _get(weights, "head_layer.4.bias", (w4.shape[0],))
    flat = w.op("Reshape", [hidden, w.const(np.array([-1, H], np.int64))])
    batch_scalar = w.op("Squeeze", [batch, w.const(np.array([0], np.int64))])
    rows = w.op("Range", [w.const(np.array(0, np.int64)), batch_scalar, w.const(np.array(1, np.int64))])
    row_start = w.op("Unsqueeze", [w.op("Mul", [rows, w.op("Squeeze", [length, w.const(np.array([0], np.int64))])]),
                                   w.const(np.array([1], np.int64))])
    picked = w.op("Gather", [flat, w.op("Add", ["positions", row_start])], axis=0)  # [B, 3, H]
    src, c1, c2 = (w.op("Gather", [picked, w.const(np.array(j, np.int64))], axis=1) for j in range(3))
    pairs = w.op("Concat", [w.op("Concat", [src, c1], axis=-1), w.op("Concat", [src, c2], axis=-1)], axis=0)
    h1 = w.op("Tanh", [w.op("Add", [w.op("MatMul", [pairs, w.weight("head_layer.1.weight.T", lambda: np.ascontiguousarray(w1.T))]),
                                    w.weight("head_layer.1.bias", lambda: _get(weights, "head_layer.1.bias"))])])
    scores = w.op("Add", [w.op("MatMul", [h1, w.weight("head_layer.4.weight.T", lambda: np.ascontiguousarray(w4.T))]),
                          w.weight("head_layer.4.bias", lambda: _get(weights, "head_layer.4.bias"))])
    zero = w.const(np.array([0], np.int64))
    twice = w.op("Mul", [batch, w.const(np.array([2], np.int64))])
    left = w.op("Slice", [scores, zero, batch, zero])
    right = w.op("Slice", [scores, batch, twice, zero])
    return w.op("ReduceMean", [w.op("Sub", [left, right])], axes=[-1], keepdims=0)


class _Captured(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


def quantize_int8(fp32_path: Path, out_path: Path, exclude: list[str]) -> list[str]:
    """Dynamic int8 (onnxruntime.quantization, no torch) of every MatMul against a weight, except
    ``exclude`` (the relative-position MatMuls, kept fp32 as export.export_onnx keeps them). What it logs
    on the root logger and warns is captured, not printed, and returned (issue 28: a successful run
    prints nothing from it)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root = logging.getLogger()
    handler = _Captured()
    saved_handlers, saved_level = root.handlers[:], root.level
    root.handlers[:] = [handler]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, nodes_to_exclude=exclude)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    return [r.getMessage() for r in handler.records] + [str(c.message) for c in caught]


# -- from a checkpoint -------------------------------------------------------------------------------

def build_ranker_onnx(ckpt, out_path, precision: str = "fp32", *, external_data: bool | None = None,
                      check_feeds: dict | None = None, tolerance: float = 0.75) -> BuildReport:
    """``model.onnx`` of a PairRM checkpoint (checkpoint.RankerCheckpoint, either layout) at ``out_path``:
    the export pipeline's torch-free graph maker. UnsupportedGraph: fall back to export.export_onnx.
    int8 with ``check_feeds`` (a sample batch): ``report.check`` holds the int8 graph against the fp32
    graph it was quantized from, with ``tolerance`` × the logit spread (export.EXPORT_TOLERANCE["int8"])."""
    graph_config(ckpt.backbone_config)  # refuse before reading any weights
    weights = read_weights(ckpt.weights_path)
    try:
        return build_pairrm_graph(ckpt.backbone_config, weights, out_path, precision, external_data=external_data,
                                  check_feeds=check_feeds, tolerance=tolerance)
    except WeightError as e:
        raise CheckpointError(f"{ckpt.weights_path}: {e}") from None


def build_reward_onnx(ckpt, out_path, precision: str = "fp32", *, external_data: bool | None = None) -> BuildReport:
    """``model.onnx`` of a reward model (pointwise.PointwiseCheckpoint) at ``out_path``; see build_ranker_onnx."""
    graph_config(ckpt.config)
    weights = read_weights(ckpt.weights_path)
    try:
        return build_reward_graph(ckpt.config, weights, out_path, precision, external_data=external_data)
    except WeightError as e:
        raise CheckpointError(f"{ckpt.weights_path}: {e}") from None
