"""attention.py, the export's disentangled attention, against its oracle: transformers' DeBERTa."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

from conftest import require


@pytest.fixture(scope="module")
def hf_and_export_modules(tiny_checkpoint):
    require("torch")
    from blender_fast.model.attention import use_export_attention
    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.model.export import build_torch_model

    hf = build_torch_model(load_checkpoint(tiny_checkpoint))
    fast = copy.deepcopy(hf)
    use_export_attention(fast)
    return hf, fast


def padded_batch(tiny_checkpoint, lengths, seed=0):
    """Rows of random token ids with the prefix layout the packer makes, right-padded to the longest."""
    import torch

    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.model.tokenization import build_pair_tokenizer

    tok = build_pair_tokenizer(load_checkpoint(tiny_checkpoint))
    rng = np.random.default_rng(seed)
    width = max(lengths)
    ids = np.full((len(lengths), width), tok.pad_id, np.int64)
    mask = np.zeros((len(lengths), width), np.int64)
    pos = np.zeros((len(lengths), 3), np.int64)
    for r, n in enumerate(lengths):
        ids[r, :n] = rng.integers(5, 90, n)
        mask[r, :n] = 1
        pos[r] = (1, n // 3, 2 * n // 3)
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(pos)


@pytest.mark.parametrize("lengths", [[7, 40, 300, 150], [260, 3]])
def test_export_attention_matches_transformers(hf_and_export_modules, tiny_checkpoint, lengths):
    """Same logits as transformers' attention, with heavy padding (rows of padding queries are computed
    differently and must not leak) and lengths beyond the log-bucket threshold (128)."""
    import torch

    hf, fast = hf_and_export_modules
    ids, mask, pos = padded_batch(tiny_checkpoint, lengths)
    with torch.no_grad():
        a, b = hf(ids, mask, pos).numpy(), fast(ids, mask, pos).numpy()
        hidden = fast.pretrained_model(input_ids=ids, attention_mask=mask).last_hidden_state
    assert np.isfinite(hidden.numpy()).all()  # padding rows too: a NaN there would poison the next layer
    spread = max(1.0, float(np.ptp(a)))
    assert float(np.max(np.abs(a - b))) <= 1e-5 * spread * 10


def test_gather_indices_reproduce_transformers_gathers():
    """c2p and p2c picked through gather_indices equal transformers' torch.gather + transpose."""
    require("torch")
    import torch
    from transformers.models.deberta_v2.modeling_deberta_v2 import build_relative_position

    from blender_fast.model.attention import gather_indices

    batch, heads, length, span = 2, 3, 300, 256
    x = torch.zeros(1, length, 8)
    rel = build_relative_position(x, x, bucket_size=span, max_position=512)
    c2p_att = torch.randn(batch * heads, length, 2 * span)
    p2c_att = torch.randn(batch * heads, length, 2 * span)
    index = torch.clamp(rel + span, 0, 2 * span - 1).squeeze(0).expand(batch * heads, length, length)
    want_c2p = torch.gather(c2p_att, -1, index)
    p2c_index = torch.clamp(-rel + span, 0, 2 * span - 1).squeeze(0).expand(batch * heads, length, length)
    want_p2c = torch.gather(p2c_att, -1, p2c_index).transpose(-1, -2)

    c2p_i, p2c_i = gather_indices(rel, span, batch, heads)
    got_c2p = torch.gather(c2p_att.view(batch, heads, length, 2 * span), 3, c2p_i)
    got_p2c = torch.gather(p2c_att.view(batch, heads, length * 2 * span), 2, p2c_i).view(batch, heads, length, length)
    assert torch.equal(got_c2p.reshape_as(want_c2p), want_c2p)
    assert torch.equal(got_p2c.reshape_as(want_p2c), want_p2c)


@pytest.mark.parametrize("change, named", [({"share_att_key": False}, "share_att_key"),
                                           ({"pos_att_type": ["c2p"]}, "pos_att_type"),
                                           ({"relative_attention": False}, "relative_attention")])
def test_unsupported_configuration_is_named(change, named):
    """A DeBERTa configuration the rewrite does not cover is refused by name, before anything changes."""
    require("torch")
    from transformers import DebertaV2Config

    from blender_fast.model.attention import UnsupportedAttention, use_export_attention
    from blender_fast.model.export import pairrm_module

    config = DebertaV2Config(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, relative_attention=True, position_buckets=16,
                             pos_att_type=["p2c", "c2p"], share_att_key=True, norm_rel_ebd="layer_norm")
    for key, value in change.items():
        setattr(config, key, value)
    model = pairrm_module(config).eval()
    forward = model.pretrained_model.encoder.layer[0].attention.self.forward
    with pytest.raises(UnsupportedAttention, match=named):
        use_export_attention(model)
    assert model.pretrained_model.encoder.layer[0].attention.self.forward == forward  # left unchanged


def test_exported_graph_gathers_once_per_term_and_expands_once(tiny_checkpoint, tmp_path, monkeypatch):
    """The exported graph: no If (OpenVINO takes it as is), one GatherElements per c2p/p2c term and
    layer, the gather indices expanded once per batch instead of in every layer, no [B, 1, L, L] Where;
    export.json names the attention exported. The torch export (the graph builder's oracle), forced."""
    require("onnx")
    monkeypatch.setenv("BLENDER_FAST_EXPORT", "torch")
    import onnx

    from blender_fast.model.checkpoint import load_checkpoint
    from blender_fast.model.export import cached_export

    ckpt = load_checkpoint(tiny_checkpoint)
    out_dir, report = cached_export(ckpt, "fp32", tmp_path)
    nodes = onnx.load(str(out_dir / "model.onnx")).graph.node
    ops = [n.op_type for n in nodes]
    in_layers = [n.op_type for n in nodes if "/layer." in n.name]
    layers = int(ckpt.backbone_config["num_hidden_layers"])
    assert "If" not in ops
    assert in_layers.count("GatherElements") == 2 * layers
    assert "Where" not in in_layers and "Expand" not in in_layers and ops.count("Expand") == 2
    assert json.loads((out_dir / "export.json").read_text())["attention"] == "blender_fast.model.attention"
    assert report.max_abs_diff < 1e-4
