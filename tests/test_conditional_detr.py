"""Conditional DETR: the official parameter count, the tiny preset end to end, and the
conditional cross-attention itself (content and spatial parts concatenated per head, not added)."""
from __future__ import annotations

import math

import torch

import tutorial
from tutorial.ops.attention import PreProjectedAttention
from tutorial.models.conditional_detr import ConditionalDecoderLayer, concat_heads, positional_attention
from tutorial.models.transformer import TransformerConfig

from .tiny import padded_batch, small_model

torch.set_num_threads(1)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_conditional_detr_r50_parameter_count_equals_official():
    """43,418,401: Atten4Vis/ConditionalDETR's R50 model (300 queries, 91 classes, frozen BN)."""
    model = tutorial.build_model("conditional_detr_r50")
    assert count(model) == 43_418_401
    layers = model.decoder.layers
    assert layers[0].ca_qpos_proj is not None and all(layer.ca_qpos_proj is None for layer in layers[1:])


SMALL = {"transformer": {"d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 2, "dim_feedforward": 64},
         "num_queries": 6}


def small(**overrides):
    return small_model("conditional_detr_tiny", SMALL, **overrides)


def inputs():
    return padded_batch((64, 80), (48, 64), second_empty=True)


def test_tiny_trains_a_step():
    model = small()
    images, mask, targets = inputs()
    out = model(images, mask, return_intermediates=True)
    assert out["pred_logits"].shape == (2, 6, 6) and out["pred_boxes"].shape == (2, 6, 4)
    assert len(out["aux_outputs"]) == 1
    h, w = out["feature_size"]
    assert out["decoder_attention"][0].shape == (2, 8, 6, h * w)
    assert out["spatial_queries"][0].shape == (2, 6, 32) and out["spatial_keys"][0].shape == (2, h * w, 32)
    ref = out["reference_points"]
    assert ref[0].shape == (2, 6, 2) and torch.equal(ref[0], ref[1])  # s is predicted once, not refined
    losses = model.build_criterion()(out, targets)
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)


def test_returning_intermediates_does_not_change_predictions():
    model = small().eval()
    with torch.no_grad():
        torch.nn.init.normal_(model.bbox_embed.layers[-1].weight, std=0.1)  # boxes depend on the decoder
    images, mask, _ = inputs()
    a, b = model(images, mask), model(images, mask, return_intermediates=True)
    assert torch.allclose(a["pred_logits"], b["pred_logits"], atol=1e-5)
    assert torch.allclose(a["pred_boxes"], b["pred_boxes"], atol=1e-5)


def test_boxes_start_at_the_reference_points():
    """The last layer of the box head is zero-initialised: the first boxes are centred on s."""
    model = small().eval()
    out = model(*inputs()[:2], return_intermediates=True)
    assert torch.allclose(out["pred_boxes"][..., :2], out["reference_points"][-1], atol=1e-5)


def test_concat_heads_adds_the_two_dot_products_per_head():
    torch.manual_seed(0)
    m, d = 4, 3
    qc, qs, kc, ks = (torch.randn(1, 5, m * d) for _ in range(4))
    q, k = concat_heads(qc, qs, m), concat_heads(kc, ks, m)  # (1, 5, M·2d)
    assert q.shape == (1, 5, m * 2 * d)
    for h in range(m):
        got = q[0, :, h * 2 * d:(h + 1) * 2 * d] @ k[0, :, h * 2 * d:(h + 1) * 2 * d].T
        head = slice(h * d, (h + 1) * d)
        expected = qc[0, :, head] @ kc[0, :, head].T + qs[0, :, head] @ ks[0, :, head].T
        assert torch.allclose(got, expected, atol=1e-5)


