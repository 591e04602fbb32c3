"""The demo checkpoint: a generated random-weight PairRM (real architecture and file layout) made once in
the cache, so ``blender-fast rank`` and the benchmarks run on a fresh machine with no download. Its
orderings are meaningless; it shows the engine working. ``--model demo:SHAPE`` names it."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Optional

from ..model.checkpoint import has_random_weights
from ..model.cache import MANIFEST_FILES_KEY, cache_root, publish_dir, read_manifest, verify_files
from ..model.source import DEMO_PREFIX, model_directory  # noqa: F401  (DEMO_PREFIX re-exported)


def _demo_check(directory: Path) -> Optional[str]:
    data, problem = read_manifest(directory / "blender_fast.json")
    if problem:
        return problem
    return verify_files(directory, data.get(MANIFEST_FILES_KEY))


def demo_checkpoint(shape: str = "xsmall", seed: int = 0, *, llm_blender_loadable: bool = False,
                    announce: Optional[Callable[[Path], object]] = None) -> Path:
    """A generated random-weight PairRM checkpoint in the cache, made once (then reused).

    By default it holds what blender-fast needs: the ranker weights, its tokenizer and the backbone's
    config (no second copy of the backbone weights). ``llm_blender_loadable=True`` adds the fp16
    backbone weights llm-blender's loader reads before the ranker's (benchmarks against the reference).
    ``announce(path)`` is called before a checkpoint is generated (it takes a while).
    """
    from . import make_ranker_checkpoint

    name = f"demo-{shape}-seed{int(seed)}" + ("-llm-blender" if llm_blender_loadable else "")
    final = cache_root() / "checkpoints" / name

    def build(tmp: Path) -> None:
        if announce is not None:
            announce(final)
        make_ranker_checkpoint(tmp, shape=shape, seed=seed, backbone_weights=llm_blender_loadable,
                               manifest=True)

    path, _ = publish_dir(final, build, _demo_check)
    return path


DEMO_WARNING = (
    "NOTE: ranking with a GENERATED checkpoint ({path}): random weights, so the orderings are meaningless. "
    "They only show the engine working. Pass --model llm-blender/PairRM "
    "(downloaded once from the Hugging Face Hub) or a PairRM directory for real rankings."
)
FUSER_WARNING = (
    "NOTE: fusing with a GENERATED fuser ({path}): random weights, so the fused text is gibberish. It only "
    "shows the engine working. Pass --fuser llm-blender/gen_fuser_3b "
    "(downloaded once from the Hugging Face Hub) or a GenFuser directory for real fusions."
)


def random_weights_notice(path, role: str = "ranker") -> Optional[str]:
    """The one decision, from the directory itself (spec or path alike, checkpoint or its export): the
    notice to print when it holds generated random weights, else None."""
    if not has_random_weights(path):
        return None
    return (FUSER_WARNING if role == "fuser" else DEMO_WARNING).format(path=path)


def announce_random_weights(path, role: str = "ranker") -> None:
    note = random_weights_notice(path, role)
    if note:
        print(note, file=sys.stderr)


def demo_path(spec) -> Path:
    """'demo:SHAPE' (demo: alone = xsmall): the generated checkpoint in the cache, made once."""
    from .pairrm_checkpoint import RANKER_SHAPES

    spec = str(spec)
    shape = spec[len(DEMO_PREFIX):] or "xsmall"
    if shape not in RANKER_SHAPES:  # before the "generating ..." line: nothing is generated for a typo
        raise ValueError(f"{spec}: unknown demo shape {shape!r}; choose one of "
                         f"{', '.join(DEMO_PREFIX + s for s in RANKER_SHAPES)}")
    return demo_checkpoint(shape, seed=0, announce=lambda p: print(
        f"generating a random-weight PairRM checkpoint ({shape}) in {p} ...", file=sys.stderr))


def local_model(spec, **hub_options) -> Path:
    """A model source as a local directory (model/source.py's model_directory, the one resolver every entry
    point uses): 'demo:SHAPE' generated here, once; else a directory or a Hugging Face Hub id."""
    return model_directory(spec, demo=demo_path, **hub_options)


def resolve_model(spec, **hub_options) -> Path:
    """A --model value as a local directory (local_model), with the random-weights notice on stderr when
    it holds a generated checkpoint, whether given by spec or by path."""
    path = local_model(spec, **hub_options)
    announce_random_weights(path, "ranker")
    return path
