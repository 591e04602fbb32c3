"""The PairRM tokenizer, built exactly as llm-blender builds it, served by the `tokenizers` library.

llm-blender loads ``AutoTokenizer.from_pretrained(model_name)`` (a fast DeBERTa-v2 tokenizer) and then
``add_tokens(["<|source|>", "<|candidate1|>", "<|candidate2|>", "<|candidate|>"])``. We do the same once
(transformers needed only then), save the resulting backend tokenizer as JSON beside the exported
model, and from then on tokenize with `tokenizers` alone: no torch or transformers at serving time.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np

from .checkpoint import SPECIAL_TOKENS, CheckpointError, RankerCheckpoint
from .fast_tokenizer import pair_tokenizer_parts

SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX, CAND_PREFIX = SPECIAL_TOKENS


@dataclass
class PairTokenizer:
    kind: ClassVar[str] = "pair"  # scorer.scorer_for picks the pair scorer by it
    tokenizer: "object"  # tokenizers.Tokenizer
    sep_token: str
    pad_id: int
    source_id: int
    cand1_id: int
    cand2_id: int
    cand_id: int

    # The packer relies on every piece being [CLS] <prefix> ... [SEP]; checked once at load.
    prefix_offset: int = 1

    def encode(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def source_text(self, source: str) -> str:
        # llm-blender's collator: prefix, then every literal separator token becomes a space.
        return (SOURCE_PREFIX + source).replace(self.sep_token, " ")

    def candidate_text(self, candidate: str) -> str:
        return (CAND_PREFIX + candidate).replace(self.sep_token, " ")

    def save(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        meta = {k: getattr(self, k) for k in ("sep_token", "pad_id", "source_id", "cand1_id", "cand2_id", "cand_id", "prefix_offset")}
        (directory / "pair_tokenizer.json").write_text(json.dumps(meta, indent=1))

    @classmethod
    def load(cls, directory: Path) -> "PairTokenizer":
        from tokenizers import Tokenizer

        meta = json.loads((directory / "pair_tokenizer.json").read_text())
        tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
        return cls(tokenizer=tok, **meta)


class _DropMistralRegexWarning:
    """transformers 4.57 warns about "an incorrect regex pattern" for ANY local tokenizer whose config.json
    lacks a recent ``transformers_version`` (a Mistral check with false positives): never true of a
    DeBERTa tokenizer, so that one message is dropped while it loads; everything else is kept."""

    @staticmethod
    def filter(record) -> bool:
        return "incorrect regex pattern" not in str(record.msg)


def _from_transformers(tokenizer_source: str, local_files_only: bool):
    import logging

    from transformers import AutoTokenizer

    log = logging.getLogger("transformers.tokenization_utils_base")
    log.addFilter(_DropMistralRegexWarning)
    try:
        hf = AutoTokenizer.from_pretrained(tokenizer_source, local_files_only=local_files_only)
    finally:
        log.removeFilter(_DropMistralRegexWarning)
    if not hf.is_fast:
        raise CheckpointError(
            f"{tokenizer_source}: could not build a fast tokenizer (install sentencepiece and protobuf "
            "so that transformers can convert spm.model)"
        )
    hf.add_tokens(list(SPECIAL_TOKENS))
    sep = hf.sep_token if hf.sep_token is not None else hf.eos_token
    pad_id = hf.pad_token_id if hf.pad_token_id is not None else hf.eos_token_id
    ids = hf.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    return hf.backend_tokenizer, sep, pad_id, ids


def build_pair_tokenizer(ckpt: RankerCheckpoint) -> PairTokenizer:
    """The tokenizer llm-blender would use for this checkpoint, as a PairTokenizer."""
    import importlib.util

    # Whether transformers is installed, without importing it (the main job never needs it).
    have_transformers = importlib.util.find_spec("transformers") is not None
    if ckpt.tokenizer_dir is None:
        # e.g. the real PairRM names microsoft/deberta-v3-large: llm-blender loads that tokenizer from the
        # HF cache; so do we, offline.
        if not have_transformers:
            raise CheckpointError(
                f"{ckpt.path}: no tokenizer files here and the backbone {ckpt.backbone_name!r} has none "
                "locally; install transformers (blender-fast[export]) to read it from the HF cache, or "
                "copy spm.model / tokenizer.json into the checkpoint directory"
            )
        try:
            backend, sep, pad_id, ids = _from_transformers(ckpt.backbone_name, local_files_only=True)
        except OSError as e:
            raise CheckpointError(
                f"{ckpt.path}: no tokenizer files (spm.model / tokenizer.json) in the checkpoint, and the "
                f"tokenizer of {ckpt.backbone_name!r} is not in the local Hugging Face cache ({e}). "
                "blender-fast never downloads: copy the tokenizer files into the checkpoint directory."
            ) from None
    else:
        try:
            # tokenizer.json or DeBERTa's spm.model, without transformers: the same ids as AutoTokenizer
            # (fast_tokenizer's tests), and no transformers import; transformers only for what it cannot read.
            try:
                backend, sep, pad_id, ids = pair_tokenizer_parts(ckpt.tokenizer_dir)
            except CheckpointError:
                if not have_transformers:
                    raise
                backend, sep, pad_id, ids = _from_transformers(str(ckpt.tokenizer_dir), local_files_only=True)
        except CheckpointError:
            raise
        except Exception as e:  # a damaged file surfaces as many exception types, deep in the libraries
            raise CheckpointError(f"{_tokenizer_files(ckpt.tokenizer_dir)}: cannot load the tokenizer "
                                  f"({type(e).__name__}: {e})") from None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_str(backend.to_str())  # a private copy: we change truncation/padding
    tok.no_truncation()
    tok.no_padding()
    pair_tok = PairTokenizer(tok, sep, int(pad_id), *[int(i) for i in ids])
    _check_layout(pair_tok, ckpt)
    return pair_tok


def _tokenizer_files(directory: Path) -> str:
    """The tokenizer files of a directory, for a message ('DIR/{tokenizer.json,spm.model}')."""
    names = sorted(p.name for p in directory.iterdir() if p.is_file() and (
        p.name.startswith(("tokenizer", "special_tokens", "added_tokens")) or p.suffix == ".model"))
    return f"{directory}/{{{','.join(names)}}}" if names else str(directory)


def _check_layout(tok: PairTokenizer, ckpt: RankerCheckpoint) -> None:
    probe = tok.encode([tok.source_text("a"), tok.candidate_text("b")])
    if probe[0][tok.prefix_offset] != tok.source_id or probe[1][tok.prefix_offset] != tok.cand_id:
        raise CheckpointError(
            f"{ckpt.tokenizer_dir or ckpt.backbone_name}: tokenizer does not produce the PairRM layout "
            f"'[CLS] <|source|> ... [SEP]' (got ids {probe[0][:4]}...)"
        )


# Characters per token of the first cut (cut_before_tokenizing): DeBERTa's pieces average ~4 characters of
# English, so 8 per token keeps a second tokenization rare; a text that needs more doubles its cut.
CUT_CHARS_PER_TOKEN = 8


def cut_before_tokenizing(tokenizer, texts: list[str], keeps: list[int], add_special_tokens: bool) -> list[str]:
    """Each text cut by characters so that tokenizing it costs O(its kept tokens), not O(its length)
    (issue 25.1: a 30 MB instruction was tokenized whole, then cut to 1224 tokens), without changing the
    first ``keep`` ids of its encoding nor whether it is longer than ``keep``.

    Why it is exact: the tokenizers pre-tokenize on the space (Metaspace) and segment each word on its own,
    so a prefix that ends at a space before a word keeps every token of its whole words. A cut is taken at
    C = CUT_CHARS_PER_TOKEN * keep characters, backed off to the last plain space before C (and past the
    run of spaces there: a trailing space would be a token of its own); if that prefix yields at least
    keep + 2 ids (one spare for a trailing [SEP]), its first keep ids are the whole text's. Else (a run of
    whitespace, a long word, a normaliser that folds many characters into one token) C doubles, up to the
    text's length, where the text is kept whole."""
    out = list(texts)
    for i, (text, keep) in enumerate(zip(texts, keeps)):
        chars = CUT_CHARS_PER_TOKEN * max(int(keep), 1)
        while chars < len(text):
            space = text.rfind(" ", 0, chars + 1)
            head = text[:space].rstrip(" ") if space > 0 else ""
            if head and len(tokenizer.encode(head, add_special_tokens=add_special_tokens).ids) >= keep + 2:
                out[i] = head
                break
            chars *= 2
    return out


