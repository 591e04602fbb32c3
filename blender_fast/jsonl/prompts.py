"""Reading prompt files: JSON Lines, one prompt per line (the one reader of the CLI and the Ray job).

Each line: ``{"instruction": str, "input": str (optional), "candidates": [str | {"text": str, ...}]}``,
other fields kept as they are (so the shared AlpacaEval file, whose candidates carry ``model`` and
``judge_pref``, works unchanged).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..options import check_optional_count


@dataclass
class Prompt:
    record: dict  # the line as read, written back with results added
    instruction: str
    input: str
    candidates: list[str]
    where: str = ""  # "file:line" when read from a file: errors about this prompt name it


# Fields the CLI adds to a record; not part of the prompt's identity.
RESULT_FIELDS = ("blender_fast", "fused")


def record_digest(record: dict) -> str:
    """The identity of a prompt record, for ``--resume``: SHA-256 of its canonical JSON (sorted keys, no
    whitespace, non-ASCII kept) without the result fields, so an output line and the input line it came
    from have the same digest. Identical input lines are told apart by their occurrence number."""
    import hashlib

    core = {k: v for k, v in record.items() if k not in RESULT_FIELDS}
    text = json.dumps(core, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def example_prompts_path() -> Path:
    """The small example file shipped with the package (text written for this project)."""
    return Path(str(resources.files("blender_fast") / "data" / "examples.jsonl"))


def parse_prompt(record, where: str) -> Prompt:
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    instruction = record.get("instruction", "")
    inp = record.get("input", "")
    if not isinstance(instruction, str) or not isinstance(inp, str):
        raise ValueError(f"{where}: 'instruction' and 'input' must be strings")
    if not instruction and not inp:
        raise ValueError(f"{where}: needs an 'instruction' or an 'input'")
    cands = record.get("candidates")
    if not isinstance(cands, list) or not cands:
        raise ValueError(f"{where}: 'candidates' must be a non-empty list")
    texts = []
    for k, c in enumerate(cands):
        text = c.get("text") if isinstance(c, dict) else c
        if not isinstance(text, str):
            raise ValueError(f"{where}: candidates[{k}] must be a string or an object with a 'text' string")
        texts.append(text)
    return Prompt(record, instruction, inp, texts)


UTF8_BOM = b"\xef\xbb\xbf"


def decode_record(raw, where: str):
    """One JSON Lines line (bytes or str) -> its JSON value. Every way a line can be unreadable is one
    ValueError naming ``where`` (file:line): not UTF-8, not JSON, nested deeper than Python can parse."""
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"{where}: not UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                             f"save the file as UTF-8") from None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
    except RecursionError:  # json's C parser recurses once per level: 100k nested brackets end here
        raise ValueError(f"{where}: the JSON is nested too deep to read (more than about "
                         f"{sys.getrecursionlimit()} levels)") from None


def iter_lines(path):
    """(line number, raw line as bytes without its newline) for each non-blank line of a file, read in
    binary so that a line that is not UTF-8 is reported with its file:line (decode_record). A UTF-8 BOM
    at the start of the file is dropped (editors on Windows write one)."""
    lineno = 0
    with open(path, "rb") as f:
        for raw in f:
            if lineno == 0 and raw.startswith(UTF8_BOM):
                raw = raw[len(UTF8_BOM):]
            raw = raw[:-2] if raw.endswith(b"\r\n") else raw.rstrip(b"\n")
            # Line breaks as text mode counts them (\n, \r\n, and a lone \r), so line numbers stay the same.
            for piece in raw.split(b"\r") if b"\r" in raw else (raw,):
                lineno += 1
                if piece.strip():
                    yield lineno, piece


def iter_prompts(path, limit: int | None = None, name: str | None = None):
    """Prompts of a JSON Lines file one at a time, read line by line (memory does not grow with the
    file). Each has ``where`` = "NAME:line" (NAME: the path, or what the caller calls it, e.g. <stdin>).
    Blank lines are skipped; limit: at most this many. A stream is first made a file (input_file)."""
    path = Path(path)
    name = str(path) if name is None else name
    limit = check_optional_count("limit", limit, minimum=0)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: input file not found")
    if limit == 0:
        return
    count = 0
    for lineno, raw in iter_lines(path):
        where = f"{name}:{lineno}"
        prompt = parse_prompt(decode_record(raw, where), where)
        prompt.where = where
        yield prompt
        count += 1
        if limit is not None and count >= limit:
            return


@dataclass
class InputFile:
    """An input as a regular file to read (twice: a check pass, then the work). ``name`` is what messages
    call it; a stream (stdin, a pipe, a FIFO, /dev/stdin) was copied to ``path``, a temporary file that
    ``close()`` removes."""

    path: Path
    name: str
    spooled: bool = False

    def close(self) -> None:
        if self.spooled:
            self.path.unlink(missing_ok=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def input_file(given, spool_dir=None) -> InputFile:
    """--input as a regular file: a path to one is used in place; '-', /dev/stdin, a pipe or a FIFO is
    read once, as a stream, into a temporary file (in spool_dir, else the system's temp directory), so
    that every line is checked before any model work. Errors are one line naming the user's path."""
    import os
    import shutil
    import stat
    import tempfile

    given = str(given)
    name = "<stdin>" if given in ("-", "/dev/stdin") else given
    if given != "-":
        try:
            mode = os.stat(given).st_mode
        except FileNotFoundError:
            raise FileNotFoundError(f"{given}: input file not found") from None
        except OSError as e:
            raise ValueError(f"{given}: cannot read the input: {e.strerror}") from None
        if stat.S_ISDIR(mode):
            raise ValueError(f"{given}: --input is a directory; give a JSON Lines file")
        if stat.S_ISREG(mode):
            return InputFile(Path(given), given)
    fd, tmp = tempfile.mkstemp(prefix="blender-fast-input-", suffix=".jsonl", dir=spool_dir)
    spool = InputFile(Path(tmp), name, spooled=True)
    try:
        with os.fdopen(fd, "wb") as out:
            if given == "-":
                shutil.copyfileobj(sys.stdin.buffer, out, 1 << 20)
            else:
                with open(given, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    except OSError as e:
        spool.close()
        raise ValueError(f"{name}: cannot read the input stream into {Path(tmp).parent}: "
                         f"{e.strerror or e}") from None
    except BaseException:
        spool.close()
        raise
    return spool


def read_prompts(path, limit: int | None = None) -> list[Prompt]:
    """All prompts of a file as a list (small files; use ``iter_prompts`` to stream a large one)."""
    prompts = list(iter_prompts(path, limit))
    if not prompts and limit != 0:
        raise ValueError(f"{path}: no prompts")
    return prompts


def as_blender_args(prompts: list[Prompt]) -> tuple[list[str], list[list[str]], list[str] | None]:
    """inputs, candidates, instructions as llm-blender takes them (it prepends the instruction)."""
    inputs = [p.input for p in prompts]
    instructions = [p.instruction for p in prompts]
    return inputs, [p.candidates for p in prompts], instructions
