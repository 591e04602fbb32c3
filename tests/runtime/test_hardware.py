"""bf16 precision, the agreement gate, precision/backend="auto", describe(), and the GPU check's CPU dry run."""
from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require, shared_data_file

INPUTS = ["Explain why the sky is blue.", "Write a haiku about autumn.", "Name three prime numbers.",
          "How do I boil an egg?"]
CANDS = [["Rayleigh scattering sends blue light everywhere.", "Because it is.", "Blue paint.", "The ocean reflects."],
         ["Leaves drift / the cold wind / branch waits", "Autumn.", "Leaves fall down from the trees today.", "Red."],
         ["2, 3 and 5.", "1, 2, 3.", "Seven, eleven, thirteen.", "Primes are numbers."],
         ["Boil water, add the egg, wait 8 minutes.", "Microwave it.", "Eggs are laid by hens.", "Put it in water."]]


def conditioned_checkpoint(base, out, qk_gain: float = 3.0):
    """A copy of ``base`` whose attention is selective, as in trained models: query/key projections x qk_gain,
    the head rescaled to pair-logit std 1. A random-weight checkpoint's prefix states barely depend on the
    text, so the generator scales its head by 140 (xsmall) to 3200 (tiny), which amplifies any rounding as
    much: bf16 would look hopeless whatever it is (docs/performance.md, "The agreement gate")."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.model.export import build_torch_model, sample_batch
    from blender_fast.model.tokenization import build_pair_tokenizer

    shutil.copytree(base, out)
    weights = out / "model.safetensors"
    state = load_file(str(weights))
    for k in state:
        if ".attention.self.query_proj." in k or ".attention.self.key_proj." in k:
            state[k] = state[k] * qk_gain
    ckpt = load_checkpoint(out)
    ids, mask, pos = sample_batch(build_pair_tokenizer(ckpt), ckpt)
    with torch.no_grad():
        std = float(build_torch_model(ckpt, state)(torch.from_numpy(ids), torch.from_numpy(mask),
                                                   torch.from_numpy(pos)).std())
    state["head_layer.4.weight"] = state["head_layer.4.weight"] / std  # the logit is linear in it
    save_file(state, str(weights), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="module")
def conditioned_tiny(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint with selective attention (conditioned_checkpoint), where bf16 is meaningful."""
    require("safetensors")
    return conditioned_checkpoint(tiny_checkpoint, tmp_path_factory.mktemp("cond") / "tiny-qk3")


def test_kendall_tau():
    from blender_fast.runtime.agreement import kendall_tau

    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    assert kendall_tau([1, 1, 1], [2, 2, 2]) == 1.0


def test_ranking_agreement_gate_thresholds():
    from blender_fast.runtime.agreement import ranking_agreement

    ref = [np.array([3.0, 2.0, 1.0, 0.0])] * 100
    same = ranking_agreement("x", ref, ref, np.arange(10.0), np.arange(10.0) + 0.01)
    assert same.passed and same.top1_pct == 100.0 and same.max_abs_dlogit == pytest.approx(0.01)
    flipped = [np.array([2.0, 3.0, 1.0, 0.0])] * 2 + ref[2:]  # 2% top-1 changes
    assert not ranking_agreement("y", ref, flipped).passed


def test_cpu_features_parses_flags():
    from blender_fast.runtime.autoselect import candidate_variants, cpu_features

    text = "model name\t: Test CPU\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni amx_tile amx_bf16\n"
    f = cpu_features(text)
    assert f["cpu_model"] == "Test CPU"
    assert {"avx2", "avx512_bf16", "avx512_vnni", "amx_bf16"} <= set(f["isa"])
    names = [(b, p) for b, p, _ in candidate_variants("cpu", f) if b != "openvino"]  # openvino: when installed
    assert names == [("torch", "bf16"), ("onnx", "int8"), ("onnx", "fp32")]
    plain = cpu_features("model name : Old\nflags : fpu sse2 avx2\n")
    assert [(b, p) for b, p, _ in candidate_variants("cpu", plain)][-1] == ("onnx", "fp32")
    assert ("torch", "bf16") not in [(b, p) for b, p, _ in candidate_variants("cpu", plain)]


