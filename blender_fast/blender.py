"""``Blender``: a drop-in for ``llm_blender.Blender`` (0.0.2) backed by blender-fast's engine.

Same method names, arguments, defaults and return types. Deliberate differences
(docs/differences-from-llm-blender.md): prompts may have different numbers of candidates (results are
then lists); truncation is decided per prompt, never by batch-mates; ``batch_size`` is accepted for compatibility but
batching follows a token budget; bubble selection starts from a seeded permutation (``seed``) instead of
an unseeded ``torch.randperm``; bad input raises ``ValueError``/``TypeError`` instead of ``assert``.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import List

import numpy as np

from .options import (DEFAULT_BACKEND, DEFAULT_MAX_BATCH, DEFAULT_PRECISION, STRATEGIES, check_choice, check_count,
                      check_seed, check_strategy_budget, check_top_k, check_top_k_fits, positive_int, resolve_device)
from .inputs import check_prompts, check_text
from .ranker import Ranker
from .selection.aggregate import top_k_from_scores
from .selection.steps import ModelOutputError

logger = logging.getLogger(__name__)

# llm-blender's RankerConfig fields: accepted (most have no effect on inference) so that its config
# objects and dicts can be passed straight through.
RANKER_CONFIG_FIELDS = {
    "ranker_type", "model_type", "model_name", "cache_dir", "load_checkpoint", "source_maxlength",
    "candidate_maxlength", "n_tasks", "num_pos", "num_neg", "sub_sampling_mode", "sub_sampling_ratio",
    "loss_type", "reduce_type", "inference_mode", "drop_out", "fp16", "device",
}
FUSER_CONFIG_FIELDS = {
    "model_name", "cache_dir", "max_length", "candidate_maxlength", "torch_dtype", "load_in_4bit",
    "load_in_8bit", "device",
}
ENGINE_OPTIONS = {"backend", "precision", "threads", "token_budget", "max_batch_size", "batch_cost", "onnx_cache_dir"}
# Hugging Face Hub options (model/hub.py); cache_dir (a RankerConfig field) is the hub cache, as in llm-blender.
HUB_OPTIONS = {"revision", "token", "local_files_only"}
CMP_TYPES = STRATEGIES  # llm-blender's three, and the budgeted swiss / knockout_rr / adaptive
REF_MODES = ("longest", "shortest", "median_length", "first", "last")
# The keywords that Blender.rank's **rank_kwargs takes: the two llm-blender's rank reads (it ignores any
# other silently, so a typo such as source_maxlength= changed nothing there), and our policy.
RANK_KWARGS = ("source_max_length", "candidate_max_length", "policy")
# rank_with_ref's **rank_kwargs: llm-blender passes them on to compare(), whose one free keyword is mode.
RANK_WITH_REF_KWARGS = ("mode",)
CONVERSATION_INSTRUCTION = (
    # llm-blender's exact text, typo included: the model saw it in training.
    "Finish the following coversation in each i-th turn by filling in <Response i> with your response."
)


def config_to_dict(config) -> dict:
    """llm-blender config objects (dataclasses), any dataclass, or a plain dict → dict."""
    if config is None:
        return {}
    if isinstance(config, dict):
        return dict(config)
    if dataclasses.is_dataclass(config):
        return {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    if hasattr(config, "__dict__"):
        return dict(vars(config))
    raise TypeError(f"expected a config object or dict, got {type(config).__name__}")


def default_device() -> str:
    """llm-blender's default: cuda when there is one (torch's view when torch is installed), else cpu."""
    try:
        import torch  # noqa: F401

        return resolve_device("auto", "torch")
    except ImportError:
        return resolve_device("auto", "onnx")


def topk_from_ranks(ranks, candidates, top_k):
    """llm-blender's get_topk_candidates_from_ranks, ragged input allowed; ties go to the lower index
    (selection.top_k_from_scores, the one top-k rule)."""
    out = []
    for r, cands in zip(ranks, candidates):
        idx = top_k_from_scores(-np.asarray(r, dtype=np.float64), top_k)
        out.append([cands[i] for i in idx])
    return out


def check_texts(name: str, texts) -> None:
    """Name any lone surrogate in a list (or list of lists) of strings; other type errors are left to
    the callee's own checks."""
    if texts is None or isinstance(texts, str):
        return
    for i, t in enumerate(texts):
        if isinstance(t, str):
            check_text(f"{name}[{i}]", t)
        elif isinstance(t, (list, tuple)):
            check_texts(f"{name}[{i}]", t)


