"""``PairRMJudge``: the pairwise judge RLHF loops used from TRL (removed from TRL in 2026), on our engine.

Same interface and behaviour as TRL's ``trl.PairRMJudge.judge``: each prompt comes with a pair of
completions; the pair is ranked with ``Blender.rank`` (optionally in a randomly flipped order, to cancel
any position bias, then flipped back); the answer is the preferred index (0 or 1) per prompt, or with
``return_scores`` the probability that the FIRST completion is better, ``softmax(scores / temperature)[0]``.
Unlike TRL, the checkpoint is a local directory (nothing is downloaded) and the flips can be seeded.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .blender import Blender
from .ranker import Ranker
from .selection.strategies import ranks_from_scores


class PairRMJudge:
    """Pairwise preference judge on PairRM.

    model: a hub id (``llm-blender/PairRM``), a PairRM checkpoint directory, a loaded ``Ranker`` or a
    ``blender_fast.Blender`` with a ranker.
    seed: seeds the order flips of ``shuffle_order`` (None: fresh entropy every judge, like TRL's).
    ranker_kwargs: passed to ``Blender.loadranker`` when model is a path (device, backend, precision,
    threads, source_maxlength, candidate_maxlength, ...).

    >>> judge = PairRMJudge("path/to/PairRM", seed=0)
    >>> judge.judge(["What's the capital of Japan?"], [["Kyoto", "Tokyo"]])
    [1]
    """

    def __init__(self, model, *, seed: int | None = None, **ranker_kwargs):
        if isinstance(model, Blender):
            if ranker_kwargs:
                raise TypeError(f"ranker options {sorted(ranker_kwargs)} need a checkpoint path, not a loaded Blender")
            model._need_ranker()
            self.blender = model
        elif isinstance(model, Ranker):
            if ranker_kwargs:
                raise TypeError(f"ranker options {sorted(ranker_kwargs)} need a checkpoint path, not a loaded Ranker")
            self.blender = Blender()
            self.blender.ranker = model
        elif isinstance(model, (str, Path)):
            self.blender = Blender()
            self.blender.loadranker(str(model), **ranker_kwargs)
        else:
            raise TypeError(f"model must be a PairRM checkpoint directory, a Ranker or a Blender, got {type(model).__name__}")
        self.rng = np.random.default_rng(seed)

    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True,
              return_scores: bool = False, temperature: float = 1.0) -> list[int] | list[float]:
        """Per prompt: 0 if its first completion is preferred, else 1; with ``return_scores``, the
        probability (softmax of the two PairRM scores / temperature) that the first one is better.
        Ties (equal scores) go to the first completion, as in TRL."""
        pairs = _check_pairs(prompts, completions)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not (
                math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
        if not pairs:
            return []
        flip = self.rng.choice([True, False], size=len(pairs)) if shuffle_order else np.zeros(len(pairs), bool)
        shown = [[b, a] if f else [a, b] for (a, b), f in zip(pairs, flip)]
        scores = np.asarray(self.blender.rank(list(prompts), shown, return_scores=True, disable_tqdm=True),
                            dtype=np.float64).reshape(len(pairs), 2)
        scores[flip] = scores[flip][:, ::-1]  # back to the caller's order
        if return_scores:
            logits = scores / temperature
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            return (probs[:, 0] / probs.sum(axis=1)).tolist()
        return [int(r) for r in (ranks_from_scores(scores)[:, 0] - 1)]


def _check_pairs(prompts, completions) -> list[tuple[str, str]]:
    if isinstance(prompts, str) or not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if isinstance(completions, str) or not isinstance(completions, (list, tuple)):
        raise TypeError(f"completions must be a list of pairs of strings, got {type(completions).__name__}")
    if len(prompts) != len(completions):
        raise ValueError(f"got {len(prompts)} prompts but {len(completions)} completion pairs")
    pairs = []
    for i, (prompt, pair) in enumerate(zip(prompts, completions)):
        if not isinstance(prompt, str):
            raise TypeError(f"prompts[{i}] must be a string, got {type(prompt).__name__}")
        if isinstance(pair, str) or not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ValueError(f"completions[{i}] must be a pair (exactly 2 completions), got "
                             f"{len(pair) if isinstance(pair, (list, tuple)) else type(pair).__name__}")
        for k, c in enumerate(pair):
            if not isinstance(c, str):
                raise TypeError(f"completions[{i}][{k}] must be a string, got {type(c).__name__}")
        pairs.append((pair[0], pair[1]))
    return pairs
