"""Random-weight PairRM checkpoints: the real architecture (DeBERTa-v3 + llm-blender's pair head, the
weight names of the engine's ``export.pairrm_module``) and the real on-disk layouts, loadable offline by
llm-blender 0.0.2 itself. Orderings are meaningless; shapes, file formats, tokenization and numerics are
realistic. Written with numpy (+ safetensors, tokenizers): no torch and no transformers.
"""
from __future__ import annotations

import math
import pathlib
from typing import Dict, List, Tuple

import numpy as np

from ..model import cache
from ..model.checkpoint import (DEBERTA_V3_LARGE, PAIRRM_CANDIDATE_MAXLENGTH, PAIRRM_SOURCE_MAXLENGTH,
                               SPECIAL_TOKENS)
from .common import (FORMAT_VERSION, GENERATOR, NOTE, TRANSFORMERS_VERSION, PathLike, remove_stale_weights, require,
                     save_weights, write_json, write_sorted_json)
from .tokenizer import DEBERTA_EXTRA_EMBEDDING_ROWS, DEBERTA_V3_SPM_PIECES, deberta_spm, write_deberta_tokenizer

_SHAPE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
RANKER_SHAPES: Dict[str, Dict[str, int]] = {
    "tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64),
    "xsmall": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536),
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": {k: DEBERTA_V3_LARGE[k] for k in _SHAPE_KEYS},
}
# Every shape shares deberta-v3-large's settings (what the real PairRM's backbone has), plus the
# pooler fields its config.json also holds. "p2c|c2p" in the original file; DebertaV2Config turns
# that string into this list.
_POOLER = {"pooler_dropout": 0, "pooler_hidden_act": "gelu"}
_DEBERTA_V3_COMMON = {
    **{k: v for k, v in DEBERTA_V3_LARGE.items() if k not in _SHAPE_KEYS + ("vocab_size",)},
    "pos_att_type": ["p2c", "c2p"],
    **_POOLER,
    "pad_token_id": 0,
}
PAIRRM_LARGE_BACKBONE: Dict[str, object] = {
    **DEBERTA_V3_LARGE,
    "pos_att_type": ["p2c", "c2p"],
    "pooler_hidden_size": DEBERTA_V3_LARGE["hidden_size"],
    **_POOLER,
}
# PairRM's ranker = that backbone with its embedding resized to len(tokenizer) = 128000 + 1 + 4.
PAIRRM_EMBEDDING_ROWS = DEBERTA_V3_SPM_PIECES + 1 + len(SPECIAL_TOKENS)

# Ranker config (llm-blender RankerConfig fields) written to DIR/config.json.
_RANKER_CONFIG_DEFAULTS = dict(
    ranker_type="pairranker",
    model_type="deberta",
    model_name=None,
    cache_dir=None,
    load_checkpoint=None,
    source_maxlength=PAIRRM_SOURCE_MAXLENGTH,
    candidate_maxlength=PAIRRM_CANDIDATE_MAXLENGTH,
    n_tasks=1,
    num_pos=5,
    num_neg=5,
    sub_sampling_mode="all_pair",
    sub_sampling_ratio=0.4,
    loss_type="instructgpt",
    reduce_type="linear",
    inference_mode="bubble",
    drop_out=0.05,
    fp16=True,
    device=None,
)
# model_name in a generated llm-blender-layout config.json: relative to the checkpoint directory, so
# a copied or moved checkpoint uses its own backbone (llm-blender itself resolves model_name against
# the working directory: pass it loadranker(..., model_name=checkpoint.llm_blender_model_name(dir))).
BACKBONE_DIR = "backbone"


def ranker_backbone_config(shape: str, vocab_size: int):
    """DebertaV2Config of a DeBERTa-v3 backbone of the given shape and embedding rows (needs transformers;
    the generators write the same fields with backbone_config_json)."""
    transformers = require("transformers")
    if shape not in RANKER_SHAPES:
        raise ValueError(f"unknown ranker shape {shape!r}; choose one of {list(RANKER_SHAPES)}")
    kw = dict(_DEBERTA_V3_COMMON)
    kw.pop("model_type")
    kw.update(RANKER_SHAPES[shape])
    kw["pooler_hidden_size"] = kw["hidden_size"]
    return transformers.DebertaV2Config(vocab_size=int(vocab_size), **kw)