def conversation_pairs(conversations_a, conversations_b):
    """llm-blender's text rendering of two conversations that share their USER turns."""
    if len(conversations_a) != len(conversations_b):
        raise ValueError(f"got {len(conversations_a)} conversations_a but {len(conversations_b)} conversations_b")
    for side, convs in (("a", conversations_a), ("b", conversations_b)):
        for k, conv in enumerate(convs):
            if len(conv) == 0 or len(conv) % 2:
                raise ValueError(f"conversations_{side}[{k}] must have an even, non-zero number of turns")
            for t, turn in enumerate(conv):
                want = "USER" if t % 2 == 0 else "ASSISTANT"
                if not isinstance(turn, dict) or turn.get("role") != want or not isinstance(turn.get("content"), str):
                    raise ValueError(
                        f"conversations_{side}[{k}][{t}] must be {{'role': '{want}', 'content': str}}, got {turn!r}"
                    )
    for k, (ca, cb) in enumerate(zip(conversations_a, conversations_b)):
        if len(ca) != len(cb):
            raise ValueError(f"conversation {k}: a has {len(ca)} turns, b has {len(cb)}")
        for t in range(0, len(ca), 2):
            if ca[t]["content"] != cb[t]["content"]:
                raise ValueError(f"conversation {k}: USER turn {t} differs between a and b")
    inputs = [
        "\n".join("USER: " + c[i]["content"] + f"\nAssistant: <Response {i // 2 + 1}>" for i in range(0, len(c), 2))
        for c in conversations_a
    ]

    def responses(c):
        return "\n".join(f"<Response {i // 2 + 1}>: " + c[i]["content"] for i in range(1, len(c), 2))

    return inputs, [responses(c) for c in conversations_a], [responses(c) for c in conversations_b]


def _unused_batch_size(batch_size) -> None:
    """llm-blender's batch_size, kept in the signatures for drop-in use but unused (the engine packs rows
    by tokens): still a count by the one rule, so batch_size=NaN or 0 is the same error as anywhere else."""
    check_count("batch_size", batch_size)


def _refuse_unknown(method: str, kwargs: dict, known: tuple) -> None:
    """A TypeError naming the keywords of ``**kwargs`` that ``method`` does not read (never a silent no-op)."""
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise TypeError(f"{method}() got unknown keyword arguments {', '.join(unknown)} (it takes "
                        f"{', '.join(known)})")


