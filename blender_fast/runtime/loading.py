"""Loading a model, whatever its kind: source -> files -> graph (or its cached export) -> session + tokenizer.

``Ranker.from_pretrained`` hands the source here and wraps what comes back in its scorer: the model
callable (rows -> logits), its tokenizer (whose ``kind`` picks the scorer), the truncation lengths, and how
and why it runs that way (``describe()``). Every model-side step is taken first, once (model/files.py:
where the files are and what they hold, the checkpoint, its fingerprint), and handed down as one value
(model/files.ModelFiles); the runtime then chooses how it runs (runtime/autoselect.py), asks that value
for the chosen graph (the cached export or the torch module) and opens the sessions (runtime/sessions.py).
The kinds differ only in what the checkpoint allows: a PairRM checkpoint
may take auto-selection and the certified cascade (runtime/autoselect.py); a reward model runs as asked,
"auto" being exact ONNX fp32.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..model.files import load_files
from .autoselect import runtime_choice
from .sessions import open_session


@dataclass
class LoadedModel:
    """What a load produced: the model, its tokenizer and lengths, how it runs (``info``) and, for the
    certified cascade, the exact model and its trusted bound (``cascade["eps"]``)."""

    model: Callable
    tokenizer: object
    source_maxlength: int | None
    candidate_maxlength: int | None
    info: dict = field(default_factory=dict)
    exact_model: Callable | None = None
    cascade: dict | None = None


def load_model(spec, backend: str, precision: str | None, device: str, threads=None, cache_dir=None, *,
               demo: Callable | None = None, hub: dict | None = None) -> LoadedModel:
    """The model a source names (a directory, a hub id with ``hub``'s options, or 'demo:SHAPE' through
    ``demo``; model/files.load_files): an exported directory, a reward model or a PairRM checkpoint, on ``device``
    (resolved), with ``backend`` / ``precision`` as checked by the caller (None: "auto"). ``cache_dir``: the
    ONNX export cache."""
    files = load_files(spec, backend, precision, cache_dir, demo=demo, hub=hub)
    choice = runtime_choice(files, backend, precision, device, threads, cache_dir)
    cascade = choice["cascade"]
    # The chosen variant first; with the certified cascade, the fast variant that scores every pair after
    # it (the chosen, exact one re-scores the pairs the bound cannot certify).
    variants = [(choice["backend"], choice["precision"])] + ([(cascade["backend"], cascade["precision"])]
                                                              if cascade else [])
    graphs = [files.graph(b, p) for b, p in variants]
    models = [open_session(graph, device, threads) for graph in graphs]
    info = {"backend": graphs[0].backend, "precision": graphs[0].precision, "device": device, "threads": threads,
            "reason": choice["reason"], **files.describe()}
    loaded = LoadedModel(models[-1], graphs[0].tokenizer, files.source_maxlength, files.candidate_maxlength,
                         info=info)
    if cascade:
        loaded.exact_model, loaded.cascade = models[0], cascade
        info["cascade"] = {"fast": f"{cascade['backend']} {cascade['precision']}", "eps": cascade["eps"]}
    return loaded


_BACKEND_NAMES = {"onnx": "ONNX Runtime", "torch": "PyTorch", "openvino": "OpenVINO"}


def startup_line(d: dict) -> str:
    """What runs and why, in a few plain words, from ``Ranker.describe()`` (its ``reason`` is the full
    story, for --verbose): e.g. "ranker: ONNX Runtime fp32 on CPU (exact; no faster certified path on
    this CPU)". rank, fuse and serve print it; it lives beside the reason it condenses, so the CLI prints
    it without importing serve/."""
    device = str(d.get("device") or "cpu")
    device = device.upper() if device in ("cpu", "cuda") else device
    reason = str(d.get("reason") or "")
    if reason.startswith("certified cascade"):
        why = "certified cascade: fp32's answers, with a fast first pass"
    elif "passed the agreement gate" in reason:
        why = "faster, and passed the agreement gate for this checkpoint"
    elif reason.startswith("exact fp32"):
        why = f"exact; no faster certified path on this {device}"
    else:
        why = "as asked"
    return f"ranker: {_BACKEND_NAMES.get(d.get('backend'), d.get('backend'))} {d.get('precision')} on {device} ({why})"


def ranker_details(d: dict) -> str:
    """--verbose: the backend, the CPU, its ISA and auto-selection's whole reason, from ``Ranker.describe()``."""
    return (f"{d['backend']} {d['precision']} on {d['device']} ({d['cpu_model']}; {', '.join(d['isa'])}): "
            f"{d['reason']}")
