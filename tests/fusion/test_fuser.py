"""GenFuser and n_generate: same strings, same tokens as llm-blender 0.0.2, on a generated tiny T5.

The reference strings come from llm-blender's own GenFuserDataset (its tokenizer call is spied on), the
reference generations from its own Blender.loadfuser(...).fuse(...) and Blender.n_generate(...).
"""
from __future__ import annotations

import copy

import pytest

from conftest import load_shared_records, require

N_PROMPTS = 24  # for the input-string parity
N_FUSE_PROMPTS = 6  # for the generation parity (each one generates up to 128 tokens)
TOP_K = 3


# ---------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def _tiny_models_use_one_thread(one_torch_thread):
    yield


@pytest.fixture(scope="module")
def fuser_dir(tmp_path_factory):
    require("torch")
    require("transformers")
    from blender_fast.synthetic import make_fuser_checkpoint

    return make_fuser_checkpoint(tmp_path_factory.mktemp("fuser") / "tiny", shape="tiny", seed=0)


@pytest.fixture(scope="module")
def tokenizer(fuser_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(fuser_dir))


@pytest.fixture(scope="module")
def prompts():
    """(instructions, top-3 candidates by judge preference) for the first N_PROMPTS shared records."""
    records = load_shared_records(limit=N_PROMPTS)
    inputs, candidates = [], []
    for record in records:
        ranked = sorted(record["candidates"], key=lambda c: -c["judge_pref"])
        inputs.append(record["instruction"])
        candidates.append([c["text"] for c in ranked[:TOP_K]])
    return inputs, candidates


