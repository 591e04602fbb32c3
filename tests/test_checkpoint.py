"""Checkpoint discovery: both layouts, the carried deberta-v3-large config, and every broken file named."""
from __future__ import annotations

import json
import shutil

import pytest

from conftest import require

from blender_fast.checkpoint import CheckpointError, DEBERTA_V3_LARGE, checkpoint_fingerprint, load_checkpoint


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
    from blender_fast.export import load_state_dict

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
