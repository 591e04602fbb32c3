"""SentencePiece unigram tokenizers trained locally (no downloads), for the synthetic ranker and fuser.

The training text ships with every CPython install: ``pydoc_data.topics`` and the docstrings of the
standard library sources, plus the hand-written English word lists in ``words.txt`` (package data).
The text is read at generation time and never stored in the repository. Trained models are cached
per process and on disk (``cache.cache_root() / "spm"``).
"""
from __future__ import annotations

from ..model.onnx_builder import protobuf_varint

import hashlib
import json
import os
import pathlib
import struct
import sys
import tempfile
import threading
from collections import Counter
from typing import Dict, List, NamedTuple, Optional, Tuple

from ..model import cache
from ..model.fast_tokenizer import parse_spm_model, protobuf_fields
from .common import require, require_transformers4, sha256, write_sorted_json

# Bump when the tokenizer training changes (corpus, trainer args, post-processing): it keys the
# on-disk cache of trained SentencePiece models (the word lists are hashed into the key too).
_SPM_VERSION = 3

# Pieces of the real deberta-v3 spm.model (the tokenizer has one more: [MASK]); the real
# backbone's embedding matrix has 100 rows more than the piece count (128100).
DEBERTA_V3_SPM_PIECES = 128000
DEBERTA_EXTRA_EMBEDDING_ROWS = 100
# Number of pieces the locally trained SentencePiece model aims for (the flan-t5 piece count).
_TRAINED_PIECES = 32000
T5_PIECES = 32000
T5_EXTRA_IDS = 100

WORDS_FILE = pathlib.Path(__file__).with_name("words.txt")
# The sections of words.txt, in order, with the weight of the section and how its words inflect.
WORD_SECTIONS = ("function_words", "irregular_words", "verbs", "nouns", "adjectives", "adverbs_other",
                 "proper_words", "symbol_words")


def word_lists() -> Dict[str, str]:
    """words.txt's sections, each as one string (its lines, newline-separated and -framed)."""
    sections: Dict[str, List[str]] = {}
    current = None
    for line in WORDS_FILE.read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
            sections[current] = []
        elif current is None:
            raise ValueError(f"{WORDS_FILE}: words before the first [section]")
        else:
            sections[current].append(line)
    missing = [s for s in WORD_SECTIONS if s not in sections]
    if missing:
        raise ValueError(f"{WORDS_FILE}: missing sections {missing}")
    return {name: "\n" + "\n".join(sections[name]) + "\n" for name in WORD_SECTIONS}


_VOWELS = frozenset("aeiou")


def _short_cvc(w: str) -> bool:
    """Short consonant-vowel-consonant word whose last letter doubles: stop -> stopped."""
    if len(w) not in (3, 4) or w[-1] in _VOWELS or w[-1] in "wxy" or w[-2] not in _VOWELS:
        return False
    return w[-3] not in _VOWELS and (len(w) == 3 or w[0] not in _VOWELS)


def _plural(w: str) -> str:
    if w.endswith(("s", "x", "z", "ch", "sh")):
        return w + "es"
    if w.endswith("y") and len(w) > 1 and w[-2] not in _VOWELS:
        return w[:-1] + "ies"
    return w + "s"


def _past(w: str) -> str:
    if w.endswith("e"):
        return w + "d"
    if w.endswith("y") and len(w) > 1 and w[-2] not in _VOWELS:
        return w[:-1] + "ied"
    if _short_cvc(w):
        return w + w[-1] + "ed"
    return w + "ed"


def _gerund(w: str) -> str:
    if w.endswith("ie"):
        return w[:-2] + "ying"
    if w.endswith("e") and not w.endswith("ee") and len(w) > 2:
        return w[:-1] + "ing"
    if _short_cvc(w):
        return w + w[-1] + "ing"
    return w + "ing"


def _adverb(w: str) -> str:
    if w.endswith("le"):
        return w[:-1] + "y"
    if w.endswith("ic"):
        return w + "ally"
    if w.endswith("y"):
        return w[:-1] + "ily"
    return w + "ly"