@pytest.fixture(scope="module")
def fuser(fuser_dir):
    from blender_fast.fusion.fuser import Fuser

    return Fuser.from_pretrained(fuser_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def reference(fuser_dir):
    require("llm_blender")
    import llm_blender

    ref = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    ref.loadfuser(str(fuser_dir), device="cpu", torch_dtype="float32")
    return ref


class RecordingTokenizer:
    """Passes everything to the real tokenizer and records the texts GenFuserDataset tokenizes."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.texts = []

    def encode(self, *args, **kwargs):
        return self.tokenizer.encode(*args, **kwargs)

    def decode(self, *args, **kwargs):
        return self.tokenizer.decode(*args, **kwargs)

    def __call__(self, text, **kwargs):
        self.texts.append(text)
        return self.tokenizer(text, **kwargs)


def reference_fuser_inputs(tokenizer, inputs, candidates, instructions=None, candidate_maxlength=128):
    require("llm_blender")
    from llm_blender.blender.blender_utils import GenFuserDataset

    spy = RecordingTokenizer(tokenizer)
    # deepcopy: the dataset truncates the candidates in place
    dataset = GenFuserDataset(
        inputs, copy.deepcopy(candidates), spy, max_length=1024,
        candidate_maxlength=candidate_maxlength, instructions=instructions,
    )
    for i in range(len(dataset)):
        dataset[i]
    assert len(spy.texts) == len(inputs)
    return spy.texts


# ---------------------------------------------------------------------------
# model-input strings
# ---------------------------------------------------------------------------


@pytest.mark.reference
@pytest.mark.parametrize("candidate_maxlength", [128, 16])
def test_fuser_inputs_match_llm_blender(tokenizer, prompts, candidate_maxlength):
    from blender_fast.fusion.fuser import build_fuser_inputs

    inputs, candidates = prompts
    candidates_before = copy.deepcopy(candidates)
    ours = build_fuser_inputs(tokenizer, inputs, candidates, candidate_maxlength=candidate_maxlength)
    expected = reference_fuser_inputs(tokenizer, inputs, candidates, candidate_maxlength=candidate_maxlength)
    assert len(ours) == len(inputs) >= 20
    for i, (a, b) in enumerate(zip(ours, expected)):
        assert a == b, f"prompt {i} differs"
    assert candidates == candidates_before, "build_fuser_inputs must not modify the caller's candidates"
    # the case that matters: some real candidates are longer than the budget and get cut
    n_long = sum(
        len(tokenizer.encode(c, add_special_tokens=False)) > candidate_maxlength
        for cands in candidates for c in cands
    )
    assert n_long > 0


@pytest.mark.reference
def test_fuser_inputs_with_instructions_match_llm_blender(tokenizer, prompts):
    from blender_fast.fusion.fuser import build_fuser_inputs

    inputs, candidates = prompts
    instructions = [f"Answer question {i} carefully." for i in range(len(inputs))]
    ours = build_fuser_inputs(tokenizer, inputs, candidates, instructions=instructions)
    assert ours == reference_fuser_inputs(tokenizer, inputs, candidates, instructions=instructions)


def test_fuser_input_template(tokenizer):
    from blender_fast.fusion.fuser import build_fuser_inputs

    (text,) = build_fuser_inputs(tokenizer, ["Say hi."], [["hi", "hello"]], instructions=["Be brief."])
    assert text == (
        "Instruction: Be brief.</s>Input: Say hi.</s>Candidate 0: <extra_id_0>:hi</s>"
        "Candidate 1: <extra_id_1>:hello</s>Summarize candidates into a better one for the given instruction:"
    )


# ---------------------------------------------------------------------------
# generation parity with llm-blender
# ---------------------------------------------------------------------------


DECODINGS = {
    "greedy": dict(num_beams=1, do_sample=False),
    "beam4-default": dict(),
}


def record_generations(model, monkeypatch):
    """Record, for every prompt row passed to model.generate, the generated token ids.

    Keyed by the prompt's unpadded input ids, so that batches of different make-up (ours are sorted by
    length) can be compared row by row. Padding is stripped from both sides of each output.
    """
    import torch

    records = {}
    generate = model.generate

    def recording_generate(*args, **kwargs):
        output_ids = generate(*args, **kwargs)
        input_ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        per_row = output_ids.shape[0] // input_ids.shape[0]
        pad = model.config.pad_token_id
        for row in range(input_ids.shape[0]):
            key = tuple(input_ids[row][mask[row].bool()].tolist())
            outs = []
            for r in range(per_row):
                ids = output_ids[row * per_row + r].tolist()
                while ids and ids[-1] == pad:
                    ids.pop()
                outs.append(tuple(ids))
            records[key] = outs
        return output_ids

    monkeypatch.setattr(model, "generate", recording_generate)
    return records


@pytest.mark.reference
@pytest.mark.parametrize("decoding", sorted(DECODINGS))
@pytest.mark.parametrize("sort_by_length", [True, False], ids=["sorted", "llm-blender-batches"])
def test_fuse_matches_llm_blender(fuser, reference, prompts, decoding, sort_by_length, monkeypatch):
    inputs, candidates = prompts
    inputs, candidates = inputs[:N_FUSE_PROMPTS], candidates[:N_FUSE_PROMPTS]
    kwargs = DECODINGS[decoding]
    expected_tokens = record_generations(reference.fuser, monkeypatch)
    expected = reference.fuse(inputs, copy.deepcopy(candidates), batch_size=4, **kwargs)
    our_tokens = record_generations(fuser.model, monkeypatch)
    candidates_before = copy.deepcopy(candidates)
    ours = fuser.fuse(inputs, candidates, batch_size=4, progress=False, sort_by_length=sort_by_length, **kwargs)
    assert candidates == candidates_before
    assert len(ours) == len(inputs)
    # token for token (the decoded strings can hide differences: special tokens are skipped)
    assert len(expected_tokens) == len(set(expected_tokens)) == len(inputs)
    assert our_tokens == expected_tokens
    assert any(len(out[0]) > 2 for out in our_tokens.values()), "degenerate test: nothing generated"
    for i, (a, b) in enumerate(zip(ours, expected)):
        assert a == b, f"prompt {i}: {a!r} != {b!r}"


@pytest.mark.reference
def test_fuse_options_match_llm_blender(fuser, reference, prompts):
    """candidate_max_length, instructions, several return sequences (flat list, llm-blender's layout)."""
    inputs, candidates = prompts
    inputs, candidates = inputs[:3], candidates[:3]
    instructions = ["Be helpful."] * len(inputs)
    kwargs = dict(candidate_max_length=24, num_beams=3, num_return_sequences=2)
    expected = reference.fuse(inputs, copy.deepcopy(candidates), instructions=instructions, batch_size=2, **kwargs)
    ours = fuser.fuse(inputs, candidates, instructions=instructions, batch_size=2, progress=False, **kwargs)
    assert len(ours) == 2 * len(inputs)
    assert ours == expected


def test_fuse_accepts_numpy_candidates(fuser, prompts):
    import numpy as np
    inputs, candidates = prompts
    inputs, candidates = inputs[:2], candidates[:2]
    kwargs = dict(num_beams=1, do_sample=False, max_new_tokens=8)
    as_array = np.array(candidates)
    assert fuser.fuse(inputs, as_array, progress=False, **kwargs) == fuser.fuse(inputs, candidates, progress=False, **kwargs)


# ---------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "inputs, candidates, instructions, error, message",
    [
        (["a", "b"], [["x"]], None, ValueError, "same length"),
        (["a"], [["x"]], ["i", "j"], ValueError, "same length"),
        (["a", "b"], [["x"], []], None, ValueError, "prompt 1: candidate list is empty"),
        (["a", ""], [["x"], ["y"]], None, ValueError, "prompt 1: input"),
        (["a", "b"], [["x"], ["y", ""]], None, ValueError, "prompt 1: candidate 1 is an empty string"),
        (["a"], [["x", 3]], None, TypeError, "prompt 0: candidate 1 must be a string"),
        ("a", [["x"]], None, TypeError, "single string"),
        (["a"], ["xyz"], None, TypeError, "prompt 0: candidates must be a list"),
    ],
)
def test_fuse_rejects_bad_input(fuser, inputs, candidates, instructions, error, message):
    with pytest.raises(error, match=message):
        fuser.fuse(inputs, candidates, instructions=instructions, progress=False)


