"""Where a model comes from, and what its directory holds: the first step of every load.

A model source is a local directory, a Hugging Face Hub id (``org/name``, ``org/name@revision``: model/hub.py
fetches it into the HF cache), or ``demo:SHAPE``, a generated random-weight checkpoint. The generator lives in
synthetic/, a layer above this one, so a ``demo:`` source is handed to the ``demo`` callable its caller
passes (synthetic.demo.demo_path): model/ never imports synthetic/.

A resolved directory is then one of: an *exported* model (model.onnx, its tokenizer and export.json, as
``blender-fast export --out DIR`` writes it: it runs as exported, with onnxruntime and tokenizers only), a
pointwise reward model checkpoint, or a PairRM checkpoint (:func:`checkpoint_kind`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from .checkpoint import EXPORT_FILES, EXPORT_META

DEMO_PREFIX = "demo:"


def is_demo(spec) -> bool:
    """'demo:SHAPE' names a generated checkpoint."""
    return str(spec).startswith(DEMO_PREFIX)


def model_directory(spec, *, demo: Optional[Callable[[str], Path]] = None, **hub_options) -> Path:
    """A model source as a local directory: 'demo:SHAPE' through ``demo(spec)``, else a directory or a
    Hugging Face Hub id (model/hub.py's resolve_model_source, the one resolver every entry point uses)."""
    if is_demo(spec):
        if demo is None:
            raise ValueError(f"{spec!r} names a generated demo checkpoint, which this caller cannot make; "
                             "pass a model directory or a Hugging Face Hub id")
        return Path(demo(str(spec)))
    from .hub import resolve_model_source

    return resolve_model_source(spec, **hub_options)


def is_exported_dir(path) -> bool:
    """A directory written by ``export_onnx``: the model, its tokenizer and export.json, no checkpoint needed."""
    p = Path(path)
    return all((p / name).is_file() for name in EXPORT_FILES + (EXPORT_META,))


def read_export_meta(path: Path) -> dict:
    meta_path = Path(path) / "export.json"
    try:
        meta = json.loads(meta_path.read_text())
        int(meta["source_maxlength"]), int(meta["candidate_maxlength"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{meta_path}: unreadable export metadata ({type(e).__name__}: {e}); re-export the "
                         "model (blender-fast export CHECKPOINT --out DIR)") from None
    return meta


def verify_exported_dir(path: Path, meta: dict) -> None:
    """An exported directory matches the sizes and sha256 its export.json recorded (once per process while
    the files are unchanged): a damaged or foreign model.onnx is one clear error naming it, never scores."""
    from .cache import MANIFEST_FILES_KEY, verify_files_once

    files = meta.get(MANIFEST_FILES_KEY)
    missing = [n for n in EXPORT_FILES if n not in (files or {})]
    if not isinstance(files, dict) or missing:
        raise ValueError(f"{Path(path) / 'export.json'} records no size and sha256 for {', '.join(missing) or 'its files'} "
                         "(an older or hand-made export); re-export the model (blender-fast export CHECKPOINT --out DIR)")
    problem = verify_files_once(path, files, extra=("export.json",))
    if problem:
        raise ValueError(f"damaged exported model: {problem}; re-export it (blender-fast export CHECKPOINT --out DIR)")


def read_exported(path: Path, backend: str, precision: str | None) -> dict:
    """An exported directory's export.json, its files verified, and the backend / precision asked of it
    checked: it runs as exported (ONNX Runtime, its own precision); anything else is one error saying so."""
    meta = read_export_meta(path)
    verify_exported_dir(path, meta)  # before the first use: never scores from a damaged file
    exported = meta.get("export", {}).get("precision", "fp32")
    if backend not in ("onnx", "auto"):
        raise ValueError(f"{path} is an exported ONNX model: it runs on backend='onnx', not {backend!r}")
    if precision not in (None, "auto", exported):
        raise ValueError(f"{path} was exported with precision {exported!r}; precision={precision!r} "
                         "needs its own export (blender-fast export --out DIR with that precision)")
    return meta


def load_any_checkpoint(path):
    """The checkpoint in ``path``, read and checked: a pointwise reward model (model/reward.py) or a
    PairRM checkpoint (model/checkpoint.py). Both describe themselves the same way: ``kind``, ``path``,
    ``weights_path``, ``tokenizer_dir``, ``backbone_config``, the truncation lengths (None: the
    tokenizer's), ``describe()`` and ``key_fields()`` (what the export cache keys on)."""
    from .reward import is_pointwise_dir, load_pointwise_checkpoint

    if is_pointwise_dir(path):
        return load_pointwise_checkpoint(path)
    from .checkpoint import load_checkpoint

    return load_checkpoint(path)
