"""What model/ hands the runtime for one load: every model-side step of it, in one value.

A load runs source -> files -> graph/cache -> session + tokenizer -> scorer. ``load_files`` takes the model
side's first steps (model/source.py: where the files are and what they hold, an exported directory
verified, a checkpoint read and checked) and returns a ``ModelFiles``; runtime/ then chooses how it runs,
opens the sessions and calibrates from that value alone, calling no model/ function on the model again:
what the runtime asks of the checkpoint later (its cache keys, the graph of the variant it chose, rows of fixed texts to
time or calibrate on) is asked of the value, and taken here.

The checkpoint's files are hashed once per load, on first use (``hashes``): its cache keys (the
agreement gate's, auto-selection's, the cascade bound's) then cost no file read, and a load that needs
no key (an explicit torch backend) hashes nothing, as before.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .cache import CheckpointHashes, checkpoint_hashes
from .export import ModelGraph, exported_graph, model_graph
from .pairrm import sample_batch
from .source import is_exported_dir, load_any_checkpoint, model_directory, read_exported
from .tokenization import EncodedPrompts, build_pair_tokenizer, encode_prompts


@dataclass
class ModelFiles:
    """One model's files as model/ read them: a checkpoint of either kind (``checkpoint``), or an exported
    directory (``export_meta``, its export.json, and ``exported``, the graph it runs as exported).
    ``cache_dir``: the ONNX export cache its graphs come from (None: the default one)."""

    path: Path
    checkpoint: object = None  # model/checkpoint.RankerCheckpoint or model/reward.PointwiseCheckpoint
    export_meta: dict | None = None
    exported: ModelGraph | None = None
    cache_dir: Path | None = None

    @property
    def kind(self) -> str:
        """The checkpoint's kind ("pair", "reward"); an exported directory holds PairRM."""
        return "pair" if self.checkpoint is None else self.checkpoint.kind

    @property
    def source_maxlength(self):
        return self.export_meta["source_maxlength"] if self.checkpoint is None else self.checkpoint.source_maxlength

    @property
    def candidate_maxlength(self):
        return self.export_meta["candidate_maxlength"] if self.checkpoint is None else self.checkpoint.candidate_maxlength

    def describe(self) -> dict:
        """What Ranker.describe adds for this model (the checkpoint's own; nothing for an exported one)."""
        return {} if self.checkpoint is None else self.checkpoint.describe()

    @cached_property
    def hashes(self) -> CheckpointHashes:
        # Hashed at the first key asked for, then kept: one load asks for several.
        return checkpoint_hashes(self.checkpoint)

    def key(self, **options) -> str:
        """cache.checkpoint_fingerprint(checkpoint, **options): the same key, from the files hashed once."""
        return self.hashes.key(**options)

    def graph(self, backend: str, precision: str) -> ModelGraph:
        """The graph one concrete (backend, precision) runs (export.model_graph: the cached export or the
        torch module); an exported directory's own graph, which runs as exported (load_files checked what
        was asked of it)."""
        if self.checkpoint is None:
            return self.exported
        return model_graph(self.checkpoint, backend, precision, self.cache_dir)

    def sample_rows(self) -> tuple:
        """The export's packed sample batch (PairRM), with the checkpoint's own tokenizer: what
        auto-selection times each variant on."""
        return sample_batch(build_pair_tokenizer(self.checkpoint), self.checkpoint)

    def encode(self, tok, sources: list[str], candidates: list[list[str]]) -> EncodedPrompts:
        """Prompts tokenized with ``tok`` at this model's truncation lengths (tokenization.encode_prompts)."""
        return encode_prompts(tok, sources, candidates, self.source_maxlength, self.candidate_maxlength)


def load_files(spec, backend: str, precision: str | None, cache_dir=None, *, demo=None, hub: dict | None = None) -> ModelFiles:
    """The files a model source names (model/source.py: a directory, a hub id with ``hub``'s options, or
    'demo:SHAPE' through ``demo``), read and checked: an exported directory (verified, and the ``backend``
    / ``precision`` asked of it checked: read_exported), else the checkpoint of either kind in it."""
    path = model_directory(spec, demo=demo, **(hub or {}))
    if is_exported_dir(path):
        path = Path(path)
        meta = read_exported(path, backend, precision)
        return ModelFiles(path, export_meta=meta, exported=exported_graph(path, meta), cache_dir=cache_dir)
    return ModelFiles(path, checkpoint=load_any_checkpoint(path), cache_dir=cache_dir)
