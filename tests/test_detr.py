"""DETR: the paper preset's exact parameter count, the tiny preset, attention and positions."""
from __future__ import annotations

import pytest
import torch

import tutorial
from tutorial.ops.attention import MultiHeadAttention
from tutorial.models.detr import PE_ABLATION
from tutorial.ops.position_encoding import LearnedPositionEncoding, sine_position_encoding


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_detr_r50_parameter_count_equals_official():
    """41,524,768: facebookresearch/detr's DETR-R50 (frozen batch norm holds buffers, not parameters)."""
    assert count(tutorial.build_model("detr_r50")) == 41_524_768


def test_detr_r50_uses_frozen_batch_norm_and_freezes_stem():
    model = tutorial.build_model("detr_r50")
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    trainable = {n.split(".")[1] for n, p in model.backbone.named_parameters() if p.requires_grad}
    assert trainable == {"layer2", "layer3", "layer4"}


def test_list_and_build_models():
    assert {"detr_r50", "detr_tiny"} <= set(tutorial.list_models())
    model = tutorial.build_model("detr_tiny", num_queries=7, transformer={"num_decoder_layers": 2})
    assert model.query_embed.num_embeddings == 7 and len(model.transformer.decoder_layers) == 2
    with pytest.raises(TypeError, match="num_querys"):
        tutorial.build_model("detr_tiny", num_querys=7)
    with pytest.raises(KeyError, match="unknown model"):
        tutorial.build_model("detr_huge")


def small_model(**overrides):
    torch.manual_seed(0)
    base = dict(transformer={"num_encoder_layers": 2, "num_decoder_layers": 2, "d_model": 32, "dim_feedforward": 64},
                num_queries=5)
    for k, v in overrides.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return tutorial.build_model("detr_tiny", **base).eval()


def batch(sizes=((64, 80), (48, 64))):
    h, w = max(s[0] for s in sizes), max(s[1] for s in sizes)
    images = torch.randn(len(sizes), 3, h, w)
    mask = torch.ones(len(sizes), h, w, dtype=torch.bool)
    for i, (hh, ww) in enumerate(sizes):
        mask[i, :hh, :ww] = False
    return images, mask


def test_forward_shapes_and_attention_maps():
    model = small_model()
    images, mask = batch()
    out = model(images, mask, return_attention=True)
    b, q, k1 = 2, 5, 7
    assert out["pred_logits"].shape == (b, q, k1) and out["pred_boxes"].shape == (b, q, 4)
    assert len(out["aux_outputs"]) == 1
    h, w = out["feature_size"]
    assert (h, w) == (4, 5)  # stride 16
    assert len(out["encoder_attention"]) == 2 and out["encoder_attention"][0].shape == (b, 8, h * w, h * w)
    assert out["decoder_attention"][-1].shape == (b, 8, q, h * w)
    # Attention rows are distributions, and padded keys get no attention.
    enc = out["encoder_attention"][0]
    assert torch.allclose(enc.sum(-1), torch.ones(()), atol=1e-5)
    pad = out["feature_mask"].flatten(1)  # (B, N)
    assert enc[1][..., pad[1]].abs().max() == 0


def test_returning_attention_does_not_change_predictions():
    """The explicit softmax path (with weights) equals the fused SDPA path (without)."""
    model = small_model()
    images, mask = batch()
    a, b = model(images, mask), model(images, mask, return_attention=True)
    assert torch.allclose(a["pred_logits"], b["pred_logits"], atol=1e-5)
    assert torch.allclose(a["pred_boxes"], b["pred_boxes"], atol=1e-6)


def test_attention_matches_torch_multihead_attention():
    """Our MultiHeadAttention computes exactly what nn.MultiheadAttention computes with the same weights."""
    torch.manual_seed(0)
    ours = MultiHeadAttention(16, 4).eval()
    ref = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.k_proj.weight, ours.v_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.k_proj.bias, ours.v_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    q, kv = torch.randn(2, 3, 16), torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    out, w = ours(q, kv, kv, key_padding_mask=pad)
    ref_out, ref_w = ref(q, kv, kv, key_padding_mask=pad, average_attn_weights=False)
    assert torch.allclose(out, ref_out, atol=1e-6) and torch.allclose(w, ref_w, atol=1e-6)


@pytest.mark.parametrize("row", list(PE_ABLATION), ids=lambda r: " | ".join(r))
def test_every_positional_encoding_ablation_row_runs(row):
    model = small_model(**PE_ABLATION[row])
    out = model(*batch())
    assert torch.isfinite(out["pred_boxes"]).all()