def _wordlist_counts(total: float) -> Counter:
    """Zipf-like counts (summing to ~total) for the hand-written word list and its inflections."""
    words = word_lists()
    inflections = {
        "function_words": (4.0, lambda w: []),
        "irregular_words": (1.0, lambda w: []),
        "verbs": (1.0, lambda w: [(_plural(w), 0.3), (_past(w), 0.4), (_gerund(w), 0.4)]),
        "nouns": (1.0, lambda w: [(_plural(w), 0.5)]),
        "adjectives": (1.0, lambda w: [(_adverb(w), 0.2)]),
        "adverbs_other": (1.0, lambda w: []),
        "proper_words": (0.5, lambda w: []),
        "symbol_words": (0.3, lambda w: []),
    }
    sections = [(words[name], *inflections[name]) for name in WORD_SECTIONS]
    weights: Dict[str, float] = {}
    for text, mult, inflect in sections:
        for rank, word in enumerate(dict.fromkeys(text.split())):
            base = mult / (rank + 10)
            for form, frac in [(word, 1.0)] + inflect(word):
                for variant, f in ((form, 1.0), (form[:1].upper() + form[1:], 1.0 / 6)):
                    weights[variant] = weights.get(variant, 0.0) + base * frac * f
    norm = total / sum(weights.values())
    return Counter({w: max(1, int(round(v * norm))) for w, v in weights.items()})


