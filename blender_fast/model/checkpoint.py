"""Finding and reading a PairRM checkpoint directory.

Two layouts are accepted, mirroring what exists in the wild:

* ``llm-blender``: the layout of ``llm-blender/PairRM``. ``config.json`` holds llm-blender's
  ``RankerConfig`` (``ranker_type``, ``model_type``, ``model_name``, ``source_maxlength`` ...), the
  weights (``pytorch_model.bin`` or ``model.safetensors``) have keys ``pretrained_model.*`` and
  ``head_layer.*``, and ``model_name`` names the backbone: a local directory (absolute, relative to the
  working directory as llm-blender resolves it, or relative to the checkpoint) or a hub id such as
  ``microsoft/deberta-v3-large``: its config and tokenizer files (never its weights) come from the HF
  cache (model/hub.py); offline and never fetched, a backbone whose config this module carries still loads.
* ``hf``: the ``DebertaV2PairRM`` layout of ``llm-blender/PairRM-hf``: one HF ``config.json`` for the
  backbone plus the head fields, same weight keys.

Everything here is plain Python + json: no torch, so a cached ONNX model can be served without it.
"""
from __future__ import annotations

import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

# microsoft/deberta-v3-large's config.json, the backbone the real PairRM names. Carried so that the
# real checkpoint loads offline: its weights come from PairRM's own file, only the shape is needed here.
DEBERTA_V3_LARGE = {
    "model_type": "deberta-v2",
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "max_position_embeddings": 512,
    "relative_attention": True,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": "p2c|c2p",
    "layer_norm_eps": 1e-7,
    "max_relative_positions": -1,
    "position_biased_input": False,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "type_vocab_size": 0,
    "vocab_size": 128100,
}
KNOWN_BACKBONES = {"microsoft/deberta-v3-large": DEBERTA_V3_LARGE}

# PairRM's published truncation settings; the PairRM-hf layout hard-codes them in its tokenize_pair().
PAIRRM_SOURCE_MAXLENGTH = 1224
PAIRRM_CANDIDATE_MAXLENGTH = 412

WEIGHT_FILES = ("pytorch_model.bin", "model.safetensors")  # llm-blender's order of preference
TOKENIZER_FILES = ("tokenizer.json", "spm.model")
SPECIAL_TOKENS = ("<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>")
# Every source and candidate piece is [CLS] <prefix> ... [SEP]: a truncation length below this cannot
# hold even an empty text.
MIN_MAXLENGTH = 3
# JSON files of a tokenizer directory, checked at load so a damaged one is named (not a library trace).
TOKENIZER_JSON_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file or holds one that cannot be used."""


@dataclass(frozen=True)
class RankerCheckpoint:
    path: Path
    layout: str  # "llm-blender" or "hf"
    weights_path: Path
    tokenizer_dir: Path | None  # None: the tokenizer must come from the HF cache (see tokenization.py)
    backbone_name: str  # the name or path the config points at, for messages and the HF-cache lookup
    backbone_config: dict  # HF DebertaV2 config fields
    source_maxlength: int
    candidate_maxlength: int
    n_tasks: int = 1
    ranker_config: dict = field(default_factory=dict)


def _read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _positive_int(value, name: str, source: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"{source}: '{name}' must be a positive integer, got {value!r}")
    return value


def _maxlength(value, name: str, source: Path) -> int:
    value = _positive_int(value, name, source)
    if value < MIN_MAXLENGTH:
        raise CheckpointError(
            f"{source}: '{name}' = {value} cannot hold a piece's [CLS], prefix token and [SEP]; "
            f"it must be >= {MIN_MAXLENGTH}"
        )
    return value


def has_tokenizer_files(directory: Path) -> bool:
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def _weights_file(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory}: no weights file: expected one of {', '.join(WEIGHT_FILES)}"
    )


def _resolve_backbone(ckpt_dir: Path, model_name: str, config_path: Path) -> tuple[dict, Path | None]:
    """Return the backbone's HF config and the directory holding its tokenizer (None: HF cache)."""
    # A relative name is the checkpoint's own subdirectory (generated checkpoints write "backbone", so a
    # copied checkpoint uses its own copy); then the working directory, as llm-blender resolves it; then,
    # for a moved checkpoint whose config still holds an absolute path, the same name inside it.
    if Path(model_name).is_absolute():
        candidates = [Path(model_name), ckpt_dir / Path(model_name).name]
    else:
        candidates = [ckpt_dir / model_name, Path(model_name), ckpt_dir / Path(model_name).name]
    candidates = list(dict.fromkeys(candidates))
    for directory in candidates:
        if (directory / "config.json").is_file():
            backbone = _read_json(directory / "config.json")
            tok_dir = directory if has_tokenizer_files(directory) else None
            if tok_dir is None and has_tokenizer_files(ckpt_dir):
                tok_dir = ckpt_dir
            return backbone, tok_dir
    from .hub import HubError, OfflineNotCached, is_hub_id, resolve_model_source

    if is_hub_id(model_name):
        # A hub backbone: only its config and tokenizer files (its weights are in the ranker's own file).
        # Offline and never fetched: a backbone whose config we carry still loads.
        try:
            directory = resolve_model_source(model_name, kind="backbone")
        except HubError as e:
            if not (isinstance(e, OfflineNotCached) and model_name in KNOWN_BACKBONES):
                raise type(e)(f"{config_path}: model_name {model_name!r} (the backbone, not a local directory "
                              f"with a config.json): {e}") from None
        else:
            backbone = _read_json(directory / "config.json")
            tok_dir = directory if has_tokenizer_files(directory) else None
            if tok_dir is None and has_tokenizer_files(ckpt_dir):
                tok_dir = ckpt_dir
            return backbone, tok_dir
    if model_name in KNOWN_BACKBONES:
        return dict(KNOWN_BACKBONES[model_name]), (ckpt_dir if has_tokenizer_files(ckpt_dir) else None)
    raise CheckpointError(
        f"{config_path}: model_name {model_name!r} is neither a local directory with a config.json "
        f"(looked in {', '.join(str(c) for c in candidates)}), nor a Hugging Face Hub id, nor a known "
        f"backbone ({', '.join(KNOWN_BACKBONES)})"
    )