def test_ablation_rows_differ_where_positions_enter():
    none = small_model(**PE_ABLATION[("none", "none", "learned at input")])
    assert none.transformer.cfg.encoder_pos == "none" and none.transformer.cfg.query_pos == "input"
    learned = small_model(**PE_ABLATION[("learned at attn.", "learned at attn.", "learned at attn.")])
    assert isinstance(learned.position_encoding, LearnedPositionEncoding)


def test_sine_encoding_respects_padding():
    """A padded image's valid pixels get the same encoding as the image alone."""
    alone = sine_position_encoding(torch.zeros(1, 4, 6, dtype=torch.bool), 16)
    mask = torch.ones(1, 7, 9, dtype=torch.bool)
    mask[0, :4, :6] = False
    padded = sine_position_encoding(mask, 16)
    assert torch.allclose(padded[..., :4, :6], alone)


def test_positions_matter_with_encoding_and_not_without():
    """Attention is permutation-invariant: shuffling the memory tokens changes nothing unless a
    spatial encoding tells the transformer where each token is (the reason for the ablation)."""
    torch.manual_seed(0)
    src, pos = torch.randn(2, 12, 32), torch.randn(2, 12, 32)
    pad = torch.zeros(2, 12, dtype=torch.bool)
    queries = torch.randn(2, 5, 32)
    perm = torch.randperm(12)

    def decoded(model, s, p):
        t = model.transformer
        memory, _ = t.encode(s, p, pad)
        return t.decode(memory, p, pad, queries)[0]

    blind = small_model(**PE_ABLATION[("none", "none", "learned at input")])
    assert torch.allclose(decoded(blind, src, pos), decoded(blind, src[:, perm], pos), atol=1e-5)
    seeing = small_model()
    assert not torch.allclose(decoded(seeing, src, pos), decoded(seeing, src[:, perm], pos), atol=1e-3)


def test_positional_attention_is_the_cross_attention_of_positions_alone():
    """DAB-DETR Fig. 2(a): with the learned queries o_q as the only query input and the pixel
    positions p_k as the only key input, a decoder layer's own cross-attention module (via
    torch.nn.MultiheadAttention, an independent implementation) gives the positional maps."""
    model = small_model().eval()
    images, mask = batch()
    out = model(images, mask, return_attention=True)
    fmask = out["feature_mask"]  # (B, H_f, W_f), image 1 padded
    pos = model.position_encoding(fmask).flatten(2).transpose(1, 2)  # (B, N, C)
    for layer in range(2):
        ours = model.positional_attention(fmask, layer)  # (B, M, Q, N)
        attn = model.transformer.decoder_layers[layer].cross_attn
        c = attn.q_proj.weight.shape[0]
        ref = torch.nn.MultiheadAttention(c, attn.num_heads, batch_first=True).eval()
        with torch.no_grad():
            ref.in_proj_weight.copy_(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]))
            ref.in_proj_bias.copy_(torch.cat([attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]))
            queries = model.query_embed.weight.expand(2, -1, -1)  # (B, Q, C)
            _, expected = ref(queries, pos, pos, key_padding_mask=fmask.flatten(1), average_attn_weights=False)
        torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    # It needs no image, only a grid: any size, each map a distribution over its cells.
    coarse = model.positional_attention(torch.zeros(1, 4, 4, dtype=torch.bool))  # (1, M, Q, 16)
    fine = model.positional_attention(torch.zeros(1, 8, 8, dtype=torch.bool))  # (1, M, Q, 64)
    assert coarse.shape[-1] == 16 and fine.shape[-1] == 64
    assert torch.allclose(fine.sum(-1), torch.ones(()), atol=1e-5)


def test_fused_attention_runs_in_float32_under_cpu_autocast():
    """Under bf16 autocast on the CPU the fused attention computes in float32 (its bf16 backward is
    several times slower there): same values as outside autocast, gradients flow."""
    from tutorial.ops.attention import allowed_mask, fused_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 4, 7, 8, requires_grad=True) for _ in range(3))
    pad = torch.zeros(2, 7, dtype=torch.bool)
    pad[1, 5:] = True
    ref = fused_attention(q, k, v, allowed_mask(pad, None), 0.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fused_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), allowed_mask(pad, None), 0.0)
    assert out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=3e-2)  # the inputs were rounded to bf16, the attention was not
    out.sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
