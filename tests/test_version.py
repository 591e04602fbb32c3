"""The version has one source: [project] version in pyproject.toml."""
from __future__ import annotations

import re
from importlib.metadata import version

from conftest import REPO


def _pyproject_version() -> str:
    text = (REPO / "pyproject.toml").read_text(encoding="utf-8")
    found = re.findall(r'^version\s*=\s*"([^"]+)"', text, flags=re.M)
    assert len(found) == 1, f"pyproject.toml types a version {len(found)} times: {found}"
    return found[0]


def test_version_is_typed_once_and_everything_reports_it():
    import blender_fast
    from blender_fast import _core

    expected = _pyproject_version()
    assert version("blender-fast") == expected
    assert blender_fast.__version__ == expected
    assert _core.__version__ == expected  # compiled in by CMake from the same field


def test_cmake_has_no_version_literal():
    cmake = (REPO / "CMakeLists.txt").read_text(encoding="utf-8")
    assert "SKBUILD_PROJECT_VERSION" in cmake
    assert not re.search(r'BLENDER_FAST_VERSION\s+"\d', cmake), "CMakeLists.txt sets a version literal"
