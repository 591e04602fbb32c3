"""One resolver, model source -> local directory, for every entry point (Ranker, Blender, Fuser, CLI,
serve, the Ray job, the judge, benchmarks).

A source is
* an existing local directory (used as is);
(``demo:SHAPE``, the generated random-weight checkpoint, is resolved one floor up, by
``synthetic.demo.local_model``, which hands everything else to this module);
* a Hugging Face Hub id ``org/name`` or ``org/name@revision``, resolved with huggingface_hub into the
  standard HF cache (``HF_HOME`` / ``HF_HUB_CACHE`` / ``cache_dir=``), downloading only what blender-fast
  reads: configs, weights (``model.safetensors`` preferred, ``pytorch_model.bin`` only when there is no
  safetensors file; sharded index + shards) and tokenizer files. Never ``training_args.bin`` or any other
  pickle. llm-blender's own download (the plain folder ``<hub cache>/<id>`` its
  ``snapshot_download(local_dir=...)`` makes) is reused as is, with no request.

Errors are typed (``HubError`` and subclasses, all ``CheckpointError``) and name the id. huggingface_hub is
imported only when a hub id is resolved; it never imports torch.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Optional

from .errors import CheckpointError

# kind -> which repo files are fetched (weights are chosen separately, see _weight_patterns)
CONFIG_PATTERNS = ("config.json", "ranker_config.json", "generation_config.json")
TOKENIZER_PATTERNS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                      "spm.model", "spiece.model", "sentencepiece.bpe.model", "vocab.json", "vocab.txt",
                      "merges.txt")
KINDS = ("ranker", "fuser", "backbone")
# Seconds to wait for the hub's first answer: an unreachable hub fails (or falls back to the cache) fast.
HUB_TIMEOUT = float(os.environ.get("BLENDER_FAST_HUB_TIMEOUT", "10"))

# llm-blender's loadranker accepts these too; blender-fast's engine runs DeBERTa-v3 models only (PairRM, and
# the pointwise OpenAssistant/reward-model-deberta-v3-large-v2, llm-blender's "deberta-rm": model/pointwise.py).
UNSUPPORTED = {
    "berkeley-nest/Starling-RM-7B-alpha": "a 7B Llama-2 reward model",
    "openbmb/UltraRM-13b": "a 13B Llama reward model",
}
ALTERNATIVE = ("llm-blender/PairRM (or llm-blender/PairRM-hf), or the pointwise reward model "
               "OpenAssistant/reward-model-deberta-v3-large-v2")

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*(@[A-Za-z0-9._/-]+)?$")


class HubError(CheckpointError):
    """A hub id could not be resolved to usable local files; the message names the id."""


class ModelNotFound(HubError):
    pass


class GatedModel(HubError):
    pass


class RevisionNotFound(HubError):
    pass


class OfflineNotCached(HubError):
    pass


class IncompleteModel(HubError):
    pass


class UnsupportedModel(HubError):
    pass


def is_hub_id(source) -> bool:
    """``org/name`` or ``org/name@rev`` that is not an existing local path."""
    s = str(source)
    return bool(_HUB_ID.match(s)) and not Path(s).expanduser().exists()


def split_revision(source: str, revision: Optional[str] = None) -> tuple[str, Optional[str]]:
    repo_id, _, rev = str(source).partition("@")
    if rev and revision and rev != revision:
        raise ValueError(f"{source}: revision {rev!r} in the id and revision={revision!r} disagree")
    return repo_id, (rev or revision or None)


def hub_cache_dir(cache_dir=None) -> Path:
    """The hub cache searched and filled: cache_dir=, else HF_HUB_CACHE, else HF_HOME/hub."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "huggingface")
    return Path(home).expanduser() / "hub"


def offline_default() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def check_supported(repo_id: str) -> None:
    for name, what in UNSUPPORTED.items():
        if repo_id.lower() == name.lower() or str(repo_id).rstrip("/").endswith(name):
            raise UnsupportedModel(
                f"{name} is not supported by blender-fast ({what}; blender-fast runs DeBERTa-v3 rankers and "
                "reward models). "
                f"Use {ALTERNATIVE}, or llm-blender itself for this model"
            )


