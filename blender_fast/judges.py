"""``PairRMJudge``: the pairwise judge RLHF loops used from TRL (removed from TRL in 2026), on our engine.

Same interface and behaviour as TRL's ``trl.PairRMJudge.judge``: each prompt comes with a pair of
completions; the pair is ranked with ``Blender.rank`` (optionally in a randomly flipped order, to cancel
any position bias, then flipped back); the answer is the preferred index (0 or 1) per prompt, or with
``return_scores`` the probability that the FIRST completion is better, ``softmax(scores / temperature)[0]``.
Unlike TRL, the checkpoint is a local directory (nothing is downloaded) and the flips can be seeded.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .blender import Blender
from .options import check_optional_seed
from .ranker import Ranker


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
            model.require_ranker()
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
        self.rng = np.random.default_rng(check_optional_seed(seed))

    def judge(self, prompts: list[str], completions: list[list[str]], shuffle_order: bool = True,
              return_scores: bool = False, temperature: float = 1.0) -> list[int] | list[float]:
        """Per prompt: 0 if its first completion is preferred, else 1; with ``return_scores``, the
        probability (softmax of the two PairRM scores / temperature) that the first one is better.
        Ties (equal scores) go to the first completion, as in TRL. The flips are ``coin_flips`` on this
        judge's generator: a judge made with seed=S flips, on its first call, the pairs that the server
        flips for a request with seed S."""
        return self.blender.ranker.judge(prompts, completions, shuffle_order, return_scores, temperature,
                                         seed=self.rng, progress=False)