def backbone_config_json(shape: str, vocab_size: int, **extra) -> Dict[str, object]:
    """The config.json fields transformers' ``DebertaV2Config(...).save_pretrained`` writes for a backbone of
    this shape (only the values that differ from its defaults, plus ``extra``), without transformers."""
    if shape not in RANKER_SHAPES:
        raise ValueError(f"unknown ranker shape {shape!r}; choose one of {list(RANKER_SHAPES)}")
    cfg: Dict[str, object] = {k: v for k, v in _DEBERTA_V3_COMMON.items()}
    cfg.update(RANKER_SHAPES[shape])
    cfg.update(pooler_hidden_size=cfg["hidden_size"], vocab_size=int(vocab_size), legacy=True,
               transformers_version=TRANSFORMERS_VERSION)
    cfg.update(extra)
    return cfg


# -- weights: numpy initialisation --------------------------------------------------------------------------
#
# HF's DeBERTa init (Linear and Embedding weights N(0, initializer_range), biases 0, LayerNorm 1/0, the
# padding row of the word embedding 0), with three changes that make a random model behave like a ranker
# (content-dependent, finite, spread pair logits). They replace the torch forward passes the generator used
# to calibrate with; their values were measured with those passes (then rounded), so the distribution of
# the logits is the same as before (std ~1 on the calibration examples; tests check the spread through
# llm-blender and the ONNX export):
# * width-aware gain: the encoder's Linear weights get std 0.02*sqrt(1024/hidden) (exactly HF's 0.02 for
#   `large`). With 0.02 at hidden 32 attention is uniform and the residual path dominates, so the
#   prefix-token states barely depend on the text (pair-logit differences ~1e-7 of the activations).
# * <|candidate2|>'s embedding row at 1% of its distance from <|candidate1|>'s: two unrelated random rows
#   make (left - right) a huge constant position offset (10-10000x the content-dependent part); at 1% the
#   offset is well below the content signal while the two ids stay distinguishable.
# * the head's last Linear (head_layer.4.weight) scaled by HEAD_SCALES[shape]: the pair logit is linear in
#   it; each scale is the one that gave the pair logits std 1 on CALIBRATION_EXAMPLES' 48 ordered pairs
#   with the torch-calibrated generator (geometric mean over seeds 0-3 for tiny, 0-1 for xsmall, seed 0
#   for base and large), rounded to 2 significant digits. Different seeds spread it by about x1.4.
HEAD_SCALES = {"tiny": 3400.0, "xsmall": 120.0, "base": 63.0, "large": 82.0}
CAND2_FRACTION = 0.01


def encoder_gain(hidden_size: int) -> float:
    return math.sqrt(1024.0 / hidden_size)


def deberta_weights(rng: np.random.Generator, cfg: Dict[str, object], vocab_rows: int, prefix: str,
                    gain: float) -> List[Tuple[str, np.ndarray]]:
    """(name, float32 array) of a DeBERTa-v2/v3 encoder (DebertaV2Model's state dict, names under
    ``prefix``) drawn from rng in a fixed order: HF's init with the encoder's Linear weights times gain."""
    h, inter, std = int(cfg["hidden_size"]), int(cfg["intermediate_size"]), float(cfg["initializer_range"])

    def normal(shape, scale=1.0):
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(std * scale)

    def norm(name):
        return [(f"{name}.weight", np.ones(h, np.float32)), (f"{name}.bias", np.zeros(h, np.float32))]

    emb = normal((vocab_rows, h))
    emb[int(cfg.get("pad_token_id", 0))] = 0.0  # nn.Embedding(padding_idx=pad_token_id)
    out = [(f"{prefix}embeddings.word_embeddings.weight", emb)] + norm(f"{prefix}embeddings.LayerNorm")
    for i in range(int(cfg["num_hidden_layers"])):
        layer = f"{prefix}encoder.layer.{i}."
        for name, rows, cols in (("attention.self.query_proj", h, h), ("attention.self.key_proj", h, h),
                                 ("attention.self.value_proj", h, h), ("attention.output.dense", h, h)):
            out += [(layer + name + ".weight", normal((rows, cols), gain)), (layer + name + ".bias", np.zeros(rows, np.float32))]
            if name == "attention.output.dense":
                out += norm(layer + "attention.output.LayerNorm")
        out += [(layer + "intermediate.dense.weight", normal((inter, h), gain)),
                (layer + "intermediate.dense.bias", np.zeros(inter, np.float32)),
                (layer + "output.dense.weight", normal((h, inter), gain)),
                (layer + "output.dense.bias", np.zeros(h, np.float32))] + norm(layer + "output.LayerNorm")
    rel_rows = 2 * int(cfg["position_buckets"])  # relative_attention with position_buckets > 0
    out += [(f"{prefix}encoder.rel_embeddings.weight", normal((rel_rows, h)))] + norm(f"{prefix}encoder.LayerNorm")
    return out


