"""`python -m benchmarks.fp32_probes`: the graph variants it times compute the numbers the export computes
(timings are never asserted: a shared machine)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import REPO, require, shared_data_file


def test_relative_variants_equal_the_reference_past_the_log_buckets():
    """c2p + p2c from each graph variant equals the numpy reference (transformers' bucketing), at a length
    below and one past the log-bucket threshold (128), where the gathers are no longer a plain shift."""
    require("onnx")
    require("onnxruntime")
    from benchmarks.fp32_probes import probe_relative

    res = probe_relative(batch=1, lengths=[24, 150], threads=1, repeats=1)
    assert set(res) == {"B=1 L=24", "B=1 L=150"}
    for case in res.values():
        assert len(case) == 4
        for name, row in case.items():
            assert row["max_abs_err"] < 1e-4, (name, row)


def test_fused_qkv_equals_three_matmuls():
    require("onnx")
    require("onnxruntime")
    from benchmarks.fp32_probes import probe_qkv

    res = probe_qkv([16], threads=1, repeats=1, hidden=64)
    assert res["M=16"]["max_abs_diff"] < 1e-5 and res["M=16"]["fused_speedup"] > 0


@pytest.mark.slow
def test_runtimes_probe_end_to_end(tiny_checkpoint):
    for module in ("onnx", "onnxruntime", "openvino"):
        require(module)
    data = shared_data_file()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.fp32_probes", "--sections", "runtimes", "--shape", "tiny",
                           "--repeats", "1", "--data", str(data)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["machine"]["cpu_model"] and isinstance(res["machine"]["isa"], list)
    for label in ("calibration rows", "real batches"):
        row = res["runtimes"][label]
        assert row["rows"] > 0 and row["openvino_speedup"] > 0
        assert row["max_abs_diff"] < 1e-3  # OpenVINO fp32 is another fp32: within ~1e-4 of ONNX Runtime
