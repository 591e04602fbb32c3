"""Random-weight PairRM checkpoints: the real architecture (the engine's own ``export.pairrm_module``:
DeBERTa-v3 + llm-blender's pair head) and the real on-disk layouts, loadable offline by llm-blender
0.0.2 itself. Orderings are meaningless; shapes, file formats, tokenization and numerics are realistic.
"""
from __future__ import annotations

import math
import pathlib
from typing import Dict

from ..model import cache
from ..model.checkpoint import (DEBERTA_V3_LARGE, PAIRRM_CANDIDATE_MAXLENGTH, PAIRRM_SOURCE_MAXLENGTH,
                          SPECIAL_TOKENS)
from .common import (CALIBRATION_EXAMPLES, FORMAT_VERSION, GENERATOR, NOTE, PathLike, require,
                     round_sig, set_config_dtype, torch_threads, write_json, remove_stale_weights)
from .tokenizer import DEBERTA_EXTRA_EMBEDDING_ROWS, DEBERTA_V3_SPM_PIECES, deberta_spm_file, deberta_tokenizer

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
    """DebertaV2Config of a DeBERTa-v3 backbone of the given shape and embedding rows."""
    transformers = require("transformers")
    if shape not in RANKER_SHAPES:
        raise ValueError(f"unknown ranker shape {shape!r}; choose one of {list(RANKER_SHAPES)}")
    kw = dict(_DEBERTA_V3_COMMON)
    kw.pop("model_type")
    kw.update(RANKER_SHAPES[shape])
    kw["pooler_hidden_size"] = kw["hidden_size"]
    return transformers.DebertaV2Config(vocab_size=int(vocab_size), **kw)


def _build_ranker_module(backbone_config, n_tasks: int = 1):
    """The engine's PairRM module, randomly initialised (HF-style init for the head too)."""
    from ..model.export import pairrm_module

    model = pairrm_module(backbone_config, n_tasks)
    std = backbone_config.initializer_range
    for idx in (1, 4):
        model.head_layer[idx].weight.data.normal_(mean=0.0, std=std)
        model.head_layer[idx].bias.data.zero_()
    return model.eval()


def _condition_random_ranker(model, ids: Dict[str, int]) -> Dict[str, float]:
    """Make a freshly initialised ranker behave like a ranker: content-dependent pair logits.

    * Width-aware init gain: the encoder's Linear weights get std 0.02*sqrt(1024/hidden)
      (exactly HF's 0.02 for `large`).  With 0.02 at hidden 32 attention is uniform and the
      residual path dominates, so the prefix-token states barely depend on the text (pair-logit
      differences ~1e-7 of the activations, i.e. float noise for parity tests).
    * <|candidate2|>'s embedding row is moved to 1% of its distance from <|candidate1|>'s:
      two unrelated random rows make (left - right) a huge constant position offset
      (10-10000x the content-dependent part); at 1% the offset is well below the content
      signal while the two ids stay distinguishable (swapping them shifts the logits by ~0.1).
    """
    torch = require("torch")
    hidden = model.pretrained_model.config.hidden_size
    gain = math.sqrt(1024.0 / hidden)
    with torch.no_grad():
        if gain != 1.0:
            for layer in model.pretrained_model.encoder.layer:
                for mod in layer.modules():
                    if isinstance(mod, torch.nn.Linear):
                        mod.weight.mul_(gain)
        emb = model.pretrained_model.embeddings.word_embeddings.weight
        c1, c2 = emb[ids["cand1"]].clone(), emb[ids["cand2"]].clone()
        emb[ids["cand2"]] = c1 + 0.01 * (c2 - c1)
    return {"encoder_init_gain": round(gain, 4)}


def _pair_batch(tokenizer, examples, ids: Dict[str, int]):
    """Token ids of every ordered candidate pair, laid out as llm-blender's collator+cat_ids do:
    [CLS] <|source|> src [SEP] [CLS] <|candidate1|> A [SEP] [CLS] <|candidate2|> B [SEP]."""
    seqs = []
    for source, cands in examples:
        src = tokenizer(SPECIAL_TOKENS[0] + source)["input_ids"]
        enc = [tokenizer(SPECIAL_TOKENS[3] + c)["input_ids"] for c in cands]
        for i, a in enumerate(enc):
            for j, b in enumerate(enc):
                if i == j:
                    continue
                a1 = [ids["cand1"] if t == ids["cand"] else t for t in a]
                b2 = [ids["cand2"] if t == ids["cand"] else t for t in b]
                seqs.append(src + a1 + b2)
    return seqs


def _pair_logits(model, seqs, ids: Dict[str, int], pad_id: int):
    """The module's pair logits for token sequences holding one of each prefix token."""
    torch = require("torch")
    width = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    positions = torch.zeros((len(seqs), 3), dtype=torch.long)
    for r, s in enumerate(seqs):
        input_ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
        positions[r] = torch.tensor([s.index(ids["source"]), s.index(ids["cand1"]), s.index(ids["cand2"])])
    with torch.no_grad():
        return model(input_ids, mask, positions).double()


def _calibrate_head(model, tokenizer, ids: Dict[str, int], pad_id: int) -> Dict[str, float]:
    """Scale head_layer.4.weight so the pair logits on the example pairs have std ~= 1."""
    seqs = _pair_batch(tokenizer, CALIBRATION_EXAMPLES, ids)
    logits = _pair_logits(model, seqs, ids, pad_id)
    std = float(logits.std())
    scale = round_sig(1.0 / std, 2) if std > 0 else 1.0
    model.head_layer[4].weight.data.mul_(scale)
    after = logits * scale  # the pair logit is linear in head_layer.4.weight (bias cancels)
    return {"head_scale": scale, "pair_logit_std": round(float(after.std()), 4),
            "pair_logit_mean": round(float(after.mean()), 4), "n_pairs": len(seqs)}