class Blender:
    """Drop-in for ``llm_blender.Blender``: ``loadranker``, ``rank``, ``compare``, ``get_best_of_n``,
    ``loadfuser``, ``fuse``, ``rank_and_fuse`` and the rest, on blender-fast's engine."""

    def __init__(self, blender_config=None, ranker_config=None, fuser_config=None):
        self.blender_config = config_to_dict(blender_config)
        self.ranker: Ranker | None = None
        self.fuser = None
        self.ranker_config = config_to_dict(ranker_config) or None
        self.fuser_config = config_to_dict(fuser_config) or None
        if self.ranker_config is not None:
            path = self.ranker_config.get("load_checkpoint") or self.ranker_config.get("model_name")
            if not path:
                raise ValueError("ranker_config needs 'load_checkpoint' (the PairRM checkpoint directory)")
            self.loadranker(path, **{k: v for k, v in self.ranker_config.items() if k != "load_checkpoint"})
        if self.fuser_config is not None:
            cfg = dict(self.fuser_config)
            path = cfg.pop("model_name", None)
            if not path:
                raise ValueError("fuser_config needs 'model_name' (the fuser checkpoint directory)")
            self.loadfuser(path, **cfg)

    @property
    def use_tqdm(self) -> bool:
        return bool(self.blender_config.get("use_tqdm", True))

    def _device(self, device):
        return device or self.blender_config.get("device") or default_device()

    # -- ranker -------------------------------------------------------------------------------------

    def loadranker(self, ranker_path: str, device: str = None, **kwargs):
        """Load a PairRM checkpoint: a Hugging Face Hub id (``llm-blender/PairRM``, ``org/name@rev``), a local
        directory, or ``demo:SHAPE``; or the reward model
        ``OpenAssistant/reward-model-deberta-v3-large-v2`` (llm-blender's "deberta-rm": one score per
        candidate, scorer.RewardScorer). Hub options: cache_dir (the hub cache, as llm-blender's), revision,
        token, local_files_only. Extra keywords: llm-blender RankerConfig fields
        (source_maxlength, candidate_maxlength, fp16, ...) and engine options (backend="auto"|"onnx"|"torch"|
        "openvino", precision="auto"|"fp32"|"fp16"|"int8"|"bf16" (default auto), threads, token_budget, max_batch_size, batch_cost, onnx_cache_dir)."""
        unknown = set(kwargs) - RANKER_CONFIG_FIELDS - ENGINE_OPTIONS - HUB_OPTIONS
        if unknown:
            raise TypeError(f"loadranker() got unknown options {sorted(unknown)}")
        backend = kwargs.get("backend", DEFAULT_BACKEND)
        device = resolve_device(self._device(device or kwargs.get("device")), "torch" if backend == "torch" else "onnx")
        fp16 = kwargs.get("fp16", True)
        # llm-blender halves the model on GPUs when the config says fp16; on a CPU it runs fp32, which
        # "auto" gives exactly (plain fp32, or the certified cascade whose answers are fp32's).
        precision = kwargs.get("precision") or ("fp16" if device == "cuda" and fp16 else DEFAULT_PRECISION)
        self.ranker = Ranker.from_pretrained(
            ranker_path, backend=backend, device=device, precision=precision,
            threads=kwargs.get("threads"), cache_dir=kwargs.get("onnx_cache_dir"),
            token_budget=kwargs.get("token_budget"),
            max_batch_size=kwargs.get("max_batch_size") or DEFAULT_MAX_BATCH, batch_cost=kwargs.get("batch_cost"),
            source_maxlength=kwargs.get("source_maxlength"), candidate_maxlength=kwargs.get("candidate_maxlength"),
            revision=kwargs.get("revision"), token=kwargs.get("token"), hub_cache_dir=kwargs.get("cache_dir"),
            local_files_only=kwargs.get("local_files_only"),
        )
        self.ranker_config = {**(self.ranker_config or {}), **kwargs, "load_checkpoint": str(ranker_path), "device": device}
        logger.info("loaded ranker from %s", ranker_path)

    def require_ranker(self) -> Ranker:
        """The loaded Ranker, or a RuntimeError saying to call loadranker first (the judge checks a Blender
        it is handed with it)."""
        if self.ranker is None:
            raise RuntimeError("no ranker loaded: call loadranker(path) first")
        return self.ranker

    def _progress(self, disable_tqdm=False) -> bool:
        # Per call, never written onto the shared Ranker: other threads may be using it.
        return self.use_tqdm and not disable_tqdm

    def _ranking_bar(self, disable_tqdm, candidates):
        """For PairRM, a bar with the total n(n-1) pairs (n/total and an ETA), closed by the caller; else what
        _progress says (the reward model's bar has its total; malformed candidates are left to the
        ranker's check, which names the problem)."""
        show = self._progress(disable_tqdm)
        try:
            total = sum(len(c) * (len(c) - 1) for c in candidates)
        except TypeError:
            return show
        if not show or not isinstance(self.ranker, Ranker):
            return show
        from tqdm.auto import tqdm

        return tqdm(total=total, desc="Ranking", unit="pair")

    def rank(self, inputs: List[str], candidates: List[List[str]], instructions: List[str] = None,
             return_scores: bool = False, batch_size: int = 8, disable_tqdm: bool = False, **rank_kwargs):
        """Ranks (int32, 1 = best) or scores (float32, higher = better) per input, like llm-blender.
        rank_kwargs: source_max_length, candidate_max_length, policy ("max_logits" | "max_wins"); any other
        keyword is a TypeError. batch_size: kept for llm-blender's signature and checked as a count, but
        unused: the engine packs rows by tokens (token_budget / max_batch_size at loadranker), so results
        and batches do not depend on it."""
        _unused_batch_size(batch_size)
        _refuse_unknown("rank", rank_kwargs, RANK_KWARGS)
        for name in ("source_max_length", "candidate_max_length"):
            if rank_kwargs.get(name) is not None:
                positive_int(name, rank_kwargs[name])
        ranker = self.require_ranker()
        bar = self._ranking_bar(disable_tqdm, candidates)
        try:
            return ranker.rank(
                inputs, candidates, instructions, return_scores=return_scores,
                policy=rank_kwargs.get("policy", "max_logits"), progress=bar,
                source_maxlength=rank_kwargs.get("source_max_length"),
                candidate_maxlength=rank_kwargs.get("candidate_max_length"))
        finally:
            if hasattr(bar, "close"):
                bar.close()

    def compare(self, inputs: List[str], candidates_A: List[str], candidates_B: List[str],
                instructions: List[str] = None, batch_size: int = 4, return_logits: bool = False,
                mode: str = "[A,B]+[B,A]", disable_tqdm: bool = False):
        _unused_batch_size(batch_size)
        logits = self.require_ranker().compare(inputs, candidates_A, candidates_B, instructions, mode=mode,
                                             progress=self._progress(disable_tqdm))
        return logits if return_logits else logits > 0

    def compare_conversations(self, conversations_a: List[List[dict]], conversations_b: List[List[dict]],
                              batch_size: int = 4, return_logits: bool = False, mode: str = "[A,B]+[B,A]"):
        _unused_batch_size(batch_size)
        inputs, cand_a, cand_b = conversation_pairs(conversations_a, conversations_b)
        instructions = [CONVERSATION_INSTRUCTION] * len(inputs)
        try:
            return self.compare(inputs, cand_a, cand_b, instructions, batch_size=batch_size,
                                return_logits=return_logits, mode=mode)
        except ModelOutputError as e:  # its prompts are the conversations: name the conversation
            raise ModelOutputError(e.prompt, f"conversation {e.prompt}") from None

    def rank_with_ref(self, inputs: List[str], candidates: List[List[str]], instructions: List[str] = None,
                      return_scores: bool = False, batch_size: int = 8, ref_mode: str = "longest",
                      ref_candidates: List[str] = None, **rank_kwargs):
        """Score each candidate by comparing it with a reference answer: score = -compare(ref, cand).
        rank_kwargs: mode (compare's; llm-blender passes them on to compare). batch_size: unused, as in
        ``rank``."""
        _unused_batch_size(batch_size)
        _refuse_unknown("rank_with_ref", rank_kwargs, RANK_WITH_REF_KWARGS)
        check_prompts(inputs, candidates, instructions)  # a str where a list belongs, empty lists, ...
        if isinstance(ref_candidates, str):
            raise TypeError("ref_candidates must be a list with one string per input, got a str")
        if ref_candidates is None:
            if ref_mode not in REF_MODES:
                raise ValueError(f"ref_mode must be one of {REF_MODES}, got {ref_mode!r}")
            pick = {
                "longest": lambda c: max(c, key=len),
                "shortest": lambda c: min(c, key=len),
                "median_length": lambda c: sorted(c, key=len)[len(c) // 2],
                "first": lambda c: c[0],
                "last": lambda c: c[-1],
            }[ref_mode]
            for p, c in enumerate(candidates):
                if len(c) == 0:
                    raise ValueError(f"candidates[{p}] is empty: each input needs at least one candidate")
            ref_candidates = [pick(c) for c in candidates]
        elif len(ref_candidates) != len(inputs) or not all(isinstance(r, str) for r in ref_candidates):
            raise ValueError("ref_candidates must be a list with one string per input")
        # One flat comparison per (prompt, candidate), all run together.
        flat_inputs, flat_refs, flat_cands, flat_inst = [], [], [], []
        for p, cands in enumerate(candidates):
            for cand in cands:
                flat_inputs.append(inputs[p])
                flat_refs.append(ref_candidates[p])
                flat_cands.append(cand)
                if instructions is not None:
                    flat_inst.append(instructions[p])
        try:
            logits = self.compare(flat_inputs, flat_refs, flat_cands, instructions if instructions is None else flat_inst,
                                  return_logits=True, mode=rank_kwargs.get("mode", "[A,B]+[B,A]"))
        except ModelOutputError as e:
            p, start = 0, e.prompt  # flat index -> (prompt, candidate)
            while start >= len(candidates[p]):
                start -= len(candidates[p])
                p += 1
            raise ModelOutputError(p, f"prompt {p} (comparing candidates[{p}][{start}] with its reference)") from None
        scores, start = [], 0
        for cands in candidates:
            # llm-blender fills a float64 matrix with the float32 logits, then negates.
            scores.append(-logits[start:start + len(cands)].astype(np.float64))
            start += len(cands)
        from .selection.aggregate import ranks_from_scores

        rows = scores if return_scores else [ranks_from_scores(s) for s in scores]
        return np.stack(rows) if all(len(r) == len(rows[0]) for r in rows) else rows

    def _best_or_worst(self, inputs, candidates, instructions, pairrm_cmp_type, return_all, worst, seed, initial_orders,
                       budget=None):
        check_choice("pairrm_cmp_type", pairrm_cmp_type, CMP_TYPES)
        # Before the one-candidate shortcut: a str where a list belongs would otherwise "win" as its
        # first character. One candidate per prompt is legal (trivially the best, as in llm-blender).
        check_prompts(inputs, candidates, instructions)
        check_seed(seed)
        check_strategy_budget(pairrm_cmp_type, budget, name="pairrm_cmp_type")
        if all(len(c) == 1 for c in candidates):
            return [list(c) for c in candidates] if return_all else [c[0] for c in candidates]
        ranker = self.require_ranker()
        # The scorer says whether llm-blender ranks it fully whatever pairrm_cmp_type says (a reward model: n passes).
        if pairrm_cmp_type == "full" or ranker.scorer.ranks_fully:
            ranks = ranker.rank(inputs, candidates, instructions, progress=self._progress())
            ranks = [-np.asarray(r) for r in ranks] if worst else ranks
            ordered = topk_from_ranks(ranks, candidates, None if return_all else 1)
            return ordered if return_all else [o[0] for o in ordered]
        sels = ranker.select(inputs, candidates, top_k=1, strategy=pairrm_cmp_type, instructions=instructions,
                             seed=seed, initial_orders=initial_orders, worst=worst, progress=self._progress(),
                             budget=budget)
        if not return_all:
            return [candidates[p][s.top_k[0]] for p, s in enumerate(sels)]
        # llm-blender's return_all order: the winner, then each comparison's loser in comparison order.
        # The budgeted strategies let a candidate lose more than once: its first loss places it, and
        # candidates that never lost (nor won) come last, by index.
        out = []
        for p, s in enumerate(sels):
            order = list(dict.fromkeys([s.top_k[0]] + [a if w == b else b for a, b, w in s.log]))
            order += [i for i in range(len(candidates[p])) if i not in set(order)]
            out.append([candidates[p][i] for i in order])
        return out

    def get_best_of_n(self, inputs: List[str], candidates: List[List[str]], instructions: List[str] = None,
                      pairrm_cmp_type: str = "bubble", return_all: bool = False, batch_size: int = 8,
                      seed: int = 0, initial_orders=None, budget: int = None):
        """The best candidate per input: "bubble" (n-1 comparisons), "tournament" (n-1 comparisons in
        ceil(log2 n) steps), "full" (n(n-1) forward passes), or "swiss" / "knockout_rr" / "adaptive"
        within ``budget`` forward passes per prompt (None: 4(n-1)); see ``selection.select``."""
        _unused_batch_size(batch_size)
        return self._best_or_worst(inputs, candidates, instructions, pairrm_cmp_type, return_all, False, seed,
                                   initial_orders, budget)

    def get_worst_of_n(self, inputs: List[str], candidates: List[List[str]], instructions: List[str] = None,
                       pairrm_cmp_type: str = "bubble", return_all: bool = False, batch_size: int = 8,
                       seed: int = 0, initial_orders=None, budget: int = None):
        _unused_batch_size(batch_size)
        return self._best_or_worst(inputs, candidates, instructions, pairrm_cmp_type, return_all, True, seed,
                                   initial_orders, budget)

    # -- fuser --------------------------------------------------------------------------------------

    def loadfuser(self, fuser_path: str, device: str = None, **kwargs):
        """Load a seq2seq fuser (Flan-T5 family): a local directory or a hub id (llm-blender/gen_fuser_3b). Keywords: GenFuserConfig fields and backend."""
        from .fusion.fuser import Fuser

        unknown = set(kwargs) - FUSER_CONFIG_FIELDS - {"backend"} - HUB_OPTIONS
        if unknown:
            raise TypeError(f"loadfuser() got unknown options {sorted(unknown)}")
        device = self._device(device or kwargs.get("device"))
        self.fuser = Fuser.from_pretrained(
            fuser_path, backend=kwargs.get("backend", "torch"), device=device, dtype=kwargs.get("torch_dtype"),
            max_length=kwargs.get("max_length", 1024), candidate_maxlength=kwargs.get("candidate_maxlength", 128),
            revision=kwargs.get("revision"), token=kwargs.get("token"), hub_cache_dir=kwargs.get("cache_dir"),
            local_files_only=kwargs.get("local_files_only"),
        )
        self.fuser_config = {**kwargs, "model_name": str(fuser_path), "device": device}

    def fuse(self, inputs: List[str], candidates: List[List[str]], instructions: List[str] = None,
             batch_size: int = 4, **generate_kwargs):
        if self.fuser is None:
            raise RuntimeError("no fuser loaded: call loadfuser(path) first")
        positive_int("batch_size", batch_size)
        for name in ("num_beams", "max_new_tokens", "num_return_sequences"):
            if name in generate_kwargs:
                positive_int(name, generate_kwargs[name])
        for name, texts in (("inputs", inputs), ("candidates", candidates), ("instructions", instructions)):
            check_texts(name, texts)
        generate_kwargs.setdefault("progress", self.use_tqdm)
        return self.fuser.fuse(inputs, candidates, instructions, batch_size=batch_size, **generate_kwargs)

    def rank_and_fuse(self, inputs: List[str], candidates: List[List[str]], instructions: List[str] = None,
                      return_scores: bool = False, batch_size: int = 4, top_k: int = 3, strategy: str = "full",
                      budget: int = None, seed: int = 0, **generate_kwargs):
        """Rank, then fuse the top_k candidates. strategy="bubble"/"tournament" (or a budgeted one,
        "swiss"/"knockout_rr"/"adaptive" within ``budget`` forward passes per prompt) selects the top_k
        without the full n^2 ranking; ranks are then 1..top_k for the selected and top_k+1 for the rest.
        seed: the starting arrangement of those strategies (as ``fuse`` on the CLI and the server)."""
        check_choice("strategy", strategy, CMP_TYPES)
        top_k = check_top_k(top_k)
        check_prompts(inputs, candidates, instructions)
        check_strategy_budget(strategy, budget)
        check_seed(seed)
        for p, c in enumerate(candidates):
            check_top_k_fits(top_k, len(c), f"candidates[{p}]")
        if self.fuser is None:
            raise RuntimeError("no fuser loaded: call loadfuser(path) first")
        if strategy == "full":
            ranks_or_scores = self.rank(inputs, candidates, instructions, return_scores=return_scores)
            order_by = [-np.asarray(s) for s in ranks_or_scores] if return_scores else ranks_or_scores
            topk = topk_from_ranks(order_by, candidates, top_k)
        else:
            if return_scores:
                raise ValueError(f"strategy={strategy!r} computes no scores; use return_scores=False or strategy='full'")
            sels = self.require_ranker().select(inputs, candidates, top_k=top_k, strategy=strategy,
                                              instructions=instructions, progress=self._progress(), budget=budget,
                                              seed=seed)
            rows = []
            for s, cands in zip(sels, candidates):
                r = np.full(len(cands), top_k + 1, dtype=np.int32)
                r[s.top_k] = np.arange(1, top_k + 1, dtype=np.int32)
                rows.append(r)
            ranks_or_scores = np.stack(rows) if all(len(r) == len(rows[0]) for r in rows) else rows
            topk = [[cands[i] for i in s.top_k] for s, cands in zip(sels, candidates)]
        fused = self.fuse(inputs, topk, instructions, batch_size=batch_size, **generate_kwargs)
        return fused, ranks_or_scores

    # -- generation ---------------------------------------------------------------------------------

    def n_generate(self, model, model_tokenizer, inputs: List[str], instructions: List[str] = None, n: int = 5,
                   sampling_mode: str = "top_p_sampling", batch_size: int = 4, **generate_kwargs):
        from .fusion.generation import n_generate

        return n_generate(model, model_tokenizer, inputs, instructions=instructions, n=n,
                          sampling_mode=sampling_mode, batch_size=batch_size, **generate_kwargs)

    def best_of_n_generate(self, model, model_tokenizer, inputs: List[str], instructions: List[str] = None,
                           n: int = 5, sampling_mode: str = "top_p_sampling", batch_size: int = 4,
                           pairrm_cmp_type: str = "bubble", return_all: bool = False, budget: int = None,
                           **generate_kwargs):
        sampled = self.n_generate(model, model_tokenizer, inputs, instructions=instructions, n=n,
                                  sampling_mode=sampling_mode, batch_size=batch_size, **generate_kwargs)
        return self.get_best_of_n(inputs, sampled, instructions=instructions, pairrm_cmp_type=pairrm_cmp_type,
                                  return_all=return_all, batch_size=min(batch_size, 32), budget=budget)