def resolve_model_source(source, *, kind: str = "ranker", revision: Optional[str] = None, cache_dir=None,
                         token=None, local_files_only: Optional[bool] = None) -> Path:
    """A model source as a local directory (see the module docstring). Raises HubError subclasses."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    s = str(source)
    check_supported(s)
    if not is_hub_id(s):
        return Path(s).expanduser()
    repo_id, revision = split_revision(s, revision)
    cache = hub_cache_dir(cache_dir)
    # llm-blender's loadranker(id) leaves a plain folder <hub cache>/<id>: reuse it, download nothing.
    if revision is None and kind != "backbone":
        plain = cache / repo_id
        if (plain / "config.json").is_file():
            return plain
    if local_files_only is None:
        local_files_only = offline_default()
    if kind == "backbone" and not local_files_only:
        # A backbone supplies only its config and tokenizer: a cached copy (ours, or the one llm-blender's
        # transformers download left) is used without asking the hub again.
        try:
            return _snapshot(repo_id, revision, kind, cache, token, True)
        except HubError:
            pass
    return _snapshot(repo_id, revision, kind, cache, token, bool(local_files_only))


def _weight_patterns(files: list[str]) -> list[str]:
    """safetensors when present (single or sharded), else pytorch_model.bin (single or sharded)."""
    for single, index, shard in (("model.safetensors", "model.safetensors.index.json", "model-*.safetensors"),
                                 ("pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin")):
        if single in files:
            return [single]
        if index in files:
            return [index, shard]
    return []


def _patterns(kind: str, files: Optional[list[str]]) -> list[str]:
    pats = list(CONFIG_PATTERNS) + list(TOKENIZER_PATTERNS)
    if kind == "backbone":
        return pats
    if files is None:  # offline: whatever weights the cache holds (never a pickle other than the weights)
        return pats + ["model.safetensors", "model.safetensors.index.json", "model-*.safetensors",
                       "pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*.bin"]
    return pats + _weight_patterns(files)


def _what_to_do(repo_id: str, cache: Path, revision=None) -> str:
    rev = f" --revision {revision}" if revision else ""  # the hint fetches what the user asked for
    return (f"connect to the internet once, or run `hf download {repo_id}{rev} --cache-dir {cache}` "
            f"(or `huggingface-cli download {repo_id}{rev}`), or pass a local checkpoint directory")


def _snapshot(repo_id: str, revision, kind: str, cache: Path, token, local_files_only: bool) -> Path:
    from huggingface_hub import HfApi, snapshot_download
    from huggingface_hub import errors as hf_errors

    label = f"{repo_id}@{revision}" if revision else repo_id
    files = None
    folder = None
    if not local_files_only:
        try:
            info = HfApi().model_info(repo_id, revision=revision, token=token, timeout=HUB_TIMEOUT)
            files = [s.rfilename for s in (info.siblings or [])]
            _check_listing(repo_id if not revision else f"{repo_id}@{revision}", kind, files)
            folder = snapshot_download(repo_id, revision=revision, cache_dir=str(cache), token=token,
                                       allow_patterns=_patterns(kind, files), etag_timeout=HUB_TIMEOUT)
        except HubError:
            raise
        except hf_errors.GatedRepoError:
            raise GatedModel(
                f"{label}: the repo is gated or private on the Hugging Face Hub; accept its terms on "
                f"huggingface.co/{repo_id} and pass a token (token=..., HF_TOKEN=..., or `hf auth login`)"
            ) from None
        except hf_errors.RevisionNotFoundError:
            raise RevisionNotFound(f"{label}: revision {revision!r} not found in {repo_id} on the Hugging Face Hub") from None
        except hf_errors.RepositoryNotFoundError as e:
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403) and token is None:
                raise GatedModel(
                    f"{label}: the Hugging Face Hub refused access (HTTP {status}): a private or gated repo "
                    "needs a token (token=..., HF_TOKEN=..., or `hf auth login`)") from None
            raise ModelNotFound(
                f"{label}: not found on the Hugging Face Hub (and not a local directory); check the id, "
                "or pass a token if it is private") from None
        except hf_errors.EntryNotFoundError as e:
            raise IncompleteModel(f"{label}: a file listed by the hub is missing ({e})") from None
        except Exception as e:  # no network, DNS, timeouts, proxies: fall back to the cache
            if not _is_connection_problem(e, hf_errors):
                raise HubError(f"{label}: cannot download from the Hugging Face Hub ({type(e).__name__}: {e})") from None
            folder = None
    if folder is None:
        try:
            folder = snapshot_download(repo_id, revision=revision, cache_dir=str(cache), token=token,
                                       allow_patterns=_patterns(kind, None), local_files_only=True)
        except Exception as e:
            if not isinstance(e, (hf_errors.LocalEntryNotFoundError, FileNotFoundError)) \
                    and not _is_connection_problem(e, hf_errors):
                raise
            why = "offline (HF_HUB_OFFLINE=1 or local_files_only)" if local_files_only else "the hub is unreachable"
            raise OfflineNotCached(
                f"{label}: {why} and not in the cache (searched {cache}): {_what_to_do(repo_id, cache, revision)}"
            ) from None
    path = Path(folder)
    _check_complete(path, label, kind, files)
    return path


# Transport failures by class name: huggingface_hub 0.x raises requests', 1.x httpx's, 2.x httpx2's.
_CONNECTION_ERRORS = {"ConnectionError", "ConnectError", "Timeout", "TimeoutException", "TransportError",
                      "NetworkError", "ProxyError", "OfflineModeIsEnabled", "LocalEntryNotFoundError"}


def _is_connection_problem(e: BaseException, hf_errors) -> bool:
    return isinstance(e, (ConnectionError, TimeoutError)) or any(
        c.__name__ in _CONNECTION_ERRORS for c in type(e).__mro__)


def _check_listing(label: str, kind: str, files: list) -> None:
    """Before downloading anything: the repo holds a config and (for a model) its weights."""
    if "config.json" not in files:
        raise IncompleteModel(f"{label}: the repo has no config.json on the Hugging Face Hub; nothing to load")
    if kind != "backbone" and not _weight_patterns(files):
        raise IncompleteModel(
            f"{label}: the repo has no weights file (model.safetensors or pytorch_model.bin, or a sharded "
            "index) on the Hugging Face Hub; nothing to load")


def _check_complete(path: Path, label: str, kind: str, files: Optional[list[str]]) -> None:
    """A snapshot missing its config or weights names the file (huggingface_hub never links a file that
    did not finish downloading, so a present file is whole)."""
    if not (path / "config.json").is_file():
        raise IncompleteModel(f"{label}: the repo has no config.json (looked in {path})")
    if kind == "backbone":
        return
    if files is not None and not _weight_patterns(files):
        raise IncompleteModel(
            f"{label}: the repo has no weights file (model.safetensors or pytorch_model.bin, or a sharded "
            "index); nothing to load")
    local = [p.name for p in path.iterdir()]
    want = _weight_patterns(local)
    if not want:
        raise IncompleteModel(f"{label}: no weights file in {path} (model.safetensors or pytorch_model.bin)")
    if len(want) == 2:  # sharded: every shard the index names must be here
        import json

        index = json.loads((path / want[0]).read_text())
        missing = sorted({f for f in index.get("weight_map", {}).values() if not (path / f).is_file()})
        if missing:
            raise IncompleteModel(f"{label}: shard(s) {missing} named by {want[0]} are missing in {path}")


def snapshot_commit(path: Path) -> Optional[str]:
    """The commit sha of an HF-cache snapshot directory (``.../snapshots/<sha>``), else None."""
    path = Path(path)
    if path.parent.name == "snapshots" and re.fullmatch(r"[0-9a-f]{40}", path.name):
        return path.name
    return None


def blob_sha256(path: Path) -> Optional[str]:
    """The sha256 of an HF-cache file without reading it: an LFS file in a snapshot is a link to
    ``blobs/<sha256>``, named by the hub after its content. None for anything else."""
    path = Path(path)
    if not path.is_symlink():
        return None
    target = Path(os.path.realpath(path))
    if target.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", target.name) \
            and snapshot_commit(path.parent) is not None:
        return target.name
    return None
