"""DeBERTa-v2/v3 tokenizers on the ``tokenizers`` library alone: no transformers, no sentencepiece, no torch.

What ``transformers.AutoTokenizer.from_pretrained(directory)`` builds for a DeBERTa-v2/v3 directory (the
PairRM layouts, their backbone, the OpenAssistant reward model), rebuilt here token for token:

* the backend: ``tokenizer.json`` when the directory has one; else ``spm.model`` converted as transformers'
  ``DebertaV2Converter`` converts it (the SentencePiece model proto is parsed directly: it is a small
  protobuf, and the sentencepiece package is an optional extra);
* the added tokens: ``tokenizer_config.json``'s ``added_tokens_decoder`` (transformers >= 4.34 writes it),
  else ``added_tokens.json`` plus the special tokens of ``special_tokens_map.json`` / ``tokenizer_config.json``,
  with the flags transformers gives them.

``pair_tokenizer_parts`` then adds PairRM's four prefix tokens as llm-blender does (``add_tokens``), and
``pointwise_tokenizer_parts`` reads the settings the reward model's truncation round trip depends on.
"""
from __future__ import annotations

import functools
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint import SPECIAL_TOKENS, CheckpointError

# What the spm.model conversion handles: DeBERTa-v2/v3's tokenizer class (a config naming none is taken as
# it, as a PairRM directory's spm.model always is).
DEBERTA_TOKENIZER_CLASSES = ("DebertaV2Tokenizer", "DebertaV2TokenizerFast")
# transformers' LARGE_INTEGER (what a tokenizer_config.json without a limit says) and the flags of the
# special tokens a DeBERTa-v2 tokenizer gets when its config lists no added_tokens_decoder: the slow
# tokenizer wraps [UNK] as AddedToken(normalized=True) (a transformers quirk kept for equal ids).
SPECIAL_TOKEN_KEYS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")
DEBERTA_DEFAULT_SPECIALS = {"bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]", "sep_token": "[SEP]",
                            "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}
NORMALIZED_SPECIALS = ("unk_token",)
EXTRA_HINT = "install blender-fast[export] (transformers) to load it"


# -- the SentencePiece model proto ----------------------------------------------------------------------


@dataclass
class SpmModel:
    """The fields of a SentencePiece ModelProto the conversion needs."""

    pieces: list = field(default_factory=list)  # (piece, score, type); type 1 normal, 2 unknown, 3 control, 4 user
    model_type: int = 1  # 1 unigram, 2 bpe, 3 word, 4 char
    unk_id: int = 0
    byte_fallback: bool = False
    precompiled_charsmap: bytes = b""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= len(data):
            raise ValueError("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint too long")


def protobuf_fields(data: bytes):
    """(field number, wire type, value) of one protobuf message: ints for varints, bytes for the rest."""
    pos, end = 0, len(data)
    while pos < end:
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 1:
            value, pos = data[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(data, pos)
            value, pos = data[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = data[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > end:
            raise ValueError("truncated protobuf field")
        yield number, wire, value


def _piece(value: bytes) -> tuple:
    """(piece, score, type) of one SentencePiece message. Fast path for the layout sentencepiece writes
    (piece, then score, then type, each at most once; a model has 128k of them), else field by field."""
    if value[:1] == b"\x0a" and len(value) > 1 and value[1] < 0x80:
        end = 2 + value[1]
        piece, rest = value[2:end], value[end:]
        score, kind = 0.0, 1
        if rest[:1] == b"\x15":
            score, rest = struct.unpack("<f", rest[1:5])[0], rest[5:]
        if rest[:1] == b"\x18" and len(rest) == 2 and rest[1] < 0x80:
            kind, rest = rest[1], b""
        if not rest:
            return piece.decode("utf-8"), score, kind
    piece, score, kind = "", 0.0, 1
    for n, w, v in protobuf_fields(value):
        if n == 1 and w == 2:
            piece = v.decode("utf-8")
        elif n == 2 and w == 5:
            score = struct.unpack("<f", v)[0]
        elif n == 3 and w == 0:
            kind = v
    return piece, score, kind


@functools.lru_cache(maxsize=4)
def parse_spm_model(data: bytes) -> SpmModel:
    """Parse a serialized SentencePiece ModelProto (spm.model) without the sentencepiece package. The
    result is shared between calls with equal bytes (the generator reads one model several times):
    do not change it."""
    model = SpmModel()
    for number, wire, value in protobuf_fields(data):
        if number == 1 and wire == 2:  # pieces
            model.pieces.append(_piece(value))
        elif number == 2 and wire == 2:  # trainer_spec
            for n, w, v in protobuf_fields(value):
                if n == 3 and w == 0:
                    model.model_type = v
                elif n == 35 and w == 0:
                    model.byte_fallback = bool(v)
                elif n == 40 and w == 0:
                    model.unk_id = v
        elif number == 3 and wire == 2:  # normalizer_spec
            for n, w, v in protobuf_fields(value):
                if n == 2 and w == 2:
                    model.precompiled_charsmap = bytes(v)
    if not model.pieces:
        raise ValueError("no pieces")
    return model


def deberta_spm_tokenizer(spm_data: bytes, *, do_lower_case: bool = False, split_by_punct: bool = False):
    """A ``tokenizers.Tokenizer`` from DeBERTa-v2/v3's spm.model bytes, as transformers' DebertaV2Converter
    builds it (its control pieces [PAD]/[CLS]/[SEP] as special added tokens; the tokenizer's other special
    tokens, [UNK] and [MASK], are added by the caller from the directory's config)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram

    spm = parse_spm_model(spm_data)
    if spm.model_type != 1:
        raise ValueError(f"a SentencePiece model of type {spm.model_type} (only unigram, type 1, is converted)")
    tok = Tokenizer(Unigram([(p, s) for p, s, _ in spm.pieces], unk_id=spm.unk_id, byte_fallback=spm.byte_fallback))
    # control pieces are special added tokens; user-defined pieces are added tokens (transformers' SpmConverter)
    tok.add_tokens([AddedToken(p, normalized=False, special=k == 3) for p, _, k in spm.pieces if k in (3, 4)])
    steps = [normalizers.Lowercase()] if do_lower_case else []
    steps.append(normalizers.Strip())
    if spm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spm.precompiled_charsmap))
    steps.append(normalizers.Replace(Regex(" {2,}"), " "))
    tok.normalizer = normalizers.Sequence(steps)
    pre = [pre_tokenizers.Punctuation(behavior="isolated")] if split_by_punct else []
    pre.append(pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always"))
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    ids = {p: i for i, (p, _, _) in enumerate(spm.pieces)}
    if "[CLS]" not in ids or "[SEP]" not in ids:
        raise ValueError("no [CLS]/[SEP] pieces (not a DeBERTa-v2/v3 SentencePiece model)")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0", pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])])
    return tok


# -- a tokenizer directory --------------------------------------------------------------------------------


@dataclass
class LoadedTokenizer:
    """A directory's tokenizer as transformers would load it: the backend and the config it was read with."""

    tokenizer: "object"  # tokenizers.Tokenizer, no truncation and no padding
    config: dict  # tokenizer_config.json (or {})
    special: dict  # "sep_token" ... -> content, from the config files (DeBERTa's defaults where unnamed)

    def token_id(self, key: str) -> int | None:
        content = self.special.get(key)
        return None if content is None else self.tokenizer.token_to_id(content)


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not readable JSON ({e})") from None


def _content(value):
    return value.get("content") if isinstance(value, dict) else value


def _special_tokens(directory: Path, config: dict) -> dict:
    special = dict(DEBERTA_DEFAULT_SPECIALS)
    stm = directory / "special_tokens_map.json"
    for source in ((_read_json(stm) if stm.is_file() else {}), config):  # tokenizer_config.json wins
        if isinstance(source, dict):
            for key in SPECIAL_TOKEN_KEYS:
                value = _content(source.get(key))
                if isinstance(value, str):
                    special[key] = value
    return special


def _added_tokens(directory: Path, config: dict, special: dict):
    """[(id, AddedToken)] in id order: what transformers adds on top of the backend."""
    from tokenizers import AddedToken

    decoder = config.get("added_tokens_decoder")
    out = []
    if isinstance(decoder, dict) and decoder:
        for key, spec in decoder.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("content"), str):
                raise CheckpointError(f"{directory / 'tokenizer_config.json'}: added_tokens_decoder[{key!r}] "
                                      "is not a token (an object with 'content')")
            flags = {k: bool(spec[k]) for k in ("single_word", "lstrip", "rstrip", "normalized", "special") if k in spec}
            out.append((int(key), AddedToken(spec["content"], **flags)))
    else:
        # transformers < 4.34 directories (the real PairRM repo): added_tokens.json plus the special tokens
        specials = set(special.values())
        path = directory / "added_tokens.json"
        table = _read_json(path) if path.is_file() else {}
        if not isinstance(table, dict) or not all(isinstance(v, int) for v in table.values()):
            raise CheckpointError(f"{path}: expected an object of token -> id")
        for content, idx in table.items():
            out.append((idx, AddedToken(content, normalized=content not in specials, special=content in specials)))
        listed = set(table)
        for key in SPECIAL_TOKEN_KEYS:
            content = special[key]
            if content not in listed:
                listed.add(content)
                out.append((None, AddedToken(content, normalized=key in NORMALIZED_SPECIALS, special=True)))
    return sorted(out, key=lambda t: (t[0] is None, t[0] or 0))


def load_tokenizer(directory) -> LoadedTokenizer:
    """The tokenizer of a DeBERTa-v2/v3 directory (tokenizer.json, else spm.model) with its added tokens,
    token for token what ``AutoTokenizer.from_pretrained(directory)`` gives, without transformers."""
    from tokenizers import Tokenizer

    directory = Path(directory)
    cfg_path = directory / "tokenizer_config.json"
    config = _read_json(cfg_path) if cfg_path.is_file() else {}
    if not isinstance(config, dict):
        raise CheckpointError(f"{cfg_path}: expected a JSON object")
    special = _special_tokens(directory, config)
    tok_json, spm_path = directory / "tokenizer.json", directory / "spm.model"
    try:
        if tok_json.is_file():
            tok = Tokenizer.from_file(str(tok_json))
        elif spm_path.is_file():
            cls = config.get("tokenizer_class")
            if cls is not None and cls not in DEBERTA_TOKENIZER_CLASSES:
                raise CheckpointError(f"{directory}: no tokenizer.json, and spm.model of a {cls} is converted "
                                      f"only by transformers; {EXTRA_HINT}")
            tok = deberta_spm_tokenizer(spm_path.read_bytes(), do_lower_case=bool(config.get("do_lower_case", False)),
                                        split_by_punct=bool(config.get("split_by_punct", False)))
        else:
            raise CheckpointError(f"{directory}: no tokenizer.json (or DeBERTa spm.model) to build the tokenizer "
                                  f"from; {EXTRA_HINT} from other tokenizer files")
    except CheckpointError:
        raise
    except Exception as e:  # a damaged file surfaces as many exception types inside the libraries
        bad = tok_json if tok_json.is_file() else spm_path
        raise CheckpointError(f"{bad}: cannot load the tokenizer ({type(e).__name__}: {e})") from None
    tok.no_truncation()
    tok.no_padding()
    for idx, token in _added_tokens(directory, config, special):
        if token.special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
        got = tok.token_to_id(token.content)
        if idx is not None and got != idx:
            raise CheckpointError(f"{directory}: added token {token.content!r} should have id {idx} but gets {got} "
                                  f"(the vocabulary has {tok.get_vocab_size(with_added_tokens=False)} pieces)")
    return LoadedTokenizer(tok, config, special)


def pair_tokenizer_parts(directory):
    """(backend, sep token, pad id, prefix token ids) of PairRM's tokenizer from a directory, without
    transformers: the tuple tokenization.py builds from transformers, the same ids. llm-blender adds the
    four prefix tokens with ``add_tokens`` (no-op where the directory already has them)."""
    loaded = load_tokenizer(directory)
    tok = loaded.tokenizer
    tok.add_tokens(list(SPECIAL_TOKENS))  # plain strings: normalized, not special, as transformers' add_tokens
    sep = loaded.special.get("sep_token") or loaded.special.get("eos_token")
    pad_id = loaded.token_id("pad_token")
    if pad_id is None:
        pad_id = loaded.token_id("eos_token")
    if pad_id is None or tok.token_to_id(sep) is None:
        raise CheckpointError(f"{directory}: the pad or sep token ({loaded.special.get('pad_token')!r}, {sep!r}) "
                              "is not in the tokenizer's vocabulary")
    return tok, sep, int(pad_id), [int(tok.token_to_id(t)) for t in SPECIAL_TOKENS]