def _check_backbone(backbone: dict, source: Path) -> None:
    model_type = str(backbone.get("model_type", ""))
    if model_type not in ("deberta-v2", "deberta"):
        raise CheckpointError(
            f"{source}: backbone model_type {model_type!r} is not supported (PairRM is DeBERTa-v2/v3)"
        )
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads"):
        _positive_int(backbone.get(key), key, source)


def load_checkpoint(path: str | os.PathLike) -> RankerCheckpoint:
    """Read a PairRM checkpoint directory's metadata; errors name the file and the problem."""
    ckpt_dir = Path(path).expanduser()
    if not ckpt_dir.exists():
        raise CheckpointError(f"{ckpt_dir}: checkpoint directory does not exist")
    if not ckpt_dir.is_dir():
        raise CheckpointError(f"{ckpt_dir}: expected a checkpoint directory, got a file")
    ckpt_dir = ckpt_dir.resolve()
    config_path = ckpt_dir / "config.json"
    config = _read_json(config_path)
    weights = _weights_file(ckpt_dir)

    if "ranker_type" in config:
        ranker_type = config.get("ranker_type")
        if ranker_type != "pairranker":
            raise CheckpointError(
                f"{config_path}: ranker_type {ranker_type!r} is not supported; "
                "blender-fast runs PairRM-style pair rankers ('pairranker')"
            )
        model_type = str(config.get("model_type") or "")
        if not model_type.startswith("deberta"):
            raise CheckpointError(
                f"{config_path}: model_type {model_type!r} is not supported (expected 'deberta')"
            )
        model_name = config.get("model_name")
        if not isinstance(model_name, str) or not model_name:
            raise CheckpointError(f"{config_path}: 'model_name' (the backbone) is missing")
        backbone, tok_dir = _resolve_backbone(ckpt_dir, model_name, config_path)
        _check_backbone(backbone, config_path)
        ckpt = RankerCheckpoint(
            path=ckpt_dir,
            layout="llm-blender",
            weights_path=weights,
            tokenizer_dir=tok_dir,
            backbone_name=model_name,
            backbone_config=backbone,
            source_maxlength=_maxlength(config.get("source_maxlength"), "source_maxlength", config_path),
            candidate_maxlength=_maxlength(config.get("candidate_maxlength"), "candidate_maxlength", config_path),
            n_tasks=_positive_int(config.get("n_tasks", 1), "n_tasks", config_path),
            ranker_config=config,
        )
        _check_loaded(ckpt)
        return ckpt

    architectures = config.get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures if isinstance(a, str)):
        raise CheckpointError(
            f"{config_path}: a pointwise reward model ({', '.join(map(str, architectures))}, e.g. "
            "OpenAssistant/reward-model-deberta-v3-large-v2) is not supported by blender-fast yet; it runs "
            "PairRM-style pair rankers (llm-blender/PairRM, llm-blender/PairRM-hf)"
        )
    if "DebertaV2PairRM" in architectures or config.get("model_type") == "deberta-v2":
        _check_backbone(config, config_path)
        if not has_tokenizer_files(ckpt_dir):
            raise CheckpointError(
                f"{ckpt_dir}: no tokenizer files: expected one of {', '.join(TOKENIZER_FILES)}"
            )
        ckpt = RankerCheckpoint(
            path=ckpt_dir,
            layout="hf",
            weights_path=weights,
            tokenizer_dir=ckpt_dir,
            backbone_name=str(ckpt_dir),
            backbone_config=config,
            source_maxlength=_maxlength(config.get("source_maxlength", PAIRRM_SOURCE_MAXLENGTH), "source_maxlength", config_path),
            candidate_maxlength=_maxlength(
                config.get("candidate_maxlength", PAIRRM_CANDIDATE_MAXLENGTH), "candidate_maxlength", config_path
            ),
            n_tasks=_positive_int(config.get("n_tasks", 1), "n_tasks", config_path),
            ranker_config=config,
        )
        _check_loaded(ckpt)
        return ckpt
    raise CheckpointError(
        f"{config_path}: not a PairRM config: it has neither llm-blender's 'ranker_type' nor a "
        "DebertaV2PairRM architecture"
    )


