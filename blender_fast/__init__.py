"""blender-fast: a fast, faithful engine for LLM-Blender style ranking and fusion.

    from blender_fast import Ranker
    ranker = Ranker.from_pretrained("path/to/PairRM")          # ONNX Runtime, exported once and cached
    ranks = ranker.rank(inputs, candidates)                     # same ranks as llm_blender.Blender.rank
    best = ranker.select(inputs, candidates, strategy="tournament")  # best of n in ceil(log2 n) steps

``Blender`` is a drop-in for ``llm_blender.Blender``; ``Fuser`` runs a GenFuser checkpoint.

Layout (subpackages in pipeline order; nothing imports upward):

    options.py        the one vocabulary of choices and the one number rule (check_count, check_top_k, ...)
    model/            checkpoint.py (layouts), tokenization.py, export.py (-> ONNX), attention.py, cache.py
    runtime/          sessions.py (ONNX Runtime / OpenVINO / torch), autoselect.py ("auto"), agreement.py
    selection/        steps.py (the step protocol: Step, run_steps, every strategy as a step generator),
                      verbs.py (rank / compare / judge as steps), aggregate.py (llm-blender's scores and
                      ranks), budgets.py, strategies.py (select(): the synchronous entry)
    ranker.py         Ranker: checks input, encodes, drives the step generators with the packed model
    blender.py        the llm-blender facade; judges.py: PairRMJudge
    fusion/           fuser.py (GenFuser), generation.py
    serve/            engine.py (BatchingEngine: drives many step generators at once), app.py, client.py
    cluster/          records.py, jobs.py (RankOptions), ray_job.py
    synthetic/        random-weight checkpoints with the real layout; demo.py (``demo:SHAPE``)
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
    "BatchingEngine": "serve.engine",
    "Client": "serve.client",
    "Fuser": "fusion.fuser",
    "PairRMJudge": "judges",
    "PromptError": "selection.steps",
    "Ranker": "ranker",
    "Selection": "selection.steps",
}


def __getattr__(name):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module 'blender_fast' has no attribute {name!r}")


__all__ = ["BatchingEngine", "Blender", "CheckpointError", "Client", "Fuser", "PairRMJudge", "PromptError", "Ranker",
           "Selection", "__version__"]
