"""The two scorers behind ``Ranker``: what differs between PairRM and a pointwise reward model, and nothing else.

A scorer turns a verb and its arguments into a :class:`Plan` (the checked prompts, a step generator, and
its cost in model rows), encodes the texts of a call, says which model rows a step needs, and runs rows
through a model (rows -> logits). ``Ranker`` runs a plan offline; the serving engine runs the steps of
many plans together. Neither asks which kind of model it holds: they ask the scorer.

* :class:`PairScorer`: PairRM. A step's rows are (prompt, left, right) candidate triples, packed by the C++
  pair packer into [CLS] <|source|> s [SEP] [CLS] <|candidate1|> a [SEP] [CLS] <|candidate2|> b [SEP].
* :class:`RewardScorer`: a pointwise reward model (llm-blender's "deberta-rm", ``OpenAssistant/
  reward-model-deberta-v3-large-v2``). Its plans are one step whose rows are (prompt, candidate,
  candidate): each distinct (source, candidate) runs once, and the verb is answered from the scores, with
  llm-blender's semantics (rank = ranks of the scores, compare = score(A) - score(B) whatever the mode);
  select's pair strategies run the very step generators PairRM runs, answered from score differences.

The scorer is picked by the tokenizer's ``kind`` (model/tokenization.py, model/reward.py): the
tokenizer is what the loader builds for each kind of checkpoint.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import _core
from .inputs import check_pairs_ab, check_prompts, judge_plan
from .model.checkpoint import SPECIAL_TOKENS
from .model.reward import MIN_POINTWISE_MAXLENGTH, pad_batch
from .model.tokenization import EncodedPrompts, encode_prompts
from .options import COMPARE_MODES, POLICIES, check_choice
from .selection.aggregate import ranks_from_scores, relevance_from_aggregate, stack_if_equal, top_k_from_scores
from .selection.budgets import selection_cost
from .selection.cascade import verb_mode
from .selection.steps import ModelOutputError, Selection, Step, Steps, run_steps
from .selection.strategies import select_steps
from .selection.verbs import compare_steps, rank_steps

VERBS = ("rank", "compare", "select", "judge")


@dataclass
class Plan:
    """A checked verb call: the prompts it reads, its step generator (the scorer's rows -> the verb's
    answer), its cost (the model rows it runs at most: the engine's queue bound) and its truncation."""

    sources: list
    candidates: list
    steps: Steps
    cost: int
    source_maxlength: int | None = None
    candidate_maxlength: int | None = None
    desc: str = "Ranking"


class PairScorer:
    """PairRM: pair rows, packed by the C++ packer. Methods take the Ranker whose model, tokenizer and
    batching settings they use (the Ranker holds them: a shallow copy of it may swap its model)."""

    kind = "pair"
    reserved_markers = SPECIAL_TOKENS  # markers no text may hold: PairRM's prefix tokens
    min_maxlength = 3  # a piece is [CLS] <marker> ... [SEP]: the packer needs room for those three
    min_maxlength_why = "a piece's [CLS], its marker and [SEP]"
    ranks_fully = False  # Blender's best-of-n selects with the strategy it is given
    unit = "pair"
    describe_defaults: dict = {}

    # -- plans ---------------------------------------------------------------------------------------

    def plan(self, ranker, verb: str, *args, **kwargs) -> Plan:
        check_choice("verb", verb, VERBS)
        return getattr(self, f"plan_{verb}")(ranker, *args, **kwargs)

    def plan_rank(self, ranker, inputs, candidates, instructions=None, return_scores=False, policy="max_logits", *,
                  source_maxlength=None, candidate_maxlength=None) -> Plan:
        sources, cands = check_prompts(inputs, candidates, instructions)
        ns = [len(c) for c in cands]
        steps = ranker.cascaded(rank_steps(ns, policy, return_scores),  # checks policy
                                verb_mode("rank", policy=policy, values=return_scores))
        return Plan(sources, cands, steps, selection_cost("full", ns, 1), source_maxlength, candidate_maxlength,
                    "Ranking")

    def plan_compare(self, ranker, inputs, candidates_a, candidates_b, instructions=None, mode="[A,B]+[B,A]", *,
                     source_maxlength=None, candidate_maxlength=None) -> Plan:
        sources, cands = check_pairs_ab(inputs, candidates_a, candidates_b, instructions)
        steps = ranker.cascaded(compare_steps(len(sources), mode), verb_mode("compare"))  # checks mode
        cost = len(sources) * (2 if mode == "[A,B]+[B,A]" else 1)
        return Plan(sources, cands, steps, cost, source_maxlength, candidate_maxlength, "Comparing")

    def plan_select(self, ranker, inputs, candidates, top_k=1, strategy="bubble", orders="both", seed=0,
                    instructions=None, initial_orders=None, policy="max_logits", worst=False, budget=None, *,
                    source_maxlength=None, candidate_maxlength=None) -> Plan:
        sources, cands = check_prompts(inputs, candidates, instructions)
        ns = [len(c) for c in cands]
        # Every argument checked here, bad initial_orders included: the texts, then the options.
        steps = select_steps(ns, top_k, strategy, orders=orders, seed=seed, initial_orders=initial_orders,
                             policy=policy, budget=budget, worst=worst)
        steps = ranker.cascaded(steps, verb_mode("select", strategy, policy))
        return Plan(sources, cands, steps, selection_cost(strategy, ns, top_k, orders, budget), source_maxlength,
                    candidate_maxlength, "Selecting")

    def plan_judge(self, ranker, prompts, completions, shuffle_order=True, return_scores=False, temperature=1.0, *,
                   seed=None) -> Plan:
        # The same plan for every driver: same checks, same coin flips for the same seed.
        steps, sources, shown = judge_plan(prompts, completions, shuffle_order, return_scores, temperature, seed)
        steps = ranker.cascaded(steps, verb_mode("judge", values=return_scores))
        return Plan(sources, shown, steps, 2 * len(sources), desc="Judging")

    def plan_steps(self, ranker, sources, candidates, steps: Steps, cost=None) -> Plan:
        """Any pair step generator over checked prompts (Ranker.run, the engine's run)."""
        if cost is None:
            cost = sum(len(c) * (len(c) - 1) for c in candidates)
        return Plan(list(sources), [list(c) for c in candidates], steps, cost)

    # -- texts and rows -----------------------------------------------------------------------------

    def truncation_default(self, ranker, name: str):
        return getattr(ranker, name)

    def encode(self, ranker, sources, candidates, src_len, cand_len) -> EncodedPrompts:
        return encode_prompts(ranker.tokenizer, sources, candidates, src_len, cand_len)

    def n_tokens(self, enc: EncodedPrompts) -> int:
        return int(enc.tokens.size)

    def step_rows(self, enc: EncodedPrompts, step: Step) -> tuple[np.ndarray, np.ndarray, None]:
        """(model rows, their token lengths, where each step row finds its model row) of a step: one model
        row per step row, the (source, left, right) text indices of ``enc`` (None: the same order)."""
        rows = step.rows
        prompts = rows[:, 0]
        texts = np.stack([enc.source_index[prompts], enc.candidate_start[prompts] + rows[:, 1],
                          enc.candidate_start[prompts] + rows[:, 2]], axis=1)
        eff_len = np.minimum(np.diff(enc.offsets), enc.limits)
        return texts, eff_len[texts].sum(axis=1), None

    def forward(self, ranker, model: Callable, parts: list, group: int, on_batch: Callable, cache: dict) -> np.ndarray:
        """Logits of the text rows of ``parts`` ((key, enc, text rows) per call taking part), run together:
        one packer over their texts back to back (kept in ``cache`` while the same calls take part, e.g.
        a lone call's selection steps), planned under the ranker's token budget into model batches.
        on_batch(rows, real tokens, pad tokens, model seconds, pack seconds) after each model call."""
        t0 = time.perf_counter()
        key = tuple(dict.fromkeys(k for k, _, _ in parts))
        if cache.get("key") != key:
            tok = ranker.tokenizer
            encs = {k: enc for k, enc, _ in parts}
            tokens, offsets, limits, bases = [], [np.zeros(1, np.int64)], [], {}
            n_texts = n_tok = 0
            for k in key:
                enc = encs[k]
                bases[k] = n_texts
                tokens.append(enc.tokens)
                offsets.append(enc.offsets[1:] + n_tok)
                limits.append(enc.limits)
                n_texts += len(enc.limits)
                n_tok += int(enc.tokens.size)
            if len(key) == 1:  # one call: its own buffers, as they are
                enc = encs[key[0]]
                tokens, offsets, limits = enc.tokens, enc.offsets, enc.limits
            else:
                tokens, offsets, limits = np.concatenate(tokens), np.concatenate(offsets), np.concatenate(limits)
            cache.update(key=key, bases=bases, packer=_core.PairPacker(
                tokens, offsets, limits, cand1_id=tok.cand1_id, cand2_id=tok.cand2_id, pad_id=tok.pad_id,
                prefix_offset=tok.prefix_offset))
        packer, bases = cache["packer"], cache["bases"]
        text_pairs = np.concatenate([rows + bases[k] for k, _, rows in parts]) if len(parts) > 1 \
            else parts[0][2] + bases[parts[0][0]]
        order, bounds = packer.plan(text_pairs, ranker.token_budget, max(ranker.max_batch_size, group), group,
                                    ranker.batch_cost)
        logits = np.empty(len(text_pairs), dtype=np.float32)
        pack_s = time.perf_counter() - t0
        for b in range(len(bounds) - 1):
            t0 = time.perf_counter()
            batch_rows = order[bounds[b]:bounds[b + 1]]
            ids, mask, pos, pad = packer.build(text_pairs, batch_rows)
            t1 = time.perf_counter()
            logits[batch_rows] = model(ids, mask, pos)
            on_batch(len(batch_rows), int(ids.size - pad), int(pad), time.perf_counter() - t1, pack_s + t1 - t0)
            pack_s = 0.0
        return logits

    # -- what the server asks of any scorer ---------------------------------------------------------

    def capped_lengths(self, ranker, query: str, cap: int, source_maxlength=None, candidate_maxlength=None) -> dict:
        """PairRM gives each document candidate_maxlength tokens plus half of what the query leaves unused
        of source_maxlength (model/tokenization.encode_prompts), each piece being [CLS] <marker> text [SEP];
        the query's own length as source_maxlength keeps the query as it is."""
        src_len, cand_len = ranker.truncation(source_maxlength, candidate_maxlength)
        tok = ranker.tokenizer
        query_len = min(len(tok.encode([tok.source_text(query)])[0]), src_len)
        limit = min(cap + tok.prefix_offset + 2, cand_len + (src_len - query_len) // 2)
        return {"source_maxlength": query_len, "candidate_maxlength": limit}

    def full_ranking_relevance(self, scores) -> tuple:
        """sigmoid(s_i * n / (2 (n - 1))) of max_logits scores: the sigmoid of the mean over the other
        documents of the pair's logit averaged over both orders (strictly increasing in s_i, so the order
        is kept); n (n - 1) passes."""
        n = len(scores)
        return relevance_from_aggregate(scores), n * (n - 1)


@dataclass
class RewardEncoding:
    """The encoded rows of a call (each distinct (source, candidate) once) and, per prompt, the row of
    each of its candidates."""

    rows: list  # (token ids, token type ids) per row
    per_prompt: list  # int64 row indices per prompt

    def __post_init__(self):
        self.flat = np.concatenate(self.per_prompt) if self.per_prompt else np.empty(0, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum([len(p) for p in self.per_prompt])]).astype(np.int64)
        self.lengths = np.array([len(ids) for ids, _ in self.rows], dtype=np.int64)

    def per_prompt_scores(self, values: np.ndarray) -> list[np.ndarray]:
        """The rows' scores per prompt; a NaN fails the call naming its prompt (ModelOutputError)."""
        bad = np.flatnonzero(np.isnan(values))
        if bad.size:
            p = next(p for p, idx in enumerate(self.per_prompt) if np.isin(idx, bad).any())
            raise ModelOutputError(p)
        return [values[idx] for idx in self.per_prompt]


def candidate_steps(ns: list[int], finish: Callable[[list], object]) -> Steps:
    """A reward model's plan as a step generator: one step whose rows are every (prompt, candidate,
    candidate); sent their scores, it returns ``finish(scores per prompt)``."""
    rows = np.array([(p, i, i) for p, n in enumerate(ns) for i in range(n)], dtype=np.int64).reshape(-1, 3)
    values = (yield Step(rows)) if len(rows) else np.empty(0, dtype=np.float32)
    starts = np.concatenate([[0], np.cumsum(ns)]).astype(np.int64)
    per_prompt = [values[starts[p]:starts[p + 1]] for p in range(len(ns))]
    for p, s in enumerate(per_prompt):
        if np.isnan(s).any():
            raise ModelOutputError(p)
    return finish(per_prompt)


class RewardScorer:
    """A pointwise reward model: one forward pass per distinct (source, candidate), llm-blender's
    DebertaRMCollator encoding ``[CLS] source [SEP] candidate [SEP]`` after its truncation round trip."""

    kind = "reward"
    reserved_markers: tuple = ()  # PairRM's markers mean nothing to a reward model (as offline)
    min_maxlength = MIN_POINTWISE_MAXLENGTH
    min_maxlength_why = "a piece's [CLS] and [SEP]"
    ranks_fully = True  # llm-blender ranks it fully whatever pairrm_cmp_type says (n passes)
    unit = "candidate"
    describe_defaults = {"kind": "pointwise"}

    def plan(self, ranker, verb: str, *args, **kwargs) -> Plan:
        check_choice("verb", verb, VERBS)
        return getattr(self, f"plan_{verb}")(ranker, *args, **kwargs)

    def plan_rank(self, ranker, inputs, candidates, instructions=None, return_scores=False, policy="max_logits", *,
                  source_maxlength=None, candidate_maxlength=None) -> Plan:
        check_choice("policy", policy, POLICIES)  # checked; nothing to aggregate
        sources, cands = check_prompts(inputs, candidates, instructions, reserved=())

        def finish(scores):
            return stack_if_equal(scores if return_scores else [ranks_from_scores(s) for s in scores])

        ns = [len(c) for c in cands]
        return Plan(sources, cands, candidate_steps(ns, finish), sum(ns), source_maxlength, candidate_maxlength)

    def plan_compare(self, ranker, inputs, candidates_a, candidates_b, instructions=None, mode="[A,B]+[B,A]", *,
                     source_maxlength=None, candidate_maxlength=None) -> Plan:
        check_choice("mode", mode, COMPARE_MODES)  # checked; llm-blender ignores it for this model
        sources, cands = check_pairs_ab(inputs, candidates_a, candidates_b, instructions, reserved=())

        def finish(scores):
            return np.array([s[0] - s[1] for s in scores], dtype=np.float32).reshape(len(scores))

        return Plan(sources, cands, candidate_steps([2] * len(sources), finish), 2 * len(sources), source_maxlength,
                    candidate_maxlength)

    def plan_select(self, ranker, inputs, candidates, top_k=1, strategy="bubble", orders="both", seed=0,
                    instructions=None, initial_orders=None, policy="max_logits", worst=False, budget=None, *,
                    source_maxlength=None, candidate_maxlength=None) -> Plan:
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

            def answer(step: Step) -> np.ndarray:  # a pair step answered from the scores: s(a) - s(b)
                rows = step.rows
                base = starts[rows[:, 0]]
                return (flat[base + rows[:, 1]] - flat[base + rows[:, 2]]).astype(np.float32)

            sels = run_steps(steps, answer)
            for sel, n in zip(sels, ns):
                sel.forward_passes = n
            return sels

        return Plan(sources, cands, candidate_steps(ns, finish), sum(ns), source_maxlength, candidate_maxlength,
                    "Selecting")

    def plan_judge(self, ranker, prompts, completions, shuffle_order=True, return_scores=False, temperature=1.0, *,
                   seed=None) -> Plan:
        # A candidate's score does not depend on the order it is shown in: the coin flips are drawn (as
        # PairRM's plan draws them) and change nothing.
        steps, sources, _ = judge_plan(prompts, completions, shuffle_order, return_scores, temperature, seed,
                                       reserved=())
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

        return Plan(sources, cands, candidate_steps([len(c) for c in cands], finish), 2 * len(sources),
                    desc="Judging")

    def plan_steps(self, ranker, sources, candidates, steps: Steps, cost=None) -> Plan:
        # Its rows are (prompt, candidate) scores, not a pair generator's rows.
        raise TypeError("run / run_sync drive PairRM step generators; a pointwise reward model serves "
                        "rank, select, compare and judge")

    # -- texts and rows -----------------------------------------------------------------------------

    def truncation_default(self, ranker, name: str):
        return getattr(ranker, name)  # None: the tokenizer's model_max_length (none when unbounded)

    def encode(self, ranker, sources, candidates, src_len, cand_len) -> RewardEncoding:
        """The distinct (truncated source, truncated candidate) rows of checked prompts, encoded, and
        where each prompt's candidates find their row."""
        tok = ranker.tokenizer
        unique_sources = list(dict.fromkeys(sources))
        unique_cands = list(dict.fromkeys(c for cs in candidates for c in cs))
        src_text = dict(zip(unique_sources, tok.truncate(unique_sources, src_len)))
        cand_text = dict(zip(unique_cands, tok.truncate(unique_cands, cand_len)))
        index: dict[tuple[str, str], int] = {}
        per_prompt = []
        for src, cands in zip(sources, candidates):
            per_prompt.append(np.array([index.setdefault((src_text[src], cand_text[c]), len(index)) for c in cands],
                                       dtype=np.int64))
        return RewardEncoding(tok.encode_pairs(list(index)) if index else [], per_prompt)

    def n_tokens(self, enc: RewardEncoding) -> int:
        return int(enc.lengths.sum())

    def step_rows(self, enc: RewardEncoding, step: Step) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(model rows, their lengths, where each step row finds its model row): the distinct encoded rows
        of the step's (prompt, candidate) rows, each run once."""
        rows = enc.flat[enc.starts[step.rows[:, 0]] + step.rows[:, 1]] if len(step.rows) else np.empty(0, np.int64)
        unique, back = np.unique(rows, return_inverse=True)
        return unique, enc.lengths[unique], back.reshape(-1)

    def forward(self, ranker, model: Callable, parts: list, group: int, on_batch: Callable, cache: dict) -> np.ndarray:
        """Scores of the rows of ``parts`` ((key, enc, encoded row indices) per call), longest first in
        right-padded batches under the token budget (the classifier reads [CLS], the first token: padding
        changes nothing but float noise)."""
        encoded = [enc.rows[i] for _, enc, rows in parts for i in rows]
        lengths = np.array([len(ids) for ids, _ in encoded], dtype=np.int64)
        order = np.argsort(-lengths, kind="stable")  # longest first: each batch's width is its first row's
        values = np.empty(len(encoded), dtype=np.float32)
        start = 0
        while start < len(order):
            width = int(lengths[order[start]])
            n_rows = max(1, min(ranker.max_batch_size, ranker.token_budget // max(width, 1)))
            batch = order[start:start + n_rows]
            t0 = time.perf_counter()
            ids, mask, types = pad_batch([encoded[i] for i in batch], ranker.tokenizer.pad_id)
            t1 = time.perf_counter()
            values[batch] = model(ids, mask, types)
            real = int(lengths[batch].sum())
            on_batch(len(batch), real, int(ids.size) - real, time.perf_counter() - t1, t1 - t0)
            start += n_rows
        return values

    # -- what the server asks of any scorer ---------------------------------------------------------

    def capped_lengths(self, ranker, query: str, cap: int, source_maxlength=None, candidate_maxlength=None) -> dict:
        """The reward model cuts each document to candidate_maxlength tokens, its special tokens included
        (None: the tokenizer's model_max_length, none when unbounded)."""
        src_len, cand_len = ranker.truncation(source_maxlength, candidate_maxlength)
        tok = ranker.tokenizer
        limit, default = cap + tok.n_special, tok.model_max_length if cand_len is None else cand_len
        limit = min(limit, ranker.max_candidate_length)  # never past the ranker's maximum (issue 25.1)
        return {"source_maxlength": source_maxlength,
                "candidate_maxlength": limit if default is None else min(limit, default)}

    def full_ranking_relevance(self, scores) -> tuple:
        """Each document is scored alone, its score a logit, and TEI's relevance of a cross-encoder's
        logit is its sigmoid; n passes."""
        s = np.asarray(scores, dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-s)), len(s)


SCORERS = {"pair": PairScorer(), "reward": RewardScorer()}


def scorer_for(tokenizer):
    """The scorer of a model whose tokenizer this is (its ``kind``: "pair" for PairRM's PairTokenizer,
    "reward" for a reward model's)."""
    kind = getattr(tokenizer, "kind", "pair")
    try:
        return SCORERS[kind]
    except KeyError:
        raise ValueError(f"no scorer for a tokenizer of kind {kind!r}; known: {sorted(SCORERS)}") from None
