"""`python -m benchmarks.targets --quick` end to end (the exact-at-speed target measurements): every section is
written with the structure the report reads. Timings are never asserted (a shared machine); exactness is,
since it does not depend on load.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, require, shared_data_file


@pytest.fixture(scope="module")
def quick_targets(tiny_checkpoint, tmp_path_factory):
    for module in ("llm_blender", "psutil", "onnx", "onnxruntime"):
        require(module)
    data = shared_data_file()
    out = tmp_path_factory.mktemp("targets_out")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "benchmarks.targets", "--quick", "--out", str(out), "--data", str(data),
           "--model", str(tiny_checkpoint), "--large-model", str(tiny_checkpoint)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "targets.json").read_text())


@pytest.mark.reference
@pytest.mark.slow
def test_every_section_and_the_report(quick_targets):
    out, res = quick_targets
    assert {"meta", "speed", "best", "exactness", "profile", "rss", "large", "verdicts"} <= set(res)
    machine = res["meta"]["machine"]
    assert machine["cpu_model"] and isinstance(machine["isa"], list)
    assert machine["load_average_at_start"] is not None and res["meta"]["load_average_at_end"] is not None
    md = (out / "targets.md").read_text()
    assert machine["cpu_model"] in md
    for heading in ("## Targets", "## 1. Speed", "## 2. Exactness", "## 3. Large shape", "## 4. Best-of-",
                    "## 5. Peak RSS", "## 6. Where the time goes"):
        assert heading in md, heading
    for row in res["verdicts"]:
        assert {"target", "value", "goal", "met", "note"} <= set(row)
        assert isinstance(row["met"], bool)
    assert len(res["verdicts"]) == 7


@pytest.mark.reference
@pytest.mark.slow
def test_speed_large_and_best_of_n(quick_targets):
    _, res = quick_targets
    sp = res["speed"]
    assert set(sp["cells"]) == {"ours auto", "llm-blender bs=1", "llm-blender bs=8"}
    for cell in sp["cells"].values():
        assert cell["pairs"] == sp["pairs"] == 1 * 3 * 2 and len(cell["runs_s"]) == sp["repeats"]
    for ref in ("llm-blender bs=1", "llm-blender bs=8"):
        assert sp["speedups"][ref]["paired_median"] > 0
    d = sp["ours_load"]["describe"]
    assert d["backend"] in ("onnx", "torch", "openvino") and d["precision"] in ("fp32", "fp16", "bf16", "int8")
    assert d["reason"] and sp["ours_load"]["load_s"] > 0
    lg = res["large"]
    assert lg["speedups"]["llm-blender bs=1"]["paired_median"] > 0
    assert lg["agreement"]["equal_outside_ties"]
    be = res["best"]
    assert set(be["picks"]) == {"ours bubble", "ours adaptive", "llm-blender bubble (bs=8)"}
    assert all(len(p) == be["prompts"] for p in be["picks"].values())
    # Same start orders, same comparisons: the bubble picks agree (not a timing).
    assert be["pick_equality"]["ours bubble = llm-blender bubble"] == be["prompts"]
    assert be["speedups_adaptive"]["llm-blender bubble (bs=8)"]["paired_median"] > 0


@pytest.mark.reference
@pytest.mark.slow
def test_exactness_rss_and_profile(quick_targets):
    _, res = quick_targets
    comp = res["exactness"]["comparisons"]
    for key in ("ours auto vs ours onnx fp32", "ours auto vs llm-blender bs=1"):
        assert comp[key]["equal_outside_ties"], (key, comp[key])
        assert comp[key]["excepted_near_ties"] >= 0 and comp[key]["candidate_pairs"] == 3
    rss = res["rss"]
    assert {"ours onnx fp32", "ours auto", "ours torch fp32", "llm-blender (batch_size=8)"} <= set(rss["variants"])
    for name, rec in rss["variants"].items():
        assert rec["rc"] == 0, (name, rec.get("stderr_tail"))
        assert rec["peak_rss_mb"] > 50 and rec["peak_source"] == "child VmHWM"
    exp = rss["export_large"]
    assert exp["rc"] == 0 and exp["under_limit"] and exp["peak_rss_mb"] > 50
    pr = res["profile"]
    assert pr["kernel_s"] > 0 and pr["batches"] >= 1
    assert "weight GEMMs (QKV/output projections, FFN, head)" in pr["groups_s"]
    assert pr["ort_matmul_peak_flops"] > 0 and pr["weight_gemm_fraction_of_peak"] > 0
    gap = pr["gap_arithmetic"]
    assert gap["llm-blender bs=1"]["all_flops_at_peak_floor"] >= gap["llm-blender bs=1"]["gemms_at_peak"] * 0.999


def test_pair_exactness_counts_near_ties():
    from benchmarks.targets import pair_exactness

    fp32 = np.array([[1.0, 1.0004, 0.0, -1.0]])
    same = pair_exactness(fp32, fp32 + 1e-6)
    assert same["excepted_near_ties"] == 1 and same["pairs_ordered_differently"] == 0 and same["equal_outside_ties"]
    # Swapping the near-tie is excepted; swapping a clear pair is not.
    assert pair_exactness(fp32, np.array([[1.0004, 1.0, 0.0, -1.0]]))["equal_outside_ties"]
    wrong = pair_exactness(fp32, np.array([[1.0, 1.0004, -1.0, 0.0]]))
    assert wrong["pairs_ordered_differently"] == 1 and wrong["prompts_with_a_difference"] == [0]


def test_profile_node_groups():
    from benchmarks.targets import node_group

    gemm = "weight GEMMs (QKV/output projections, FFN, head)"
    assert node_group("/pretrained_model/encoder/layer.3/intermediate/dense/MatMul_kernel_time", "MatMul")[0] == gemm
    assert node_group("/pretrained_model/encoder/layer.3/attention/self/query_proj/MatMul_kernel_time", "MatMul")[0] == gemm
    g, sub = node_group("/pretrained_model/encoder/layer.3/attention/self/MatMul_1_kernel_time", "MatMul")
    assert g.startswith("disentangled attention") and sub.startswith("score/context")
    g, sub = node_group("/pretrained_model/encoder/layer.3/attention/self/GatherElements_kernel_time", "GatherElements")
    assert g.startswith("disentangled attention") and sub.startswith("relative-position")
    assert node_group("/pretrained_model/encoder/layer.3/attention/self/key_proj/Add_kernel_time", "Add")[0].startswith("other")
    assert node_group("BiasGelu_token_14_kernel_time", "BiasGelu")[0].startswith("other")
