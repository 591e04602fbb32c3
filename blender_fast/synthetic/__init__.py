"""Random-weight checkpoints with the real PairRM / GenFuser architecture and file layout.

Tests, benchmarks and ``blender-fast make-checkpoint`` never download weights: they use checkpoints
made here, loadable offline by ``llm-blender`` 0.0.2 itself. Orderings produced by them are
meaningless; only shapes, file formats, tokenization and numerics are realistic.

* ``tokenizer.py``: SentencePiece tokenizers trained locally on CPython's own documentation plus the
  word lists of ``words.txt`` (cached in ``cache.cache_root() / "spm"``), and the DeBERTa tokenizer files
  written without transformers;
* ``pairrm_checkpoint.py``: PairRM checkpoints (the engine module's weight names), weights drawn with numpy;
* ``reward_checkpoint.py``: pointwise reward models in OpenAssistant/reward-model-deberta-v3-large-v2's
  layout, weights drawn with numpy;
* ``torch_zip.py``: torch.save's zip format (pytorch_model.bin) written without torch;
* ``fuser_checkpoint.py``: Flan-T5-style fuser checkpoints (torch + transformers: the fuser needs them).

Public API::

    make_ranker_checkpoint(out_dir, shape="tiny", seed=0, *, weights_format="safetensors",
                           layout="llm-blender", source_maxlength=1224, candidate_maxlength=412,
                           backbone_weights=True) -> pathlib.Path
    make_fuser_checkpoint(out_dir, shape="tiny", seed=0) -> pathlib.Path
    make_reward_model_checkpoint(out_dir, shape="tiny", seed=0, *, weights_format="safetensors") -> pathlib.Path
    ranker_backbone_config(shape, vocab_size) -> transformers.DebertaV2Config  (needs transformers)
    backbone_config_json(shape, vocab_size, **extra) -> dict  (the same fields, as config.json holds them)

``cache.demo_checkpoint(shape)`` makes one once in the user cache. Importing this package, and generating a
ranker or reward model, imports neither torch nor transformers (a cold SentencePiece cache needs the
sentencepiece package to train the tokenizer once).
"""
from __future__ import annotations

from ..model.checkpoint import SPECIAL_TOKENS as PREFIX_TOKENS
from .common import CALIBRATION_EXAMPLES, GENERATOR, shard_weights
from .fuser_checkpoint import FUSER_SHAPES, fuser_config, make_fuser_checkpoint
from .pairrm_checkpoint import (PAIRRM_EMBEDDING_ROWS, PAIRRM_LARGE_BACKBONE, RANKER_SHAPES, backbone_config_json,
                                make_ranker_checkpoint, ranker_backbone_config)
from .reward_checkpoint import make_reward_model_checkpoint
from .tokenizer import DEBERTA_V3_SPM_PIECES, english_spm_model

__all__ = [
    "make_ranker_checkpoint",
    "make_fuser_checkpoint",
    "make_reward_model_checkpoint",
    "shard_weights",
    "ranker_backbone_config",
    "backbone_config_json",
    "fuser_config",
    "PAIRRM_LARGE_BACKBONE",
    "RANKER_SHAPES",
    "FUSER_SHAPES",
    "PREFIX_TOKENS",
    "DEBERTA_V3_SPM_PIECES",
    "PAIRRM_EMBEDDING_ROWS",
    "CALIBRATION_EXAMPLES",
    "GENERATOR",
    "english_spm_model",
]