def ranker_weights(shape: str, seed: int, vocab_rows: int, ids: Dict[str, int], extra_rows: int
                   ) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """The ranker's state dict ({name: float32 array}, the engine module's names) and the backbone's
    extra (unused) embedding rows, drawn from numpy's generator seeded with seed."""
    cfg = backbone_config_json(shape, vocab_rows)
    h, std = int(cfg["hidden_size"]), float(cfg["initializer_range"])
    rng = np.random.default_rng(seed)
    state = dict(deberta_weights(rng, cfg, vocab_rows, "pretrained_model.", encoder_gain(h)))
    emb = state["pretrained_model.embeddings.word_embeddings.weight"]
    c1, c2 = emb[ids["cand1"]].copy(), emb[ids["cand2"]].copy()
    emb[ids["cand2"]] = c1 + np.float32(CAND2_FRACTION) * (c2 - c1)
    # llm-blender's head: Dropout, Linear(2h, h), Tanh, Dropout, Linear(h, n_tasks)
    state["head_layer.1.weight"] = rng.standard_normal((h, 2 * h), dtype=np.float32) * np.float32(std)
    state["head_layer.1.bias"] = np.zeros(h, np.float32)
    state["head_layer.4.weight"] = rng.standard_normal((1, h), dtype=np.float32) * np.float32(std * HEAD_SCALES[shape])
    state["head_layer.4.bias"] = np.zeros(1, np.float32)
    extra = rng.standard_normal((max(extra_rows, 0), h), dtype=np.float32) * np.float32(std)
    return state, extra


