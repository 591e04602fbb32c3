"""The model layer's error type, in a module of its own so that checkpoint reading (checkpoint.py) and
hub resolution (hub.py), which use each other, both take it from below."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint directory is missing a file or holds one that cannot be used."""
