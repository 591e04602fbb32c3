"""`blender-fast gate`: the agreement gate from an installed copy writes the records precision="auto" reads."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

# auto's reason lists the variants it found no record for: "no agreement-gate record for openvino bf16, torch bf16; ..."
NO_RECORD_FOR_BF16 = r"no agreement-gate record for [^;]*\btorch bf16\b"


def run_gate_command(args, cache, timeout=300):
    env = {**os.environ, "BLENDER_FAST_CACHE": str(cache), "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "blender_fast.cli", "gate", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


@pytest.mark.slow
def test_gate_command_writes_a_record_auto_reads(tmp_path, monkeypatch, one_torch_thread):
    from blender_fast import Ranker
    from blender_fast.runtime import autoselect
    from blender_fast.runtime.agreement import GATE_KENDALL_TAU, GATE_TOP1_PCT

    # A bf16-capable CPU (pretended, as in test_hardware.py) so that auto considers torch bf16 on any machine.
    monkeypatch.setattr(autoselect, "cpu_features",
                        lambda cpuinfo=None: {"cpu_model": "Test", "isa": ["avx512_bf16", "avx2"], "logical_cores": 2})
    cache = tmp_path / "cache"
    done = run_gate_command(["--model", "demo:tiny", "--prompts", "3", "--candidates", "3", "--variants",
                             "torch:bf16", "--threads", "1"], cache)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stdout.splitlines() if line.startswith("gate: torch bf16")]
    assert len(lines) == 1 and "3 prompts x 3" in lines[0], done.stdout
    records = list((cache / "onnx").glob("gate-*.json"))
    assert len(records) == 1
    saved = json.loads(records[0].read_text())
    (rec,) = saved["records"]
    assert rec["variant"] == "torch bf16" and rec["prompts"] == 3 and rec["candidates"] == 3
    assert saved["settings"]["top1_pct"] == GATE_TOP1_PCT and saved["settings"]["kendall_tau_mean"] == GATE_KENDALL_TAU
    assert rec["passed"] == (rec["top1_pct"] >= GATE_TOP1_PCT and rec["kendall_tau_mean"] >= GATE_KENDALL_TAU)

    ckpt = cache / "checkpoints" / "demo-tiny-seed0"
    before = Ranker.from_pretrained(ckpt, threads=1, cache_dir=tmp_path / "no-records").describe()
    assert re.search(NO_RECORD_FOR_BF16, before["reason"]), before["reason"]
    after = Ranker.from_pretrained(ckpt, threads=1, cache_dir=cache / "onnx").describe()
    # auto read the record: a failed gate is named as such; a passed one was calibrated against fp32
    assert not re.search(NO_RECORD_FOR_BF16, after["reason"]), after["reason"]
    assert ("failed the gate" in after["reason"]) != rec["passed"], after["reason"]
    if rec["passed"]:
        assert "calibration" in after["reason"]


def test_gate_command_refuses_bad_arguments_before_loading(tmp_path):
    bad_variant = run_gate_command(["--model", "demo:tiny", "--variants", "onnx:fp16"], tmp_path, timeout=120)
    assert bad_variant.returncode == 2
    assert "--variants: 'onnx:fp16' is not one of torch:bf16" in bad_variant.stderr
    too_few = run_gate_command(["--model", "demo:tiny", "--variants", "torch:bf16"], tmp_path, timeout=120)
    assert too_few.returncode == 2
    assert "holds 6 prompts; the gate takes --prompts 100" in too_few.stderr
    assert not (tmp_path / "checkpoints").exists()  # refused before demo:tiny was generated
