"""`python -m benchmarks --quick` end to end: every section is written, with sane numbers.

Runs the benchmark as a user would (a subprocess from the repository root, hubs off) on the session's
tiny checkpoint (--model, which also exercises the quality section on a checkpoint's own logits).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import REPO, require, shared_data_file

pytestmark = [pytest.mark.reference, pytest.mark.slow]


@pytest.fixture(scope="module")
def quick_results(tiny_checkpoint, tmp_path_factory):
    for module in ("llm_blender", "matplotlib", "psutil", "onnx"):
        require(module)
    data = shared_data_file()
    out = tmp_path_factory.mktemp("bench_out")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "benchmarks", "--quick", "--out", str(out), "--data", str(data),
           "--model", str(tiny_checkpoint), "--sections", "engine,speed,strategies,flops,quality,frontier",
           "--speed-per-bin", "1"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, json.loads((out / "results.json").read_text())


def test_writes_every_section_and_file(quick_results):
    out, res = quick_results
    assert {"meta", "engine", "strategies", "flops", "quality"} <= set(res)
    machine = res["meta"]["machine"]
    assert machine["cpu_model"] and machine["logical_cores"] >= 1
    assert machine["versions"]["llm-blender"] and machine["versions"]["onnxruntime"]
    md = (out / "results.md").read_text()
    for heading in ("## 1. Engine", "## 2. Selection strategies", "## 3. How close", "## 4. Selection quality"):
        assert heading in md
    for png in ("engine.png", "strategies.png", "quality.png"):
        assert (out / png).stat().st_size > 1000


def test_engine_numbers(quick_results):
    _, res = quick_results
    eng = res["engine"]
    s = eng["settings"]
    n_prompts, n = s["prompts"], s["candidates_per_prompt"]
    rank = eng["tasks"]["rank"]
    assert {"blender-fast onnx fp32", "blender-fast onnx int8", "blender-fast torch fp32",
            "llm-blender (batch_size=8)", "llm-blender (batch_size=1)"} <= set(rank)
    for name, cell in rank.items():
        assert cell["pairs"] == n_prompts * n * (n - 1), name
        assert cell["wall_s"] > 0 and cell["tokens_per_s"] > 0
        assert 0.0 <= cell["pad_fraction"] < 1.0
        assert cell["peak_rss_mb"] > 0
    assert rank["blender-fast onnx fp32"]["repeats"] == s["repeats"]
    assert rank["llm-blender (batch_size=1)"]["repeats"] == s["repeats"]  # interleaved, like the default
    assert rank["blender-fast onnx fp32"]["speedup_vs_reference"] > 0
    assert rank["blender-fast onnx fp32"]["speedup_vs_batch_size_1"] > 0
    # Where the time goes adds up to the wall time.
    ours = rank["blender-fast onnx fp32"]
    assert ours["tokenize_s"] + ours["pack_s"] + ours["model_s"] <= ours["wall_s"] * 1.01 + 1e-3
    parity = eng["agreement"]["blender-fast onnx fp32 vs llm-blender (batch_size=1)"]
    assert parity["identical_ranks_pct"] == 100.0 and parity["max_abs_score_diff"] < 1e-3
    bubble = eng["tasks"]["best_of_n bubble"]
    assert bubble["blender-fast onnx fp32"]["pairs"] == bubble["llm-blender (batch_size=8)"]["pairs"] == n_prompts * 2 * (n - 1)
    assert eng["best_of_n_picks"]["ours bubble vs llm-blender bubble (same start order), % same pick"] == 100.0


def test_speed_numbers(quick_results):
    """The README's table: every bin has ours and llm-blender side by side, ratios and GEMM shares."""
    out, res = quick_results
    sp = res["speed"]
    assert len(sp["bins"]) == sp["settings"]["bins"] == 3 and sp["settings"]["prompts"] == 3
    lengths = [b["tokens_per_pair"] for b in sp["bins"]]
    assert lengths == sorted(lengths)  # bins in order of tokens per pair
    for b in sp["bins"]:
        ours = b["engines"]["blender-fast onnx fp32"]
        assert ours["ratio"] == 1.0 and 0 < ours["fraction_of_gemm_rate"] < 5
        for name in ("llm-blender (batch_size=1)", "llm-blender (batch_size=8)"):
            ref = b["engines"][name]
            assert ref["ratio"] == pytest.approx(ref["wall_s"] / ours["wall_s"]) and ref["fraction_of_gemm_rate"] > 0
        parity = b["agreement"]["blender-fast onnx fp32 vs llm-blender (batch_size=1)"]
        assert parity["identical_ranks_pct"] == 100.0
    lo, hi = sp["ratio_range"]["llm-blender (batch_size=1)"]
    assert lo == min(b["engines"]["llm-blender (batch_size=1)"]["ratio"] for b in sp["bins"]) and lo <= hi
    md = (out / "results.md").read_text()
    assert "## Speed vs llm-blender, by prompt length" in md and "Ratio ranges: " in md
    assert f"llm-blender (batch_size=1): {lo:.2f}× to {hi:.2f}×" in md


