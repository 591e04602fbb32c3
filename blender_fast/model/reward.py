"""Pointwise reward models (llm-blender's ``ranker_type == "deberta-rm"``): one score per (prompt, candidate).

The model llm-blender supports under that type is ``OpenAssistant/reward-model-deberta-v3-large-v2``: a
Hugging Face ``DebertaV2ForSequenceClassification`` with one label. llm-blender scores each candidate as
``model(**tokenizer(source, candidate)).logits[:, 0]``, the pair encoding ``[CLS] source [SEP] candidate
[SEP]``, after a text round trip that truncates the source and each candidate on their own
(``get_truncated_text``: encode with ``max_length`` and ``truncation=True``, then decode with
``skip_special_tokens=True``). Here:

* :func:`is_pointwise_dir` / :func:`load_pointwise_checkpoint`: recognised by its config (a
  ``*ForSequenceClassification`` architecture, no llm-blender ``ranker_type``) or, as llm-blender does, by
  a path ending in the repo id; then checked (DeBERTa-v2/v3, one label, tokenizer files, weights);
* :class:`PointwiseTokenizer`: that round trip and the pair encoding on the ``tokenizers`` library
  (transformers is needed once, to build it; an export carries it);
* :func:`build_torch_scorer`: the classifier as a module ``(input_ids, attention_mask[, token_type_ids])
  -> float32 scores``, the plain twin; :func:`export_graph`: its ONNX graph for the one export pipeline
  (model/export.py: checked against torch, cached by the same fingerprint rule as PairRM's).
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .checkpoint import CheckpointError, check_backbone, check_tokenizer_files, has_tokenizer_files, read_json, weights_file
from .errors import require_torch
from .fast_tokenizer import load_tokenizer
from .tokenization import cut_before_tokenizing
from ..options import POINTWISE_PRECISIONS

POINTWISE_REPO = "OpenAssistant/reward-model-deberta-v3-large-v2"
POINTWISE_ARCHITECTURE = "DebertaV2ForSequenceClassification"
# transformers' LARGE_INTEGER: a tokenizer's model_max_length at or above it means "no limit" (the real
# repo's tokenizer_config.json names none), and truncation=True with max_length=None then truncates nothing.
UNBOUNDED = int(1e20)
# The smallest truncation length: a piece's [CLS] and [SEP] (an empty text).
MIN_POINTWISE_MAXLENGTH = 2
EXPORT_VERSION = 1  # bump when the exported graph changes, to invalidate caches
TOKENIZER_META = "pointwise_tokenizer.json"
# The exported graph: those of these inputs the model uses (token_type_ids only when it has token types) -> "scores".
ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
EXPORT_FILES = ("model.onnx", "tokenizer.json", TOKENIZER_META)
# |ORT - torch| allowed on the sample batch, as a fraction of its score spread (at least 1). Measured on
# the tiny generated model: fp32 ~1e-6, fp16 ~1e-2.
EXPORT_TOLERANCE = {"fp32": 1e-3, "fp16": 0.1}
SAMPLE_SOURCES = ["Explain why the sky is blue to a child.", "Write a haiku about autumn leaves falling."]
SAMPLE_CANDIDATES = [["Sunlight scatters off air, and blue light scatters the most.", "Because it is."],
                     ["Red leaves drift down / the cold wind carries them far", "Leaves fall. Autumn is a season."]]


@dataclass(frozen=True)
class PointwiseCheckpoint:
    path: Path
    weights_path: Path
    config: dict  # the HF config.json
    tokenizer_dir: Path

    kind: ClassVar[str] = "reward"  # one score per (source, candidate)
    # The tokenizer's own limit (model_max_length, none when unbounded) truncates unless a call says otherwise.
    source_maxlength: ClassVar[None] = None
    candidate_maxlength: ClassVar[None] = None

    def describe(self) -> dict:
        """What Ranker.describe adds for this checkpoint."""
        return {"kind": "pointwise", "checkpoint": str(self.path)}

    def key_fields(self) -> dict:
        """What the export cache key holds beside the files: one output (num_labels 1), under the field
        name PairRM's key uses for its head's outputs, so that existing cache entries stay valid."""
        return {"n_tasks": 1}

    @property
    def backbone_config(self) -> dict:
        return self.config

    @property
    def uses_token_types(self) -> bool:
        return int(self.config.get("type_vocab_size", 0) or 0) > 0


def _config_or_none(directory: Path):
    try:
        return read_json(directory / "config.json")
    except CheckpointError:
        return None


def names_pointwise_repo(path) -> bool:
    """llm-blender's rule: the model name (path) ends with the OpenAssistant repo id."""
    return str(path).rstrip("/").endswith(POINTWISE_REPO)


