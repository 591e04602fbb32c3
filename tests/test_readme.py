"""The README's Python API snippet runs as written, with only its model names pointed at test checkpoints
(the hub id itself is exercised through the loopback hub stand-in in tests/model/test_hub.py)."""
from __future__ import annotations

import re

from conftest import REPO, require


def _api_blocks() -> list[str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Python API"):text.index("## Command line")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_readme_python_api_snippet_runs(tiny_checkpoint, tmp_path, capsys):
    require("torch")
    from blender_fast.synthetic import make_fuser_checkpoint

    ranker_block, fuser_block = _api_blocks()
    # The first thing a user types: llm-blender's own first line, with the hub id.
    assert 'blender.loadranker("llm-blender/PairRM")' in ranker_block and "/path/to/gen_fuser" in fuser_block
    namespace: dict = {}
    exec(compile(ranker_block.replace('"llm-blender/PairRM"', repr(str(tiny_checkpoint))), "README.md", "exec"),
         namespace)
    assert namespace["ranks"].shape == (2, 3) and len(namespace["picks"]) == 2
    fuser = make_fuser_checkpoint(tmp_path / "fuser", shape="tiny", seed=0)
    fuser_block = fuser_block.replace("/path/to/gen_fuser", str(fuser)).replace(
        'strategy="tournament")', 'strategy="tournament", num_beams=1, max_new_tokens=8)')
    exec(compile(fuser_block, "README.md", "exec"), namespace)
    assert len(namespace["fused"]) == 2
