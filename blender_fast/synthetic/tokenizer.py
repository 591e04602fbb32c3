"""SentencePiece unigram tokenizers trained locally (no downloads), for the synthetic ranker and fuser.

The training text ships with every CPython install: ``pydoc_data.topics`` and the docstrings of the
standard library sources, plus the hand-written English word lists in ``words.txt`` (package data).
The text is read at generation time and never stored in the repository. Trained models are cached
per process and on disk (``cache.cache_root() / "spm"``).
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import sys
import tempfile
import threading
from collections import Counter
from typing import Dict, Iterator, List, NamedTuple, Optional, Tuple

from ..model import cache
from .common import require, require_transformers4, sha256

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
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    counts.update(doc.split())
    return counts


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

_SPM_LOCK = threading.Lock()
_SPM_MEMO: Dict[Tuple, bytes] = {}
_CORPUS_MEMO: List = []


def _spm_cache_dir() -> pathlib.Path:
    return cache.cache_root() / "spm"


def _train_spm(kind: str, vocab_size: int) -> bytes:
    """Train (or fetch from the process/disk cache) a unigram SentencePiece model; returns its bytes."""
    spm = require("sentencepiece")
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
        {"v": _SPM_VERSION, "py": sys.version, "stdlib": sys.prefix, "spm": spm.__version__,
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
                spm.SentencePieceProcessor(model_proto=data)
                _SPM_MEMO[memo_key] = data
                return data
            except Exception:  # corrupt cache entry: retrain
                pass
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
    """
    pb = require("sentencepiece.sentencepiece_model_pb2")
    proto = pb.ModelProto()
    proto.ParseFromString(data)
    proto.trainer_spec.input[:] = ["words.tsv"]
    proto.trainer_spec.model_prefix = "spm"
    for piece in proto.pieces:
        if piece.type == pb.ModelProto.SentencePiece.NORMAL:
            piece.score = round(piece.score * 4096.0) / 4096.0
    return proto.SerializeToString(deterministic=True)


def _filler_piece(i: int) -> str:
    """i-th filler piece: a single Supplementary Private Use character (never in normal text)."""
    if i < 65534:
        return chr(0xF0000 + i)
    if i < 2 * 65534:
        return chr(0x100000 + i - 65534)
    raise ValueError("too many filler pieces")


def _pad_spm(data: bytes, n_pieces: int) -> bytes:
    """Append filler pieces so the model has exactly n_pieces pieces (no-op if it has that many)."""
    pb = require("sentencepiece.sentencepiece_model_pb2")
    proto = pb.ModelProto()
    proto.ParseFromString(data)
    have = len(proto.pieces)
    if have > n_pieces:
        raise ValueError(f"spm model already has {have} > {n_pieces} pieces")
    if have == n_pieces:
        return data
    normal = pb.ModelProto.SentencePiece.NORMAL
    # The lowest existing score: unchanged min score => unchanged unknown-piece penalty.
    min_score = min(p.score for p in proto.pieces if p.type == normal)
    existing = {p.piece for p in proto.pieces}
    i = 0
    while len(proto.pieces) < n_pieces:
        piece = _filler_piece(i)
        i += 1
        if piece in existing:
            continue
        new = proto.pieces.add()
        new.piece = piece
        new.score = min_score
        new.type = normal
    proto.trainer_spec.vocab_size = n_pieces
    return proto.SerializeToString(deterministic=True)


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
    spm = require("sentencepiece")
    return spm.SentencePieceProcessor(model_proto=data).get_piece_size()


class SpmFile(NamedTuple):
    path: pathlib.Path  # spm.model in a temporary directory
    pieces: int
    sha256: str  # recorded in the generated checkpoint's metadata


@contextlib.contextmanager
def deberta_spm_file(shape: str) -> Iterator[SpmFile]:
    """The DeBERTa-v3 SentencePiece model of a generated checkpoint (``tiny``: the trained vocabulary only,
    else padded to deberta-v3's 128000 pieces), written as spm.model for the tokenizers, which read it by
    path; the file exists while the block runs (``save_pretrained`` copies it)."""
    data = english_spm_model("deberta", None if shape == "tiny" else DEBERTA_V3_SPM_PIECES)
    with tempfile.TemporaryDirectory(prefix="blender_fast_tok_") as tmp:
        path = pathlib.Path(tmp) / "spm.model"
        path.write_bytes(data)
        yield SpmFile(path, spm_num_pieces(data), sha256(data))


def deberta_tokenizer(spm_path: pathlib.Path, with_prefix_tokens: bool):
    from ..model.checkpoint import SPECIAL_TOKENS

    transformers = require_transformers4()
    tok = transformers.DebertaV2TokenizerFast(vocab_file=str(spm_path), do_lower_case=False,
                                              split_by_punct=False)
    if with_prefix_tokens:
        tok.add_tokens(list(SPECIAL_TOKENS))
    return tok


def t5_tokenizer(spm_path: pathlib.Path):
    transformers = require_transformers4()
    # legacy=True + add_prefix_space=True: flan-t5's behaviour ("▁" before the text that follows
    # a special token), identical in the slow (sentencepiece) and the fast tokenizer.
    return transformers.T5TokenizerFast(vocab_file=str(spm_path), extra_ids=T5_EXTRA_IDS,
                                        legacy=True, add_prefix_space=True, model_max_length=512)