def _stdlib_docstring_words() -> Counter:
    """Whitespace-split words of the docstrings in CPython's standard library sources."""
    import ast
    import sysconfig

    counts: Counter = Counter()
    stdlib = pathlib.Path(sysconfig.get_paths()["stdlib"])
    files = sorted(stdlib.glob("*.py")) + sorted(stdlib.glob("*/*.py"))
    skip = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__"}
    for path in files:
        if skip.intersection(path.relative_to(stdlib).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError, RecursionError, MemoryError):
            continue
        for node in statement_nodes(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    counts.update(doc.split())
    return counts


def statement_nodes(tree):
    """ast.walk's nodes in ast.walk's order (breadth first), without descending into expressions: a
    docstring's owner (module, class, function) is always a statement, and statements sit only under
    statements, except handlers and match cases. Pruning whole subtrees keeps the order of what remains,
    so the word counts (and the trained tokenizer) are unchanged, in about a quarter less time (3.3 -> 2.4 s
    here) on the main job's cold start (tests/synthetic: the same owners as ast.walk's, in its order)."""
    import ast
    from collections import deque

    blocks = (ast.stmt, ast.excepthandler, ast.match_case)
    todo = deque([tree])
    while todo:
        node = todo.popleft()
        todo.extend(child for child in ast.iter_child_nodes(node) if isinstance(child, blocks))
        yield node


def _english_word_counts() -> Tuple[Counter, Dict[str, int]]:
    """Word frequency table the tokenizers are trained on, and a summary of where it came from."""
    counts: Counter = Counter()
    try:
        from pydoc_data.topics import topics
    except ImportError:  # pragma: no cover - stripped Python installs
        topics = {}
    for key in sorted(topics):
        counts.update(topics[key].split())
    n_topics = sum(counts.values())
    doc_counts = _stdlib_docstring_words()
    counts.update(doc_counts)
    n_docs = sum(doc_counts.values())
    n_real = n_topics + n_docs
    # The documentation is technical; the word list (about 2x its size in virtual tokens) gives
    # the vocabulary everyday English words, like a general-domain corpus would.
    counts.update(_wordlist_counts(2.0 * max(n_real, 50_000)))
    summary = {"pydoc_topics_words": n_topics, "stdlib_docstring_words": n_docs,
               "wordlist_entries": len(_wordlist_counts(1.0))}
    return counts, summary


_SPM_KINDS = {
    # DeBERTa-v3: [PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3 ([MASK] is added by the HF tokenizer).
    "deberta": dict(pad_id=0, pad_piece="[PAD]", bos_id=1, bos_piece="[CLS]", eos_id=2,
                    eos_piece="[SEP]", unk_id=3, unk_piece="[UNK]"),
    # T5: <pad>=0 </s>=1 <unk>=2, no BOS (the 100 <extra_id_i> are added by the HF tokenizer).
    "t5": dict(pad_id=0, pad_piece="<pad>", eos_id=1, eos_piece="</s>", unk_id=2,
               unk_piece="<unk>", bos_id=-1),
}

def _installed_version(name: str) -> str:
    """A package's version without importing it (the cache key; "none" when absent)."""
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "none"


_SPM_TRAINER_VERSION = _installed_version("sentencepiece")
_SPM_LOCK = threading.Lock()
_SPM_MEMO: Dict[Tuple, bytes] = {}
_CORPUS_MEMO: List = []


def _spm_cache_dir() -> pathlib.Path:
    return cache.cache_root() / "spm"


def _train_spm(kind: str, vocab_size: int) -> bytes:
    """Train (or fetch from the process/disk cache) a unigram SentencePiece model; returns its bytes.

    A cached model is read and checked without the sentencepiece package (parse_spm_model): only a cold
    cache trains, and only training needs sentencepiece (and protobuf)."""
    trainer_args = dict(
        model_type="unigram",
        vocab_size=vocab_size,
        character_coverage=1.0,
        hard_vocab_limit=False,  # a smaller corpus (other Python versions) gives fewer pieces
        num_threads=1,  # deterministic
        minloglevel=2,
        **_SPM_KINDS[kind],
    )
    words = "|".join(word_lists().values())
    key_src = json.dumps(
        {"v": _SPM_VERSION, "py": sys.version, "stdlib": sys.prefix, "spm": _SPM_TRAINER_VERSION,
         "args": trainer_args, "words": sha256(words.encode("utf-8"))}, sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:24]
    memo_key = (kind, vocab_size)
    with _SPM_LOCK:
        if memo_key in _SPM_MEMO:
            return _SPM_MEMO[memo_key]
        cache_dir = _spm_cache_dir()
        cached = cache_dir / f"{kind}-{vocab_size}-{key}.model"
        if cached.is_file():
            data = cached.read_bytes()
            try:
                parse_spm_model(data)
                _SPM_MEMO[memo_key] = data
                return data
            except ValueError:  # corrupt cache entry: retrain
                pass
        spm = require("sentencepiece")
        if not _CORPUS_MEMO:
            _CORPUS_MEMO.append(_english_word_counts())
        counts, _ = _CORPUS_MEMO[0]
        with tempfile.TemporaryDirectory(prefix="blender_fast_spm_") as tmp:
            tsv = pathlib.Path(tmp) / "words.tsv"
            with open(tsv, "w", encoding="utf-8") as f:
                # Each word twice per line: the unigram seeder only proposes substrings that occur
                # at least twice in the (unweighted) text; the count column carries the frequency.
                for word, n in sorted(counts.items()):
                    f.write(f"{word} {word}\t{(n + 1) // 2}\n")
            model_path = pathlib.Path(tmp) / "m"
            # fixed seed for any sampling the trainer does (the output is then reproducible)
            spm.set_random_generator_seed(1234)
            spm.SentencePieceTrainer.train(input=str(tsv), input_format="tsv",
                                           model_prefix=str(model_path), **trainer_args)
            data = _canonicalize_spm(model_path.with_suffix(".model").read_bytes())
        tmp_path = cached.with_suffix(f".tmp{os.getpid()}")
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp_path.write_bytes(data)
            os.replace(tmp_path, cached)
        except OSError:  # an unwritable (or full) cache only costs retraining; no half-written file is left
            tmp_path.unlink(missing_ok=True)
        _SPM_MEMO[memo_key] = data
        return data


def _canonicalize_spm(data: bytes) -> bytes:
    """Make a freshly trained model reproducible and fast/slow-consistent.

    * The trainer records its (temporary) input and output paths in trainer_spec: blank them.
    * Round piece scores to multiples of 2**-12: segment scores are then sums computed exactly
      in both float32 (sentencepiece) and float64 (tokenizers), so the slow and fast tokenizers
      only disagree on exact ties (about 1 text in 1000).

    Rewritten field by field without protobuf (the fields keep their order, which is field-number order
    as sentencepiece writes them), which gives the bytes protobuf's deterministic serializer gave.
    """
    out = bytearray()
    for number, wire, value in protobuf_fields(data):
        if number == 1 and wire == 2:  # a piece: round a NORMAL piece's score
            fields = list(protobuf_fields(value))
            kind = next((v for n, w, v in fields if n == 3 and w == 0), 1)
            body = bytearray()
            for n, w, v in fields:
                if n == 2 and w == 5 and kind == 1:
                    v = struct.pack("<f", round(struct.unpack("<f", v)[0] * 4096.0) / 4096.0)
                body += _pb_field(n, w, v)
            out += _pb_bytes(1, bytes(body))
        elif number == 2 and wire == 2:  # trainer_spec: input (1) and model_prefix (2) first
            body = bytearray(_pb_bytes(1, b"words.tsv") + _pb_bytes(2, b"spm"))
            for n, w, v in protobuf_fields(value):
                if n not in (1, 2):
                    body += _pb_field(n, w, v)
            out += _pb_bytes(2, bytes(body))
        else:
            out += _pb_field(number, wire, value)
    return bytes(out)


def _filler_piece(i: int) -> str:
    """i-th filler piece: a single Supplementary Private Use character (never in normal text)."""
    if i < 65534:
        return chr(0xF0000 + i)
    if i < 2 * 65534:
        return chr(0x100000 + i - 65534)
    raise ValueError("too many filler pieces")


def _pb_key(number: int, wire: int) -> bytes:
    return protobuf_varint(number << 3 | wire)


def _pb_bytes(number: int, payload: bytes) -> bytes:
    return _pb_key(number, 2) + protobuf_varint(len(payload)) + payload


def _pb_field(number: int, wire: int, value) -> bytes:
    """One field as protobuf_fields read it, written back (varints minimal, as protobuf writes them)."""
    if wire == 0:
        return _pb_key(number, 0) + protobuf_varint(value)
    if wire == 2:
        return _pb_bytes(number, bytes(value))
    return _pb_key(number, wire) + bytes(value)  # fixed 32/64-bit


def _pad_spm(data: bytes, n_pieces: int) -> bytes:
    """Append filler pieces so the model has exactly n_pieces pieces (no-op if it has that many).

    Written without protobuf: a message's repeated field may continue after its other fields (pieces are
    numbered in the order they appear), and a second trainer_spec occurrence merges into the first (its
    vocab_size is updated)."""
    model = parse_spm_model(data)
    have = len(model.pieces)
    if have > n_pieces:
        raise ValueError(f"spm model already has {have} > {n_pieces} pieces")
    if have == n_pieces:
        return data
    # The lowest existing score: unchanged min score => unchanged unknown-piece penalty.
    min_score = min(score for _, score, kind in model.pieces if kind == 1)
    existing = {piece for piece, _, _ in model.pieces}
    # SentencePiece {piece = 1; score = 2 (float); type = 3 (NORMAL = 1)}, the same tail for every filler
    tail = _pb_key(2, 5) + struct.pack("<f", min_score) + _pb_key(3, 0) + protobuf_varint(1)
    out = [data]
    i = 0
    while have < n_pieces:
        piece = _filler_piece(i)
        i += 1
        if piece in existing:
            continue
        have += 1
        out.append(_pb_bytes(1, _pb_bytes(1, piece.encode("utf-8")) + tail))
    out.append(_pb_bytes(2, _pb_key(4, 0) + protobuf_varint(n_pieces)))  # trainer_spec.vocab_size
    return b"".join(out)


def english_spm_model(kind: str = "deberta", n_pieces: Optional[int] = None) -> bytes:
    """Serialized SentencePiece unigram model trained on local English text.

    kind: "deberta" (DeBERTa-v3 special pieces) or "t5" (T5 special pieces).
    n_pieces: pad with filler pieces (that never match normal text) to exactly this many pieces;
    None keeps the trained vocabulary (about 32000 pieces).
    """
    if kind not in _SPM_KINDS:
        raise ValueError(f"kind must be one of {sorted(_SPM_KINDS)}")
    data = _train_spm(kind, _TRAINED_PIECES)
    if n_pieces is not None:
        data = _pad_spm(data, n_pieces)
    return data


def spm_num_pieces(data: bytes) -> int:
    return len(parse_spm_model(data).pieces)


class SpmData(NamedTuple):
    data: bytes  # the serialized SentencePiece model (spm.model)
    pieces: int
    sha256: str  # recorded in the generated checkpoint's metadata


def deberta_spm(shape: str) -> SpmData:
    """The DeBERTa-v3 SentencePiece model of a generated checkpoint: ``tiny``, the trained vocabulary only,
    else padded to deberta-v3's 128000 pieces."""
    data = english_spm_model("deberta", None if shape == "tiny" else DEBERTA_V3_SPM_PIECES)
    return SpmData(data, spm_num_pieces(data), sha256(data))


# transformers' LARGE_INTEGER: the model_max_length a tokenizer_config.json without a limit records.
_NO_LENGTH_LIMIT = int(1e30)


def _added(content: str, special: bool, normalized: bool) -> dict:
    return {"content": content, "lstrip": False, "normalized": normalized, "rstrip": False,
            "single_word": False, "special": special}


def write_deberta_tokenizer(directory: pathlib.Path, spm: SpmData, with_prefix_tokens: bool) -> Dict[str, int]:
    """Write DeBERTa-v3 tokenizer files (spm.model, tokenizer.json, tokenizer_config.json,
    special_tokens_map.json, added_tokens.json) as transformers' ``DebertaV2TokenizerFast.save_pretrained``
    writes them, without transformers: the JSON files by hand, tokenizer.json from the blender_fast loader
    itself (model/fast_tokenizer.py), so what is written is what is read. with_prefix_tokens adds PairRM's
    four prefix tokens after [MASK] (as llm-blender's add_tokens does). Returns {token: id} of the added
    tokens."""
    from ..model.checkpoint import SPECIAL_TOKENS
    from ..model.fast_tokenizer import load_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "spm.model").write_bytes(spm.data)
    n = spm.pieces
    decoder = {"0": _added("[PAD]", True, False), "1": _added("[CLS]", True, False),
               "2": _added("[SEP]", True, False), "3": _added("[UNK]", True, True),
               str(n): _added("[MASK]", True, False)}
    added = {"[MASK]": n}
    if with_prefix_tokens:
        for i, token in enumerate(SPECIAL_TOKENS):
            decoder[str(n + 1 + i)] = _added(token, False, True)
            added[token] = n + 1 + i
    specials = {"bos_token": "[CLS]", "cls_token": "[CLS]", "eos_token": "[SEP]", "mask_token": "[MASK]",
                "pad_token": "[PAD]", "sep_token": "[SEP]", "unk_token": "[UNK]"}
    config = {"added_tokens_decoder": decoder, **specials, "clean_up_tokenization_spaces": False,
              "do_lower_case": False, "extra_special_tokens": {}, "model_max_length": _NO_LENGTH_LIMIT,
              "sp_model_kwargs": {}, "split_by_punct": False, "tokenizer_class": "DebertaV2Tokenizer"}
    special_map = {**specials, "unk_token": {k: v for k, v in _added("[UNK]", True, True).items() if k != "special"}}
    for name, obj in (("tokenizer_config.json", config), ("special_tokens_map.json", special_map),
                      ("added_tokens.json", added)):
        write_sorted_json(directory / name, obj)
    tok_json = directory / "tokenizer.json"
    if tok_json.exists():
        tok_json.unlink()  # the loader would read it instead of converting spm.model
    load_tokenizer(directory).tokenizer.save(str(tok_json))
    return added


class _DropAddPrefixSpaceNotice:
    """T5TokenizerFast logs "You set `add_prefix_space`. The tokenizer needs to be converted from the slow
    tokenizers" whenever add_prefix_space is passed. Here that conversion from spm.model is the point (there
    is no tokenizer.json yet; we build it), so that one message is dropped while the generator builds the
    tokenizer; every other message stays."""

    @staticmethod
    def filter(record) -> bool:
        return "You set `add_prefix_space`" not in str(record.msg)


def t5_tokenizer(spm_path: pathlib.Path):
    import logging

    transformers = require_transformers4()
    log = logging.getLogger("transformers.models.t5.tokenization_t5_fast")
    log.addFilter(_DropAddPrefixSpaceNotice)
    try:
        # legacy=True + add_prefix_space=True: flan-t5's behaviour ("▁" before the text that follows
        # a special token), identical in the slow (sentencepiece) and the fast tokenizer.
        return transformers.T5TokenizerFast(vocab_file=str(spm_path), extra_ids=T5_EXTRA_IDS,
                                            legacy=True, add_prefix_space=True, model_max_length=512)
    finally:
        log.removeFilter(_DropAddPrefixSpaceNotice)
