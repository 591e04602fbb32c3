"""Ranker: PairRM scores, ranks, comparisons and sub-n^2 selection over packed pair batches."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from . import _core
from .model.checkpoint import SPECIAL_TOKENS, load_checkpoint
from .options import (BACKEND_CHOICES, BACKENDS, COMPARE_MODES, DEVICE_CHOICES, DEVICES,  # noqa: F401
                      PRECISION_CHOICES, PRECISIONS, check_choice)
from .selection.cascade import cascade_mode, certified, check_eps
from .selection.steps import Step, run_steps
from .selection.strategies import PromptError, Selection, ranks_from_scores, select_steps
from .model.tokenization import EncodedPrompts, PairTokenizer, encode_prompts

# Tokens per batch (rows x longest row). On a CPU bigger batches buy nothing once a batch holds a few
# sequences (each is already hundreds of GEMM rows) and cost cache misses in the T x T attention maps.
DEFAULT_TOKEN_BUDGET = {"cpu": 4096, "cuda": 32768}
DEFAULT_MAX_BATCH = 64
# What an exported model directory holds (export.export_onnx writes them all).
EXPORTED_FILES = ("model.onnx", "tokenizer.json", "pair_tokenizer.json", "export.json")
# The fixed cost of one model call, in tokens, for the batch planner: on a CPU a padded token costs as
# much as a real one and a call ~1 ms (about one token of xsmall); on a GPU calls dominate.
DEFAULT_BATCH_COST = {"cpu": 16, "cuda": 4096}


@dataclass
class RunStats:
    """Where the time of the last call went, and how much of its batches was padding."""

    pairs: int = 0
    batches: int = 0
    tokens: int = 0  # real tokens run through the model
    pad_tokens: int = 0
    tokenize_s: float = 0.0
    pack_s: float = 0.0
    model_s: float = 0.0
    steps: int = 0

    @property
    def pad_fraction(self) -> float:
        total = self.tokens + self.pad_tokens
        return self.pad_tokens / total if total else 0.0


def check_text(name: str, text: str) -> None:
    """A lone surrogate (e.g. '\ud800', from a bad JSON escape) has no UTF-8 form: tokenizers fail on it
    deep inside with an unhelpful message, so it is named here."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{name} contains a lone surrogate {text[e.start]!r} at character {e.start}, "
                             "which is not valid Unicode text") from None


def check_prompts(inputs, candidates, instructions=None) -> tuple[list[str], list[list[str]]]:
    """Validate the user's lists once, naming the offending prompt; return sources and candidates."""
    if isinstance(inputs, str) or not isinstance(inputs, Sequence):
        raise TypeError(f"inputs must be a list of strings, got {type(inputs).__name__}")
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise TypeError(f"candidates must be a list of lists of strings, got {type(candidates).__name__}")
    if len(inputs) != len(candidates):
        raise ValueError(f"got {len(inputs)} inputs but {len(candidates)} candidate lists")
    if instructions is not None:
        if isinstance(instructions, str) or len(instructions) != len(inputs):
            raise ValueError(
                f"instructions must be None or a list with one string per input ({len(inputs)})"
            )
    sources, cand_lists = [], []
    for p, (inp, cands) in enumerate(zip(inputs, candidates)):
        if not isinstance(inp, str):
            raise TypeError(f"inputs[{p}] must be a string, got {type(inp).__name__}")
        inst = "" if instructions is None else instructions[p]
        if not isinstance(inst, str):
            raise TypeError(f"instructions[{p}] must be a string, got {type(inst).__name__}")
        if isinstance(cands, str) or not isinstance(cands, Sequence):
            raise TypeError(f"candidates[{p}] must be a list of strings, got {type(cands).__name__}")
        if len(cands) == 0:
            raise ValueError(f"candidates[{p}] is empty: each input needs at least one candidate")
        for c, cand in enumerate(cands):
            if not isinstance(cand, str):
                raise TypeError(f"candidates[{p}][{c}] must be a string, got {type(cand).__name__}")
        # llm-blender prepends the instruction to the input with no separator; so do we.
        source = inst + inp
        for name, text in [(f"inputs[{p}]", source)] + [(f"candidates[{p}][{c}]", t) for c, t in enumerate(cands)]:
            check_text(name, text)
            for special in SPECIAL_TOKENS:
                if special in text:
                    raise ValueError(
                        f"{name} contains the reserved marker {special!r}, which PairRM uses to find the "
                        "source and candidates; remove or escape it"
                    )
        sources.append(source)
        cand_lists.append(list(cands))
    return sources, cand_lists


