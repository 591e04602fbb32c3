"""Ranker: the one public class over either scorer (scorer.py): PairRM's pairwise ranker or a pointwise reward
model, with the same verbs (rank, compare, select, judge), run offline from a checked plan."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from .model.source import is_demo, is_exported_dir, read_export_meta, verify_exported_dir  # noqa: F401 (re-exported)
from .options import (BACKEND_CHOICES, DEFAULT_BACKEND, DEFAULT_BATCH_COST, DEFAULT_MAX_BATCH,
                      DEFAULT_TOKEN_BUDGET, DEVICE_CHOICES, MAXLENGTH_WHEN_UNBOUNDED, PRECISION_CHOICES,
                      check_bool, check_choice, check_count, check_maxlength, check_optional_count, resolve_device)
from .scorer import Plan, scorer_for
from .selection.steps import DEFAULT_MODEL, RunStats, Selection, Steps, run_steps
from .selection.cascade import certified, check_eps


class Ranker:
    """PairRM over ONNX Runtime (default) or torch, fed by the C++ pair packer; or a pointwise reward model
    (llm-blender's "deberta-rm") with the same verbs. ``scorer`` (picked by the tokenizer's kind) holds
    what differs between the two; everything here is the same for both."""

    def __init__(self, model: Callable, tokenizer, source_maxlength: int | None = None,
                 candidate_maxlength: int | None = None, token_budget: int = DEFAULT_TOKEN_BUDGET["cpu"],
                 max_batch_size: int = DEFAULT_MAX_BATCH, progress: bool = False,
                 batch_cost: int = DEFAULT_BATCH_COST["cpu"], *, max_source_length: int | None = None,
                 max_candidate_length: int | None = None):
        check_count("token_budget", token_budget)
        progress = check_bool("progress", progress)
        check_count("max_batch_size", max_batch_size)
        check_count("batch_cost", batch_cost, minimum=0)
        self.model = model  # the "default" model; Step.model names it
        self.extra_models: dict[str, Callable] = {}  # other models by name (e.g. "exact", for a cascade)
        self.cascade_eps: float | None = None  # enable_cascade: the per-row bound |default - exact| it trusts
        self.tokenizer = tokenizer
        self.scorer = scorer_for(tokenizer)
        # The largest truncation lengths a call may ask for (issue 25.1: a length is a memory bound): the
        # checkpoint's own lengths unless raised here (from_pretrained's max_source_length / ...).
        self.max_source_length = self._maximum("max_source_length", max_source_length, source_maxlength)
        self.max_candidate_length = self._maximum("max_candidate_length", max_candidate_length, candidate_maxlength)
        # None (a reward model's default): the tokenizer's own limit.
        self.source_maxlength = source_maxlength
        self.candidate_maxlength = candidate_maxlength
        self.source_maxlength, self.candidate_maxlength = self.truncation(source_maxlength, candidate_maxlength)
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.progress = progress
        self.batch_cost = batch_cost
        self.last_stats = RunStats()
        self.engine_info: dict = {}  # what from_pretrained chose and why (describe())
        self.pickle_source: dict | None = None  # from_pretrained's arguments: what a pickle reloads from

    # -- pickling: by source, never by the loaded sessions (an InferenceSession does not pickle) ------

    def __reduce__(self):
        if self.pickle_source is None:
            raise TypeError("a Ranker constructed directly cannot be pickled (its model is a live session); "
                            "make it with Ranker.from_pretrained(path, ...), which pickles by its arguments and "
                            "loads again on the other side, or pass the path and options to the other process")
        # Options set on the ranker after loading travel too (progress, budgets, lengths).
        state = {k: getattr(self, k) for k in ("source_maxlength", "candidate_maxlength", "token_budget",
                                                "max_batch_size", "progress", "batch_cost")}
        return _reload, (self.pickle_source, state)

    def __copy__(self):
        # A shallow copy shares everything, the model included (a copy may then swap its model).
        twin = object.__new__(type(self))
        twin.__dict__.update(self.__dict__)
        return twin

    def __deepcopy__(self, memo):
        # The loaded model is shared, not reloaded: sessions are read-only at inference and thread-safe, and
        # a second copy of the weights would double the memory for nothing. Everything a caller may change
        # on the copy (lengths, budgets, extra models, stats) is its own.
        import copy

        twin = self.__copy__()
        twin.extra_models = dict(self.extra_models)
        twin.engine_info = copy.deepcopy(self.engine_info, memo)
        twin.last_stats = copy.deepcopy(self.last_stats, memo)
        twin.pickle_source = copy.deepcopy(self.pickle_source, memo)
        memo[id(self)] = twin
        return twin

    def _maximum(self, name: str, given, default) -> int:
        """A truncation maximum: the checkpoint's own length (``default``), or ``given`` where it is higher
        (it raises the maximum, never lowers it below the ranker's default: a lower cap is the server's
        own setting); without a default, ``given``, else the tokenizer's model_max_length, else
        MAXLENGTH_WHEN_UNBOUNDED (a tokenizer that names no limit)."""
        if given is not None:
            given = check_count(name, given, minimum=self.scorer.min_maxlength)
            return given if default is None else max(given, int(default))
        if default is not None:
            return int(default)
        return int(getattr(self.tokenizer, "model_max_length", None) or MAXLENGTH_WHEN_UNBOUNDED)

    def enable_cascade(self, exact_model: Callable, eps: float) -> None:
        """Run the certified cascade (selection/cascade.py): every pair on the default (fast) model, and
        the pairs whose outcome the bound ``eps`` cannot certify again on ``exact_model`` (fp32, held as
        "exact"); picks and ranks then equal the all-fp32 ones whenever every fast logit is within ``eps``
        of the exact one. Values handed back (scores, logits, probabilities) come from the exact model."""
        self.cascade_eps = check_eps(eps)
        # A new dict, never an update in place: a shallow copy of this ranker keeps its own models.
        self.extra_models = {**self.extra_models, "exact": exact_model}

    def cascaded(self, steps: Steps, mode: str) -> Steps:
        """``steps`` under the certified cascade when it is on (mode: selection.cascade.cascade_mode's, or
        "exact" for answers that are values), else ``steps`` itself. Every driver (run, the engine) takes
        its generators through here."""
        if self.cascade_eps is None:
            return steps
        return certified(steps, self.cascade_eps, mode)

    def describe(self) -> dict:
        """How this ranker runs: backend, precision, device, threads, CPU model and ISA features, and why
        (the reason is auto-selection's when precision/backend was "auto")."""
        from .runtime.autoselect import cpu_features

        cpu = cpu_features()
        info = {"backend": None, "precision": None, "device": None, "threads": None, "reason": "constructed directly",
                **self.scorer.describe_defaults}
        info.update(self.engine_info)
        info.update(cpu_model=cpu["cpu_model"], isa=cpu["isa"], logical_cores=cpu["logical_cores"],
                    fp32_islands=list(getattr(self.model, "keep_fp32", ())))
        return info

    @classmethod
    def from_pretrained(cls, path, backend: str = DEFAULT_BACKEND, device: str = "cpu", precision: str | None = None, *,
                        threads: int | None = None, cache_dir=None, token_budget: int | None = None,
                        max_batch_size: int = DEFAULT_MAX_BATCH, source_maxlength: int | None = None,
                        candidate_maxlength: int | None = None, progress: bool = False,
                        batch_cost: int | None = None, revision: str | None = None, token=None,
                        hub_cache_dir=None, local_files_only: bool | None = None,
                        max_source_length: int | None = None, max_candidate_length: int | None = None) -> "Ranker":
        """Load a PairRM checkpoint directory (llm-blender or PairRM-hf layout), an exported one, or a
        pointwise reward model.

        backend="onnx" exports the checkpoint to ONNX on first use and caches it (keyed by a hash of the
        weights and export options); precision "int8" is ONNX Runtime dynamic quantization (CPU).
        backend="torch" runs the same graph in torch eager, fp32, fp16 or bf16 (bf16 keeps layer norms and
        the head in fp32); backend="openvino" runs the exported graph on OpenVINO's CPU plugin (fp32, bf16).
        device="auto" is cuda when the backend sees a GPU, else cpu. precision=None is "auto", the default
        (with backend="auto"): exact fp32 (ONNX Runtime on a CPU), or the certified cascade (a fast pass for
        every pair, fp32 for the pairs its measured bound cannot certify: fp32's answers) where that bound
        says it pays on this CPU, or a variant that passed the agreement gate (runtime/autoselect.py,
        docs/exact-at-speed.md); describe() says what was chosen and why. precision="fp32" is plain fp32.

        An *exported* directory (``model.onnx`` + ``pair_tokenizer.json`` + ``tokenizer.json`` +
        ``export.json``, as ``blender-fast export --out DIR`` writes it) loads with onnxruntime and
        tokenizers only: torch and transformers are never imported (the runtime install needs neither).
        Its precision is the exported one.

        A pointwise reward model (``OpenAssistant/reward-model-deberta-v3-large-v2``: a
        DebertaV2ForSequenceClassification with one label) loads as a Ranker over the reward scorer
        (scorer.RewardScorer), with the same verbs and llm-blender's "deberta-rm" semantics: backend "onnx"
        or "torch", precision fp32 or fp16 (both) / bf16 (torch); "auto" is ONNX fp32.

        path may also be a Hugging Face Hub id (``llm-blender/PairRM``, ``org/name@revision``) or
        ``demo:SHAPE``: model/hub.py resolves it into the HF cache (``hub_cache_dir``, default HF_HUB_CACHE;
        ``revision`` pinning; ``token`` / HF_TOKEN; ``local_files_only`` / HF_HUB_OFFLINE=1) and reuses
        llm-blender's own download. ``cache_dir`` stays the ONNX export cache.

        max_source_length / max_candidate_length: the largest source_maxlength / candidate_maxlength any
        call may ask for (default: the checkpoint's own lengths, PairRM's 1224 / 412; a reward model's
        model_max_length, or 2048 when it names none); above it a call is a ValueError naming the length.

        A Ranker made here pickles by these arguments (the token excepted: the other side reads HF_TOKEN)
        and loads again where it is unpickled, so multiprocessing and Ray can ship it.
        """
        from .runtime.loading import load_model

        progress = check_bool("progress", progress)
        if local_files_only is not None:
            check_bool("local_files_only", local_files_only)
        source = dict(path=path, backend=backend, device=device, precision=precision, threads=threads,
                      cache_dir=cache_dir, token_budget=token_budget, max_batch_size=max_batch_size,
                      source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength, progress=progress,
                      batch_cost=batch_cost, revision=revision, hub_cache_dir=hub_cache_dir,
                      local_files_only=local_files_only, max_source_length=max_source_length,
                      max_candidate_length=max_candidate_length)

        check_choice("backend", backend, BACKEND_CHOICES)
        if precision is not None:
            check_choice("precision", precision, PRECISION_CHOICES)
        device = resolve_device(check_choice("device", device, DEVICE_CHOICES), "torch" if backend == "torch" else "onnx")
        demo = None
        if is_demo(path):  # the generated checkpoint: synthetic/ makes it (once, in the cache)
            from .synthetic.demo import demo_path as demo
        hub = dict(kind="ranker", revision=revision, cache_dir=hub_cache_dir, token=token,
                   local_files_only=local_files_only)
        loaded = load_model(path, backend, precision, device, threads, cache_dir, demo=demo, hub=hub)
        ranker = cls(loaded.model, loaded.tokenizer, loaded.source_maxlength, loaded.candidate_maxlength,
                     token_budget=token_budget or DEFAULT_TOKEN_BUDGET[device], max_batch_size=max_batch_size,
                     progress=progress, batch_cost=DEFAULT_BATCH_COST[device] if batch_cost is None else batch_cost,
                     max_source_length=max_source_length, max_candidate_length=max_candidate_length)
        # Validated like per-call lengths: a clear error here instead of a failure inside the packer.
        ranker.source_maxlength, ranker.candidate_maxlength = ranker.truncation(source_maxlength, candidate_maxlength)
        ranker.engine_info = loaded.info
        ranker.pickle_source = source
        if loaded.exact_model is not None:
            ranker.enable_cascade(loaded.exact_model, loaded.cascade["eps"])
        return ranker

    # -- what the server asks of any scorer (serve/ never asks which kind of model it holds) ----------

    @property
    def reserved_markers(self) -> tuple:
        """Markers no text may hold: PairRM's prefix tokens (none for a reward model)."""
        return self.scorer.reserved_markers

    def capped_lengths(self, query: str, cap: int, source_maxlength=None, candidate_maxlength=None) -> dict:
        """Truncation lengths that keep at most ``cap`` of each document's own tokens, never more than the
        ranker's lengths would keep (the scorer's rule of truncation)."""
        return self.scorer.capped_lengths(self, query, cap, source_maxlength, candidate_maxlength)

    def full_ranking_relevance(self, scores) -> tuple:
        """([0, 1] relevance per document, forward passes) of a full ranking's scores (the scorer's rule)."""
        return self.scorer.full_ranking_relevance(scores)

    # -- the engine ---------------------------------------------------------------------------------
    # A verb is planned (checked once: the prompts, a step generator, its cost), encoded, run, answered.
    # The offline verbs do all of it in one call; the server's batching engine (serve/engine.py) encodes
    # in the caller's thread and runs the steps of many plans together: the same plans, the same answers.

    def truncation(self, source_maxlength=None, candidate_maxlength=None) -> tuple:
        """This call's truncation lengths: the arguments when given, else the ranker's defaults.

        They are per call (never written onto the ranker), so threads sharing one Ranker may use
        different lengths at once."""
        out = []
        for name, value, default in (("source_maxlength", source_maxlength, self.source_maxlength),
                                     ("candidate_maxlength", candidate_maxlength, self.candidate_maxlength)):
            if value is None:
                out.append(default)
                continue
            if name == "source_maxlength":
                maximum = self.max_source_length
            else:
                # PairRM gives a candidate half of what its source leaves unused (encode_prompts): a call
                # with a shorter source may give candidates that much more, and a pair row stays within
                # the tokens of one at the maxima (the server's capped_lengths asks exactly this).
                src = out[0] if out[0] is not None else self.max_source_length
                spare = (self.max_source_length - src) // 2 if self.scorer.kind == "pair" else 0
                maximum = self.max_candidate_length + max(spare, 0)
            flag = "max_source_length" if name == "source_maxlength" else "max_candidate_length"
            out.append(check_maxlength(name, value, self.scorer.min_maxlength, maximum,
                                       self.scorer.min_maxlength_why,
                                       f"this ranker's; Ranker.from_pretrained(..., {flag}=N) raises it"))
        return out[0], out[1]

    def encode(self, sources: list[str], candidates: list[list[str]], source_maxlength=None,
               candidate_maxlength=None):
        src_len, cand_len = self.truncation(source_maxlength, candidate_maxlength)
        return self.scorer.encode(self, sources, candidates, src_len, cand_len)

    def model_for(self, name: str) -> Callable:
        """The model that scores a Step with ``model=name``: "default" is ``self.model``; other names are
        the ones in ``extra_models``. Any other name is an error naming what this ranker holds."""
        if name == DEFAULT_MODEL:
            return self.model
        try:
            return self.extra_models[name]
        except (KeyError, TypeError):
            held = (DEFAULT_MODEL, *sorted(self.extra_models))
            raise ValueError(f"this ranker has no model named {name!r}; it holds {held}") from None

    def plan(self, verb: str, *args, **kwargs) -> Plan:
        """Everything ``verb`` (rank, compare, select, judge; its arguments, progress excepted) decides
        before the model runs: the checks, the prompts, the steps and their cost."""
        return self.scorer.plan(self, verb, *args, **kwargs)

    def run_plan(self, plan: Plan, progress=None):
        """Run a plan offline; returns its answer. last_stats says where the time went."""
        stats = RunStats()
        t0 = time.perf_counter()
        enc = self.encode(plan.sources, plan.candidates, plan.source_maxlength, plan.candidate_maxlength)
        stats.tokenize_s = time.perf_counter() - t0
        # progress: None = the ranker's default; a bool; or a bar (anything with .update(n)) owned by the
        # caller, e.g. one bar over a whole CLI job, moved here after every model batch.
        progress = self.progress if progress is None else progress
        bar, own_bar = None, False
        if hasattr(progress, "update"):
            bar = progress
        elif progress:
            from tqdm.auto import tqdm

            bar, own_bar = tqdm(desc=plan.desc, unit=self.scorer.unit), True

        def on_batch(rows: int, real: int, pad: int, model_s: float, pack_s: float) -> None:
            stats.model_s += model_s
            stats.pack_s += pack_s
            stats.batches += 1
            stats.tokens += real
            stats.pad_tokens += pad
            stats.pairs += rows  # model rows run (a reward model runs each distinct candidate once)
            if bar is not None:
                bar.update(rows)

        cache: dict = {}

        def score(step) -> np.ndarray:
            t0 = time.perf_counter()
            rows, _, back = self.scorer.step_rows(enc, step)
            group = step.group if len(step.rows) % step.group == 0 else 1
            stats.pack_s += time.perf_counter() - t0
            logits = self.scorer.forward(self, self.model_for(step.model), [(0, enc, rows)], group, on_batch, cache)
            stats.steps += 1
            return logits if back is None else logits[back]

        try:
            return run_steps(plan.steps, score)
        finally:
            if own_bar:
                bar.close()
            self.last_stats = stats

    def run(self, sources: list[str], candidates: list[list[str]], steps: Steps, *, desc: str = "Ranking",
            source_maxlength=None, candidate_maxlength=None, progress=None):
        """Drive a step generator (selection.steps / selection.verbs) over these checked prompts
        (check_prompts) with this ranker's models; returns the generator's result. last_stats says where
        the time went."""
        plan = self.scorer.plan_steps(self, sources, candidates, steps)
        plan.desc, plan.source_maxlength, plan.candidate_maxlength = desc, source_maxlength, candidate_maxlength
        return self.run_plan(plan, progress)

    # -- public API ---------------------------------------------------------------------------------

    @staticmethod
    def _check_progress(progress) -> None:
        """progress: None (the ranker's), a bool, or a bar of the caller's (anything with .update)."""
        if progress is not None and not hasattr(progress, "update"):
            check_bool("progress", progress)

    def rank(self, inputs, candidates, instructions=None, return_scores: bool = False, policy: str = "max_logits",
             *, source_maxlength: int | None = None, candidate_maxlength: int | None = None,
             progress: bool | None = None):
        """Full pairwise ranking, all n(n-1) ordered pairs per prompt, aggregated like llm-blender.

        Returns ranks (int32, 1 = best, ties share the better rank) or scores (float32, higher is
        better): one array [n_prompts, n] when every prompt has n candidates, else a list of arrays.
        source_maxlength / candidate_maxlength / progress apply to this call only (None: the ranker's).
        """
        check_bool("return_scores", return_scores)
        self._check_progress(progress)
        return self.run_plan(self.plan("rank", inputs, candidates, instructions, return_scores, policy,
                                       source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength),
                             progress)

    def compare(self, inputs, candidates_a, candidates_b, instructions=None, mode: str = "[A,B]+[B,A]", *,
                source_maxlength: int | None = None, candidate_maxlength: int | None = None,
                progress: bool | None = None) -> np.ndarray:
        """Logits (float32, one per input) that A is better than B, with llm-blender's modes.

        "[A,B]": f(A,B); "[B,A]": f(B,A) (B read first; as in llm-blender, not negated);
        "[A,B]+[B,A]": f(A,B) - f(B,A), the position-debiased comparison.
        """
        self._check_progress(progress)
        return self.run_plan(self.plan("compare", inputs, candidates_a, candidates_b, instructions, mode,
                                       source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength),
                             progress)

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
        check_bool("worst", worst)
        self._check_progress(progress)
        return self.run_plan(self.plan("select", inputs, candidates, top_k, strategy, orders, seed, instructions,
                                       initial_orders, policy, worst, budget, source_maxlength=source_maxlength,
                                       candidate_maxlength=candidate_maxlength), progress)

    def judge(self, prompts, completions, shuffle_order: bool = True, return_scores: bool = False,
              temperature: float = 1.0, *, seed=None, progress: bool | None = None) -> list:
        """TRL's PairRMJudge.judge: per (prompt, [c0, c1]) the preferred index (0 or 1), or with
        return_scores the probability that c0 is better, softmax(scores / temperature)[0].
        shuffle_order ranks each pair in a random order (coin_flips) and flips the result back; seed:
        None (fresh entropy), an integer, or a numpy Generator (PairRMJudge passes its own)."""
        check_bool("shuffle_order", shuffle_order)
        check_bool("return_scores", return_scores)
        self._check_progress(progress)
        return self.run_plan(self.plan("judge", prompts, completions, shuffle_order, return_scores, temperature,
                                       seed=seed), progress)




def _reload(source: dict, state: dict) -> Ranker:
    """Unpickling a Ranker: load it again from what from_pretrained was given, then its later settings."""
    ranker = Ranker.from_pretrained(**source)
    for key, value in state.items():
        setattr(ranker, key, value)
    return ranker
