"""One ranking job over prompt records: the result record the CLI writes, shared by every front end.

``rank_prompts(ranker, prompts, RankOptions(...))`` returns, for each prompt, the dict written under the
``blender_fast`` key of an output line, with the same keys for every strategy:

* ``strategy``, ``top_k`` (candidate indices, **0-based**, best first), ``best`` (= ``top_k[0]``);
* ``ranks`` (one per candidate, **1-based**, 1 = best, ties share the better rank) and ``scores``
  (higher = better): for ``full`` only, ``None`` for the selection strategies (they compute neither);
* ``comparisons`` (unordered pairs decided), ``forward_passes`` (model rows run), ``steps`` (sequential
  model rounds).

The CLI (single process) and the Ray job call this same function, so their outputs cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..options import (ORDERS, POLICIES, STRATEGIES, check_choice, check_seed, check_strategy_budget, check_top_k,
                       check_top_k_fits)
from ..jsonl.prompts import Prompt
from ..selection.aggregate import ranks_from_scores, top_k_from_scores
from ..selection.budgets import selection_cost
from ..selection.steps import ModelOutputError, PromptError, model_nan_message

RESULT_KEYS = ("strategy", "top_k", "best", "ranks", "scores", "comparisons", "forward_passes", "steps")


@dataclass(frozen=True)
class RankOptions:
    """What to compute for each prompt (validated on construction)."""

    strategy: str = "full"
    top_k: int = 1
    orders: str = "both"
    policy: str = "max_logits"
    seed: int = 0
    budget: "int | None" = None  # forward passes per prompt, for swiss / knockout_rr / adaptive only

    def __post_init__(self):
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("orders", self.orders, ORDERS)
        check_choice("policy", self.policy, POLICIES)
        # The one number rule (options.py): the CLI, the Ray job and the Python API agree.
        check_top_k(self.top_k)
        check_seed(self.seed)
        check_strategy_budget(self.strategy, self.budget)


def expected_forward_passes(n: int, options: RankOptions) -> int:
    """Model rows one prompt with n candidates costs: exact for full and bubble, an upper bound for the
    tournament and the budgeted strategies. For progress bars: selection.budgets.selection_cost, the one
    cost model (the server's queue bound counts with it too)."""
    return selection_cost(options.strategy, [n], min(options.top_k, n), options.orders, options.budget)


def _where(prompt: Prompt, index: int) -> str:
    return prompt.where or f"prompt {index}"


def check_job(prompts: list[Prompt], options: RankOptions) -> None:
    """Per-prompt checks before any model call, each error naming where the prompt came from."""
    from ..inputs import check_prompts

    for p, prompt in enumerate(prompts):
        check_top_k_fits(options.top_k, len(prompt.candidates), _where(prompt, p))
        try:
            check_prompts([prompt.input], [prompt.candidates], [prompt.instruction])
        except (TypeError, ValueError) as e:
            # check_prompts names positions in its own lists ("candidates[0][2]"); say the prompt's.
            msg = str(e).replace("inputs[0]", "instruction + input").replace("candidates[0]", "candidates")
            raise type(e)(f"{_where(prompt, p)}: {msg}") from None


def rank_prompts(ranker, prompts: list[Prompt], options: RankOptions, progress=None) -> list[dict]:
    """The ``blender_fast`` result dict for each prompt (keys: RESULT_KEYS), computed in one lockstep call.

    progress: None/False (none), True (a bar for this call), or a bar object with ``.update(n)`` that is
    moved by the number of model rows after every model batch (one bar over a whole job).
    Errors about one prompt name it by ``Prompt.where`` (file:line) when it is set.
    """
    if not isinstance(options, RankOptions):
        raise TypeError(f"options must be a RankOptions, got {type(options).__name__}")
    if not prompts:
        return []
    check_job(prompts, options)
    inputs = [p.input for p in prompts]
    instructions = [p.instruction for p in prompts]
    candidates = [p.candidates for p in prompts]
    try:
        sels = ranker.select(inputs, candidates, top_k=options.top_k, strategy=options.strategy,
                             orders=options.orders, seed=options.seed, instructions=instructions,
                             policy=options.policy, budget=options.budget,
                             progress=progress if progress is not None else False)
    except ModelOutputError as e:  # the model's fault: the input is fine, say which prompt it happened on
        where = prompts[e.prompt].where
        raise RuntimeError(model_nan_message(f"the prompt at {where}" if where else f"prompt {e.prompt}")) from None
    except PromptError as e:
        raise ValueError(f"{_where(prompts[e.prompt], e.prompt)}: {e}") from None
    out = []
    for s in sels:
        top = top_k_from_scores(s.scores, options.top_k) if s.scores is not None else [int(i) for i in s.top_k]
        out.append({
            "strategy": options.strategy,
            "top_k": top,
            "best": top[0],
            "ranks": ranks_from_scores(s.scores).tolist() if s.scores is not None else None,
            "scores": [float(x) for x in s.scores] if s.scores is not None else None,
            "comparisons": int(s.comparisons),
            "forward_passes": int(s.forward_passes),
            "steps": int(s.steps),
        })
    return out