@dataclass
class EncodedPrompts:
    """All texts of a set of prompts, tokenized once, as flat buffers for the C++ packer."""

    tokens: np.ndarray  # int64, every piece back to back
    offsets: np.ndarray  # int64 [n_texts + 1]
    limits: np.ndarray  # int64 [n_texts]: truncation length of each piece
    source_index: np.ndarray  # int64 [n_prompts]: text index of each prompt's source
    candidate_start: np.ndarray  # int64 [n_prompts + 1]: text indices of each prompt's candidates

    def candidate_index(self, prompt: int, cand: int) -> int:
        return int(self.candidate_start[prompt] + cand)


def encode_prompts(
    tok: PairTokenizer,
    sources: list[str],
    candidates: list[list[str]],
    source_maxlength: int,
    candidate_maxlength: int,
) -> EncodedPrompts:
    """Tokenize each source and each candidate once, and fix every piece's truncation length.

    Truncation follows PairRM: the source to ``source_maxlength`` tokens, each candidate to
    ``candidate_maxlength + (source_maxlength - len(source)) // 2``, where len(source) is this
    prompt's own (truncated) source length. llm-blender's collator uses the longest source in the
    batch instead, so its results for a prompt can depend on its batch-mates; see docs/differences-from-llm-blender.md.
    """
    texts: list[str] = []
    source_index = np.empty(len(sources), dtype=np.int64)
    candidate_start = np.empty(len(sources) + 1, dtype=np.int64)
    for p, (src, cands) in enumerate(zip(sources, candidates)):
        source_index[p] = len(texts)
        texts.append(tok.source_text(src))
        candidate_start[p] = len(texts)
        texts.extend(tok.candidate_text(c) for c in cands)
    candidate_start[len(sources)] = len(texts)
    # Each piece's most tokens: a candidate's limit grows by half what its source leaves unused (below).
    keeps = np.full(len(texts), candidate_maxlength + source_maxlength // 2, dtype=np.int64)
    keeps[source_index] = source_maxlength
    pieces = tok.encode(cut_before_tokenizing(tok.tokenizer, texts, keeps.tolist(), add_special_tokens=True))
    lengths = np.fromiter((len(p) for p in pieces), dtype=np.int64, count=len(pieces))
    offsets = np.zeros(len(pieces) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    tokens = np.fromiter((t for p in pieces for t in p), dtype=np.int64, count=int(offsets[-1]))
    limits = np.empty(len(pieces), dtype=np.int64)
    for p in range(len(sources)):
        s = source_index[p]
        limits[s] = source_maxlength
        src_len = min(int(lengths[s]), source_maxlength)
        limits[candidate_start[p] : candidate_start[p + 1]] = (
            candidate_maxlength + (source_maxlength - src_len) // 2
        )
    return EncodedPrompts(tokens, offsets, limits, source_index, candidate_start)
