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


@dataclass
class Prompt:
    record: dict  # the line as read, written back with results added
    instruction: str
    input: str
    candidates: list[str]


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


def read_prompts(path, limit: int | None = None) -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: input file not found")
    prompts = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            prompts.append(parse_prompt(record, f"{path}:{lineno}"))
            if limit is not None and len(prompts) >= limit:
                break
    if not prompts:
        raise ValueError(f"{path}: no prompts")
    return prompts


def as_blender_args(prompts: list[Prompt]) -> tuple[list[str], list[list[str]], list[str] | None]:
    """inputs, candidates, instructions as llm-blender takes them (it prepends the instruction)."""
    inputs = [p.input for p in prompts]
    instructions = [p.instruction for p in prompts]
    return inputs, [p.candidates for p in prompts], instructions
