"""Benchmarks that cannot draw plots (no matplotlib) say so, in the log and in results.md."""
from __future__ import annotations

import json
import sys

from conftest import REPO

sys.path.insert(0, str(REPO))


def test_missing_matplotlib_is_reported(tmp_path, monkeypatch, capsys):
    from benchmarks import report

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    machine = {"cpu_model": "cpu", "physical_cores": 1, "logical_cores": 1, "memory_gb": 1, "versions": {}}
    results = {"meta": {"machine": machine, "started": "now", "wall_s": 1.0, "command": "python -m benchmarks",
                        "checkpoint": "ckpt", "checkpoint_kind": "generated", "data": "data",
                        "settings": {"device": "cpu", "threads": 1}}}
    report.write_outputs(results, tmp_path)
    assert "No plots drawn: matplotlib is not installed" in capsys.readouterr().err
    assert "No plots drawn: matplotlib is not installed" in (tmp_path / "results.md").read_text()
    assert "matplotlib" in json.loads((tmp_path / "results.json").read_text())["plots_skipped"]
