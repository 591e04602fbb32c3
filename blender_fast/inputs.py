"""The user's prompts, checked once for every entry point (the Ranker, the pointwise reward model, the
server's engine, the Blender, the jobs), and the judge's plan: errors name the offending prompt."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .model.checkpoint import SPECIAL_TOKENS
from .options import check_optional_seed
from .selection.verbs import coin_flips, judge_steps


def check_text(name: str, text: str, reserved=()) -> None:
    """A lone surrogate (e.g. '\ud800', from a bad JSON escape) has no UTF-8 form: tokenizers fail on it
    deep inside with an unhelpful message, so it is named here; so is any of the ``reserved`` markers."""
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"{name} contains a lone surrogate {text[e.start]!r} at character {e.start}, "
                             "which is not valid Unicode text") from None
    for special in reserved:
        if special in text:
            raise ValueError(f"{name} contains the reserved marker {special!r}, which PairRM uses to find the "
                             "source and candidates; remove or escape it")


def check_prompts(inputs, candidates, instructions=None, *, reserved=SPECIAL_TOKENS) -> tuple[list[str], list[list[str]]]:
    """Validate the user's lists once, naming the offending prompt; return sources and candidates.
    ``reserved``: markers no text may hold (PairRM's prefix tokens; none for a pointwise reward model)."""
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
            check_text(name, text, reserved)
        sources.append(source)
        cand_lists.append(list(cands))
    return sources, cand_lists


def check_pairs(prompts, completions, *, reserved=SPECIAL_TOKENS) -> tuple[list[str], list[list[str]]]:
    """The judge's input: one [completion_0, completion_1] pair per prompt, named by index when wrong;
    returns (prompts, pairs) as check_prompts does."""
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if isinstance(completions, str) or not isinstance(completions, Sequence):
        raise TypeError(f"completions must be a list of [completion_0, completion_1] pairs, got "
                        f"{type(completions).__name__}")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completion pairs")
    for i, (prompt, pair) in enumerate(zip(prompts, completions)):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] must be a string, got {type(prompt).__name__}")
        if isinstance(pair, str) or not isinstance(pair, Sequence) or len(pair) != 2:
            got = len(pair) if isinstance(pair, Sequence) and not isinstance(pair, str) else type(pair).__name__
            raise ValueError(f"completions[{i}] must hold exactly 2 completions (the PairRM judge compares "
                             f"two), got {got}")
        for k, c in enumerate(pair):
            if not isinstance(c, str):
                raise TypeError(f"completions[{i}][{k}] must be a string, got {type(c).__name__}")
    return check_prompts(prompts, completions, reserved=reserved)


def check_pairs_ab(inputs, candidates_a, candidates_b, instructions=None, *,
                   reserved=SPECIAL_TOKENS) -> tuple[list[str], list[list[str]]]:
    """compare()'s input: one candidate A and one B per input; returns check_prompts' (sources, [[a, b]])."""
    if isinstance(candidates_a, str) or isinstance(candidates_b, str):
        raise TypeError("candidates_a and candidates_b must be lists of strings, one per input")
    if len(candidates_a) != len(candidates_b):
        raise ValueError(f"got {len(candidates_a)} candidates_a but {len(candidates_b)} candidates_b")
    return check_prompts(inputs, [[a, b] for a, b in zip(candidates_a, candidates_b)], instructions,
                         reserved=reserved)


def judge_rng(seed):
    """The judge's coin-flip generator: a numpy Generator as given, else default_rng(seed) (seed None
    or an integer, checked)."""
    if hasattr(seed, "random"):
        return seed
    return np.random.default_rng(check_optional_seed(seed))


def judge_plan(prompts, completions, shuffle_order, return_scores, temperature, seed, *, reserved=SPECIAL_TOKENS):
    """Everything a judge call decides before the model runs, the same for every driver: checks, coin
    flips (coin_flips on judge_rng(seed)), the pairs as shown (flipped ones as [c1, c0], as TRL) and the
    step generator. Returns (steps, sources, shown)."""
    sources, pairs = check_pairs(prompts, completions, reserved=reserved)
    steps_flips = np.zeros(len(pairs), dtype=bool)
    if shuffle_order and pairs:
        steps_flips = coin_flips(judge_rng(seed), len(pairs))
    elif seed is not None:
        judge_rng(seed)  # checked even when unused
    steps = judge_steps(len(pairs), steps_flips, return_scores, temperature)
    shown = [p[::-1] if f else p for p, f in zip(pairs, steps_flips)]
    return steps, sources, shown
