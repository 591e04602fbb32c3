"""Random-weight pointwise reward models in the layout of ``OpenAssistant/reward-model-deberta-v3-large-v2``:
a Hugging Face ``DebertaV2ForSequenceClassification`` with one label (config.json, model.safetensors or
pytorch_model.bin) and its DeBERTa-v3 tokenizer files (spm.model, tokenizer.json, tokenizer_config.json,
special_tokens_map.json, added_tokens.json). llm-blender 0.0.2 loads it offline with
``AutoModelForSequenceClassification`` + ``AutoTokenizer`` when the directory's path ends with
``OpenAssistant/reward-model-deberta-v3-large-v2`` (its only way to recognise the type), so
:func:`make_reward_model_checkpoint` is usually given such a path. Scores are meaningless.
"""
from __future__ import annotations

import math
import pathlib
import warnings

from ..model import cache
from ..model.reward import POINTWISE_REPO
from .common import (CALIBRATION_EXAMPLES, FORMAT_VERSION, GENERATOR, NOTE, PathLike, remove_stale_weights, require,
                     round_sig, set_config_dtype, torch_threads, write_json)
from .ranker import RANKER_SHAPES, ranker_backbone_config
from .tokenizer import DEBERTA_EXTRA_EMBEDDING_ROWS, deberta_spm_file, deberta_tokenizer

# What the generated config.json says it is (the real repo's id2label / architectures).
ARCHITECTURE = "DebertaV2ForSequenceClassification"


def make_reward_model_checkpoint(out_dir: PathLike, shape: str = "tiny", seed: int = 0, *,
                                 weights_format: str = "safetensors", manifest: bool = False) -> pathlib.Path:
    """Write a random-weight reward model of the OpenAssistant layout to out_dir and return its path.

    Shapes as the ranker's (tiny, xsmall, base, large = deberta-v3-large). Like the real model, its
    tokenizer_config.json names no finite model_max_length (so llm-blender truncates nothing unless told
    source/candidate max lengths) and its config has type_vocab_size 0. The classifier is scaled so that
    scores on a few English examples have std ~1 (random init gives ~1e-2: ties within float noise).
    Same arguments => byte-identical files.
    """
    if shape not in RANKER_SHAPES:
        raise ValueError(f"unknown reward model shape {shape!r}; choose one of {list(RANKER_SHAPES)}")
    if weights_format not in ("safetensors", "bin"):
        raise ValueError("weights_format must be 'safetensors' or 'bin'")
    torch = require("torch")
    require("transformers")

    out = pathlib.Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    with deberta_spm_file(shape) as spm:
        n_pieces = spm.pieces
        tok = deberta_tokenizer(spm.path, with_prefix_tokens=False)
        remove_stale_weights(out)
        tok.save_pretrained(str(out))  # while spm.model exists: it is saved too
    # as the real repo (older transformers wrote it): the one added token beyond the spm pieces
    write_json(out / "added_tokens.json", {tok.mask_token: tok.mask_token_id})
    cfg = ranker_backbone_config(shape, n_pieces + DEBERTA_EXTRA_EMBEDDING_ROWS)
    cfg.architectures = [ARCHITECTURE]
    cfg.num_labels = 1  # id2label {0: "LABEL_0"}, as the real config.json
    cfg.pad_token_id = tok.pad_token_id
    with warnings.catch_warnings():
        # transformers' DeBERTa decorates helpers with torch.jit.script, deprecated at import by torch 2.x
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        from transformers import DebertaV2ForSequenceClassification
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DebertaV2ForSequenceClassification(cfg).eval()
    calib = _condition(model, tok)
    set_config_dtype(model.config, "float32")

    if weights_format == "safetensors":
        model.save_pretrained(str(out), safe_serialization=True)
    else:
        model.save_pretrained(str(out), safe_serialization=False)
    meta = {"generator": GENERATOR, "format_version": FORMAT_VERSION, "kind": "reward_model",
            "imitates": POINTWISE_REPO, "shape": shape, "seed": int(seed), "weights_format": weights_format,
            "spm_pieces": n_pieces, "spm_sha256": spm.sha256, **calib, "note": NOTE}
    if manifest:
        meta[cache.MANIFEST_FILES_KEY] = cache.record_files(out, exclude=("blender_fast.json",))
    write_json(out / "blender_fast.json", meta)
    return out


def _condition(model, tok) -> dict:
    """Width-aware encoder gain (as the ranker's: at hidden 32 HF's 0.02 makes the [CLS] state barely
    depend on the text), then the classifier scaled so scores on the calibration pairs have std ~1."""
    torch = require("torch")
    hidden = model.config.hidden_size
    gain = math.sqrt(1024.0 / hidden)
    with torch.no_grad():
        if gain != 1.0:
            for layer in model.deberta.encoder.layer:
                for mod in layer.modules():
                    if isinstance(mod, torch.nn.Linear):
                        mod.weight.mul_(gain)
        sources = [s for s, cands in CALIBRATION_EXAMPLES for _ in cands]
        cands = [c for _, cs in CALIBRATION_EXAMPLES for c in cs]
        batch = tok(sources, cands, padding=True, return_tensors="pt")
        with torch_threads(1):
            scores = model(**batch).logits[:, 0].double()
        std = float(scores.std())
        scale = round_sig(1.0 / std, 2) if std > 0 else 1.0
        after = (scores - float(model.classifier.bias.sum())) * scale  # the score is linear in the weight
        model.classifier.weight.mul_(scale)
        model.classifier.bias.zero_()
    return {"encoder_init_gain": round(gain, 4), "classifier_scale": scale,
            "score_std": round(float(after.std()), 4), "n_examples": len(cands)}
