"""Everything blender-fast keeps on disk between runs, in one place.

Under ``cache_root()`` (``$BLENDER_FAST_CACHE``, else ``$XDG_CACHE_HOME/blender_fast``, else
``~/.cache/blender_fast``)::

    onnx/<key>/                    exported rankers: model.onnx, pair_tokenizer.json, export.json
    onnx-fuser/<key>/              exported fusers (optimum): encoder/decoder graphs + manifest.json
    checkpoints/demo-<shape>-seed<n>/   the generated demo checkpoint (``--model demo:xsmall``)
    spm/                           SentencePiece models trained for generated checkpoints
    fingerprints.json              sha256 of weight files and exported models, so a 1.7 GB file is hashed once

Every directory entry is built in a temporary directory beside its final place and renamed into it
(``publish_dir``): a reader sees a complete entry or none, two processes building the same entry
both succeed, and the temporary directories of killed processes are removed by the next publisher.
Entries carry a manifest of their files (sizes and sha256), so a truncated or corrupt file is noticed
and the entry rebuilt instead of served.

Plain Python: no torch, so a cached ONNX model can be served without it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

CACHE_ENV = "BLENDER_FAST_CACHE"
MANIFEST_FILES_KEY = "files"
# Files up to this size are re-hashed in full on every check; bigger ones by their first and last
# SAMPLE_BYTES (plus the size). Truncation and the usual corruption (a partial copy, a zeroed tail)
# change those; a full check is one `verify_files(..., full=True)` away. A directory the user hands us
# (an exported model, verify_files_once) is always checked in full: bytes damaged in the middle of a
# 1.7 GB model.onnx change neither its size nor its ends.
FULL_HASH_LIMIT = 64 << 20
SAMPLE_BYTES = 64 << 10
# A temporary directory whose process is gone, or older than this, is debris of a killed run.
STALE_TEMP_SECONDS = 24 * 3600
_TEMP_MARK = ".tmp-"


class CacheError(RuntimeError):
    """The cache directory cannot be used, or an entry is corrupt and cannot be rebuilt here."""


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "blender_fast"


def auto_dir(cache_dir=None) -> Path:
    """The folder of the auto decisions, gate records and cascade bounds (beside the ranker exports)."""
    return Path(cache_dir) if cache_dir else cache_root() / "onnx"


def unusable(path: Path, err: BaseException) -> CacheError:
    """The one error for a cache directory that cannot be created or written."""
    reason = getattr(err, "strerror", None) or str(err)
    return CacheError(
        f"{path}: the blender-fast cache directory is not usable ({reason}). Point {CACHE_ENV} at a "
        f"writable directory, e.g. `export {CACHE_ENV}=/tmp/blender_fast_cache` (or pass cache_dir=...)"
    )


def write_failed(path: Path, err: OSError) -> CacheError:
    """The one error for a cache entry that could not be written: a full disk and a read-only file system
    named as such, with what to do."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        return CacheError(f"{path}: no space left on the disk of the blender-fast cache while writing it "
                          f"({err.strerror}). Free some space, or point {CACHE_ENV} at another disk")
    if err.errno == errno.EROFS:
        return CacheError(f"{path}: the blender-fast cache is on a read-only file system. Point {CACHE_ENV} at "
                          f"a writable directory, e.g. `export {CACHE_ENV}=/tmp/blender_fast_cache`")
    return unusable(Path(path).parent, err)


