"""PointwiseRanker: a pointwise reward model (``OpenAssistant/reward-model-deberta-v3-large-v2``, llm-blender's
"deberta-rm") behind the Ranker's verbs.

One forward pass per (prompt, candidate): ``score = model([CLS] source [SEP] candidate [SEP])``, after
llm-blender's truncation round trip (model/pointwise.py). Every distinct (source, candidate) of a call is
scored once; then

* ``rank``: ranks of the scores (``return_scores``: the scores themselves, as llm-blender returns them);
* ``compare``: ``score(A) - score(B)`` (llm-blender ignores ``mode`` for this type; so do we, once checked);
* ``select``: strategy "full" picks from the scores; the others (bubble, tournament, the budgeted ones)
  run the very step generators the PairRM Ranker runs, answered from the scores: a pair step (p, a, b)
  gets ``score(a) - score(b)``, so every strategy works with n model passes per prompt.

Loaded through ``Ranker.from_pretrained`` / ``Blender.loadranker`` / ``blender-fast rank --model``, which
dispatch here on the checkpoint kind (model/pointwise.is_pointwise_dir). Backends: ONNX Runtime (the
export is cached like PairRM's) and torch, its plain twin.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .inputs import check_pairs_ab, check_prompts, judge_plan
from .model.pointwise import (MIN_POINTWISE_MAXLENGTH, PointwiseTokenizer, cached_pointwise_export,
                              load_pointwise_checkpoint, pad_batch)
from .options import (BACKEND_CHOICES, COMPARE_MODES, DEFAULT_BACKEND, DEFAULT_MAX_BATCH, DEFAULT_PRECISION,
                      DEFAULT_TOKEN_BUDGET, DEVICE_CHOICES, POINTWISE_PRECISIONS, POLICIES, PRECISION_CHOICES,
                      backend_for, check_choice, check_count)
from .runtime.sessions import OnnxScoreModel, TorchScoreModel
from .selection.aggregate import ranks_from_scores, stack_if_equal, top_k_from_scores
from .selection.steps import ModelOutputError, RunStats, Selection, Step, run_steps, select_steps


class PointwiseRanker:
    """A pointwise reward model with the Ranker's verbs (rank, compare, select) and llm-blender's semantics
    for ``ranker_type == "deberta-rm"``."""

    pointwise = True

    def __init__(self, model, tokenizer: PointwiseTokenizer, source_maxlength: int | None = None,
                 candidate_maxlength: int | None = None, token_budget: int = DEFAULT_TOKEN_BUDGET["cpu"],
                 max_batch_size: int = DEFAULT_MAX_BATCH, progress: bool = False):
        check_count("token_budget", token_budget)
        check_count("max_batch_size", max_batch_size)
        self.model = model
        self.tokenizer = tokenizer
        self.source_maxlength = source_maxlength  # None: the tokenizer's model_max_length (none when unbounded)
        self.candidate_maxlength = candidate_maxlength
        self.source_maxlength, self.candidate_maxlength = self.truncation(source_maxlength, candidate_maxlength)
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.progress = progress
        self.last_stats = RunStats()
        self.engine_info: dict = {}

    @classmethod
    def from_pretrained(cls, path, backend: str = DEFAULT_BACKEND, device: str = "cpu", precision: str | None = None, *,
                        threads: int | None = None, cache_dir=None, token_budget: int | None = None,
                        max_batch_size: int = DEFAULT_MAX_BATCH, source_maxlength: int | None = None,
                        candidate_maxlength: int | None = None, progress: bool = False,
                        batch_cost: int | None = None, revision: str | None = None, token=None,
                        hub_cache_dir=None, local_files_only: bool | None = None) -> "PointwiseRanker":
        """Load a reward model directory or hub id (``OpenAssistant/reward-model-deberta-v3-large-v2``).
        backend "onnx" (exported once and cached, ``cache_dir``) or "torch"; precision fp32 or fp16 (both
        backends) / bf16 (torch). "auto" (the default) picks ONNX fp32: the cascade and the agreement gate
        cover PairRM only; an explicit precision with backend "auto" runs where it can (options.backend_for).
        batch_cost is accepted for the Ranker's signature (unused)."""
        from .runtime.sessions import resolve_device
        from .synthetic.demo import local_model

        check_choice("backend", backend, BACKEND_CHOICES)
        if precision is not None:
            check_choice("precision", precision, PRECISION_CHOICES)
        reason = "as requested"
        precision = precision or DEFAULT_PRECISION
        backend = backend_for(backend, precision)
        if "auto" in (backend, precision):
            reason = "exact fp32: the cascade and auto-selection cover PairRM checkpoints only"
            backend = "onnx" if backend == "auto" else backend
            precision = "fp32" if precision == "auto" else precision
        if backend not in POINTWISE_PRECISIONS or precision not in POINTWISE_PRECISIONS[backend]:
            runs = "; ".join(f"backend={b!r} with precision in {p}" for b, p in POINTWISE_PRECISIONS.items())
            raise ValueError(f"a pointwise reward model runs with {runs}, not backend={backend!r} "
                             f"precision={precision!r}")
        device = resolve_device(check_choice("device", device, DEVICE_CHOICES), backend)
        path = local_model(path, kind="ranker", revision=revision, cache_dir=hub_cache_dir, token=token,
                           local_files_only=local_files_only)
        ckpt = load_pointwise_checkpoint(path)
        if backend == "onnx":
            out_dir, _ = cached_pointwise_export(ckpt, precision, cache_dir)
            model = OnnxScoreModel(out_dir / "model.onnx", device=device, threads=threads)
            tok = PointwiseTokenizer.load(out_dir)
        else:
            from .model.pointwise import build_pointwise_tokenizer, build_torch_scorer

            model = TorchScoreModel(build_torch_scorer(ckpt), device=device, precision=precision, threads=threads)
            tok = build_pointwise_tokenizer(ckpt)
        ranker = cls(model, tok, source_maxlength, candidate_maxlength,
                     token_budget=token_budget or DEFAULT_TOKEN_BUDGET[device], max_batch_size=max_batch_size,
                     progress=progress)
        ranker.engine_info = {"backend": backend, "precision": precision, "device": device, "threads": threads,
                              "reason": reason, "kind": "pointwise", "checkpoint": str(ckpt.path)}
        return ranker

    def describe(self) -> dict:
        """How this ranker runs (backend, precision, device, threads, why), as Ranker.describe."""
        from .runtime.autoselect import cpu_features

        cpu = cpu_features()
        info = {"backend": None, "precision": None, "device": None, "threads": None, "reason": "constructed directly",
                "kind": "pointwise"}
        info.update(self.engine_info)
        info.update(cpu_model=cpu["cpu_model"], isa=cpu["isa"], logical_cores=cpu["logical_cores"], fp32_islands=[])
        return info

    def truncation(self, source_maxlength=None, candidate_maxlength=None) -> tuple:
        """This call's truncation lengths (None: the ranker's; the ranker's None: the tokenizer's limit)."""
        out = []
        for name, value, default in (("source_maxlength", source_maxlength, self.source_maxlength),
                                     ("candidate_maxlength", candidate_maxlength, self.candidate_maxlength)):
            out.append(default if value is None else check_count(name, value, minimum=MIN_POINTWISE_MAXLENGTH))
        return out[0], out[1]

    # -- what the server asks of any scorer (serve/ never asks which kind of model it holds) ----------

    reserved_markers: tuple = ()  # PairRM's markers mean nothing to a reward model (as offline)

    def capped_lengths(self, query: str, cap: int, source_maxlength=None, candidate_maxlength=None) -> dict:
        """Truncation lengths that keep at most ``cap`` of each document's own tokens: the reward model cuts
        each document to candidate_maxlength tokens, its special tokens included (None: the tokenizer's
        model_max_length, none when unbounded)."""
        src_len, cand_len = self.truncation(source_maxlength, candidate_maxlength)
        tok = self.tokenizer
        limit, default = cap + tok.n_special, tok.model_max_length if cand_len is None else cand_len
        return {"source_maxlength": source_maxlength,
                "candidate_maxlength": limit if default is None else min(limit, default)}

    def full_ranking_relevance(self, scores) -> tuple:
        """([0, 1] relevance, forward passes) of a full ranking: each document is scored alone, its score a
        logit, and TEI's relevance of a cross-encoder's logit is its sigmoid; n passes."""
        s = np.asarray(scores, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-s)), len(s)

    # -- the engine ---------------------------------------------------------------------------------
    # A verb is planned (checks, then what to do with the scores), encoded, run, answered. The offline
    # verbs do all four in one call; the server's batching engine (serve/engine.py) encodes in the
    # caller's thread, runs the rows of many requests together and answers each from its own plan, so
    # that both give the same answers from the same code.

    def scores(self, sources: list[str], candidates: list[list[str]], source_maxlength=None,
               candidate_maxlength=None, progress=None) -> list[np.ndarray]:
        """float32 scores per prompt of checked prompts (check_prompts): each distinct (source, candidate)
        is truncated, encoded and run once; rows are batched by length under the token budget, right-padded
        (the classifier reads [CLS], the first token: padding changes nothing but float noise)."""
        stats = RunStats()
        t0 = time.perf_counter()
        enc = self.encode(sources, candidates, source_maxlength, candidate_maxlength)
        stats.tokenize_s = time.perf_counter() - t0
        values = self.run_encoded(enc.rows, stats, progress)
        out = enc.per_prompt_scores(values)
        self.last_stats = stats
        return out

    def encode(self, sources: list[str], candidates: list[list[str]], source_maxlength=None,
               candidate_maxlength=None) -> "PointwiseEncoding":
        """The distinct (truncated source, truncated candidate) rows of checked prompts, encoded, and
        where each prompt's candidates find their row."""
        src_len, cand_len = self.truncation(source_maxlength, candidate_maxlength)
        tok = self.tokenizer
        unique_sources = list(dict.fromkeys(sources))
        unique_cands = list(dict.fromkeys(c for cs in candidates for c in cs))
        src_text = dict(zip(unique_sources, tok.truncate(unique_sources, src_len)))
        cand_text = dict(zip(unique_cands, tok.truncate(unique_cands, cand_len)))
        index: dict[tuple[str, str], int] = {}
        per_prompt = []
        for src, cands in zip(sources, candidates):
            per_prompt.append(np.array([index.setdefault((src_text[src], cand_text[c]), len(index)) for c in cands],
                                       dtype=np.int64))
        return PointwiseEncoding(tok.encode_pairs(list(index)) if index else [], per_prompt)

    def run_encoded(self, encoded: list, stats: RunStats | None = None, progress=False, on_batch=None) -> np.ndarray:
        """float32 scores of encoded rows (PointwiseEncoding.rows, possibly of several calls back to back),
        longest first in batches under the token budget. on_batch(rows, tokens, pad_tokens, seconds):
        called after each model call (the server's metrics)."""
        stats = RunStats() if stats is None else stats
        progress = self.progress if progress is None else progress
        bar, own_bar = (progress, False) if hasattr(progress, "update") else (None, False)
        if bar is None and progress:
            from tqdm.auto import tqdm

            bar, own_bar = tqdm(desc="Scoring", unit="candidate", total=len(encoded)), True
        lengths = np.array([len(ids) for ids, _ in encoded], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")  # longest first: each batch's width is its first row's
        values = np.empty(len(encoded), dtype=np.float32)
        start = 0
        try:
            while start < len(order):
                width = int(lengths[order[start]])
                rows = max(1, min(self.max_batch_size, self.token_budget // max(width, 1)))
                batch = order[start:start + rows]
                t0 = time.perf_counter()
                ids, mask, types = pad_batch([encoded[i] for i in batch], self.tokenizer.pad_id)
                t1 = time.perf_counter()
                values[batch] = self.model(ids, mask, types)
                seconds = time.perf_counter() - t1
                stats.model_s += seconds
                stats.pack_s += t1 - t0
                stats.batches += 1
                real = int(lengths[batch].sum())
                stats.tokens += real
                stats.pad_tokens += int(ids.size) - real
                stats.pairs += len(batch)
                stats.steps = 1
                if on_batch is not None:
                    on_batch(len(batch), real, int(ids.size) - real, seconds)
                if bar is not None:
                    bar.update(len(batch))
                start += rows
        finally:
            if own_bar:
                bar.close()
        return values

    def plan(self, verb: str, *args, **kwargs) -> "PointwisePlan":
        """Everything ``verb`` (rank, compare, select, judge; its arguments, progress excepted) decides
        before the model runs: the checks, the prompts to score and how to answer from their scores."""
        return getattr(self, f"_plan_{verb}")(*args, **kwargs)

    def answer(self, plan: "PointwisePlan", progress=None):
        """Run a plan offline: score its prompts, answer from the scores."""
        return plan.finish(self.scores(plan.sources, plan.candidates, plan.source_maxlength, plan.candidate_maxlength,
                                       progress))

    def _plan_rank(self, inputs, candidates, instructions=None, return_scores=False, policy="max_logits", *,
                   source_maxlength=None, candidate_maxlength=None) -> "PointwisePlan":
        check_choice("policy", policy, POLICIES)
        sources, cands = check_prompts(inputs, candidates, instructions, reserved=())

        def finish(scores):
            return stack_if_equal(scores if return_scores else [ranks_from_scores(s) for s in scores])

        return PointwisePlan(sources, cands, source_maxlength, candidate_maxlength, finish, sum(map(len, cands)))

    def _plan_compare(self, inputs, candidates_a, candidates_b, instructions=None, mode="[A,B]+[B,A]", *,
                      source_maxlength=None, candidate_maxlength=None) -> "PointwisePlan":
        check_choice("mode", mode, COMPARE_MODES)
        sources, cands = check_pairs_ab(inputs, candidates_a, candidates_b, instructions, reserved=())

        def finish(scores):
            return np.array([s[0] - s[1] for s in scores], dtype=np.float32).reshape(len(scores))

        return PointwisePlan(sources, cands, source_maxlength, candidate_maxlength, finish, 2 * len(sources))

    def _plan_select(self, inputs, candidates, top_k=1, strategy="bubble", orders="both", seed=0, instructions=None,
                     initial_orders=None, policy="max_logits", worst=False, budget=None, *, source_maxlength=None,
                     candidate_maxlength=None) -> "PointwisePlan":
        sources, cands = check_prompts(inputs, candidates, instructions, reserved=())
        ns = [len(c) for c in cands]
        steps = select_steps(ns, top_k, strategy, orders=orders, seed=seed, initial_orders=initial_orders,
                             policy=policy, budget=budget, worst=worst)  # checks every argument first
        if strategy == "full":
            steps.close()

        def finish(scores):
            if strategy == "full":
                sels = []
                for s in scores:
                    shown = -s if worst else s
                    sels.append(Selection(top_k=top_k_from_scores(shown, top_k), comparisons=0,
                                          forward_passes=len(s), steps=1, scores=shown.astype(np.float32)))
                return sels
            flat = np.concatenate(scores) if scores else np.empty(0, dtype=np.float32)
            starts = np.concatenate([[0], np.cumsum(ns)]).astype(np.int64)

            def answer(step: Step) -> np.ndarray:
                rows = step.rows
                base = starts[rows[:, 0]]
                return (flat[base + rows[:, 1]] - flat[base + rows[:, 2]]).astype(np.float32)

            sels = run_steps(steps, answer)
            for sel, n in zip(sels, ns):
                sel.forward_passes = n
            return sels

        return PointwisePlan(sources, cands, source_maxlength, candidate_maxlength, finish, sum(ns))

    def _plan_judge(self, prompts, completions, shuffle_order=True, return_scores=False, temperature=1.0, *,
                    seed=None) -> "PointwisePlan":
        steps, sources, _ = judge_plan(prompts, completions, shuffle_order, return_scores, temperature, seed,
                                       reserved=())  # PairRM's markers mean nothing to this model
        steps.close()
        temperature = float(temperature)
        cands = [list(c) for c in completions] if sources else []

        def finish(per_prompt):
            if not per_prompt:
                return []
            scores = np.stack(per_prompt).astype(np.float64)
            if return_scores:
                logits = scores / temperature
                logits -= logits.max(axis=1, keepdims=True)
                probs = np.exp(logits)
                return [float(p) for p in probs[:, 0] / probs.sum(axis=1)]
            return [int(r) for r in ranks_from_scores(scores)[:, 0] - 1]

        return PointwisePlan(sources, cands, None, None, finish, 2 * len(sources))

    # -- public API ---------------------------------------------------------------------------------

    def rank(self, inputs, candidates, instructions=None, return_scores: bool = False, policy: str = "max_logits",
             *, source_maxlength: int | None = None, candidate_maxlength: int | None = None,
             progress: bool | None = None):
        """Ranks (int32, 1 = best, ties share the better rank) or the reward scores (float32): one array
        [n_prompts, n] when every prompt has n candidates, else a list. ``policy`` (how PairRM aggregates
        comparisons) is checked and has no effect: there is nothing to aggregate."""
        return self.answer(self.plan("rank", inputs, candidates, instructions, return_scores, policy,
                                     source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength),
                           progress)

    def compare(self, inputs, candidates_a, candidates_b, instructions=None, mode: str = "[A,B]+[B,A]", *,
                source_maxlength: int | None = None, candidate_maxlength: int | None = None,
                progress: bool | None = None) -> np.ndarray:
        """float32 ``score(A) - score(B)`` per input; ``mode`` is checked and, as in llm-blender for a
        pointwise model, changes nothing."""
        return self.answer(self.plan("compare", inputs, candidates_a, candidates_b, instructions, mode,
                                     source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength),
                           progress)

    def select(self, inputs, candidates, top_k: int = 1, strategy: str = "bubble", orders: str = "both",
               seed: int = 0, instructions=None, initial_orders=None, policy: str = "max_logits",
               worst: bool = False, budget: int | None = None, *, source_maxlength: int | None = None,
               candidate_maxlength: int | None = None, progress: bool | None = None) -> list[Selection]:
        """Ranker.select's arguments and result. "full": the top k of the scores (Selection.scores = the
        reward scores, negated for worst=True as the PairRM path negates its aggregates); other strategies
        run as for PairRM on score differences. forward_passes is n per prompt (the model runs once per
        candidate); comparisons and steps are the strategy's."""
        return self.answer(self.plan("select", inputs, candidates, top_k, strategy, orders, seed, instructions,
                                     initial_orders, policy, worst, budget, source_maxlength=source_maxlength,
                                     candidate_maxlength=candidate_maxlength), progress)

    def judge(self, prompts, completions, shuffle_order: bool = True, return_scores: bool = False,
              temperature: float = 1.0, *, seed=None, progress: bool | None = None) -> list:
        """TRL's PairRMJudge.judge over this model, as TRL computes it from llm-blender's ``rank(...,
        return_scores=True)``: per prompt the preferred index (ties: 0), or softmax(scores / temperature)[0].
        A candidate's score does not depend on the order it is shown in, so shuffle_order changes nothing
        (its coin flips are still drawn, as the Ranker draws them)."""
        plan = self.plan("judge", prompts, completions, shuffle_order, return_scores, temperature, seed=seed)
        return plan.finish([]) if not plan.sources else self.answer(plan, progress)


@dataclass
class PointwiseEncoding:
    """The encoded rows of a call (each distinct (source, candidate) once) and, per prompt, the row of
    each of its candidates."""

    rows: list  # (token ids, token type ids) per row
    per_prompt: list  # int64 row indices per prompt

    def per_prompt_scores(self, values: np.ndarray) -> list[np.ndarray]:
        """The rows' scores per prompt; a NaN fails the call naming its prompt (ModelOutputError)."""
        bad = np.flatnonzero(np.isnan(values))
        if bad.size:
            p = next(p for p, idx in enumerate(self.per_prompt) if np.isin(idx, bad).any())
            raise ModelOutputError(p)
        return [values[idx] for idx in self.per_prompt]


@dataclass
class PointwisePlan:
    """A checked verb call: the prompts whose candidates to score, the truncation, and ``finish`` (the
    per-prompt scores -> the verb's answer). ``rows``: an upper bound on the model rows it runs (the
    server's queue bound counts it)."""

    sources: list
    candidates: list
    source_maxlength: int | None
    candidate_maxlength: int | None
    finish: Callable[[list], object]
    rows: int


def is_pointwise(ranker) -> bool:
    """True for a PointwiseRanker (or anything that says it is pointwise)."""
    return bool(getattr(ranker, "pointwise", False))

