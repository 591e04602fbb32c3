"""Issue 21 hardening: bad input and bad environments get one clear line (docs/bad-input.md lists them)."""
from __future__ import annotations

import re

import pytest

from blender_fast.cli import build_parser


def _subcommand_help(name: str) -> str:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")  # argparse keeps subparsers only here
    return re.sub(r"\s+", " ", sub.choices[name].format_help())


@pytest.mark.parametrize("command", ["rank", "fuse", "serve", "export", "make-checkpoint"])
def test_help_shows_each_default_once(command):
    text = _subcommand_help(command)
    assert not re.search(r"\(default: [^)]*\) ?\(default:", text), text
    assert "(default: None)" not in text


def test_help_still_shows_plain_defaults():
    text = _subcommand_help("rank")
    assert "(default: 64)" in text  # --chunk: a default its help does not state
    assert "intra-op threads (default: the runtime's)" in text