def ensure_dir(path: Path) -> Path:
    """mkdir -p, with the cache error (naming BLENDER_FAST_CACHE) instead of a bare OSError."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise (write_failed(path, e) if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS) else unusable(path, e)) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise unusable(path, PermissionError(errno.EACCES, "not writable"))
    return path


# -- fingerprints ------------------------------------------------------------------------------------

def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sample_sha256(path: Path, size: Optional[int] = None) -> str:
    """sha256 of a file's size, first and last SAMPLE_BYTES: cheap, and changes when the file is
    truncated, extended, or rewritten at either end."""
    size = os.path.getsize(path) if size is None else size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(SAMPLE_BYTES))
        if size > SAMPLE_BYTES:
            f.seek(max(SAMPLE_BYTES, size - SAMPLE_BYTES))
            h.update(f.read(SAMPLE_BYTES))
    return h.hexdigest()


def _atomic_write_text(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{_TEMP_MARK}{os.getpid()}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        with _suppress_oserror():
            os.unlink(tmp)
        raise


class _suppress_oserror:
    def __enter__(self):
        return self

    def __exit__(self, kind, value, tb):
        return kind is not None and issubclass(kind, OSError)


def weights_fingerprint(path: Path) -> str:
    """sha256 of a weights file, remembered so a 1.7 GB file is hashed once.

    The memo is keyed on the path, size, mtime, inode, ctime and a sample of the content: a file
    replaced in place (same size, mtime restored with ``touch -r``/``os.utime``) gets a new inode or
    ctime (which no user call can set back) and, almost always, a new sample, so it never inherits the
    old file's hash, nor its cached ONNX export."""
    path = Path(path)
    if path.name.endswith(".index.json"):  # sharded: the index and every shard it names, in order
        from .checkpoint import shard_files

        h = hashlib.sha256(file_sha256(path).encode())
        for shard in shard_files(path):
            h.update(f"{shard.name}:{weights_fingerprint(shard)}".encode())
        return h.hexdigest()
    from .hub import blob_sha256

    named = blob_sha256(path)
    if named is not None:  # a Hugging Face cache blob is named by its sha256: no need to read 1.7 GB
        return named
    return remembered_sha256(path)


def remembered_sha256(path: Path) -> str:
    """:func:`file_sha256`, remembered in ``fingerprints.json`` under the cache root (keyed as
    :func:`weights_fingerprint` says), so a big file is read once, not once per process."""
    path = Path(path)
    stat = path.stat()
    key = "|".join(str(x) for x in (path.resolve(), stat.st_size, stat.st_mtime_ns, stat.st_ino,
                                      stat.st_ctime_ns, sample_sha256(path, stat.st_size)))
    memo_path = cache_root() / "fingerprints.json"
    try:
        memo = json.loads(memo_path.read_text())
        if not isinstance(memo, dict):
            memo = {}
    except (OSError, ValueError):
        memo = {}
    if key not in memo:
        memo[key] = file_sha256(path)
        try:
            memo_path.parent.mkdir(parents=True, exist_ok=True)
            _atomic_write_text(memo_path, json.dumps(memo))
        except OSError:
            pass  # a read-only cache only costs re-hashing
    return memo[key]


@dataclass(frozen=True)
class CheckpointHashes:
    """What every key of one checkpoint hashes beside its options, read once: the weights' sha256, the
    backbone config, the head's key fields and the sha256 of each tokenizer file. ``key(**options)`` is
    :func:`checkpoint_fingerprint` without reading a file again (a load asks for several keys)."""

    weights_sha256: str
    backbone_config: str  # JSON, keys sorted
    key_fields: dict
    tokenizer_sha256: tuple  # (file name, sha256), by name

    def key(self, **options) -> str:
        h = hashlib.sha256()
        h.update(self.weights_sha256.encode())
        h.update(self.backbone_config.encode())
        h.update(json.dumps({**self.key_fields, **options}, sort_keys=True).encode())
        for name, sha256 in self.tokenizer_sha256:
            h.update(name.encode())
            h.update(sha256.encode())
        return h.hexdigest()[:20]


def checkpoint_hashes(ckpt) -> CheckpointHashes:
    """The files a checkpoint's keys hash, read and hashed (a weights file once per machine: weights_fingerprint)."""
    weights = weights_fingerprint(ckpt.weights_path)
    tokenizer = []
    if ckpt.tokenizer_dir is not None:
        for name in sorted(os.listdir(ckpt.tokenizer_dir)):
            p = ckpt.tokenizer_dir / name
            if p.is_file() and (name.startswith(("tokenizer", "special_tokens", "added_tokens")) or name.endswith(".model")):
                tokenizer.append((name, file_sha256(p)))
    return CheckpointHashes(weights, json.dumps(ckpt.backbone_config, sort_keys=True), ckpt.key_fields(), tuple(tokenizer))