def test_empty_input_with_instruction_is_fine(fuser):
    out = fuser.fuse([""], [["x", "y"]], instructions=["Say hi."], progress=False, num_beams=1, max_new_tokens=4)
    assert len(out) == 1


def test_missing_checkpoint_files(fuser_dir, tmp_path):
    import shutil

    from blender_fast.fusion.fuser import Fuser

    with pytest.raises(FileNotFoundError, match="does not exist"):
        Fuser.from_pretrained(tmp_path / "nope")
    for missing, message in [
        ("config.json", "no config.json"),
        ("model.safetensors", "no weights file"),
        ("spiece.model", "no tokenizer file"),
    ]:
        broken = tmp_path / f"without-{missing}"
        shutil.copytree(fuser_dir, broken)
        removed = {missing}
        if missing == "model.safetensors":
            removed |= {"pytorch_model.bin"}
        if missing == "spiece.model":
            removed |= {"tokenizer.json"}
        for name in removed:
            (broken / name).unlink(missing_ok=True)
        with pytest.raises(FileNotFoundError, match=message):
            Fuser.from_pretrained(broken)
    with pytest.raises(ValueError, match="backend"):
        Fuser.from_pretrained(fuser_dir, backend="tensorrt")


def test_fuser_options_are_spelled_like_the_ranker(fuser_dir):
    import inspect

    import torch

    from blender_fast.fusion.fuser import Fuser
    from blender_fast.ranker import Ranker

    shared = {"backend", "device", "precision", "threads", "cache_dir"}
    assert shared <= set(inspect.signature(Fuser.from_pretrained).parameters)
    assert shared <= set(inspect.signature(Ranker.from_pretrained).parameters)
    fuser = Fuser.from_pretrained(fuser_dir, backend="torch", device="auto", precision="fp32", threads=1)
    assert fuser.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert fuser.precision == "fp32" and fuser.model.dtype == torch.float32
    # llm-blender's torch_dtype spelling (Blender.loadfuser passes it) is an alias
    assert Fuser.from_pretrained(fuser_dir, dtype="float32").precision == "fp32"
    assert Fuser.from_pretrained(fuser_dir, precision="bf16").model.dtype == torch.bfloat16
    for kwargs, message in [
        (dict(precision="int8"), r"precision must be one of \('fp32', 'fp16', 'bf16'\), got 'int8'"),
        (dict(device="tpu"), r"device must be one of \('cpu', 'cuda', 'auto'\), got 'tpu'"),
        (dict(backend="tensorrt"), r"backend must be one of"),
        (dict(precision="fp32", dtype="bfloat16"), "disagree"),
        (dict(dtype="float64"), "dtype must be one of"),
        (dict(backend="onnx", precision="fp16"), "onnx backend runs fp32 only"),
        (dict(threads=0), "threads must be >= 1"),
        (dict(cache_dir="/a", onnx_cache_dir="/b"), "disagree"),
    ]:
        with pytest.raises(ValueError, match=message):
            Fuser.from_pretrained(fuser_dir, **kwargs)


def test_fuser_export_manifest_notices_damage(tmp_path):
    import json

    from blender_fast.model import cache
    from blender_fast.fusion.fuser import FUSER_EXPORT_MANIFEST, check_fuser_export

    entry = tmp_path / "entry"
    entry.mkdir()
    assert FUSER_EXPORT_MANIFEST in check_fuser_export(entry)
    (entry / "encoder_model.onnx").write_bytes(b"graph" * 100)
    (entry / FUSER_EXPORT_MANIFEST).write_text(json.dumps({"files": cache.record_files(entry)}))
    assert check_fuser_export(entry) is None
    (entry / "encoder_model.onnx").write_bytes(b"graph" * 50)
    assert "encoder_model.onnx has 250 bytes, 500 were written" in check_fuser_export(entry)


# ---------------------------------------------------------------------------
# ONNX backend
# ---------------------------------------------------------------------------