def test_bf16_torch_agrees_with_fp32(conditioned_tiny, one_torch_thread):
    require("torch")
    from blender_fast import Ranker
    from blender_fast.runtime.agreement import full_rank_logits, ranking_agreement

    fp32 = Ranker.from_pretrained(conditioned_tiny, backend="torch", precision="fp32", threads=1)
    bf16 = Ranker.from_pretrained(conditioned_tiny, backend="torch", precision="bf16", threads=1)
    assert bf16.describe()["fp32_islands"] == ["layernorm", "head"]
    s32, l32 = full_rank_logits(fp32, INPUTS, CANDS)
    s16, l16 = full_rank_logits(bf16, INPUTS, CANDS)
    assert not np.array_equal(l32, l16)  # bf16 really ran
    agreement = ranking_agreement("torch bf16", s32, s16, l32, l16)
    # Measured ~0.1 on this checkpoint (docs/performance.md, "Hardware"); bf16 has 8 mantissa bits.
    assert agreement.max_rel_dlogit < 0.3
    assert agreement.top1_pct >= 75.0


def test_bf16_needs_torch_backend(tiny_checkpoint):
    from blender_fast import Ranker

    with pytest.raises(ValueError, match="backend='torch'"):
        Ranker.from_pretrained(tiny_checkpoint, backend="onnx", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of"):
        Ranker.from_pretrained(tiny_checkpoint, precision="bf17")


def test_auto_without_gate_stays_exact(tiny_checkpoint, tmp_path, one_torch_thread):
    from blender_fast import Ranker

    ranker = Ranker.from_pretrained(tiny_checkpoint, precision="auto", backend="auto", threads=1, cache_dir=tmp_path)
    d = ranker.describe()
    assert (d["backend"], d["precision"], d["device"]) == ("onnx", "fp32", "cpu")
    assert d["reason"].startswith("exact fp32")
    assert d["cpu_model"] and isinstance(d["isa"], list)
    assert list(tmp_path.glob("auto-*.json"))  # the decision is cached
    default = Ranker.from_pretrained(tiny_checkpoint, threads=1, cache_dir=tmp_path).describe()
    assert default["reason"] == d["reason"]  # auto is the default
    plain = Ranker.from_pretrained(tiny_checkpoint, precision="fp32", backend="onnx", threads=1,
                                   cache_dir=tmp_path).describe()
    assert (plain["backend"], plain["precision"], plain["reason"]) == ("onnx", "fp32", "as requested")


def test_auto_picks_only_gated_variants(conditioned_tiny, tmp_path, monkeypatch, one_torch_thread):
    """With a bf16-capable CPU (pretended) and a passing gate record, auto calibrates and may pick bf16;
    a failing record is never picked."""
    from blender_fast import Ranker
    from blender_fast.runtime import autoselect
    from blender_fast.model.checkpoint import load_checkpoint

    monkeypatch.setattr(autoselect, "cpu_features",
                        lambda cpuinfo=None: {"cpu_model": "Test", "isa": ["avx512_bf16", "avx2"], "logical_cores": 2})
    ckpt = load_checkpoint(conditioned_tiny)
    rec = {"variant": "torch bf16", "prompts": 100, "candidates": 12, "top1_pct": 95.0, "kendall_tau_mean": 0.9,
           "passed": False}
    autoselect.save_gate(ckpt, [rec], tmp_path)
    d = Ranker.from_pretrained(conditioned_tiny, precision="auto", backend="auto", threads=1,
                                cache_dir=tmp_path).describe()
    assert d["precision"] == "fp32" and "failed the gate" in d["reason"]
    autoselect.save_gate(ckpt, [{**rec, "top1_pct": 100.0, "kendall_tau_mean": 1.0, "passed": True}], tmp_path)
    decision = autoselect.choose(ckpt, "cpu", "auto", "auto", 1, tmp_path)
    assert not decision["cached"]  # a new gate record means a new decision
    assert set(decision["calibration_s"]) == {"torch bf16", "onnx fp32"}
    assert (decision["backend"], decision["precision"]) in {("torch", "bf16"), ("onnx", "fp32")}
    assert "calibration" in decision["reason"]


def test_run_gate_records(conditioned_tiny, tmp_path, one_torch_thread):
    from blender_fast import Ranker
    from blender_fast.runtime.agreement import run_gate
    from blender_fast.runtime.autoselect import load_gate
    from blender_fast.model.checkpoint import load_checkpoint

    def load(backend, precision):
        return Ranker.from_pretrained(conditioned_tiny, backend=backend, precision=precision, threads=1, cache_dir=tmp_path)

    records = run_gate(load_checkpoint(conditioned_tiny), load, INPUTS[:2], [c[:3] for c in CANDS[:2]],
                       variants=(("torch", "bf16"),), cache_dir=tmp_path)
    assert [r["variant"] for r in records] == ["torch bf16"]
    assert records[0]["prompts"] == 2 and records[0]["candidates"] == 3
    assert "torch bf16" in load_gate(load_checkpoint(conditioned_tiny), tmp_path)


def test_gpu_check_parity():
    from benchmarks.gpu_check import parity

    ref = np.array([[3.0, 1.0, 0.0], [1.0, 1.001, 0.0]])
    ok = parity(ref + np.array([[0, 0, 0], [0.002, 0, 0]]), ref)  # prompt 1 flips on a near-tie
    assert ok["top1_mismatches"] == 1 and ok["pass"]
    bad = parity(np.array([[0.0, 1.0, 3.0], [1.0, 1.001, 0.0]]), ref)
    assert not bad["pass"]


@pytest.mark.slow
def test_gpu_check_cpu_dry_run(request, tmp_path, one_torch_thread):
    """The GPU check's driver end to end on the CPU: ours (fp16/bf16/fp32) vs llm-blender, table, parity."""
    data = shared_data_file()  # first: skips on a plain clone (no ../shared) before any work; fails in CI
    require("llm_blender")
    from benchmarks.gpu_check import main

    tiny_checkpoint = request.getfixturevalue("tiny_checkpoint")
    rc = main(["--dry-run", "--model", str(tiny_checkpoint), "--prompts", "1", "--candidates", "2",
               "--best-of", "3", "--out", str(tmp_path), "--data", str(data)])
    assert rc == 0
    res = json.loads((tmp_path / "gpu_check.json").read_text())
    rank = res["shapes"]["tiny"]["rank"]["tasks"]["rank"]
    assert {"blender-fast torch fp16", "blender-fast torch bf16", "llm-blender (batch_size=8)"} <= set(rank)
    assert "parity ours vs llm-blender, same precision (fp32)" in (tmp_path / "gpu_check.md").read_text()
    cascade = res["shapes"]["tiny"]["cascade"]  # the certified cascade section (bf16 fast pass on the CPU)
    assert (cascade["fast"], cascade["exact"]) == ("torch bf16", "onnx fp32")
    for task in ("rank", "best_of bubble"):
        cell = cascade["tasks"][task]["cascade"]
        assert cell["equal_to_fp32_pct"] == 100.0 and 0.0 <= cell["rescored_pct"] <= 100.0
    assert "certified cascade, fast torch bf16" in (tmp_path / "gpu_check.md").read_text()


def test_openvino_backend_matches_onnx(tiny_checkpoint, tmp_path, one_torch_thread):
    """The exported graph (no dynamic-rank If: attention.py) runs in OpenVINO with dynamic shapes, same
    logits as ORT."""
    require("openvino")
    import onnx

    from blender_fast import Ranker
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.model.export import cached_export

    out_dir, _ = cached_export(load_checkpoint(tiny_checkpoint), "fp32", tmp_path)
    model = onnx.load(str(out_dir / "model.onnx"))
    assert not any(n.op_type == "If" for n in model.graph.node)
    ref = Ranker.from_pretrained(tiny_checkpoint, threads=1, cache_dir=tmp_path)
    ov = Ranker.from_pretrained(tiny_checkpoint, backend="openvino", threads=1, cache_dir=tmp_path)
    assert ov.describe()["backend"] == "openvino"
    a = ref.rank(INPUTS, CANDS, return_scores=True)  # batches of several shapes: dynamic shapes work
    b = ov.rank(INPUTS, CANDS, return_scores=True)
    np.testing.assert_allclose(a, b, atol=1e-3 * max(1.0, float(np.abs(a).max())))
