"""Random-weight GenFuser checkpoints: a Flan-T5-style (``t5 v1.1``: gated-gelu, untied lm_head)
T5ForConditionalGeneration with a locally trained T5 tokenizer, loadable offline by transformers and
llm-blender's ``Blender().loadfuser``."""
from __future__ import annotations

import json
import pathlib
import tempfile
from typing import Dict, List

from .common import (CALIBRATION_EXAMPLES, FORMAT_VERSION, GENERATOR, NOTE, PathLike, remove_stale_weights,
                     require, sha256, torch_threads, write_json)
from .tokenizer import T5_PIECES, english_spm_model, spm_num_pieces, t5_tokenizer

# Flan-T5 ("t5 v1.1": gated-gelu, untied lm_head) shapes.
FUSER_SHAPES: Dict[str, Dict[str, int]] = {
    "tiny": dict(d_model=32, num_layers=2, num_decoder_layers=2, num_heads=2, d_ff=64, d_kv=16),
    "small": dict(d_model=512, num_layers=8, num_decoder_layers=8, num_heads=6, d_ff=1024, d_kv=64),
}


def fuser_config(shape: str, vocab_size: int):
    """T5Config of a Flan-T5-style ("t5 v1.1", gated-gelu, untied) model of the given shape."""
    transformers = require("transformers")
    if shape not in FUSER_SHAPES:
        raise ValueError(f"unknown fuser shape {shape!r}; choose one of {list(FUSER_SHAPES)}")
    return transformers.T5Config(
        vocab_size=int(vocab_size),
        feed_forward_proj="gated-gelu",
        tie_word_embeddings=False,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        dropout_rate=0.1,
        layer_norm_epsilon=1e-6,
        initializer_factor=1.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        n_positions=512,
        architectures=["T5ForConditionalGeneration"],
        **FUSER_SHAPES[shape],
    )


def _greedy_diversity(model, tokenizer, max_new_tokens: int = 24) -> List[int]:
    """Distinct generated tokens (before EOS) of greedy decoding on the example prompts."""
    torch = require("torch")
    prompts = [f"Instruction: {src}</s>Input: </s>Candidate 0: <extra_id_0>:{cands[0]}</s>"
               f"Candidate 1: <extra_id_1>:{cands[2]}</s>"
               "Summarize candidates into a better one for the given instruction:"
               for src, cands in CALIBRATION_EXAMPLES]
    out = []
    with torch.no_grad():
        for p in prompts:
            enc = tokenizer(p, return_tensors="pt", add_special_tokens=False)
            gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
            toks = gen[0, 1:].tolist()
            if tokenizer.eos_token_id in toks:
                toks = toks[: toks.index(tokenizer.eos_token_id)]
            out.append(len(set(toks)))
    return out


def make_fuser_checkpoint(out_dir: PathLike, shape: str = "tiny", seed: int = 0) -> pathlib.Path:
    """Write a random-weight Flan-T5-style fuser (T5ForConditionalGeneration + T5 tokenizer).

    Loadable offline with AutoTokenizer/AutoModelForSeq2SeqLM.from_pretrained(out_dir) and
    llm-blender's ``Blender().loadfuser(out_dir, device="cpu")``.  Shapes: tiny, small
    (= flan-t5-small: d_model 512, 8+8 layers, 6 heads, d_ff 1024, d_kv 64).
    """
    if shape not in FUSER_SHAPES:
        raise ValueError(f"unknown fuser shape {shape!r}; choose one of {list(FUSER_SHAPES)}")
    torch = require("torch")
    transformers = require("transformers")

    out = pathlib.Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    spm_bytes = english_spm_model("t5", T5_PIECES)
    with tempfile.TemporaryDirectory(prefix="blender_fast_tok_") as tmp:
        spm_path = pathlib.Path(tmp) / "spiece.model"
        spm_path.write_bytes(spm_bytes)
        tok = t5_tokenizer(spm_path)
        n_tok = len(tok)
        vocab = ((n_tok + 127) // 128) * 128  # flan-t5: 32100 tokens, 32128 embedding rows
        cfg = fuser_config(shape, vocab)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = transformers.T5ForConditionalGeneration(cfg).eval()
        # HF's T5 init (N(0, 1) embeddings and lm_head) already decodes varied text (about 20
        # distinct tokens in 24 greedy steps); recorded in blender_fast.json as a sanity check.
        with torch_threads(1 if shape == "tiny" else None):
            diversity = _greedy_diversity(model, tok)
        remove_stale_weights(out)
        model.save_pretrained(str(out), safe_serialization=True)
        tok.save_pretrained(str(out))
    # tokenizer.json already has the prefix-space behaviour; with "add_prefix_space" in the
    # config, AutoTokenizer would rebuild the fast tokenizer from spiece.model at every load.
    tc_path = out / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text(encoding="utf-8"))
    tc.pop("add_prefix_space", None)
    write_json(tc_path, tc)
    write_json(out / "blender_fast.json", {
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "kind": "fuser",
        "shape": shape,
        "seed": int(seed),
        "vocab_size": vocab,
        "tokenizer_size": n_tok,
        "spm_pieces": spm_num_pieces(spm_bytes),
        "spm_sha256": sha256(spm_bytes),
        "greedy_distinct_tokens": diversity,
        "note": NOTE,
    })
    return out