@pytest.mark.slow
def test_onnx_backend_matches_torch(fuser_dir, fuser, prompts, tmp_path):
    require("optimum.onnxruntime")
    from blender_fast.fusion.fuser import Fuser

    inputs, candidates = prompts
    inputs, candidates = inputs[:N_FUSE_PROMPTS], candidates[:N_FUSE_PROMPTS]
    onnx_fuser = Fuser.from_pretrained(fuser_dir, backend="onnx", cache_dir=tmp_path)
    assert onnx_fuser.onnx_dir is not None and onnx_fuser.onnx_dir.is_relative_to(tmp_path)
    kwargs = dict(num_beams=1, do_sample=False, max_new_tokens=48)
    expected = fuser.fuse(inputs, candidates, progress=False, **kwargs)
    assert onnx_fuser.fuse(inputs, candidates, progress=False, **kwargs) == expected
    # a second load reuses the export
    again = Fuser.from_pretrained(fuser_dir, backend="onnx", onnx_cache_dir=tmp_path)
    assert again.onnx_dir == onnx_fuser.onnx_dir
    assert len(list((tmp_path / "onnx-fuser").iterdir())) == 1
    from blender_fast.fusion.fuser import check_fuser_export

    assert check_fuser_export(onnx_fuser.onnx_dir) is None  # published with its manifest


def test_onnx_merged_decoder_guard(fuser_dir, tmp_path):
    """optimum-onnx's merged decoder mis-sizes the empty first-step cache when num_heads*d_kv != d_model."""
    require("optimum.onnxruntime")
    import json
    import shutil

    from blender_fast.fusion.fuser import export_fuser_to_onnx

    odd = tmp_path / "odd-heads"
    shutil.copytree(fuser_dir, odd)
    config = json.loads((odd / "config.json").read_text())
    config["d_kv"] = config["d_kv"] + 1
    (odd / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="d_model"):
        export_fuser_to_onnx(odd, cache_dir=tmp_path / "cache", merged_decoder=True)


# ---------------------------------------------------------------------------
# n_generate
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_causal_lm(tokenizer):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=256, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config).eval()


N_GENERATE_CASES = {
    "top_p": dict(sampling_mode="top_p_sampling", max_new_tokens=12),
    "top_k-instructions": dict(sampling_mode="top_k_sampling", max_new_tokens=12, top_k=5, temperature=1.3,
                               instructions=True),
    "custom": dict(sampling_mode=None, do_sample=True, top_p=0.9, max_new_tokens=6),
}


@pytest.mark.reference
@pytest.mark.parametrize("case", sorted(N_GENERATE_CASES))
@pytest.mark.parametrize("model_kind", ["causal", "seq2seq"])
def test_n_generate_matches_llm_blender(tiny_causal_lm, fuser, tokenizer, prompts, case, model_kind):
    require("llm_blender")
    import llm_blender
    import torch

    from blender_fast.fusion.generation import n_generate

    model = tiny_causal_lm if model_kind == "causal" else fuser.model
    kwargs = dict(N_GENERATE_CASES[case])
    inputs = [text[:200] for text in prompts[0][:5]]
    instructions = [f"Instruction {i}" for i in range(len(inputs))] if kwargs.pop("instructions", False) else None
    n = 3

    reference = llm_blender.Blender(llm_blender.BlenderConfig(device="cpu", use_tqdm=False))
    torch.manual_seed(123)
    expected = reference.n_generate(model, tokenizer, inputs, instructions=instructions, n=n, batch_size=2,
                                    **copy.deepcopy(kwargs))
    caller_kwargs = copy.deepcopy(kwargs)
    torch.manual_seed(123)
    ours = n_generate(model, tokenizer, inputs, instructions=instructions, n=n, batch_size=2, progress=False,
                      **caller_kwargs)
    assert caller_kwargs == kwargs
    assert len(ours) == len(inputs) and all(len(samples) == n for samples in ours)
    assert ours == expected


def test_n_generate_arguments(tiny_causal_lm, tokenizer):
    from blender_fast.fusion.generation import n_generate, sampling_generate_kwargs

    generate_kwargs = {"max_new_tokens": 4, "top_k": 3, "output_scores": True}
    params = sampling_generate_kwargs(generate_kwargs, 2, "top_k_sampling", tokenizer.model_max_length)
    assert generate_kwargs == {"max_new_tokens": 4, "top_k": 3, "output_scores": True}
    assert params["num_return_sequences"] == 2 and params["do_sample"] and params["top_k"] == 3
    assert params["temperature"] == 0.7 and "max_length" not in params
    no_limit = sampling_generate_kwargs({}, 2, "top_p_sampling", 77)
    assert no_limit["max_length"] == 77 and no_limit["top_p"] == 1.0

    out = n_generate(tiny_causal_lm, tokenizer, ["Hello there"], n=2, sampling_mode="top_k_sampling",
                     progress=False, max_new_tokens=4)
    assert len(out) == 1 and len(out[0]) == 2
    with pytest.raises(ValueError, match="sampling_mode"):
        n_generate(tiny_causal_lm, tokenizer, ["Hello"], sampling_mode="beam", progress=False)
    with pytest.raises(ValueError, match="instructions"):
        n_generate(tiny_causal_lm, tokenizer, ["a", "b"], instructions=["x"], progress=False)
