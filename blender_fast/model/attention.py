"""DeBERTa's disentangled attention rewritten for export: the same numbers, a cheaper graph.

transformers' ``DisentangledSelfAttention`` is the oracle (``tests/test_attention.py`` holds the two
side by side, and every export is checked against it). What changes, and why (ONNX Runtime's profiler
on the xsmall export, `python -m benchmarks --sections profile`, put ~40% of the exact fp32 time into
the attention's non-GEMM operators):

* **Relative-position gathers.** transformers gathers c2p/p2c scores with ``torch.gather`` over an int64
  index it expands to ``[batch × heads, L, L]`` again in every layer, and transposes p2c afterwards.
  Here both indices are built and expanded once per batch (``gather_indices``) and shared by all
  layers; p2c is read from a flat ``[batch, heads, L · 2k]`` view with a transposed index, so its
  Transpose goes. Still GatherElements with a full-size index: ONNX Runtime's plain Gather over a small
  shared index copies one element per call and measured ~3× slower than GatherElements.
* **Relative-position projections.** ``key_proj`` / ``query_proj`` of the (layer-normed) relative
  embeddings do not depend on the input: they are computed once here, stored as constants, already
  laid out per head and scaled.
* **Scaling.** The 1/sqrt(d·3) scale is applied once to the queries (and folded into the constant
  relative queries) instead of three divisions of ``[L, L]`` tensors.
* **Mask.** An additive key bias ``[batch, 1, 1, L]`` (0 or a large negative number) replaces the
  ``[batch, 1, L, L]`` mask and its Where. Real tokens' rows get exactly the same softmax (masked keys
  weigh exactly 0 either way); rows of padding queries differ, and nothing reads them: padding keys are
  masked out for every real query, and the head reads the three prefix tokens only.

Only the inference path of the configuration PairRM uses is rewritten (relative attention with c2p
and p2c, shared attention keys, log-bucketed positions, no conv layer); anything else raises, naming
what is unsupported, and the caller exports transformers' attention as it is.
"""
from __future__ import annotations

import math


class UnsupportedAttention(ValueError):
    pass


def check_supported(backbone) -> None:
    """Raise UnsupportedAttention unless ``backbone`` (a DebertaV2Model) is a configuration rewritten here."""
    encoder = backbone.encoder
    problems = []
    if not getattr(encoder, "relative_attention", False):
        problems.append("relative_attention is off")
    if getattr(encoder, "conv", None) is not None:
        problems.append("a conv layer (conv_kernel_size > 0)")
    att = encoder.layer[0].attention.self  # every layer is built from the same config
    if sorted(att.pos_att_type) != ["c2p", "p2c"]:
        problems.append(f"pos_att_type {att.pos_att_type} (only c2p|p2c is rewritten)")
    if not att.share_att_key:
        problems.append("share_att_key is off")
    if problems:
        raise UnsupportedAttention("the export rewrite does not cover " + ", ".join(problems))


def use_export_attention(model) -> None:
    """Switch a PairRMModule (eval mode) to the export attention in place: every layer's self-attention
    forward, and the encoder's mask and relative-position inputs. Raises UnsupportedAttention (the
    module is left unchanged) for a configuration this does not cover."""
    import torch

    backbone = model.pretrained_model
    check_supported(backbone)
    encoder = backbone.encoder
    with torch.no_grad():
        rel = encoder.get_rel_embedding()
        for layer in encoder.layer:
            _patch_attention(layer.attention.self, rel)
    first = encoder.layer[0].attention.self
    span, heads = first.pos_ebd_size, first.num_attention_heads
    original_rel_pos = encoder.get_rel_pos
    weights = backbone.embeddings.word_embeddings.weight

    def get_attention_mask(attention_mask):
        # [B, L] 0/1 → an additive key bias [B, 1, 1, L] in the model's dtype. Half the dtype's range:
        # adding scores to it never overflows to -inf (a fully masked padding row would softmax to NaN).
        if attention_mask.dim() != 2:
            raise ValueError("the export attention takes a [batch, length] attention mask")
        blocked = (attention_mask == 0).to(weights.dtype) * (torch.finfo(weights.dtype).min / 2)
        return blocked[:, None, None, :]

    def get_rel_pos(hidden_states, query_states=None, relative_pos=None):
        # The bucketed relative positions [1, L, L] → the gather indices, once per batch for all layers.
        rel_pos = original_rel_pos(hidden_states, query_states, relative_pos)
        return gather_indices(rel_pos, span, hidden_states.shape[0], heads)

    encoder.get_attention_mask = get_attention_mask
    encoder.get_rel_pos = get_rel_pos


