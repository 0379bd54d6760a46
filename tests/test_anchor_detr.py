"""Anchor DETR: the official parameter count, queries = anchor points × patterns, row-column
decoupled attention against full 2-D attention computed by an explicit loop (in the separable case,
where the two are the same), padded batches, gradients, and the standard-attention variant."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tutorial
from tutorial.models.anchor_detr import RowColumnAttention, pixel_centres, rcda_map, sine_encoding_1d
from tutorial.ops.position_encoding import anchor_position_encoding

from .tiny import padded_batch, small_model

torch.set_num_threads(1)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_anchor_detr_r50_parameter_count_equals_official():
    """37,038,711: megvii-research/AnchorDETR's default model (R50-DC5 with frozen BN, RCDA in 6+6
    layers, FFN 1024, 300 points × 3 patterns, shared class and box heads over 91 classes)."""
    model = tutorial.build_model("anchor_detr_r50")
    assert count(model) == 37_038_711
    assert model.cfg.num_queries == 900 and model.anchor_points.weight.shape == (300, 2)
    assert model.patterns.weight.shape == (3, 256)
    assert model.backbone.strides == [16]  # DC5
    assert sum(isinstance(m, RowColumnAttention) for m in model.modules()) == 12


SMALL = {"transformer": {"d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 3, "dim_feedforward": 64},
         "num_anchor_points": 4, "num_patterns": 3}


def small(**overrides):
    return small_model("anchor_detr_tiny", SMALL, **overrides)


@pytest.mark.parametrize("attention", ["rcda", "standard"])
def test_tiny_trains_a_step_on_a_padded_batch(attention):
    model = small(attention=attention)
    images, mask, targets = padded_batch((64, 80), (48, 64), second_empty=True)
    out = model(images, mask, return_intermediates=True)
    assert out["pred_logits"].shape == (2, 12, 6) and out["pred_boxes"].shape == (2, 12, 4)
    assert len(out["aux_outputs"]) == 2 and out["layer_boxes"].shape == (3, 2, 12, 4)
    h, w = out["feature_size"]
    if attention == "rcda":
        assert [a.shape for a in out["decoder_attn_row"]] == [(2, 8, 12, w)] * 3
        assert [a.shape for a in out["decoder_attn_col"]] == [(2, 8, 12, h)] * 3
        assert out["encoder_attn_row"][0].shape == (2, 8, h * w, w)
        # padded columns and rows of the second image get no attention
        fmask = out["feature_mask"][1]
        assert out["decoder_attn_row"][0][1][..., fmask[0]].abs().max() == 0
        assert out["decoder_attn_col"][0][1][..., fmask[:, 0]].abs().max() == 0
    else:
        assert out["decoder_attention"][0].shape == (2, 8, 12, h * w)
    assert all(torch.isfinite(v).all() for k, v in out.items() if k.startswith("pred"))
    losses = model.build_criterion()(out, targets)
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    detections = model.postprocess(out, torch.tensor([[64, 80], [48, 64]]))
    assert detections[0]["boxes"].shape == (min(100, 12 * 6), 4)


def test_returning_intermediates_does_not_change_predictions():
    model = small().eval()
    images, mask, _ = padded_batch((64, 80), (48, 64))
    a, b = model(images, mask), model(images, mask, return_intermediates=True)
    assert torch.equal(a["pred_boxes"], b["pred_boxes"]) and torch.equal(a["pred_logits"], b["pred_logits"])


def test_queries_are_every_pattern_at_every_anchor_point():
    """Q = N_A · N_p; query p·N_A + i is pattern p's embedding at point i, so the N_p queries of a
    point share its position (and its encodings), and the first boxes sit on the points."""
    model = small()
    n, p = 4, 3
    tgt, points = model.queries(2)
    assert tgt.shape == (2, n * p, 32) and points.shape == (2, n * p, 2)
    for q in range(n * p):
        assert torch.equal(tgt[:, q], model.patterns.weight[q // n].expand(2, -1))
        assert torch.equal(points[:, q], model.anchor_points.weight[q % n].expand(2, -1))
    pos = model.query_positions(points)
    for part in pos:  # every encoding of a query is the same for the N_p queries of a point
        per_point = part.reshape(2, p, n, -1)  # (B, N_p, N_A, C)
        assert torch.allclose(per_point, per_point[:, :1].expand_as(per_point))
    model.eval()
    images, mask, _ = padded_batch((64, 80), (48, 64))
    centres = model(images, mask)["pred_boxes"][..., :2]  # the box head starts at Δ = 0
    assert torch.allclose(centres, points.clamp(1e-5, 1 - 1e-5), atol=1e-5)
    assert model.anchor_points.weight.min() >= 0 and model.anchor_points.weight.max() <= 1


def full_2d_attention_loop(attn: RowColumnAttention, query_row, query_col, key_row, key_col, value, mask):
    """Oracle: ordinary attention over all H·W pixels, one (batch, head, query) at a time. The query
    is Cat(q_row, q_col) and pixel (h, w)'s key is Cat(k_row(h, w), k_col(h, w)), each projected by
    the module's weights; the logit is their dot product / √d, the softmax runs over the valid
    pixels. Returns (out (B, Q, C), weights (B, M, Q, H, W))."""
    b, q, c = query_row.shape
    _, h, w, _ = value.shape
    m = attn.num_heads
    d = c // m
    def proj(lin, x):
        return F.linear(x, lin.weight, lin.bias)

    qr, qc = proj(attn.q_row, query_row), proj(attn.q_col, query_col)
    kr, kc = proj(attn.k_row, key_row), proj(attn.k_col, key_col)
    v = proj(attn.v_proj, value)
    out = torch.zeros(b, q, c, dtype=value.dtype)
    weights = torch.zeros(b, m, q, h, w, dtype=value.dtype)
    for bi in range(b):
        for mi in range(m):
            s = slice(mi * d, (mi + 1) * d)
            for qi in range(q):
                logits = torch.full((h, w), float("-inf"), dtype=value.dtype)
                for y in range(h):
                    for x in range(w):
                        if not mask[bi, y, x]:
                            dot = qr[bi, qi, s] @ kr[bi, y, x, s] + qc[bi, qi, s] @ kc[bi, y, x, s]
                            logits[y, x] = dot / math.sqrt(d)
                a = logits.flatten().softmax(0).reshape(h, w)
                weights[bi, mi, qi] = a
                out[bi, qi, s] = (a[..., None] * v[bi, :, :, s]).sum((0, 1))
    return F.linear(out, attn.out_proj.weight, attn.out_proj.bias), weights


def test_rcda_equals_full_2d_attention_when_the_weights_factor():
    """Separable case: the row keys do not change down a column and the column keys do not change
    along a row, and a padded image pads whole rows and columns. Then the full 2-D logits are
    a_y(h) + a_x(w), softmax over (h, w) is softmax_h(a_y) · softmax_w(a_x) exactly, and RCDA
    (Eq. 6) equals full attention; its maps are the two factors."""
    torch.manual_seed(0)
    b, q, h, w, c, m = 2, 3, 4, 5, 8, 2
    attn = RowColumnAttention(c, m).double()
    query_row, query_col = torch.randn(b, q, c, dtype=torch.float64), torch.randn(b, q, c, dtype=torch.float64)
    key_row = torch.randn(b, 1, w, c, dtype=torch.float64).expand(b, h, w, c)  # constant down each column
    key_col = torch.randn(b, h, 1, c, dtype=torch.float64).expand(b, h, w, c)  # constant along each row
    value = torch.randn(b, h, w, c, dtype=torch.float64)
    mask = torch.zeros(b, h, w, dtype=torch.bool)
    mask[1, 3:, :] = True
    mask[1, :, 3:] = True
    r = attn(query_row, query_col, key_row, key_col, value, mask, need_weights=True)
    expected, weights = full_2d_attention_loop(attn, query_row, query_col, key_row, key_col, value, mask)
    assert r.attn_row.shape == (b, m, q, w) and r.attn_col.shape == (b, m, q, h)
    err = (r.out - expected).abs().max().item()
    assert err < 1e-12, f"RCDA vs full 2-D attention: max |diff| = {err:.2e}"
    assert torch.allclose(rcda_map(r.attn_row, r.attn_col), weights, atol=1e-12)
    assert torch.allclose(r.attn_row.sum(-1), torch.ones((), dtype=torch.float64))
    assert torch.allclose(r.attn_col.sum(-1), torch.ones((), dtype=torch.float64))


def test_rcda_is_not_full_attention_when_keys_vary_in_both_directions():
    """Outside the separable case RCDA averages the keys: a genuine approximation, not an identity."""
    torch.manual_seed(1)
    attn = RowColumnAttention(8, 2).double()
    args = [torch.randn(1, 2, 8, dtype=torch.float64) for _ in range(2)] + \
           [torch.randn(1, 3, 4, 8, dtype=torch.float64) for _ in range(3)]
    mask = torch.zeros(1, 3, 4, dtype=torch.bool)
    expected, _ = full_2d_attention_loop(attn, *args, mask)
    assert (attn(*args, mask).out - expected).abs().max() > 1e-3


def test_positions_are_pixel_centres_over_the_valid_part():
    mask = torch.zeros(1, 4, 6, dtype=torch.bool)
    mask[0, 2:, :] = True
    mask[0, :, 3:] = True
    y, x = pixel_centres(mask)
    assert torch.allclose(y[0, :2], torch.tensor([0.25, 0.75]))
    assert torch.allclose(x[0, :3], torch.tensor([1, 3, 5]) / 6)
    # the 1-D encoding is one block of the 2-D one: PE(x, y) = Cat(PE(y), PE(x))
    pts = torch.rand(5, 2)
    pe = anchor_position_encoding(pts, 16)
    assert torch.allclose(pe[:, 16:], sine_encoding_1d(pts[:, 0], 16))
    assert torch.allclose(pe[:, :16], sine_encoding_1d(pts[:, 1], 16))


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="AnchorDETRConfig.attention"):
        tutorial.build_model("anchor_detr_tiny", attention="deformable")
