"""Output targets (blender_fast.jsonl.targets, formerly cluster/outputs.py), one rule for every writer (rank, fuse, the Ray job's output directory, benchmark reports).

* '-' is stdout, streamed.
* A symlink is followed: the real target is written (atomically, in ITS directory) and the link is kept.
* A path that exists and is not a regular file or directory (a character device such as /dev/null, a FIFO,
  /dev/stdout) is written directly, streaming, like '-': it is never replaced by a regular file (as root,
  replacing /dev/null would break it for the whole machine).
* A directory where a file is wanted, a missing parent directory or a directory we cannot write in is
  refused BEFORE any work, in one line naming the user's path (not a temp file's); a read-only file
  system is named as such (not "permission denied").
"""
from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path


class OutputError(ValueError):
    """An output path that cannot be written; the message names the user's path."""


@dataclass(frozen=True)
class OutputTarget:
    given: str        # the path as the user wrote it (messages name it)
    path: Path        # the real target (symlinks resolved)
    streaming: bool   # write directly (stdout, a device, a FIFO): no temp file, no rename, no .partial


def output_file(given, what: str = "--output") -> OutputTarget:
    """Check an output FILE before any work; see the module's rules."""
    given = str(given)
    if given == "-":
        return OutputTarget(given, Path("/dev/stdout"), True)
    real = Path(os.path.realpath(given))
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        mode = None
    except OSError as e:
        raise OutputError(f"{given}: cannot use as {what}: {e.strerror}") from None
    if mode is not None and stat.S_ISDIR(mode):
        raise OutputError(f"{given}: {what} is a directory; give a file path")
    if mode is not None and not stat.S_ISREG(mode):
        if not os.access(real, os.W_OK):
            raise OutputError(f"{given}: {what} is not writable{_why_not_writable(real)}")
        return OutputTarget(given, real, True)
    _check_writable_dir(real.parent, given, what)
    if mode is not None and not os.access(real, os.W_OK):
        raise OutputError(f"{given}: {what} exists and is not writable{_why_not_writable(real)}")
    return OutputTarget(given, real, False)


def output_dir(given, what: str = "--output", may_hold_files: bool = False) -> Path:
    """Check an output DIRECTORY before any work: absent (it will be created) or a directory (empty unless
    ``may_hold_files``: an export rewrites its own files), in a directory we can write in. Returns the
    real path (links followed)."""
    given = str(given)
    real = Path(os.path.realpath(given))
    if real.exists():
        if not real.is_dir():
            raise OutputError(f"{given}: {what} exists and is not a directory")
        if not may_hold_files and any(real.iterdir()):
            raise OutputError(f"{given}: the output directory exists and is not empty")
        if may_hold_files:
            _check_writable_dir(real, given, what)
            return real
    _check_writable_dir(real.parent, given, what)
    return real


def _check_writable_dir(parent: Path, given: str, what: str) -> None:
    if not parent.is_dir():
        raise OutputError(f"{given}: the directory of {what} does not exist ({parent})")
    if not os.access(parent, os.W_OK | os.X_OK):
        reason = "it is on a read-only file system" if on_read_only_fs(parent) else "permission denied"
        raise OutputError(f"{given}: cannot write in the directory of {what} ({parent}): {reason}")


def on_read_only_fs(path) -> bool:
    """Whether ``path`` is on a file system mounted read-only (access() then fails for root too)."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def _why_not_writable(path) -> str:
    return " (it is on a read-only file system)" if on_read_only_fs(path) else ""


def write_text(given, text: str, what: str = "output") -> Path:
    """Write a whole text file by the rule (reports): atomically for a regular file, directly otherwise."""
    target = output_file(given, what)
    if target.streaming:
        with open(target.path, "w", encoding="utf-8") as f:
            f.write(text)
        return target.path
    tmp = target.path.with_name(f".{target.path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, target.path)
    except OSError as e:  # a full disk, a read-only remount: one line, the temp file removed (finally)
        raise OutputError(f"{given}: cannot write the {what}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target.path