def make_ranker_checkpoint(
    out_dir: PathLike,
    shape: str = "tiny",
    seed: int = 0,
    *,
    weights_format: str = "safetensors",
    layout: str = "llm-blender",
    source_maxlength: int = PAIRRM_SOURCE_MAXLENGTH,
    candidate_maxlength: int = PAIRRM_CANDIDATE_MAXLENGTH,
    backbone_weights: bool = True,
    manifest: bool = False,
) -> pathlib.Path:
    """Write a random-weight PairRM-architecture ranker checkpoint to out_dir and return its path.

    layout="llm-blender": what ``llm_blender.Blender().loadranker(out_dir, model_name=out_dir/"backbone")``
    loads offline (ranker config.json whose model_name is ``backbone``, relative to the checkpoint;
    backbone/ with the HF DeBERTa-v3 backbone; model.safetensors or pytorch_model.bin with
    ``pretrained_model.*``/``head_layer.*`` keys; tokenizer files).
    layout="hf": the PairRM-hf (``DebertaV2PairRM``) layout: one HF config.json + weights +
    tokenizer files.  Shapes: tiny, xsmall, base, large (= PairRM: 1024/24/16, 128005 rows).
    backbone_weights=False leaves out backbone/'s fp16 weights and tokenizer (blender-fast needs only
    its config.json; llm-blender's loader needs the weights): half the disk of an xsmall checkpoint.
    manifest=True records every file's size and sha256 in blender_fast.json (the cache's demo
    checkpoint uses it to notice a damaged copy).
    Same arguments (and numpy version) => byte-identical weights and tokenizer files. Written with numpy:
    no torch and no transformers.
    """
    if shape not in RANKER_SHAPES:
        raise ValueError(f"unknown ranker shape {shape!r}; choose one of {list(RANKER_SHAPES)}")
    if weights_format not in ("safetensors", "bin"):
        raise ValueError(f"weights_format must be 'safetensors' or 'bin', got {weights_format!r}")
    if layout not in ("llm-blender", "hf"):
        raise ValueError(f"layout must be 'llm-blender' or 'hf', got {layout!r}")

    out = pathlib.Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    spm = deberta_spm(shape)
    n_pieces = spm.pieces
    # Tokenizer files next to the weights, with the 4 prefix tokens (like the PairRM repo): [MASK] is
    # n_pieces, the prefix tokens n_pieces+1..+4, what llm-blender's add_tokens gives them.
    added = write_deberta_tokenizer(out, spm, with_prefix_tokens=True)
    ids = {name: added[t] for name, t in zip(("source", "cand1", "cand2", "cand"), SPECIAL_TOKENS)}
    vocab_rows = len(added) + n_pieces  # = n_pieces + 5, what llm-blender resizes the embedding to
    backbone_rows = n_pieces + DEBERTA_EXTRA_EMBEDDING_ROWS  # like deberta-v3's 128100-row matrix
    state, extra = ranker_weights(shape, seed, vocab_rows, ids, backbone_rows - vocab_rows)

    if layout == "llm-blender":
        # Backbone: HF DeBERTa-v3 dir (config; with backbone_weights, also the fp16 weights and the
        # tokenizer without prefix tokens that llm-blender's loader reads)
        bb = out / BACKBONE_DIR
        bb.mkdir(exist_ok=True)
        remove_stale_weights(bb)
        write_sorted_json(bb / "config.json", backbone_config_json(shape, backbone_rows, architectures=["DebertaV2Model"],
                                                                   dtype="float16"))
        if backbone_weights:
            bb_state = {}
            for k, v in state.items():
                if not k.startswith("pretrained_model."):
                    continue
                k = k[len("pretrained_model."):]
                if k == "embeddings.word_embeddings.weight":
                    v = np.concatenate([v, extra], axis=0)
                bb_state[k] = v.astype(np.float16)
            save_weights(bb_state, bb, "safetensors")
            write_deberta_tokenizer(bb, spm, with_prefix_tokens=False)
    del extra

    # The ranker weights and config.
    remove_stale_weights(out)
    save_weights(state, out, weights_format)
    if layout == "llm-blender":
        rcfg = dict(_RANKER_CONFIG_DEFAULTS)
        rcfg.update(model_name=BACKBONE_DIR, source_maxlength=int(source_maxlength),
                    candidate_maxlength=int(candidate_maxlength))
        write_json(out / "config.json", rcfg)
    else:
        write_sorted_json(out / "config.json", backbone_config_json(
            shape, vocab_rows, architectures=["DebertaV2PairRM"], n_tasks=1,
            drop_out=_RANKER_CONFIG_DEFAULTS["drop_out"], source_prefix_id=ids["source"],
            cand1_prefix_id=ids["cand1"], cand2_prefix_id=ids["cand2"], cand_prefix_id=ids["cand"],
            sep_token_id=2, source_maxlength=int(source_maxlength),  # [SEP] is DeBERTa-v3's piece 2
            candidate_maxlength=int(candidate_maxlength), dtype="float32"))

    meta = {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "kind": "ranker",
        "shape": shape,
        "seed": int(seed),
        "layout": layout,
        "weights_format": weights_format,
        "vocab_size": vocab_rows,
        "spm_pieces": n_pieces,
        "prefix_token_ids": [ids["source"], ids["cand1"], ids["cand2"], ids["cand"]],
        "spm_sha256": spm.sha256,
        "encoder_init_gain": round(encoder_gain(int(RANKER_SHAPES[shape]["hidden_size"])), 4),
        "head_scale": HEAD_SCALES[shape],
        "note": NOTE,
    }
    if not backbone_weights and layout == "llm-blender":
        meta["backbone_weights"] = False
    if manifest:
        meta[cache.MANIFEST_FILES_KEY] = cache.record_files(out, exclude=("blender_fast.json",))
    write_json(out / "blender_fast.json", meta)
    return out