def is_pointwise_dir(path) -> bool:
    """A directory whose config.json is a sequence classifier (``architectures`` ending in
    ``ForSequenceClassification``) and not an llm-blender ranker config, or a directory whose path ends with
    the OpenAssistant repo id (llm-blender's only rule). load_pointwise_checkpoint checks the rest."""
    d = Path(path).expanduser()
    if not d.is_dir():
        return False
    config = _config_or_none(d)
    if config is None or "ranker_type" in config:
        return False
    archs = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    return any(a.endswith("ForSequenceClassification") for a in archs) or names_pointwise_repo(d.resolve())


def num_labels(config: dict) -> int:
    """How many outputs the classifier has: len(id2label) when given, else num_labels, else HF's default 2."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        return len(id2label)
    n = config.get("num_labels")
    return n if isinstance(n, int) and not isinstance(n, bool) else 2


def load_pointwise_checkpoint(path) -> PointwiseCheckpoint:
    """Read and check a pointwise reward model directory; errors name the file and the problem."""
    d = Path(path).expanduser()
    if not d.is_dir():
        raise CheckpointError(f"{d}: reward model directory does not exist")
    d = d.resolve()
    config_path = d / "config.json"
    config = read_json(config_path)
    archs = [a for a in (config.get("architectures") or []) if isinstance(a, str)]
    model_type = str(config.get("model_type", ""))
    if model_type != "deberta-v2" or (archs and POINTWISE_ARCHITECTURE not in archs):
        raise CheckpointError(
            f"{config_path}: a {', '.join(archs) or model_type or 'sequence classification'} reward model is not "
            f"supported by blender-fast: it runs DeBERTa-v2/v3 reward models ({POINTWISE_ARCHITECTURE}, e.g. "
            f"{POINTWISE_REPO}) and PairRM; use llm-blender itself for this one")
    labels = num_labels(config)
    if labels != 1:
        raise CheckpointError(
            f"{config_path}: a {POINTWISE_ARCHITECTURE} with {labels} labels is a classifier, not a reward model "
            "(a reward model has one output, num_labels 1)")
    check_backbone(config, config_path)
    if not has_tokenizer_files(d):
        raise CheckpointError(f"{d}: no tokenizer files: expected tokenizer.json or spm.model")
    check_tokenizer_files(d)
    return PointwiseCheckpoint(path=d, weights_path=weights_file(d), config=config, tokenizer_dir=d)


# -- tokenization --------------------------------------------------------------------------------------

_CLEANUPS = ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"), (" 'm", "'m"),
             (" 's", "'s"), (" 've", "'ve"), (" 're", "'re"))


def clean_up_tokenization(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (applied by decode when the tokenizer asks for it)."""
    for old, new in _CLEANUPS:
        text = text.replace(old, new)
    return text