def checkpoint_fingerprint(ckpt, **options) -> str:
    """One key for everything an exported ranker depends on: weights, tokenizer, shape, options.
    ``ckpt`` is a checkpoint of either kind (checkpoint.RankerCheckpoint, reward.PointwiseCheckpoint)."""
    return checkpoint_hashes(ckpt).key(**options)


# -- manifests: what a complete entry holds ----------------------------------------------------------

def record_files(directory: Path, exclude: tuple = ()) -> dict:
    """{relative path: {size, sha256, sample}} of every file under ``directory``."""
    directory = Path(directory)
    files = {}
    for p in sorted(directory.rglob("*")):
        rel = p.relative_to(directory).as_posix()
        if p.is_file() and rel not in exclude:
            size = p.stat().st_size
            files[rel] = {"size": size, "sha256": file_sha256(p), "sample": sample_sha256(p, size)}
    return files


def verify_files(directory: Path, files, full: bool = False, sha256: Callable = file_sha256) -> Optional[str]:
    """None when every recorded file is there, intact; else what is wrong, naming the file. ``full``: every
    file's whole sha256 (by ``sha256``), not only the ends of the big ones."""
    if not isinstance(files, dict) or not files:
        return "its manifest lists no files"
    for rel, info in files.items():
        p = Path(directory) / rel
        try:
            size = p.stat().st_size
        except OSError:
            return f"{p} is missing"
        try:
            if size != info["size"]:
                return f"{p} has {size} bytes, {info['size']} were written (truncated or replaced)"
            if full or size <= FULL_HASH_LIMIT:
                if sha256(p) != info["sha256"]:
                    return f"{p} is corrupt (sha256 differs from the one recorded at export)"
            elif sample_sha256(p, size) != info["sample"]:
                return f"{p} is corrupt (its content differs from the one recorded at export)"
        except (KeyError, TypeError):
            return f"the manifest entry for {p} is malformed"
        except OSError as e:
            return f"{p} cannot be read ({e.strerror})"
    return None


# Directories verified in this process, keyed by every listed file's (inode, size, mtime): a repeated load
# (a server reloading, a job per chunk, many Rankers) does not re-hash, and a file replaced or edited since
# (new inode, size or mtime) is verified again.
_VERIFIED: set = set()


def _stamp(directory: Path, names) -> Optional[tuple]:
    try:
        return tuple((n, st.st_ino, st.st_size, st.st_mtime_ns)
                     for n in sorted(names) for st in [os.stat(Path(directory) / n)])
    except OSError:
        return None


def _whole_sha256(path: Path) -> str:
    """A small file's sha256 is read each time; a big one's is remembered across processes."""
    return remembered_sha256(path) if os.path.getsize(path) > FULL_HASH_LIMIT else file_sha256(path)


def verify_files_once(directory: Path, files, extra=()) -> Optional[str]:
    """:func:`verify_files` in full (every byte of every file: a user's directory, not our cache),
    remembered for this process while the files (and ``extra`` names, e.g. the manifest itself) keep
    their inode, size and mtime; a big file's sha256 is also remembered across processes
    (:func:`remembered_sha256`), so a later run does not read 1.7 GB again."""
    stamp = _stamp(directory, [*files, *extra]) if isinstance(files, dict) else None
    key = (os.path.realpath(directory), stamp)
    if stamp is not None and key in _VERIFIED:
        return None
    problem = verify_files(directory, files, full=True, sha256=_whole_sha256)
    if problem is None and stamp is not None:
        _VERIFIED.add(key)
    return problem


