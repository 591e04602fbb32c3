"""Reading prompt files: JSON Lines, one prompt per line.

Each line: ``{"instruction": str, "input": str (optional), "candidates": [str | {"text": str, ...}]}``,
other fields kept as they are (so the shared AlpacaEval file, whose candidates carry ``model`` and
``judge_pref``, works unchanged).
"""
from __future__ import annotations

import json
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


def iter_prompts(path, limit: int | None = None):
    """Prompts of a JSON Lines file one at a time, read line by line (memory does not grow with the
    file). Each has ``where`` = "path:line". Blank lines are skipped; limit: at most this many."""
    path = Path(path)
    limit = check_optional_count("limit", limit, minimum=0)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    if limit == 0:
        return
    count = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            prompt = parse_prompt(record, f"{path}:{lineno}")
            prompt.where = f"{path}:{lineno}"
            yield prompt
            count += 1
            if limit is not None and count >= limit:
                return


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
