"""Random-weight pointwise reward models in the layout of ``OpenAssistant/reward-model-deberta-v3-large-v2``:
a Hugging Face ``DebertaV2ForSequenceClassification`` with one label (config.json, model.safetensors or
pytorch_model.bin) and its DeBERTa-v3 tokenizer files (spm.model, tokenizer.json, tokenizer_config.json,
special_tokens_map.json, added_tokens.json). llm-blender 0.0.2 loads it offline with
``AutoModelForSequenceClassification`` + ``AutoTokenizer`` when the directory's path ends with
``OpenAssistant/reward-model-deberta-v3-large-v2`` (its only way to recognise the type), so
:func:`make_reward_model_checkpoint` is usually given such a path. Scores are meaningless.
"""
from __future__ import annotations

import pathlib

import numpy as np

from ..model import cache
from ..model.reward import POINTWISE_REPO
from .common import FORMAT_VERSION, GENERATOR, NOTE, PathLike, remove_stale_weights, save_weights, write_json, write_sorted_json
from .pairrm_checkpoint import RANKER_SHAPES, backbone_config_json, deberta_weights, encoder_gain
from .tokenizer import DEBERTA_EXTRA_EMBEDDING_ROWS, deberta_spm, write_deberta_tokenizer

# What the generated config.json says it is (the real repo's id2label / architectures).
ARCHITECTURE = "DebertaV2ForSequenceClassification"
# The classifier's weight is scaled so that scores on CALIBRATION_EXAMPLES' 16 (source, candidate) pairs
# have std ~1 (HF's init gives ~1e-2: ties within float noise). The score is linear in that weight; each
# scale is the one the torch-calibrated generator measured (geometric mean over seeds 0-3 for tiny, 0-1 for
# xsmall, seed 0 for base and large), rounded; the encoder gets the ranker's width-aware gain (see
# pairrm_checkpoint.py). Seeds spread the resulting std by about x1.3.
CLASSIFIER_SCALES = {"tiny": 1300.0, "xsmall": 37.0, "base": 24.0, "large": 10.0}


def make_reward_model_checkpoint(out_dir: PathLike, shape: str = "tiny", seed: int = 0, *,
                                 weights_format: str = "safetensors", manifest: bool = False) -> pathlib.Path:
    """Write a random-weight reward model of the OpenAssistant layout to out_dir and return its path.

    Shapes as the ranker's (tiny, xsmall, base, large = deberta-v3-large). Like the real model, its
    tokenizer_config.json names no finite model_max_length (so llm-blender truncates nothing unless told
    source/candidate max lengths) and its config has type_vocab_size 0. The classifier is scaled so that
    scores on a few English examples have std ~1 (see CLASSIFIER_SCALES). Same arguments (and numpy
    version) => byte-identical files. Written with numpy: no torch and no transformers.
    """
    if shape not in RANKER_SHAPES:
        raise ValueError(f"unknown reward model shape {shape!r}; choose one of {list(RANKER_SHAPES)}")
    if weights_format not in ("safetensors", "bin"):
        raise ValueError(f"weights_format must be 'safetensors' or 'bin', got {weights_format!r}")

    out = pathlib.Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    spm = deberta_spm(shape)
    n_pieces = spm.pieces
    remove_stale_weights(out)
    # as the real repo (older transformers wrote it): added_tokens.json holds the one added token, [MASK]
    write_deberta_tokenizer(out, spm, with_prefix_tokens=False)
    rows = n_pieces + DEBERTA_EXTRA_EMBEDDING_ROWS
    # num_labels 1: id2label {0: "LABEL_0"}, as the real config.json
    cfg = backbone_config_json(shape, rows, architectures=[ARCHITECTURE], id2label={"0": "LABEL_0"},
                               label2id={"LABEL_0": 0}, dtype="float32")
    h, std = int(cfg["hidden_size"]), float(cfg["initializer_range"])
    rng = np.random.default_rng(seed)
    state = dict(deberta_weights(rng, cfg, rows, "deberta.", encoder_gain(h)))
    # ContextPooler (dense on the [CLS] state, then gelu) and the one-label classifier
    state["pooler.dense.weight"] = rng.standard_normal((h, h), dtype=np.float32) * np.float32(std)
    state["pooler.dense.bias"] = np.zeros(h, np.float32)
    state["classifier.weight"] = rng.standard_normal((1, h), dtype=np.float32) * np.float32(std * CLASSIFIER_SCALES[shape])
    state["classifier.bias"] = np.zeros(1, np.float32)
    save_weights(state, out, weights_format)
    write_sorted_json(out / "config.json", cfg)
    meta = {"generator": GENERATOR, "format_version": FORMAT_VERSION, "kind": "reward_model",
            "imitates": POINTWISE_REPO, "shape": shape, "seed": int(seed), "weights_format": weights_format,
            "spm_pieces": n_pieces, "spm_sha256": spm.sha256, "encoder_init_gain": round(encoder_gain(h), 4),
            "classifier_scale": CLASSIFIER_SCALES[shape], "note": NOTE}
    if manifest:
        meta[cache.MANIFEST_FILES_KEY] = cache.record_files(out, exclude=("blender_fast.json",))
    write_json(out / "blender_fast.json", meta)
    return out
