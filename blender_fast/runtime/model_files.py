"""The one way runtime/ reads a model: model/files.ModelFiles.

A load hands the runtime the ModelFiles that model/files.load_files made, every model-side step already
taken; a checkpoint read on its own (the agreement gate, ``blender-fast gate``, the tools that time or
calibrate a variant) is wrapped here as it is, so each runtime function that takes a checkpoint takes
either, and asks the same value for its keys, graphs and rows.
"""
from __future__ import annotations

from ..model.files import ModelFiles


def model_files(ckpt, cache_dir=None) -> ModelFiles:
    """``ckpt`` as a ModelFiles: a load's as it is; a checkpoint of either kind wrapped, its graphs taken
    from the export cache ``cache_dir``."""
    if isinstance(ckpt, ModelFiles):
        return ckpt
    return ModelFiles(ckpt.path, checkpoint=ckpt, cache_dir=cache_dir)
