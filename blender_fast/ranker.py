"""Ranker: PairRM scores, ranks, comparisons and sub-n^2 selection over packed pair batches."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from . import _core
from .model.checkpoint import EXPORTED_FILES, load_checkpoint
from .options import (BACKEND_CHOICES, DEFAULT_BACKEND, DEFAULT_BATCH_COST, DEFAULT_MAX_BATCH,
                      DEFAULT_PRECISION, DEFAULT_TOKEN_BUDGET, DEVICE_CHOICES, PRECISION_CHOICES, backend_for,
                      check_choice, check_count)
from .inputs import check_pairs_ab, check_prompts, judge_plan
from .selection.steps import DEFAULT_MODEL, RunStats, Selection, Step, Steps, run_steps, select_steps
from .selection.verbs import compare_steps, rank_steps
from .selection.aggregate import relevance_from_aggregate
from .selection.cascade import certified, check_eps, verb_mode
from .model.tokenization import EncodedPrompts, PairTokenizer, encode_prompts


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


def verify_exported_dir(path: Path, meta: dict) -> None:
    """An exported directory matches the sizes and sha256 its export.json recorded (once per process while
    the files are unchanged): a damaged or foreign model.onnx is one clear error naming it, never scores."""
    from .model.cache import MANIFEST_FILES_KEY, verify_files_once

    files = meta.get(MANIFEST_FILES_KEY)
    missing = [n for n in EXPORTED_FILES if n != "export.json" and n not in (files or {})]
    if not isinstance(files, dict) or missing:
        raise ValueError(f"{Path(path) / 'export.json'} records no size and sha256 for {', '.join(missing) or 'its files'} "
                         "(an older or hand-made export); re-export the model (blender-fast export CHECKPOINT --out DIR)")
    problem = verify_files_once(path, files, extra=("export.json",))
    if problem:
        raise ValueError(f"damaged exported model: {problem}; re-export it (blender-fast export CHECKPOINT --out DIR)")


class Ranker:
    """PairRM over ONNX Runtime (default) or torch, fed by the C++ pair packer."""

    def __init__(self, model: Callable, tokenizer: PairTokenizer, source_maxlength: int, candidate_maxlength: int,
                 token_budget: int = DEFAULT_TOKEN_BUDGET["cpu"], max_batch_size: int = DEFAULT_MAX_BATCH, progress: bool = False,
                 batch_cost: int = DEFAULT_BATCH_COST["cpu"]):
        check_count("token_budget", token_budget)
        check_count("max_batch_size", max_batch_size)
        check_count("batch_cost", batch_cost, minimum=0)
        self.model = model  # the "default" model; Step.model names it
        self.extra_models: dict[str, Callable] = {}  # other models by name (e.g. "exact", for a cascade)
        self.cascade_eps: float | None = None  # enable_cascade: the per-row bound |default - exact| it trusts
        self.tokenizer = tokenizer
        self.source_maxlength = source_maxlength
        self.candidate_maxlength = candidate_maxlength
        self.token_budget = token_budget
        self.max_batch_size = max_batch_size
        self.progress = progress
        self.batch_cost = batch_cost
        self.last_stats = RunStats()
        self.engine_info: dict = {}  # what from_pretrained chose and why (describe())

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
        info = {"backend": None, "precision": None, "device": None, "threads": None, "reason": "constructed directly"}
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
                        hub_cache_dir=None, local_files_only: bool | None = None) -> "Ranker":
        """Load a PairRM checkpoint directory (llm-blender or PairRM-hf layout), or an exported one.

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
        DebertaV2ForSequenceClassification with one label) loads as a ``pointwise.PointwiseRanker``, with the
        same verbs and llm-blender's "deberta-rm" semantics.

        path may also be a Hugging Face Hub id (``llm-blender/PairRM``, ``org/name@revision``) or
        ``demo:SHAPE``: model/hub.py resolves it into the HF cache (``hub_cache_dir``, default HF_HUB_CACHE;
        ``revision`` pinning; ``token`` / HF_TOKEN; ``local_files_only`` / HF_HUB_OFFLINE=1) and reuses
        llm-blender's own download. ``cache_dir`` stays the ONNX export cache.
        """
        from .synthetic.demo import local_model
        from .runtime.sessions import resolve_device

        check_choice("backend", backend, BACKEND_CHOICES)
        if precision is not None:
            check_choice("precision", precision, PRECISION_CHOICES)
        device = resolve_device(check_choice("device", device, DEVICE_CHOICES), "torch" if backend == "torch" else "onnx")
        path = local_model(path, kind="ranker", revision=revision, cache_dir=hub_cache_dir, token=token,
                                    local_files_only=local_files_only)
        from .model.pointwise import is_pointwise_dir

        if is_pointwise_dir(path):  # a pointwise reward model (OpenAssistant's): its own small engine
            from .pointwise import PointwiseRanker

            return PointwiseRanker.from_pretrained(
                path, backend=backend, device=device, precision=precision, threads=threads, cache_dir=cache_dir,
                token_budget=token_budget, max_batch_size=max_batch_size, source_maxlength=source_maxlength,
                candidate_maxlength=candidate_maxlength, progress=progress)
        exact_model = cascade = None
        if is_exported_dir(path):
            from .runtime.sessions import OnnxPairModel

            path = Path(path)
            meta = read_export_meta(path)
            verify_exported_dir(path, meta)  # before the first use: never scores from a damaged file
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

            precision = precision or DEFAULT_PRECISION
            backend = backend_for(backend, precision)
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

    # -- what the server asks of any scorer (serve/ never asks which kind of model it holds) ----------

    @property
    def reserved_markers(self) -> tuple:
        """Markers no text may hold: PairRM's prefix tokens."""
        from .model.checkpoint import SPECIAL_TOKENS

        return SPECIAL_TOKENS

    def capped_lengths(self, query: str, cap: int, source_maxlength=None, candidate_maxlength=None) -> dict:
        """Truncation lengths that keep at most ``cap`` of each document's own tokens, never more than the
        ranker's lengths would keep. PairRM gives each document candidate_maxlength tokens plus half of what
        the query leaves unused of source_maxlength (model/tokenization.encode_prompts), each piece being
        [CLS] <marker> text [SEP]; the query's own length as source_maxlength keeps the query as it is."""
        src_len, cand_len = self.truncation(source_maxlength, candidate_maxlength)
        tok = self.tokenizer
        query_len = min(len(tok.encode([tok.source_text(query)])[0]), src_len)
        limit = min(cap + tok.prefix_offset + 2, cand_len + (src_len - query_len) // 2)
        return {"source_maxlength": query_len, "candidate_maxlength": limit}

    def full_ranking_relevance(self, scores) -> tuple:
        """([0, 1] relevance per document, forward passes) of a full ranking's max_logits scores:
        sigmoid(s_i * n / (2 (n - 1))), the sigmoid of the mean over the other documents of the pair's
        logit averaged over both orders (strictly increasing in s_i, so the order is kept); n (n - 1) passes."""
        n = len(scores)
        return relevance_from_aggregate(scores), n * (n - 1)

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
            out.append(check_count(name, value))
        return out[0], out[1]

    def encode(self, sources: list[str], candidates: list[list[str]], source_maxlength=None,
               candidate_maxlength=None) -> EncodedPrompts:
        src_len, cand_len = self.truncation(source_maxlength, candidate_maxlength)
        return encode_prompts(self.tokenizer, sources, candidates, src_len, cand_len)

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

    def _pair_scorer(self, enc: EncodedPrompts, stats: RunStats, desc: str, progress=None):
        """A score(step) function for run_steps: the step's rows are (prompt, left, right) candidate
        triples of ``enc``, packed and run on the model the step names."""
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

        def score(step: Step) -> np.ndarray:
            model = self.model_for(step.model)
            rows = step.rows
            t0 = time.perf_counter()
            prompts = rows[:, 0]
            text_pairs = np.stack([enc.source_index[prompts], enc.candidate_start[prompts] + rows[:, 1],
                                   enc.candidate_start[prompts] + rows[:, 2]], axis=1)
            gs = step.group if len(rows) % step.group == 0 else 1
            order, bounds = packer.plan(text_pairs, self.token_budget, self.max_batch_size, gs, self.batch_cost)
            stats.pack_s += time.perf_counter() - t0
            logits = np.empty(len(rows), dtype=np.float32)
            for b in range(len(bounds) - 1):
                t0 = time.perf_counter()
                batch_rows = order[bounds[b]:bounds[b + 1]]
                ids, mask, pos, pad = packer.build(text_pairs, batch_rows)
                t1 = time.perf_counter()
                logits[batch_rows] = model(ids, mask, pos)
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

        score.close = bar.close if own_bar else (lambda: None)
        return score

    def run(self, sources: list[str], candidates: list[list[str]], steps: Steps, *, desc: str = "Ranking",
            source_maxlength=None, candidate_maxlength=None, progress=None):
        """Drive a step generator (selection.steps / selection.verbs) over these checked prompts
        (check_prompts) with this ranker's models; returns the generator's result. last_stats says where
        the time went."""
        stats = RunStats()
        t0 = time.perf_counter()
        enc = self.encode(sources, candidates, source_maxlength, candidate_maxlength)
        stats.tokenize_s = time.perf_counter() - t0
        score = self._pair_scorer(enc, stats, desc, progress)
        try:
            return run_steps(steps, score)
        finally:
            score.close()
            self.last_stats = stats

    # -- public API ---------------------------------------------------------------------------------

    def rank(self, inputs, candidates, instructions=None, return_scores: bool = False, policy: str = "max_logits",
             *, source_maxlength: int | None = None, candidate_maxlength: int | None = None,
             progress: bool | None = None):
        """Full pairwise ranking, all n(n-1) ordered pairs per prompt, aggregated like llm-blender.

        Returns ranks (int32, 1 = best, ties share the better rank) or scores (float32, higher is
        better): one array [n_prompts, n] when every prompt has n candidates, else a list of arrays.
        source_maxlength / candidate_maxlength / progress apply to this call only (None: the ranker's).
        """
        sources, cands = check_prompts(inputs, candidates, instructions)
        steps = self.cascaded(rank_steps([len(c) for c in cands], policy, return_scores),
                              verb_mode("rank", policy=policy, values=return_scores))
        return self.run(sources, cands, steps, desc="Ranking", source_maxlength=source_maxlength,
                        candidate_maxlength=candidate_maxlength, progress=progress)

    def compare(self, inputs, candidates_a, candidates_b, instructions=None, mode: str = "[A,B]+[B,A]", *,
                source_maxlength: int | None = None, candidate_maxlength: int | None = None,
                progress: bool | None = None) -> np.ndarray:
        """Logits (float32, one per input) that A is better than B, with llm-blender's modes.

        "[A,B]": f(A,B); "[B,A]": f(B,A) (B read first; as in llm-blender, not negated);
        "[A,B]+[B,A]": f(A,B) - f(B,A), the position-debiased comparison.
        """
        sources, cands = check_pairs_ab(inputs, candidates_a, candidates_b, instructions)
        return self.run(sources, cands, self.cascaded(compare_steps(len(sources), mode), verb_mode("compare")),  # checks mode
                        desc="Comparing",
                        source_maxlength=source_maxlength, candidate_maxlength=candidate_maxlength,
                        progress=progress)

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
        sources, cands = check_prompts(inputs, candidates, instructions)
        steps = select_steps([len(c) for c in cands], top_k, strategy, orders=orders, seed=seed,
                             initial_orders=initial_orders, policy=policy, budget=budget, worst=worst)
        steps = self.cascaded(steps, verb_mode("select", strategy, policy))
        return self.run(sources, cands, steps, desc="Selecting", source_maxlength=source_maxlength,
                        candidate_maxlength=candidate_maxlength, progress=progress)

    def judge(self, prompts, completions, shuffle_order: bool = True, return_scores: bool = False,
              temperature: float = 1.0, *, seed=None, progress: bool | None = None) -> list:
        """TRL's PairRMJudge.judge: per (prompt, [c0, c1]) the preferred index (0 or 1), or with
        return_scores the probability that c0 is better, softmax(scores / temperature)[0].
        shuffle_order ranks each pair in a random order (coin_flips) and flips the result back; seed:
        None (fresh entropy), an integer, or a numpy Generator (PairRMJudge passes its own)."""
        steps, sources, shown = judge_plan(prompts, completions, shuffle_order, return_scores, temperature, seed)
        steps = self.cascaded(steps, verb_mode("judge", values=return_scores))
        return self.run(sources, shown, steps, desc="Judging", progress=progress)