def _save_weights(state_dict, path_dir: pathlib.Path, weights_format: str) -> pathlib.Path:
    torch = require("torch")
    sd = {k: v.detach().contiguous() for k, v in state_dict.items()}
    if weights_format == "safetensors":
        st = require("safetensors.torch")
        path = path_dir / "model.safetensors"
        st.save_file(sd, str(path), metadata={"format": "pt"})
    else:
        path = path_dir / "pytorch_model.bin"
        torch.save(sd, str(path))
    return path


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
    Same arguments => byte-identical weights and tokenizer files.
    """
    if shape not in RANKER_SHAPES:
        raise ValueError(f"unknown ranker shape {shape!r}; choose one of {list(RANKER_SHAPES)}")
    if weights_format not in ("safetensors", "bin"):
        raise ValueError("weights_format must be 'safetensors' or 'bin'")
    if layout not in ("llm-blender", "hf"):
        raise ValueError("layout must be 'llm-blender' or 'hf'")
    torch = require("torch")
    require("transformers")

    out = pathlib.Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)

    with deberta_spm_file(shape) as spm:
        n_pieces = spm.pieces
        base_tok = deberta_tokenizer(spm.path, with_prefix_tokens=False)
        tok = deberta_tokenizer(spm.path, with_prefix_tokens=True)
        n_base = len(base_tok)  # spm pieces + [MASK]
        if n_base != n_pieces + 1:
            raise RuntimeError(f"unexpected DeBERTa tokenizer size {n_base} for {n_pieces} pieces")
        ids = {name: tok.convert_tokens_to_ids(t)
               for name, t in zip(("source", "cand1", "cand2", "cand"), SPECIAL_TOKENS)}
        if [ids["source"], ids["cand1"], ids["cand2"], ids["cand"]] != list(range(n_base, n_base + 4)):
            raise RuntimeError(f"prefix token ids {ids} are not {n_base}..{n_base + 3}")
        vocab_rows = len(tok)  # = n_pieces + 5, what llm-blender resizes the embedding to

        cfg = ranker_backbone_config(shape, vocab_rows)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = _build_ranker_module(cfg, n_tasks=1)
            # extra (unused) backbone embedding rows, like deberta-v3's 128100-row matrix
            extra = torch.empty(n_pieces + DEBERTA_EXTRA_EMBEDDING_ROWS - vocab_rows, cfg.hidden_size)
            extra.normal_(mean=0.0, std=cfg.initializer_range)
        calib = _condition_random_ranker(model, ids)
        with torch_threads(1 if shape == "tiny" else None):
            calib.update(_calibrate_head(model, tok, ids, pad_id=tok.pad_token_id))
        state = model.state_dict()

        # Tokenizer files next to the weights (with the 4 prefix tokens, like the PairRM repo).
        tok.save_pretrained(str(out))
        if layout == "llm-blender":
            # Backbone: HF DeBERTa-v3 dir (config; with backbone_weights, also the fp16 weights and the
            # tokenizer without prefix tokens that llm-blender's loader reads)
            bb = out / BACKBONE_DIR
            bb.mkdir(exist_ok=True)
            remove_stale_weights(bb)
            bb_cfg = ranker_backbone_config(shape, n_pieces + DEBERTA_EXTRA_EMBEDDING_ROWS)
            bb_cfg.architectures = ["DebertaV2Model"]
            set_config_dtype(bb_cfg, "float16")
            bb_cfg.save_pretrained(str(bb))
            if backbone_weights:
                bb_state = {}
                for k, v in state.items():
                    if not k.startswith("pretrained_model."):
                        continue
                    k = k[len("pretrained_model."):]
                    if k == "embeddings.word_embeddings.weight":
                        v = torch.cat([v, extra], dim=0)
                    bb_state[k] = v.to(torch.float16)
                _save_weights(bb_state, bb, "safetensors")
                base_tok.save_pretrained(str(bb))

    # The ranker weights and config.
    remove_stale_weights(out)
    _save_weights(state, out, weights_format)
    if layout == "llm-blender":
        rcfg = dict(_RANKER_CONFIG_DEFAULTS)
        rcfg.update(model_name=BACKBONE_DIR, source_maxlength=int(source_maxlength),
                    candidate_maxlength=int(candidate_maxlength))
        write_json(out / "config.json", rcfg)
    else:
        hf_cfg = ranker_backbone_config(shape, vocab_rows)
        hf_cfg.architectures = ["DebertaV2PairRM"]
        hf_cfg.n_tasks = 1
        hf_cfg.drop_out = _RANKER_CONFIG_DEFAULTS["drop_out"]
        hf_cfg.source_prefix_id = ids["source"]
        hf_cfg.cand1_prefix_id = ids["cand1"]
        hf_cfg.cand2_prefix_id = ids["cand2"]
        hf_cfg.cand_prefix_id = ids["cand"]
        hf_cfg.sep_token_id = tok.sep_token_id
        hf_cfg.source_maxlength = int(source_maxlength)
        hf_cfg.candidate_maxlength = int(candidate_maxlength)
        set_config_dtype(hf_cfg, "float32")
        hf_cfg.save_pretrained(str(out))

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
        **calib,
        "note": NOTE,
    }
    if not backbone_weights and layout == "llm-blender":
        meta["backbone_weights"] = False
    if manifest:
        meta[cache.MANIFEST_FILES_KEY] = cache.record_files(out, exclude=("blender_fast.json",))
    write_json(out / "blender_fast.json", meta)
    return out
