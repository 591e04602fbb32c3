"""One ranking job, defined once: the result fields every front end (the CLI, the Ray job) writes per prompt.

PROVISIONAL (branch ray11): the contract of helper f8a's ``jobs.py``; the lead keeps f8a's version at merge.
"""
from __future__ import annotations

from dataclasses import dataclass

from .options import ORDERS, POLICIES, STRATEGIES, check_choice
from .prompts import Prompt, as_blender_args


@dataclass(frozen=True)
class RankOptions:
    strategy: str = "full"
    top_k: int = 1
    orders: str = "both"
    policy: str = "max_logits"
    seed: int = 0

    def __post_init__(self):
        check_choice("strategy", self.strategy, STRATEGIES)
        check_choice("orders", self.orders, ORDERS)
        check_choice("policy", self.policy, POLICIES)
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 1:
            raise ValueError(f"top_k must be an integer >= 1, got {self.top_k!r}")


def rank_prompts(ranker, prompts: list[Prompt], options: RankOptions, progress=None) -> list[dict]:
    """Per prompt, the dict written under the record's ``"blender_fast"`` key.

    Keys: strategy, top_k (0-based indices, best first), best, ranks (1-based, ties share the better
    rank; "full" only, else None), scores ("full" only, else None), comparisons, forward_passes, steps.
    """
    from .selection import ranks_from_scores

    for p, prompt in enumerate(prompts):
        if options.top_k > len(prompt.candidates):
            raise ValueError(f"prompt {p} has {len(prompt.candidates)} candidates, fewer than top_k {options.top_k}")
    if not prompts:
        return []
    inputs, candidates, instructions = as_blender_args(prompts)
    sels = ranker.select(inputs, candidates, top_k=options.top_k, strategy=options.strategy, orders=options.orders,
                         seed=options.seed, instructions=instructions, policy=options.policy, progress=progress)
    out = []
    for s in sels:
        top = [int(i) for i in s.top_k]
        full = options.strategy == "full" and s.scores is not None
        out.append({
            "strategy": options.strategy,
            "top_k": top,
            "best": top[0],
            "ranks": [int(r) for r in ranks_from_scores(s.scores)] if full else None,
            "scores": [float(x) for x in s.scores] if full else None,
            "comparisons": int(s.comparisons),
            "forward_passes": int(s.forward_passes),
            "steps": int(s.steps),
        })
    return out