def test_strategy_counts(quick_results):
    _, res = quick_results
    counts = {(r["n"], r["top_k"], r["strategy"]): r for r in res["strategies"]["counts"]}
    assert {n for n, _, _ in counts} == {4, 8, 12, 16, 24, 32}
    assert counts[(12, 1, "full")]["forward_passes"] == 132 and counts[(12, 1, "full")]["steps"] == 1
    assert counts[(12, 1, "bubble")]["forward_passes"] == 22 and counts[(12, 1, "bubble")]["steps"] == 11
    assert counts[(12, 1, "tournament")]["forward_passes"] == 22 and counts[(12, 1, "tournament")]["steps"] == 4
    assert counts[(32, 1, "tournament")]["steps"] == 5
    timed = [c for c in res["strategies"]["timed"] if "wall_s" in c]
    assert timed, "no strategy cell was timed"
    for c in timed:
        assert c["forward_passes"] == counts[(c["n"], 1, c["strategy"])]["forward_passes"] * c["prompts"]


def test_flops_numbers(quick_results):
    _, res = quick_results
    fl = res["flops"]
    assert fl["peak"]["peak_flops"] > 1e8
    assert fl["runs"]
    for r in fl["runs"]:
        assert 0 < r["real_flops"] <= r["padded_flops"] * (1 + 1e-9), r["run"]
        assert r["real_flops_per_s"] > 0


def test_quality_numbers(quick_results):
    _, res = quick_results
    syn = res["quality"]["synthetic"]
    assert [lvl["target_agreement_pct"] for lvl in syn["levels"]] == [60, 70, 80, 90]
    for lvl in syn["levels"]:
        assert abs(lvl["achieved_agreement_pct"] - lvl["target_agreement_pct"]) < 0.5
        rows = {(r["variant"], r["top_k"]): r for r in lvl["rows"]}
        assert rows[("full", 1)]["forward_passes"] == 132
        assert rows[("bubble", 1)]["forward_passes"] == 22 and rows[("tournament", 1)]["forward_passes"] == 22
        assert rows[("full", 1)]["top1_agreement_with_full_pct"] == 100.0
        assert rows[("full", 1)]["regret"] <= syn["random_pick_regret"]
    full = [next(r for r in lvl["rows"] if r["variant"] == "full" and r["top_k"] == 1)["regret"] for lvl in syn["levels"]]
    assert full[-1] < full[0], "a more accurate comparator should pick better"
    ckpt = res["quality"]["checkpoint"]
    assert 0.0 <= ckpt["achieved_agreement_pct"] <= 100.0 and ckpt["rows"]


def test_frontier_numbers(quick_results):
    out, res = quick_results
    assert "## 5. Selection at a budget" in (out / "results.md").read_text()
    assert (out / "frontier.png").stat().st_size > 1000
    syn = res["frontier"]["synthetic"]
    assert [lvl["target_agreement_pct"] for lvl in syn["levels"]] == [60, 70, 80, 90]
    for lvl in syn["levels"]:
        rows = lvl["rows"]
        full = next(r for r in rows if r["strategy"] == "full")
        assert full["forward_passes"] == 132 and full["top1_agreement_with_full_pct"] == 100.0
        for r in rows:
            if r["budget"] is not None:
                assert r["forward_passes_max"] <= r["budget"], r  # never over budget
        for strategy in ("swiss", "knockout_rr", "adaptive"):
            assert any(r["strategy"] == strategy for r in rows)
    assert {t["agreement_pct"] for t in syn["targets"]} == {60, 70}
    assert res["frontier"]["checkpoint"]["rows"]


def test_engines_argument():
    """--engines: BACKEND:PRECISION pairs from the package's vocabulary, named when wrong."""
    from benchmarks.__main__ import engines_argument

    assert engines_argument(None) is None
    assert engines_argument("onnx:fp32, openvino:bf16") == [
        ("blender-fast onnx fp32", "ours", "onnx", "fp32"), ("blender-fast openvino bf16", "ours", "openvino", "bf16")]
    with pytest.raises(SystemExit, match="'onnx:fp8'"):
        engines_argument("onnx:fp8")


def test_coldstart_section(tiny_checkpoint):
    """Both engines start cold from the hub stand-in in fresh interpreters; ours never imports torch."""
    require("llm_blender")
    from benchmarks.coldstart import coldstart_md, run_coldstart_section

    res = run_coldstart_section(tiny_checkpoint)
    assert set(res["runs"]) == {"llm-blender", "blender-fast"}
    for name, (run,) in res["runs"].items():
        assert run["wall_s"] > 0 and run["peak_rss_mb"] > 50 and run["hub_requests"] > 0, (name, run)
    assert res["runs"]["llm-blender"][0]["torch_imported"] and not res["runs"]["blender-fast"][0]["torch_imported"]
    assert "| blender-fast |" in "\n".join(coldstart_md(res))
