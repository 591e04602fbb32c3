"""Checkpoint discovery: both layouts, the carried deberta-v3-large config, and every broken file named."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import require

from blender_fast.model.cache import checkpoint_fingerprint
from blender_fast.model.checkpoint import CheckpointError, DEBERTA_V3_LARGE, load_checkpoint


def _copy(src, tmp_path, name="ckpt"):
    dst = tmp_path / name
    shutil.copytree(src, dst)
    return dst


def test_llm_blender_layout(tiny_checkpoint):
    ckpt = load_checkpoint(tiny_checkpoint)
    assert ckpt.layout == "llm-blender"
    assert ckpt.source_maxlength == 1224 and ckpt.candidate_maxlength == 412
    assert ckpt.weights_path.name in ("model.safetensors", "pytorch_model.bin")
    assert ckpt.tokenizer_dir is not None


def test_model_name_relative_to_the_checkpoint(tiny_checkpoint, tmp_path):
    # A moved checkpoint: the absolute model_name no longer exists, the backbone sits inside the dir.
    dst = _copy(tiny_checkpoint, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_name"] = "/nonexistent/elsewhere/backbone"
    (dst / "config.json").write_text(json.dumps(cfg))
    assert load_checkpoint(dst).backbone_config["hidden_size"] == 32


def test_known_backbone_needs_no_network(tiny_checkpoint, tmp_path):
    dst = _copy(tiny_checkpoint, tmp_path)
    cfg = json.loads((dst / "config.json").read_text())
    cfg["model_name"] = "microsoft/deberta-v3-large"
    (dst / "config.json").write_text(json.dumps(cfg))
    ckpt = load_checkpoint(dst)
    assert ckpt.backbone_config == DEBERTA_V3_LARGE
    assert ckpt.tokenizer_dir == dst.resolve()  # tokenizer files in DIR itself are used


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda d: (d / "config.json").unlink(), "config.json: file not found"),
        (lambda d: (d / "config.json").write_text("{not json"), "config.json: not valid JSON"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "expected a JSON object"),
        (lambda d: [p.unlink() for p in d.glob("*.safetensors")] + [p.unlink() for p in d.glob("*.bin")], "no weights file"),
        (lambda d: _edit(d, ranker_type="summareranker"), "ranker_type 'summareranker' is not supported"),
        (lambda d: _edit(d, model_type="roberta"), "model_type 'roberta' is not supported"),
        (lambda d: _edit(d, model_name="some-org/unknown-model"), "model_name 'some-org/unknown-model'"),
        (lambda d: _edit(d, source_maxlength=-3), "'source_maxlength' must be a positive integer"),
        (lambda d: _edit(d, model_name=None), "'model_name' (the backbone) is missing"),
    ],
)
def test_broken_checkpoints_name_the_file(tiny_checkpoint, tmp_path, breakage, message):
    dst = _copy(tiny_checkpoint, tmp_path)
    breakage(dst)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst)
    assert message in str(err.value)


def _edit(directory, **fields):
    cfg = json.loads((directory / "config.json").read_text())
    cfg.update(fields)
    (directory / "config.json").write_text(json.dumps(cfg))


def test_missing_directory():
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint("/nonexistent/pairrm")


def test_corrupt_weights_are_named(tiny_checkpoint, tmp_path):
    require("torch")
    from blender_fast.model.export import load_state_dict

    dst = _copy(tiny_checkpoint, tmp_path)
    weights = load_checkpoint(dst).weights_path
    weights.write_bytes(b"\x00" * 100)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        load_state_dict(load_checkpoint(dst))


def test_fingerprint_follows_the_weights(tiny_checkpoint, tmp_path):
    dst = _copy(tiny_checkpoint, tmp_path)
    before = checkpoint_fingerprint(load_checkpoint(dst), precision="fp32")
    assert before == checkpoint_fingerprint(load_checkpoint(dst), precision="fp32")
    assert before != checkpoint_fingerprint(load_checkpoint(dst), precision="int8")
    weights = load_checkpoint(dst).weights_path
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert before != checkpoint_fingerprint(load_checkpoint(dst), precision="fp32")


def test_generated_checkpoint_is_relocatable(tiny_checkpoint, tmp_path):
    """model_name is relative to the checkpoint: a copy uses its own backbone, even with the original gone.
    (tiny_checkpoint is generated; CI's transformers-5 run passes one made by `blender-fast make-checkpoint`.)"""
    require("torch")
    assert json.loads((tiny_checkpoint / "config.json").read_text())["model_name"] == "backbone"
    original = _copy(tiny_checkpoint, tmp_path, "original")
    copy = _copy(original, tmp_path, "elsewhere")
    shutil.rmtree(original)
    ckpt = load_checkpoint(copy)
    assert ckpt.backbone_config["hidden_size"] == 32
    assert copy.resolve() in ckpt.tokenizer_dir.parents or ckpt.tokenizer_dir == copy.resolve()
    from blender_fast import Ranker

    ranker = Ranker.from_pretrained(copy, backend="torch", threads=1)
    assert ranker.rank(["What is 2+2?"], [["4", "five", "2+2 is 4"]]).shape == (1, 3)


def test_relative_model_name_prefers_the_checkpoint_over_the_working_directory(tiny_checkpoint, tmp_path, monkeypatch):
    decoy = tmp_path / "cwd" / "backbone"
    decoy.mkdir(parents=True)
    (decoy / "config.json").write_text(json.dumps({**DEBERTA_V3_LARGE, "hidden_size": 1024}))
    monkeypatch.chdir(tmp_path / "cwd")
    assert load_checkpoint(tiny_checkpoint).backbone_config["hidden_size"] == 32


@pytest.mark.parametrize("name", ["tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"])
def test_corrupt_tokenizer_files_are_named(tiny_checkpoint, tmp_path, name):
    dst = _copy(tiny_checkpoint, tmp_path)
    damaged = load_checkpoint(dst).tokenizer_dir / name  # the backbone's: what llm-blender loads too
    damaged.write_text('{"truncated": ')
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst)
    assert f"{damaged}: not valid JSON" in str(err.value)