def gather_indices(relative_pos, span: int, batch: int, heads: int):
    """GatherElements indices, expanded to the scores' full shape once per batch (ONNX's GatherElements
    does not broadcast its index; transformers expands it again in every layer):

    * c2p ``[B, heads, L, L]``: c2p[i, j] = c2p_att[i, clamp(r(i, j) + k)] along the last axis of the
      ``[B, heads, L, 2k]`` scores;
    * p2c ``[B, heads, L · L]``: p2c[i, j] = p2c_att[j, clamp(k - r(j, i))], transformers' p2c after
      its final transpose, read from the flat ``[B, heads, L · 2k]`` view (so no Transpose)."""
    import torch

    rel = relative_pos.reshape(relative_pos.shape[-2], relative_pos.shape[-1]).to(torch.int64)
    length = rel.shape[0]
    c2p = torch.clamp(rel + span, 0, 2 * span - 1)
    row_start = torch.arange(length, dtype=torch.int64, device=rel.device) * (2 * span)
    p2c = (row_start[None, :] + torch.clamp(span - rel, 0, 2 * span - 1).transpose(0, 1)).reshape(1, 1, -1)
    return c2p[None, None].expand(batch, heads, length, length), p2c.expand(batch, heads, length * length)


def _patch_attention(att, rel_embeddings) -> None:
    import torch

    heads, head_size, span = att.num_attention_heads, att.attention_head_size, att.pos_ebd_size
    scale = math.sqrt(head_size * 3)  # transformers' scaled_size_sqrt with c2p and p2c: sqrt(d · 3)
    rel = rel_embeddings[: 2 * span]

    def per_head(x):  # [2k, heads · d] → [heads, d, 2k], the right operand of a batched matmul
        return x.reshape(2 * span, heads, head_size).permute(1, 2, 0).contiguous()

    # c2p = (q @ pos_keyᵀ) / scale and the queries carry the 1/scale: pos_key stays unscaled.
    # p2c = (k @ pos_queryᵀ) / scale: the keys are not scaled, so pos_query carries it.
    att.register_buffer("export_pos_key", per_head(att.key_proj(rel)), persistent=False)
    att.register_buffer("export_pos_query", per_head(att.query_proj(rel)) / scale, persistent=False)
    inv_scale = 1.0 / scale

    # transformers' signature, so DebertaV2Attention calls it unchanged. What arrives differs: the patched
    # encoder passes the additive key bias as attention_mask and gather_indices' pair as relative_pos;
    # rel_embeddings is not needed (its projections are the buffers above); no attention probabilities
    # are returned (PairRM never asks for them).
    def forward(hidden_states, attention_mask, output_attentions=False, query_states=None, relative_pos=None,
                rel_embeddings=None):
        if query_states is not None:
            raise ValueError("the export attention is self-attention only")
        b, length, _ = hidden_states.shape
        c2p_index, p2c_index = relative_pos

        def heads_first(x):  # [B, L, heads · d] → [B, heads, L, d]
            return x.view(b, length, heads, head_size).transpose(1, 2)

        q = heads_first(att.query_proj(hidden_states) * inv_scale)
        k = heads_first(att.key_proj(hidden_states))
        v = heads_first(att.value_proj(hidden_states))
        scores = torch.matmul(q, k.transpose(-1, -2))
        c2p = torch.gather(torch.matmul(q, att.export_pos_key), 3, c2p_index)
        p2c_att = torch.matmul(k, att.export_pos_query).reshape(b, heads, length * 2 * span)
        p2c = torch.gather(p2c_att, 2, p2c_index).view(b, heads, length, length)
        scores = scores + (c2p + p2c) + attention_mask
        probs = torch.softmax(scores, dim=-1)
        context = torch.matmul(probs, v).transpose(1, 2).reshape(b, length, heads * head_size)
        return context, None

    att.forward = forward