def is_exported_dir(path) -> bool:
    """A directory written by ``export_onnx``: the model, its tokenizer and export.json, no checkpoint needed."""
    p = Path(path)
    return all((p / name).is_file() for name in EXPORTED_FILES)


def read_export_meta(path: Path) -> dict:
    meta_path = Path(path) / "export.json"
    try:
        meta = json.loads(meta_path.read_text())
        int(meta["source_maxlength"]), int(meta["candidate_maxlength"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: unreadable export metadata ({type(e).__name__}: {e}); re-export the "
                         "model (blender-fast export CHECKPOINT --out DIR)") from None
    return meta


def _stack_if_equal(rows: list[np.ndarray]):
    """llm-blender returns one array when every prompt has n candidates; ragged input gets a list."""
    if rows and all(len(r) == len(rows[0]) for r in rows):
        return np.stack(rows)
    return rows


class Ranker:
    """PairRM over ONNX Runtime (default) or torch, fed by the C++ pair packer."""

    def __init__(self, model: Callable, tokenizer: PairTokenizer, source_maxlength: int, candidate_maxlength: int,
                 token_budget: int = DEFAULT_TOKEN_BUDGET["cpu"], max_batch_size: int = DEFAULT_MAX_BATCH, progress: bool = False,
                 batch_cost: int = DEFAULT_BATCH_COST["cpu"]):
        if token_budget < 1 or max_batch_size < 1:
            raise ValueError("token_budget and max_batch_size must be positive")
        if batch_cost < 0:
            raise ValueError(f"batch_cost must be >= 0, got {batch_cost}")
        # Models by name (selection/steps.py: a Step names the model that scores its rows): "default", and
        # "exact" (fp32) when the certified cascade is on.
        self.models: dict[str, Callable] = {"default": model}
        self.cascade_eps: float | None = None  # the per-row bound |default - exact| the cascade trusts
        self.tokenizer = tokenizer
        self.source_maxlength = source_maxlength
        self.candidate_maxlength = candidate_maxlength
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.progress = progress
        self.batch_cost = batch_cost
        self.last_stats = RunStats()
        self.engine_info: dict = {}  # what from_pretrained chose and why (describe())

    @property
    def model(self) -> Callable:
        """The default model (the fast pass when the cascade is on)."""
        return self.models["default"]

    @model.setter
    def model(self, value: Callable) -> None:
        # A new dict, never an update in place: a shallow copy of this ranker (copy.copy) shares the old
        # dict, and setting the copy's model must not change the original's.
        self.models = {**self.models, "default": value}

    def enable_cascade(self, exact_model: Callable, eps: float) -> None:
        """Run the certified cascade (selection/cascade.py): every pair on the default (fast) model, and
        the pairs whose outcome the bound ``eps`` cannot certify again on ``exact_model`` (fp32); answers
        then equal the all-fp32 ones whenever every fast logit is within ``eps`` of the exact one.
        ``compare()`` (logit values, nothing to certify) runs on the exact model."""
        self.cascade_eps = check_eps(eps)
        self.models = {**self.models, "exact": exact_model}  # a new dict: see the model setter

    def describe(self) -> dict:
        """How this ranker runs: backend, precision, device, threads, CPU model and ISA features, and why
        (the reason is auto-selection's when precision/backend was "auto")."""
        from .runtime.autoselect import cpu_features

        cpu = cpu_features()
        info = {"backend": None, "precision": None, "device": None, "threads": None, "reason": "constructed directly"}
        info.update(self.engine_info)
        info.update(cpu_model=cpu["cpu_model"], isa=cpu["isa"], logical_cores=cpu["logical_cores"],
                    fp32_islands=list(getattr(self.model, "keep_fp32", ())))
        return info

    @classmethod
    def from_pretrained(cls, path, backend: str = "onnx", device: str = "cpu", precision: str | None = None, *,
                        threads: int | None = None, cache_dir=None, token_budget: int | None = None,
                        max_batch_size: int = DEFAULT_MAX_BATCH, source_maxlength: int | None = None,
                        candidate_maxlength: int | None = None, progress: bool = False,
                        batch_cost: int | None = None) -> "Ranker":
        """Load a PairRM checkpoint directory (llm-blender or PairRM-hf layout), or an exported one.

        backend="onnx" exports the checkpoint to ONNX on first use and caches it (keyed by a hash of the
        weights and export options); precision "int8" is ONNX Runtime dynamic quantization (CPU).
        backend="torch" runs the same graph in torch eager, fp32, fp16 or bf16 (bf16 keeps layer norms and
        the head in fp32); backend="openvino" runs the exported graph on OpenVINO's CPU plugin (fp32, bf16).
        device="auto" is cuda when the backend sees a GPU, else cpu. precision=None: fp32 for a checkpoint.
        precision="auto" / backend="auto" pick the fastest variant that this CPU supports and that passed
        the agreement gate for this checkpoint (autoselect.py), else exact fp32; describe() says what was
        chosen and why. The default stays exact fp32.

        An *exported* directory (``model.onnx`` + ``pair_tokenizer.json`` + ``tokenizer.json`` +
        ``export.json``, as ``blender-fast export --out DIR`` writes it) loads with onnxruntime and
        tokenizers only: torch and transformers are never imported (the runtime install needs neither).
        Its precision is the exported one.
        """
        from .runtime.sessions import resolve_device

        check_choice("backend", backend, BACKEND_CHOICES)
        if precision is not None:
            check_choice("precision", precision, PRECISION_CHOICES)
        device = resolve_device(check_choice("device", device, DEVICE_CHOICES), "torch" if backend == "torch" else "onnx")
        exact_model = cascade = None
        if is_exported_dir(path):
            from .runtime.sessions import OnnxPairModel

            path = Path(path)
            meta = read_export_meta(path)
            exported = meta.get("export", {}).get("precision", "fp32")
            if backend not in ("onnx", "auto"):
                raise ValueError(f"{path} is an exported ONNX model: it runs on backend='onnx', not {backend!r}")
            if precision not in (None, "auto", exported):
                raise ValueError(f"{path} was exported with precision {exported!r}; precision={precision!r} "
                                 "needs its own export (blender-fast export --out DIR with that precision)")
            backend, precision, reason = "onnx", exported, "an exported ONNX directory runs as exported"
            model = OnnxPairModel(path / "model.onnx", device=device, threads=threads)
            tok = PairTokenizer.load(path)
            src_len, cand_len = meta["source_maxlength"], meta["candidate_maxlength"]
        else:
            from .runtime.autoselect import build_model, choose

            precision = precision or "fp32"
            ckpt = load_checkpoint(path)
            src_len, cand_len = ckpt.source_maxlength, ckpt.candidate_maxlength
            reason, decision = "as requested", None
            if "auto" in (backend, precision):
                decision = choose(ckpt, device, backend, precision, threads, cache_dir)
                backend, precision, reason = decision["backend"], decision["precision"], decision["reason"]
            model, tok = build_model(ckpt, backend, precision, device, threads, cache_dir)
            cascade = decision.get("cascade") if decision else None
            if cascade:  # the fast variant scores every pair; the fp32 model above re-scores the uncertain ones
                exact_model = model
                model, _ = build_model(ckpt, cascade["backend"], cascade["precision"], device, threads, cache_dir)
        ranker = cls(model, tok, src_len, cand_len,
                     token_budget=token_budget or DEFAULT_TOKEN_BUDGET[device], max_batch_size=max_batch_size,
                     progress=progress, batch_cost=DEFAULT_BATCH_COST[device] if batch_cost is None else batch_cost)
        # Validated like per-call lengths: a clear error here instead of a failure inside the packer.
        ranker.source_maxlength, ranker.candidate_maxlength = ranker.truncation(source_maxlength, candidate_maxlength)
        ranker.engine_info = {"backend": backend, "precision": precision, "device": device, "threads": threads,
                              "reason": reason}
        if exact_model is not None:
            ranker.enable_cascade(exact_model, cascade["eps"])
            ranker.engine_info.update(cascade={"fast": f"{cascade['backend']} {cascade['precision']}",
                                               "eps": cascade["eps"]})
        return ranker

    # -- the engine ---------------------------------------------------------------------------------

    def truncation(self, source_maxlength=None, candidate_maxlength=None) -> tuple[int, int]:
        """This call's truncation lengths: the arguments when given, else the ranker's defaults.

        They are per call (never written onto the ranker), so threads sharing one Ranker may use
        different lengths at once."""
        out = []
        for name, value, default in (("source_maxlength", source_maxlength, self.source_maxlength),
                                     ("candidate_maxlength", candidate_maxlength, self.candidate_maxlength)):
            if value is None:
                out.append(default)
                continue
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"{name} must be a positive integer, got {value!r}")
            if value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value}")
            out.append(int(value))
        return out[0], out[1]

    def encode(self, sources: list[str], candidates: list[list[str]], source_maxlength=None,
               candidate_maxlength=None) -> EncodedPrompts:
        src_len, cand_len = self.truncation(source_maxlength, candidate_maxlength)
        return encode_prompts(self.tokenizer, sources, candidates, src_len, cand_len)

    def _pair_scorer(self, enc: EncodedPrompts, stats: RunStats, group_size: int, desc: str, progress=None,
                     model: str = "default"):
        """A compare(rows) function for selection.select: rows are (prompt, left, right) candidate triples,
        scored by the named model."""
        if model not in self.models:
            raise ValueError(f"this ranker has no model named {model!r} (it has {sorted(self.models)})")
        run_model = self.models[model]
        packer = _core.PairPacker(enc.tokens, enc.offsets, enc.limits, cand1_id=self.tokenizer.cand1_id,
                                  cand2_id=self.tokenizer.cand2_id, pad_id=self.tokenizer.pad_id,
                                  prefix_offset=self.tokenizer.prefix_offset)
        # progress: None = the ranker's default; a bool; or a bar (anything with .update(n)) owned by the
        # caller, e.g. one bar over a whole CLI job, moved here after every model batch.
        progress = self.progress if progress is None else progress
        bar, own_bar = None, False
        if hasattr(progress, "update"):
            bar = progress
        elif progress:
            from tqdm.auto import tqdm

            bar, own_bar = tqdm(desc=desc, unit="pair"), True

        def compare(rows: np.ndarray) -> np.ndarray:
            t0 = time.perf_counter()
            prompts = rows[:, 0]
            text_pairs = np.stack([enc.source_index[prompts], enc.candidate_start[prompts] + rows[:, 1],
                                   enc.candidate_start[prompts] + rows[:, 2]], axis=1)
            gs = group_size if len(rows) % group_size == 0 else 1
            order, bounds = packer.plan(text_pairs, self.token_budget, self.max_batch_size, gs, self.batch_cost)
            stats.pack_s += time.perf_counter() - t0
            logits = np.empty(len(rows), dtype=np.float32)
            for b in range(len(bounds) - 1):
                t0 = time.perf_counter()
                batch_rows = order[bounds[b]:bounds[b + 1]]
                ids, mask, pos, pad = packer.build(text_pairs, batch_rows)
                t1 = time.perf_counter()
                logits[batch_rows] = run_model(ids, mask, pos)
                stats.model_s += time.perf_counter() - t1
                stats.pack_s += t1 - t0
                stats.batches += 1
                stats.pad_tokens += int(pad)
                stats.tokens += int(ids.size - pad)
                if bar is not None:
                    bar.update(len(batch_rows))
            stats.pairs += len(rows)
            stats.steps += 1
            return logits

        compare.close = bar.close if own_bar else (lambda: None)
        return compare

    def _run(self, inputs, candidates, instructions, *, strategy, top_k, orders="both", seed=0,
             initial_orders=None, policy="max_logits", worst=False, desc="Ranking", source_maxlength=None,
             candidate_maxlength=None, progress=None, budget=None) -> list[Selection]:
        stats = RunStats()
        t0 = time.perf_counter()
        sources, cands = check_prompts(inputs, candidates, instructions)
        enc = self.encode(sources, cands, source_maxlength, candidate_maxlength)
        stats.tokenize_s = time.perf_counter() - t0
        group = 2 if orders == "both" else 1
        steps = select_steps([len(c) for c in cands], top_k, strategy, orders=orders, seed=seed,
                             initial_orders=initial_orders, policy=policy, budget=budget)
        if self.cascade_eps is not None:
            steps = certified(steps, self.cascade_eps, cascade_mode(strategy, policy))
        scorers: dict = {}

        def score(step: Step) -> np.ndarray:
            if step.model not in scorers:  # one packer and progress bar per model, made on first use
                scorers[step.model] = self._pair_scorer(enc, stats, group, desc, progress, model=step.model)
            out = scorers[step.model](step.rows)
            return -out if worst else out  # worst-of-n: every model's logits negated alike

        try:
            result = run_steps(steps, score)
        finally:
            for compare in scorers.values():
                compare.close()
            self.last_stats = stats
        return result

    # -- public API ---------------------------------------------------------------------------------

    def rank(self, inputs, candidates, instructions=None, return_scores: bool = False, policy: str = "max_logits",
             *, source_maxlength: int | None = None, candidate_maxlength: int | None = None,
             progress: bool | None = None):
        """Full pairwise ranking, all n(n-1) ordered pairs per prompt, aggregated like llm-blender.

        Returns ranks (int32, 1 = best, ties share the better rank) or scores (float32, higher is
        better): one array [n_prompts, n] when every prompt has n candidates, else a list of arrays.
        source_maxlength / candidate_maxlength / progress apply to this call only (None: the ranker's).
        """
        sels = self._run(inputs, candidates, instructions, strategy="full", top_k=1, policy=policy,
                         source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength,
                         progress=progress)
        scores = [s.scores for s in sels]
        if return_scores:
            return _stack_if_equal(scores)
        return _stack_if_equal([ranks_from_scores(s) for s in scores])

    def compare(self, inputs, candidates_a, candidates_b, instructions=None, mode: str = "[A,B]+[B,A]", *,
                source_maxlength: int | None = None, candidate_maxlength: int | None = None,
                progress: bool | None = None) -> np.ndarray:
        """Logits (float32, one per input) that A is better than B, with llm-blender's modes.

        "[A,B]": f(A,B); "[B,A]": f(B,A) (B read first; as in llm-blender, not negated);
        "[A,B]+[B,A]": f(A,B) - f(B,A), the position-debiased comparison.
        """
        if mode not in COMPARE_MODES:
            raise ValueError(f"mode must be one of {COMPARE_MODES}, got {mode!r}")
        if isinstance(candidates_a, str) or isinstance(candidates_b, str):
            raise TypeError("candidates_a and candidates_b must be lists of strings, one per input")
        if len(candidates_a) != len(candidates_b):
            raise ValueError(f"got {len(candidates_a)} candidates_a but {len(candidates_b)} candidates_b")
        pairs = [[a, b] for a, b in zip(candidates_a, candidates_b)]
        stats = RunStats()
        t0 = time.perf_counter()
        sources, cands = check_prompts(inputs, pairs, instructions)
        enc = self.encode(sources, cands, source_maxlength, candidate_maxlength)
        stats.tokenize_s = time.perf_counter() - t0
        n = len(sources)
        prompts = np.arange(n, dtype=np.int64)
        ab = np.stack([prompts, np.zeros(n, np.int64), np.ones(n, np.int64)], axis=1)
        ba = ab[:, [0, 2, 1]]
        compare = self._pair_scorer(enc, stats, 2 if mode == "[A,B]+[B,A]" else 1, "Comparing", progress,
                                    model="exact" if self.cascade_eps is not None else "default")
        try:
            if mode == "[A,B]":
                out = compare(ab)
            elif mode == "[B,A]":
                out = compare(ba)
            else:
                rows = np.empty((2 * n, 3), dtype=np.int64)
                rows[0::2], rows[1::2] = ab, ba
                both = compare(rows)
                out = both[0::2] - both[1::2]
            bad = np.flatnonzero(np.isnan(out))
            if bad.size:  # as rank/select do: a NaN logit is an error, never a silent "A loses"
                raise PromptError(f"compare returned NaN for prompt {int(bad[0])}", int(bad[0]))
        finally:
            compare.close()
            self.last_stats = stats
        return out

    def select(self, inputs, candidates, top_k: int = 1, strategy: str = "bubble", orders: str = "both",
               seed: int = 0, instructions=None, initial_orders=None, policy: str = "max_logits",
               worst: bool = False, budget: int | None = None, *, source_maxlength: int | None = None,
               candidate_maxlength: int | None = None, progress: bool | None = None) -> list[Selection]:
        """Top-k per prompt with far fewer than n^2 model calls (bubble / tournament / the budgeted
        swiss / knockout_rr / adaptive), or "full".

        budget: forward passes per prompt that swiss / knockout_rr / adaptive never exceed (None:
        4(n-1), twice a knockout's); see ``selection.select``.

        All prompts advance in lockstep: each step runs every ready comparison of every prompt as one
        packed set of batches. Returns one Selection per prompt (top-k indices best first, counts of
        comparisons, forward passes and sequential steps). worst=True selects the worst k instead.
        source_maxlength / candidate_maxlength / progress apply to this call only (None: the ranker's).
        """
        return self._run(inputs, candidates, instructions, strategy=strategy, top_k=top_k, orders=orders,
                         seed=seed, initial_orders=initial_orders, policy=policy, worst=worst, desc="Selecting",
                         source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength,
                         progress=progress, budget=budget)