def test_tokenizer_that_cannot_load_is_named(tiny_checkpoint, tmp_path):
    require("transformers")
    from blender_fast.model.tokenization import build_pair_tokenizer

    dst = _copy(tiny_checkpoint, tmp_path)
    tok_dir = load_checkpoint(dst).tokenizer_dir
    (tok_dir / "tokenizer.json").write_text('{"version": "1.0", "model": {"type": "nonsense"}}')
    with pytest.raises(CheckpointError) as err:
        build_pair_tokenizer(load_checkpoint(dst))
    assert f"{tok_dir}/{{" in str(err.value) and "tokenizer.json" in str(err.value)
    assert "cannot load the tokenizer" in str(err.value)


def test_n_tasks_that_disagrees_with_the_weights_fails_at_load(tiny_checkpoint, tmp_path):
    dst = _copy(tiny_checkpoint, tmp_path)
    _edit(dst, n_tasks=3)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst)
    message = str(err.value)
    assert "config.json" in message and "'n_tasks' = 3" in message and "head_layer.4.weight" in message


def test_n_tasks_mismatch_in_bin_weights_fails_before_torch(tiny_checkpoint, tmp_path):
    torch = require("torch")
    from safetensors.torch import load_file

    from blender_fast import Ranker

    dst = _copy(tiny_checkpoint, tmp_path)
    torch.save(load_file(str(dst / "model.safetensors")), str(dst / "pytorch_model.bin"))
    (dst / "model.safetensors").unlink()
    _edit(dst, n_tasks=2)
    load_checkpoint(dst)  # .bin: shapes need torch, checked when the weights are read
    with pytest.raises(CheckpointError, match=r"'n_tasks' = 2, but pytorch_model.bin's head_layer.4.weight"):
        Ranker.from_pretrained(dst, backend="torch")


@pytest.mark.parametrize("field", ["source_maxlength", "candidate_maxlength"])
def test_maxlength_too_small_for_the_prefix_tokens(tiny_checkpoint, tmp_path, field):
    dst = _copy(tiny_checkpoint, tmp_path)
    _edit(dst, **{field: 2})
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(dst)
    assert "config.json" in str(err.value) and f"'{field}' = 2 cannot hold" in str(err.value)
    _edit(dst, **{field: 3})  # [CLS] <prefix> [SEP]: the smallest that works
    assert getattr(load_checkpoint(dst), field) == 3


def test_truncated_safetensors_fails_at_load(tiny_checkpoint, tmp_path):
    dst = _copy(tiny_checkpoint, tmp_path)
    weights = dst / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match=r"model.safetensors: cannot read weights \(truncated"):
        load_checkpoint(dst)


def test_pointwise_reward_model_is_refused_by_name(tiny_checkpoint, tmp_path):
    """A DebertaV2ForSequenceClassification config (OpenAssistant's reward model) must not load as PairRM-hf."""
    import json
    import shutil

    from blender_fast.model.checkpoint import CheckpointError, load_checkpoint

    dst = tmp_path / "rm"
    shutil.copytree(tiny_checkpoint / "backbone", dst)
    config = json.loads((dst / "config.json").read_text())
    config["architectures"] = ["DebertaV2ForSequenceClassification"]
    (dst / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="pointwise reward model"):
        load_checkpoint(dst)


def test_sharded_weights_load_as_one(tiny_checkpoint, tmp_path):
    """A checkpoint saved in shards (an index + shards) gives the single file's scores; its fingerprint
    covers every shard; a missing shard or a bad index is one error naming it."""
    require("safetensors")
    import numpy as np

    from blender_fast import Ranker

    from blender_fast.synthetic import shard_weights

    dst = _copy(tiny_checkpoint, tmp_path)
    index = shard_weights(dst)
    ckpt = load_checkpoint(dst)
    assert ckpt.weights_path.name == "model.safetensors.index.json"
    inputs, cands = ["What is 2+2?", "Name a fruit."], [["4", "Four.", "22"], ["Apple.", "A car.", "Pear"]]
    one = Ranker.from_pretrained(tiny_checkpoint, precision="fp32", backend="onnx", threads=1, cache_dir=tmp_path / "c")
    sharded = Ranker.from_pretrained(dst, precision="fp32", backend="onnx", threads=1, cache_dir=tmp_path / "c")
    np.testing.assert_allclose(sharded.rank(inputs, cands, return_scores=True),
                               one.rank(inputs, cands, return_scores=True), atol=1e-5)
    before = checkpoint_fingerprint(ckpt)
    from safetensors.numpy import load_file, save_file

    shard = dst / sorted(set(index["weight_map"].values()))[1]
    state = load_file(str(shard))
    name = sorted(state)[0]
    state[name] = state[name] + 1.0
    save_file(state, str(shard), metadata={"format": "pt"})
    assert checkpoint_fingerprint(load_checkpoint(dst)) != before  # a changed shard is another model
    shard.unlink()
    with pytest.raises(CheckpointError, match=f"shard.*{shard.name}.*missing"):
        load_checkpoint(dst)
    (dst / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"x": "../elsewhere.safetensors"}}))
    with pytest.raises(CheckpointError, match="plain file names"):
        load_checkpoint(dst)