def _check_loaded(ckpt: RankerCheckpoint) -> None:
    """What can be checked without torch: tokenizer files parse, the weights' shapes fit the config."""
    if ckpt.tokenizer_dir is not None:
        check_tokenizer_files(ckpt.tokenizer_dir)
    if ckpt.weights_path.suffix == ".safetensors":
        # n_tasks only: the hidden size is checked when the weights are read (export.load_state_dict), so
        # metadata-only uses (fingerprints, a known backbone's config) never need the tensors to match
        check_weight_shapes(ckpt, safetensors_shapes(ckpt.weights_path), hidden_size=False)


def check_tokenizer_files(directory: Path) -> None:
    """A damaged tokenizer file fails here, named, instead of deep inside a tokenizer library."""
    for name in TOKENIZER_JSON_FILES:
        p = directory / name
        if p.is_file():
            _read_json(p)
    for p in directory.glob("*.model"):
        if p.is_file() and p.stat().st_size == 0:
            raise CheckpointError(f"{p}: empty SentencePiece model file")


def safetensors_shapes(path: Path) -> dict:
    """{tensor name: shape} from a .safetensors header (plain json: no torch, no reading the data)."""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ValueError("file shorter than its 8-byte header length")
            (n,) = struct.unpack("<Q", head)
            size = os.fstat(f.fileno()).st_size
            if n > size - 8:
                raise ValueError(f"header length {n} is beyond the file's {size} bytes (truncated?)")
            header = json.loads(f.read(n))
        shapes = {k: tuple(v["shape"]) for k, v in header.items() if k != "__metadata__"}
        end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{path}: cannot read weights (not a valid safetensors file: {e})") from None
    if 8 + n + end > size:
        raise CheckpointError(f"{path}: cannot read weights (truncated: {size} bytes, the header needs {8 + n + end})")
    return shapes


def check_weight_shapes(ckpt: RankerCheckpoint, shapes: dict, hidden_size: bool = True) -> None:
    """The config and the weights agree: n_tasks (the head's output rows) and the hidden size."""
    config_path = ckpt.path / "config.json"
    out = shapes.get("head_layer.4.weight")
    if out is not None and len(out) == 2 and out[0] != ckpt.n_tasks:
        raise CheckpointError(
            f"{config_path}: 'n_tasks' = {ckpt.n_tasks}, but {ckpt.weights_path.name}'s head_layer.4.weight "
            f"has {out[0]} output row(s), one per task: the config and the weights disagree"
        )
    if not hidden_size:
        return
    hidden = ckpt.backbone_config.get("hidden_size")
    emb = shapes.get("pretrained_model.embeddings.word_embeddings.weight")
    where = "config.json" if ckpt.layout == "hf" else f"the backbone config of {ckpt.backbone_name!r}"
    if emb is not None and len(emb) == 2 and emb[1] != hidden:
        raise CheckpointError(
            f"{config_path}: 'hidden_size' = {hidden} in {where}, but {ckpt.weights_path.name}'s word embeddings "
            f"have width {emb[1]}: the config and the weights disagree"
        )
    inner = shapes.get("head_layer.1.weight")
    if inner is not None and len(inner) == 2 and tuple(inner) != (hidden, 2 * hidden):
        raise CheckpointError(
            f"{config_path}: 'hidden_size' = {hidden} in {where}, but {ckpt.weights_path.name}'s head_layer.1.weight "
            f"is {list(inner)}, not [{hidden}, {2 * hidden}]: the config and the weights disagree"
        )


def llm_blender_model_name(path) -> str:
    """What to pass llm-blender's ``loadranker(path, model_name=...)`` for a checkpoint whose config.json
    names its backbone relative to itself (generated checkpoints write ``backbone``): llm-blender
    resolves model_name against the working directory, blender-fast against the checkpoint."""
    ckpt_dir = Path(path).expanduser().resolve()
    name = _read_json(ckpt_dir / "config.json").get("model_name")
    if isinstance(name, str) and name and not Path(name).is_absolute() and (ckpt_dir / name).is_dir():
        return str(ckpt_dir / name)
    return name