def read_manifest(path: Path) -> tuple[Optional[dict], Optional[str]]:
    """(the JSON object, None) or (None, what is wrong with the file)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path} is missing"
    except (OSError, ValueError) as e:
        return None, f"{path} is unreadable or not valid JSON ({e})"
    if not isinstance(data, dict):
        return None, f"{path} is not a JSON object"
    return data, None


# -- publishing a directory atomically ---------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def temp_prefix(final: Path) -> str:
    return f".{Path(final).name}{_TEMP_MARK}"


def remove_stale_temps(final: Path, max_age: float = STALE_TEMP_SECONDS) -> list[Path]:
    """Remove the temporary directories (and files) beside ``final`` left by killed processes: their
    pid is gone, or they are older than max_age (a pid on another machine sharing the cache). Any
    entry's debris goes, not only final's. Returns what was removed."""
    final = Path(final)
    removed = []
    try:
        entries = list(final.parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        name = entry.name
        if not name.startswith(".") or _TEMP_MARK not in name:
            continue
        pid_text = name.rsplit(_TEMP_MARK, 1)[1].split("-", 1)[0]
        try:
            pid = int(pid_text)
            age = now - entry.lstat().st_mtime
        except (ValueError, OSError):
            continue
        if pid == os.getpid() or (_pid_alive(pid) and age < max_age):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with _suppress_oserror():
                entry.unlink()
        removed.append(entry)
    return removed


def _fsync_tree(directory: Path) -> None:
    """Flush the files, then the directories, so a rename never publishes data still in page cache."""
    for root, dirs, files in os.walk(directory):
        for name in files:
            try:
                fd = os.open(os.path.join(root, name), os.O_RDONLY)
            except OSError:
                continue
            try:
                os.fsync(fd)
            except OSError:
                pass
            finally:
                os.close(fd)
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # not every filesystem syncs directories
    finally:
        os.close(fd)


def _discard(path: Path) -> None:
    """Move a broken entry out of the way (atomically), then delete it."""
    if not path.exists():
        return
    trash = Path(tempfile.mkdtemp(prefix=f"{temp_prefix(path)}{os.getpid()}-trash-", dir=path.parent))
    try:
        os.rename(path, trash / "old")
    except OSError:
        pass  # someone else replaced it meanwhile
    shutil.rmtree(trash, ignore_errors=True)


def publish_dir(final: Path, build: Callable[[Path], object], check: Callable[[Path], Optional[str]]) -> tuple[Path, bool]:
    """``final``, built once: ``(final, True)`` when a valid entry already existed, else
    ``build(tmp)`` fills a fresh temporary directory beside it, which is flushed to disk and renamed
    to ``final``; ``(final, False)``.

    ``check(dir)`` returns None for a complete, intact entry, else the reason it is not (a broken
    entry is deleted and rebuilt). When another process publishes first, its entry is used. The
    temporary directory is removed on any error or interrupt, and those of killed processes are
    removed here."""
    final = Path(final)
    if final.is_dir() and check(final) is None:
        return final, True
    parent = ensure_dir(final.parent)
    remove_stale_temps(final)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f"{temp_prefix(final)}{os.getpid()}-", dir=parent))
    except OSError as e:
        raise unusable(parent, e) from None
    try:
        try:
            build(tmp)
        except OSError as e:  # a full disk, a read-only remount: one line; the temporary directory goes (finally)
            raise write_failed(final, e) from None
        problem = check(tmp)
        if problem is not None:
            raise CacheError(f"{final}: the entry just built is incomplete: {problem}")
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would hide the entry from other users of a shared cache
        _fsync_tree(tmp)
        for _attempt in range(3):
            if final.exists():
                if check(final) is None:
                    return final, True  # another process won the race; its entry is as good as ours
                _discard(final)
            try:
                os.rename(tmp, final)
            except OSError as e:
                if e.errno not in (errno.EEXIST, errno.ENOTEMPTY, errno.EISDIR, errno.ENOTDIR):
                    raise unusable(parent, e) from None
                continue  # lost a race: look again
            _fsync_dir(parent)
            return final, False
        raise CacheError(f"{final}: could not publish the cache entry (it keeps changing underneath)")
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