@dataclass
class PointwiseTokenizer:
    """llm-blender's DebertaRMCollator on the ``tokenizers`` library. A class of its own beside PairTokenizer
    because the rules differ: a text round trip (encode, truncate, decode) before a plain pair encoding,
    where PairRM tokenizes marked pieces once and truncates them in the packer."""

    kind: ClassVar[str] = "reward"  # scorer.scorer_for picks the reward scorer by it

    tokenizer: "object"  # tokenizers.Tokenizer, no truncation and no padding
    pad_id: int
    model_max_length: int | None  # None: unbounded
    clean_up_tokenization_spaces: bool = False
    truncation_side: str = "right"
    n_special: int = 2  # tokens the post-processor adds around one text ([CLS] ... [SEP])

    def truncate(self, texts: list[str], max_length: int | None) -> list[str]:
        """``get_truncated_text``: encode with ``max_length`` (None: the tokenizer's model_max_length, none
        when unbounded), then decode skipping special tokens. Every text makes the round trip, truncated
        or not (so e.g. characters the vocabulary lacks are dropped, as llm-blender drops them)."""
        limit = self.model_max_length if max_length is None else max_length
        keep = None if limit is None else limit - self.n_special
        if keep is not None and keep < 0:
            raise ValueError(f"a truncation length of {limit} cannot hold the {self.n_special} special tokens")
        out = []
        if keep is not None and self.truncation_side == "right":  # cut by characters first: the same ids kept
            texts = cut_before_tokenizing(self.tokenizer, texts, [keep] * len(texts), add_special_tokens=False)
        for enc in self.tokenizer.encode_batch(texts, add_special_tokens=False):
            ids = enc.ids
            if keep is not None and len(ids) > keep:
                ids = ids[:keep] if self.truncation_side == "right" else ids[len(ids) - keep:]
            text = self.tokenizer.decode(ids, skip_special_tokens=True)
            out.append(clean_up_tokenization(text) if self.clean_up_tokenization_spaces else text)
        return out

    def encode_pairs(self, pairs: list[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """``tokenizer(sources, candidates, truncation=False)``: (ids, token type ids) per (source, candidate)."""
        return [(e.ids, e.type_ids) for e in self.tokenizer.encode_batch(pairs, add_special_tokens=True)]

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        meta = {k: getattr(self, k) for k in ("pad_id", "model_max_length", "clean_up_tokenization_spaces",
                                              "truncation_side", "n_special")}
        (directory / TOKENIZER_META).write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: Path) -> "PointwiseTokenizer":
        from tokenizers import Tokenizer

        meta = json.loads((Path(directory) / TOKENIZER_META).read_text())
        tok = Tokenizer.from_file(str(Path(directory) / "tokenizer.json"))
        tok.no_truncation()
        tok.no_padding()
        return cls(tokenizer=tok, **meta)


def _bounded(n) -> int | None:
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and 0 < n < UNBOUNDED else None


def build_pointwise_tokenizer(ckpt: PointwiseCheckpoint) -> PointwiseTokenizer:
    """The tokenizer llm-blender loads for this model (``AutoTokenizer.from_pretrained(dir)``): its backend
    tokenizer and the settings the round trip depends on. Without transformers, from tokenizer.json and
    tokenizer_config.json."""
    from tokenizers import Tokenizer

    import importlib.util

    # transformers only for what fast_tokenizer cannot read (it gives AutoTokenizer's ids and settings for
    # tokenizer.json / DeBERTa spm.model), and never imported otherwise: the main job needs no transformers.
    use_transformers = False
    if importlib.util.find_spec("transformers") is not None:
        try:
            load_tokenizer(ckpt.tokenizer_dir)
        except CheckpointError:
            use_transformers = True
    try:
        if use_transformers:
            from transformers import AutoTokenizer

            hf = AutoTokenizer.from_pretrained(str(ckpt.tokenizer_dir), local_files_only=True)
            if not hf.is_fast:
                raise CheckpointError(f"{ckpt.tokenizer_dir}: could not build a fast tokenizer (install sentencepiece "
                                      "and protobuf so that transformers can convert spm.model)")
            pad_id = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
            backend = Tokenizer.from_str(hf.backend_tokenizer.to_str())
            settings = dict(model_max_length=_bounded(hf.model_max_length),
                            clean_up_tokenization_spaces=bool(hf.clean_up_tokenization_spaces),
                            truncation_side=hf.truncation_side)
        else:
            loaded = load_tokenizer(ckpt.tokenizer_dir)  # tokenizer.json or DeBERTa's spm.model, added tokens
            backend, cfg = loaded.tokenizer, loaded.config
            pad_id = loaded.token_id("pad_token")
            if pad_id is None:
                pad_id = loaded.token_id("eos_token")
            settings = dict(model_max_length=_bounded(cfg.get("model_max_length")),
                            clean_up_tokenization_spaces=bool(cfg.get("clean_up_tokenization_spaces", False)),
                            truncation_side=cfg.get("truncation_side", "right"))
    except CheckpointError:
        raise
    except Exception as e:  # a damaged file surfaces as many exception types, deep in the libraries
        raise CheckpointError(f"{ckpt.tokenizer_dir}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    if pad_id is None:
        raise CheckpointError(f"{ckpt.tokenizer_dir}: the tokenizer has no pad token")
    backend.no_truncation()
    backend.no_padding()
    n_special = len(backend.encode("a", add_special_tokens=True).ids) - len(backend.encode("a", add_special_tokens=False).ids)
    return PointwiseTokenizer(backend, int(pad_id), n_special=n_special, **settings)


def pad_batch(rows: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-padded int64 (input_ids, attention_mask, token_type_ids) of a list of encoded pairs."""
    width = max(len(ids) for ids, _ in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    types = np.zeros((len(rows), width), dtype=np.int64)
    for r, (tokens, type_ids) in enumerate(rows):
        ids[r, :len(tokens)] = tokens
        mask[r, :len(tokens)] = 1
        types[r, :len(tokens)] = type_ids
    return ids, mask, types


# -- the model ---------------------------------------------------------------------------------------

def _require_torch():
    require_torch("a reward model")


def build_torch_scorer(ckpt: PointwiseCheckpoint):
    """The checkpoint as a torch module (eval, fp32, CPU): ``(input_ids, attention_mask[, token_type_ids])``
    -> float32 scores [batch], i.e. ``DebertaV2ForSequenceClassification(...).logits[:, 0]``. Loaded with
    ``from_pretrained`` as llm-blender loads it; a missing tensor is an error naming it."""
    _require_torch()
    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=DeprecationWarning)
        from transformers import DebertaV2ForSequenceClassification
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # its "newly initialized" notice is raised below as an error
        try:
            model, info = DebertaV2ForSequenceClassification.from_pretrained(
                str(ckpt.path), local_files_only=True, torch_dtype=torch.float32, output_loading_info=True)
        except Exception as e:  # corrupt or truncated files surface as many exception types
            raise CheckpointError(f"{ckpt.weights_path}: cannot read weights ({type(e).__name__}: {e})") from None
        finally:
            hf_logging.set_verbosity(verbosity)
    missing = [k for k in info.get("missing_keys", []) if not k.endswith("position_ids")]
    if missing or info.get("mismatched_keys"):
        what = missing or [k[0] if isinstance(k, tuple) else k for k in info["mismatched_keys"]]
        raise CheckpointError(f"{ckpt.weights_path}: missing or mis-shaped tensors {what[:5]}"
                              f"{'...' if len(what) > 5 else ''}; is this a {POINTWISE_ARCHITECTURE} checkpoint?")
    return reward_module(model).eval()


def reward_module(hf_model):
    """DebertaV2ForSequenceClassification's inference path as a module returning float32 scores [batch], with
    the backbone named ``pretrained_model`` so that attention.py's export rewrite applies as to PairRM's."""
    import torch

    class RewardModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pretrained_model = hf_model.deberta
            self.pooler = hf_model.pooler
            self.classifier = hf_model.classifier
            self.uses_token_types = int(getattr(hf_model.config, "type_vocab_size", 0) or 0) > 0

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            hidden = self.pretrained_model(input_ids=input_ids, attention_mask=attention_mask,
                                           token_type_ids=token_type_ids if self.uses_token_types else None)[0]
            return self.classifier(self.pooler(hidden))[:, 0].float()

    return RewardModule()


def sample_batch(tok: PointwiseTokenizer):
    pairs = [(s, c) for s, cands in zip(SAMPLE_SOURCES, SAMPLE_CANDIDATES) for c in tok.truncate(cands, None)]
    return pad_batch(tok.encode_pairs(pairs), tok.pad_id)


def export_graph(ckpt: PointwiseCheckpoint, out_dir: Path, precision: str = "fp32") -> dict:
    """The reward model's graph maker for the export pipeline (model/export.export_onnx): writes model.onnx
    and the tokenizer into out_dir; returns the sample feeds, torch fp32's scores on them (the reference
    the pipeline checks the graph against) and what export.json records of this graph."""
    if precision not in POINTWISE_PRECISIONS["onnx"]:
        raise ValueError(f"a reward model exports to ONNX in precision {POINTWISE_PRECISIONS['onnx']}, not {precision!r}")
    _require_torch()
    import torch

    from .attention import UnsupportedAttention, use_export_attention

    tok = build_pointwise_tokenizer(ckpt)
    model = build_torch_scorer(ckpt)
    ids, mask, types = sample_batch(tok)
    inputs = [torch.from_numpy(ids), torch.from_numpy(mask)] + ([torch.from_numpy(types)] if ckpt.uses_token_types else [])
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if ckpt.uses_token_types else [])
    with torch.no_grad():
        reference = model(*inputs).numpy()
    attention = "transformers"
    try:
        use_export_attention(model)
        attention = "blender_fast.model.attention"
    except UnsupportedAttention as e:
        warnings.warn(f"{ckpt.path}: {e}; exporting transformers' attention as it is (slower graph)", stacklevel=3)
    out_dir.mkdir(parents=True, exist_ok=True)
    export_model = model.half() if precision == "fp16" else model
    dynamic = {n: {0: "batch", 1: "seq"} for n in names}
    dynamic["scores"] = {0: "batch"}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(export_model, tuple(inputs), str(out_dir / "model.onnx"), input_names=names,
                          output_names=["scores"], dynamic_axes=dynamic, opset_version=17, dynamo=False)
    tok.save(out_dir)
    return {"feeds": {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}, "reference": reference,
            "meta": {"kind": "pointwise", "attention": attention, "checkpoint": str(ckpt.path), "inputs": names}}


def build_graph(ckpt: PointwiseCheckpoint, out_dir: Path, precision: str = "fp32") -> dict:
    """The reward model's torch-free graph maker (the pipeline's default): ``model.onnx`` written from the
    weights by onnx_builder, and the tokenizer, into out_dir; the reference as pairrm.build_graph's
    (None in fp32, the built fp32 graph's scores for fp16). UnsupportedGraph: the caller falls back to
    ``export_graph`` (torch)."""
    from .onnx_builder import BUILDER_VERSION, build_reward_onnx, graph_config, run_graph

    if precision not in POINTWISE_PRECISIONS["onnx"]:
        raise ValueError(f"a reward model exports to ONNX in precision {POINTWISE_PRECISIONS['onnx']}, not {precision!r}")
    graph_config(ckpt.config)  # UnsupportedGraph before anything is written
    tok = build_pointwise_tokenizer(ckpt)
    ids, mask, types = sample_batch(tok)
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if ckpt.uses_token_types else [])
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    out_dir.mkdir(parents=True, exist_ok=True)
    reference = None
    if precision != "fp32":
        path = out_dir / "reference.fp32.onnx"
        try:
            build_reward_onnx(ckpt, path, "fp32")
            reference = run_graph(path, feeds)
        finally:
            path.unlink(missing_ok=True)
            path.with_name(path.name + ".data").unlink(missing_ok=True)
    build_reward_onnx(ckpt, out_dir / "model.onnx", precision)
    tok.save(out_dir)
    return {"feeds": feeds, "reference": reference,
            "meta": {"kind": "pointwise", "attention": "blender_fast.model.onnx_builder",
                     "builder_version": BUILDER_VERSION, "checkpoint": str(ckpt.path), "inputs": names}}
