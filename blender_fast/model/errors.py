"""The model layer's error type, in a module of its own so that checkpoint reading (checkpoint.py) and
hub resolution (hub.py), which use each other, both take it from below."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file or holds one that cannot be used."""


def require_torch(what: str = "a checkpoint") -> None:
    """torch and transformers, or one ImportError saying what needs them and how to install them."""
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{e.name} is needed to export or run {what} with torch: "
                          "pip install 'blender-fast[export]'") from None