def test_pre_projected_attention_matches_a_loop_over_heads():
    """q, k with 2C channels, v with C: softmax(q_m k_mᵀ / √(2d)) v_m per head, then the output projection."""
    torch.manual_seed(0)
    c, m = 16, 4
    attn = PreProjectedAttention(c, m).eval()
    q, k, v = torch.randn(2, 3, 2 * c), torch.randn(2, 7, 2 * c), torch.randn(2, 7, c)
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    out, weights = attn(q, k, v, key_padding_mask=pad, need_weights=True)
    fused, none = attn(q, k, v, key_padding_mask=pad)
    assert none is None and torch.allclose(out, fused, atol=1e-5)
    dq, dv = 2 * c // m, c // m
    expected = torch.zeros(2, 3, c)
    for b in range(2):
        keep = ~pad[b]
        for h in range(m):
            logits = q[b, :, h * dq:(h + 1) * dq] @ k[b, keep, h * dq:(h + 1) * dq].T / math.sqrt(dq)
            expected[b, :, h * dv:(h + 1) * dv] = logits.softmax(-1) @ v[b, keep, h * dv:(h + 1) * dv]
            assert torch.allclose(weights[b, h][:, keep], logits.softmax(-1), atol=1e-6)
    assert torch.allclose(out, attn.out_proj(expected), atol=1e-5)


def test_spatial_query_only_meets_the_spatial_keys():
    """Concatenated, not added: with zero pixel positions (so p_k = 0), the spatial query cannot
    change anything in a (non-first) layer; DETR's added query would change the content logits."""
    torch.manual_seed(0)
    layer = ConditionalDecoderLayer(TransformerConfig(d_model=32, num_heads=4, dim_feedforward=64, dropout=0.0),
                                    first=False).eval()
    torch.nn.init.zeros_(layer.ca_kpos_proj.bias)
    tgt, query_pos = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    memory, zero_pos = torch.randn(2, 9, 32), torch.zeros(2, 9, 32)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    a, info = layer(tgt, memory, query_pos, zero_pos, torch.randn(2, 5, 32), pad, need_weights=True)
    b, _ = layer(tgt, memory, query_pos, zero_pos, torch.randn(2, 5, 32), pad)
    assert torch.allclose(a, b, atol=1e-5)
    assert info["attention"].shape == (2, 4, 5, 9) and info["spatial_key"].abs().max() == 0
    # with real pixel positions the spatial query does matter
    pos = torch.randn(2, 9, 32)
    c, _ = layer(tgt, memory, query_pos, pos, torch.randn(2, 5, 32), pad)
    d, _ = layer(tgt, memory, query_pos, pos, torch.randn(2, 5, 32), pad)
    assert not torch.allclose(c, d, atol=1e-3)


def test_positional_attention_maps_are_distributions_over_valid_pixels():
    model = small().eval()
    images, mask, _ = inputs()
    out = model(images, mask, return_intermediates=True)
    pad = out["feature_mask"].flatten(1)
    maps = positional_attention(out["spatial_queries"][1], out["spatial_keys"][1], 8, pad)  # (B, M, Q, N)
    assert maps.shape == out["decoder_attention"][1].shape
    assert torch.allclose(maps.sum(-1), torch.ones(()), atol=1e-5) and maps[1][..., pad[1]].abs().max() == 0


def test_spatial_keys_for_any_grid_are_the_layers_projected_positions():
    """`spatial_keys(feature_mask, layer)` on the image's own mask is the "spatial_keys" output, and
    with the layer's spatial queries `positional_attention` then sums to 1 over valid pixels only."""
    model = small().eval()
    images, mask, _ = inputs()
    with torch.no_grad():
        out = model(images, mask, return_intermediates=True)
        for layer in range(2):
            keys = model.spatial_keys(out["feature_mask"], layer)  # (B, N, C)
            torch.testing.assert_close(keys, out["spatial_keys"][layer])
            maps = positional_attention(out["spatial_queries"][layer], keys, 8, out["feature_mask"].flatten(1))
            assert torch.allclose(maps.sum(-1), torch.ones(()), atol=1e-5)
            assert maps[1][..., out["feature_mask"][1].flatten()].abs().max() == 0
        fine = model.spatial_keys(torch.zeros(1, 12, 10, dtype=torch.bool))
        assert fine.shape == (1, 120, 32)
