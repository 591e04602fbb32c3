"""The old home of ``PointwiseRanker``: a reward model is now a :class:`~blender_fast.ranker.Ranker` over the
reward scorer (scorer.RewardScorer); ``Ranker.from_pretrained`` loads either kind. Kept so that old
imports keep working (CHANGELOG)."""
from __future__ import annotations

from .ranker import Ranker

PointwiseRanker = Ranker  # one class over either scorer


def is_pointwise(ranker) -> bool:
    """True for a ranker over a pointwise reward model (its scorer scores candidates one by one)."""
    scorer = getattr(ranker, "scorer", None)
    return getattr(scorer, "kind", None) == "reward"
