"""blender-fast: a fast, faithful engine for LLM-Blender style ranking and fusion.

    from blender_fast import Ranker
    ranker = Ranker.from_pretrained("path/to/PairRM")          # ONNX Runtime, exported once and cached
    ranks = ranker.rank(inputs, candidates)                     # same ranks as llm_blender.Blender.rank
    best = ranker.select(inputs, candidates, strategy="tournament")  # best of n in ceil(log2 n) steps

``Blender`` is a drop-in for ``llm_blender.Blender``; ``Fuser`` runs a GenFuser checkpoint.

Module map (one concept per module), in the order a ranking call runs through them:

    prompts.py        records in (JSON Lines, streamed), Prompt
       |
    encode            tokenization.py: PairTokenizer, encode_prompts (token pieces, per-prompt truncation)
       |
    select  <->  compare
    selection.py      select(): which pairs, step by step (bubble / tournament via _core.Selector, full);
                      scores/ranks aggregation; top_k_from_scores (the one top-k rule)
    ranker.py         Ranker: validates input, encodes, and its compare(rows) runs each step's pairs
       |
    packer plan/build _core.PairPacker (csrc/packer.hpp): plan batches by length under a token budget,
                      build the padded (input_ids, attention_mask, positions) arrays
       |
    runtime.py        OnnxPairModel (ONNX Runtime) / OpenVinoPairModel / TorchPairModel: logits per packed row

Around it:

    options.py        the one vocabulary of choices (strategies, precisions, devices, backends) and checks
    checkpoint.py     reading a PairRM directory (llm-blender or hf layout)
    export.py         the PairRM torch module -> ONNX, checked against torch
    attention.py      DeBERTa's disentangled attention rewritten for the exported graph (same numbers)
    autoselect.py     precision="auto" / backend="auto": CPU features, the agreement gate's verdicts, calibration
    agreement.py      the agreement gate (run_gate): top-1, Kendall tau and |dlogit| of a variant vs exact fp32
    cache.py          cache root, fingerprints, atomic publish of a directory (exports of ranker and fuser)
    demo.py           the generated demo checkpoint (``--model demo:SHAPE``), made once
    synthetic/        random-weight checkpoints with the real layout (tokenizer, ranker, fuser)
    jobs.py           RankOptions, rank_prompts: the result record shared by the CLI and the Ray job
    engine.py         BatchingEngine: continuous batching of many callers' pairs and selection steps
    server.py         ``blender-fast serve``: HTTP over the engine; client.py: Client for it
    ray.py            the same job on a Ray cluster (Ray Data actors, one Ranker each)
    judges.py         PairRMJudge, TRL's pairwise judge interface
    blender.py        the llm-blender facade; fuser.py (GenFuser); generation.py (n_generate)
    cli.py            ``blender-fast`` rank / fuse / export / make-checkpoint / serve
"""
from importlib.metadata import PackageNotFoundError as _PackageNotFoundError
from importlib.metadata import version as _dist_version

# One version source, [project] version in pyproject.toml: the installed distribution's metadata, or, for
# a source tree on sys.path that was never installed, the same string compiled into _core by CMake.
try:
    __version__ = _dist_version("blender-fast")
except _PackageNotFoundError:
    from ._core import __version__

# Public names resolve on first use, so `import blender_fast` stays cheap (no onnxruntime, no torch).
_EXPORTS = {
    "Blender": "blender",
    "CheckpointError": "model.checkpoint",
    "Client": "serve.client",
    "Fuser": "fusion.fuser",
    "Ranker": "ranker",
    "Selection": "selection.strategies",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'blender_fast' has no attribute {name!r}")


__all__ = ["Blender", "CheckpointError", "Client", "Fuser", "Ranker", "Selection", "__version__"]
