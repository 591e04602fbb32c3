"""Writing JSON Lines records: one line per record, as the CLI and the Ray job both write them.

* :class:`AtomicJsonl` writes a regular file through a temp file beside it, renamed over it at the end:
  a failed or interrupted run never truncates the existing output. What was written is kept as
  ``<output>.partial`` (a later ``--resume`` picks it up), and the count it reports is the count of
  complete lines on disk, read back from the file, not the count the program meant to write.
* :class:`StreamJsonl` writes stdout, a FIFO or a device directly, line by line.
* A failed write (a full disk, a read-only remount, a pipe whose reader left) is one OutputError naming
  the user's path, never a traceback.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .targets import OutputError, OutputTarget


def dumps_record(record: dict) -> str:
    """A record as one output line (no newline): JSON, non-ASCII kept as it is."""
    return json.dumps(record, ensure_ascii=False)


class JsonlWriter:
    """Records out as JSON Lines, one per line; ``written`` counts them."""

    def __init__(self, f, given: str):
        self._f = f
        self.given = given
        self.written = 0
        self.flushed = 0  # records known to have left the buffer

    def write(self, record: dict) -> None:
        self.write_line(dumps_record(record))

    def write_line(self, line: str) -> None:
        try:
            self._f.write(line if line.endswith("\n") else line + "\n")
        except OSError as e:
            raise self._failed(e) from None
        self.written += 1

    def write_raw(self, line: bytes) -> None:
        """A line copied as it was (bytes, with its newline): counted like a record."""
        self.flush()
        try:
            self._f.buffer.write(line)
            self._f.flush()
        except OSError as e:
            raise self._failed(e) from None
        self.written += 1
        self.flushed = self.written

    def flush(self) -> None:
        try:
            self._f.flush()
        except OSError as e:
            raise self._failed(e) from None
        self.flushed = self.written

    def _failed(self, e: OSError) -> OutputError:
        self.written = self.flushed
        if self.given == "-":  # stdout's reader left: Python's own flush at exit would fail again, loudly
            _detach_stdout()
        where = "stdout" if self.given == "-" else self.given
        return OutputError(f"{where}: cannot write the output: {e.strerror or e}")

    def _close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the write error that brought us here is already being reported
            pass


def _detach_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


TEMP_SUFFIX = ".tmp"


def partial_path(path: Path) -> Path:
    """Where an interrupted run keeps the records it wrote into ``path``."""
    return Path(path).with_name(Path(path).name + ".partial")


def temp_path(path: Path, pid: int | None = None) -> Path:
    """The temp file a run with this pid writes beside ``path`` before renaming it over ``path``."""
    return path.with_name(f".{path.name}.{os.getpid() if pid is None else pid}{TEMP_SUFFIX}")


def leftover_temps(path: Path) -> list[Path]:
    """Temp files of runs that were killed (kill -9, a power cut) while writing ``path``: their process is
    gone, their records are finished work that ``--resume`` keeps."""
    path = Path(path)
    prefix = f".{path.name}."
    found = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return found
    for entry in entries:
        name = entry.name
        if not (name.startswith(prefix) and name.endswith(TEMP_SUFFIX)):
            continue
        pid = name[len(prefix):-len(TEMP_SUFFIX)]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)) and entry.is_file():
            found.append(entry)
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def complete_lines(path: Path) -> int:
    """Cut a file after its last newline (a line cut short by a failed write is no record) and return how
    many lines it holds: what a reader of the file will find."""
    try:
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            end = size
            while end > 0:  # find the last newline, reading backwards in blocks
                start = max(0, end - (1 << 16))
                f.seek(start)
                block = f.read(end - start)
                cut = block.rfind(b"\n")
                if cut >= 0:
                    end = start + cut + 1
                    break
                end = start
            if end < size:
                f.truncate(end)
            f.seek(0)
            lines = 0
            while end > 0:
                block = f.read(min(1 << 20, end))
                if not block:
                    break
                lines += block.count(b"\n")
                end -= len(block)
            return lines
    except OSError:
        return 0


class AtomicJsonl(JsonlWriter):
    """A JSON Lines output written to a temp file in the real target's directory (symlinks followed: the link
    is kept) and renamed over it at the end (``os.replace``: all or nothing). On failure or interruption the
    target is untouched and what was written is kept as ``<output>.partial``. The target was checked before
    any work (targets.output_file)."""

    def __init__(self, target: OutputTarget):
        self.path = target.path
        self.partial = partial_path(self.path)
        self.tmp = temp_path(self.path)
        try:
            f = open(self.tmp, "w", encoding="utf-8")
        except OSError as e:
            raise OutputError(f"{target.given}: cannot write there: {e.strerror}") from None
        super().__init__(f, target.given)

    def commit(self, consumed=()) -> None:
        """Rename the output into place; then remove ``consumed`` (files whose records it now holds)."""
        self.flush()
        try:
            os.fsync(self._f.fileno())
            self._f.close()
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.tmp.unlink(missing_ok=True)
            raise self._failed(e) from None
        for path in consumed:
            Path(path).unlink(missing_ok=True)

    def keep_partial(self, consumed=()) -> Path | None:
        """Close; keep the records written so far as <output>.partial (None when there were none, and then
        an existing .partial is left as it was). ``written`` becomes the count of complete lines on disk.
        ``consumed``: files whose records were copied into this one, removed once it is in place."""
        self._close()
        self.written = self.flushed = complete_lines(self.tmp)
        if not self.written:
            self.tmp.unlink(missing_ok=True)
            return None
        try:
            os.replace(self.tmp, self.partial)
        except OSError:  # cannot rename (the directory went read-only): the temp file holds the records
            return self.tmp
        for path in consumed:
            if Path(path) != self.partial:
                Path(path).unlink(missing_ok=True)
        return self.partial


class StreamJsonl(JsonlWriter):
    """stdout, or a path that is not a regular file (a FIFO, /dev/null, /dev/stdout): written directly,
    line by line, never replaced; there is no .partial."""

    def __init__(self, target: OutputTarget):
        self.path = self.partial = Path(target.given)
        self._own = target.given != "-"
        try:
            f = open(target.path, "w", encoding="utf-8") if self._own else sys.stdout
        except OSError as e:
            raise OutputError(f"{target.given}: cannot write there: {e.strerror}") from None
        super().__init__(f, target.given)

    def commit(self, consumed=()) -> None:
        self.flush()
        if self._own:
            self._close()

    def keep_partial(self, consumed=()):
        try:
            self.flush()
        except OutputError:  # a failed write is what brought us here; it is being reported
            pass
        if self._own:
            self._close()
        return None


def open_writer(target: OutputTarget) -> JsonlWriter:
    """The writer for a checked output target: streamed or atomic."""
    return StreamJsonl(target) if target.streaming else AtomicJsonl(target)
