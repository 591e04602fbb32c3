"""blender-fast: a fast, faithful engine for LLM-Blender style ranking and fusion.

    from blender_fast import Ranker
    ranker = Ranker.from_pretrained("path/to/PairRM")          # ONNX Runtime, exported once and cached
    ranks = ranker.rank(inputs, candidates)                     # same ranks as llm_blender.Blender.rank
    best = ranker.select(inputs, candidates, strategy="tournament")  # best of n in ceil(log2 n) steps

``Blender`` is a drop-in for ``llm_blender.Blender``; ``Fuser`` runs a GenFuser checkpoint.
"""
from ._core import __version__

# Public names resolve on first use, so `import blender_fast` stays cheap (no onnxruntime, no torch).
_EXPORTS = {
    "Blender": "blender",
    "CheckpointError": "checkpoint",
    "Client": "client",
    "Fuser": "fuser",
    "Ranker": "ranker",
    "Selection": "selection",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'blender_fast' has no attribute {name!r}")


__all__ = ["Blender", "CheckpointError", "Client", "Fuser", "Ranker", "Selection", "__version__"]
