"""Lite DETR on DINO: the official parameter count, key-aware deformable attention against an
explicit loop, the interleaved update schedule (a high-level layer leaves the low-level tokens
bitwise unchanged), padding, and a training step of the tiny preset."""
from __future__ import annotations

import math

import pytest
import torch

import tutorial
from tutorial.checks.deformable_attention import bilinear_pixel_loop
from tutorial.models.lite_detr import LiteDINOConfig, LiteEncoder, encoder_schedule
from tutorial.models.transformer import tiny_transformer
from tutorial.models.deformable_transformer import DeformableTransformerConfig
from tutorial.ops.key_aware_attention import KeyAwareDeformAttn, key_aware_core

from .tiny import padded_batch, small_model

torch.set_num_threads(1)

SMALL = {"transformer": {"d_model": 32, "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 64},
         "num_queries": 6, "dn_number": 4}  # lite_dino_tiny's one block, now of 1 high-level + 1 all-level layer


def small(**overrides):
    return small_model("lite_dino_tiny", SMALL, **overrides)


# --- the paper preset ----------------------------------------------------------------------------


def test_lite_dino_4scale_r50_parameter_count_equals_official():
    """47,684,222: IDEA-Research/Lite-DETR's DINO_4scale with key_aware=True (DINO's 46,893,182,
    + 12 x 32,896 for KDA's query_proj in place of attention_weights, + 3 x 132,096 for the
    all-level layers' small low-level FFN and norm)."""
    model = tutorial.build_model("lite_dino_4scale_r50")
    assert sum(p.numel() for p in model.parameters()) == 47_684_222
    assert model.schedule == [(1, 2, 3), (0, 1, 2, 3)] * 3 == model.cfg.schedule
    attns = [m for m in model.modules() if isinstance(m, KeyAwareDeformAttn)]
    assert len(attns) == 12 and not any("attention_weights" in n for n, _ in model.named_parameters())
    assert [layer.low_ffn is not None for layer in model.encoder.layers] == [False, True] * 3


# --- key-aware deformable attention against a loop -------------------------------------------------


def kda_loop(query, value, key, shapes, locations):
    """query (B, Q, M, d), value and key (B, N, M, d), locations (B, Q, M, L, P, 2) -> out (B, Q, M·d),
    weights (B, Q, M, L, P): per query and head, sample every key and value, softmax of q·k/√d."""
    b_, q_, m_, d = query.shape
    levels_v = list(value.split([h * w for h, w in shapes], 1))
    levels_k = list(key.split([h * w for h, w in shapes], 1))
    out = torch.zeros(b_, q_, m_, d, dtype=query.dtype)
    weights = torch.zeros(locations.shape[:-1], dtype=query.dtype)
    for b in range(b_):
        for q in range(q_):
            for m in range(m_):
                keys, vals = [], []
                for lvl, (h, w) in enumerate(shapes):
                    for p in range(locations.shape[4]):
                        x, y = locations[b, q, m, lvl, p].tolist()
                        keys.append(bilinear_pixel_loop(levels_k[lvl][b, :, m].view(h, w, d).permute(2, 0, 1), x, y))
                        vals.append(bilinear_pixel_loop(levels_v[lvl][b, :, m].view(h, w, d).permute(2, 0, 1), x, y))
                logits = torch.stack([(query[b, q, m] * k).sum() / math.sqrt(d) for k in keys])
                a = logits.exp() / logits.exp().sum()
                out[b, q, m] = sum(ai * v for ai, v in zip(a, vals))
                weights[b, q, m] = a.view(len(shapes), -1)
    return out.flatten(2), weights


SHAPES = [(4, 5), (2, 3)]


def test_key_aware_core_equals_explicit_loop():
    """In float64 with samples outside the maps; keys shared with the values (official) and separate."""
    g = torch.Generator().manual_seed(0)
    n = sum(h * w for h, w in SHAPES)
    query = torch.randn(2, 3, 2, 4, generator=g, dtype=torch.float64)
    value, key = (torch.randn(2, n, 2, 4, generator=g, dtype=torch.float64) for _ in range(2))
    loc = torch.rand(2, 3, 2, len(SHAPES), 3, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    assert ((loc < 0) | (loc > 1)).any()
    for k in (None, key):
        out, w = key_aware_core(query, value, SHAPES, loc, key=k)
        ref_out, ref_w = kda_loop(query, value, value if k is None else k, SHAPES, loc)
        assert (out - ref_out).abs().max() < 1e-12 and (w - ref_w).abs().max() < 1e-12


def test_key_aware_module_equals_explicit_loop():
    """The module end to end, in float64, with a padding mask: W_q on the query, W_v (= W_k) on the
    inputs with padded pixels zeroed, locations = reference + offset / (W_l, H_l), W_o at the end."""
    torch.manual_seed(0)
    attn = KeyAwareDeformAttn(d_model=8, n_levels=2, n_heads=2, n_points=3).double()
    for p in attn.parameters():  # away from the initialisation, so every projection matters
        torch.nn.init.normal_(p, std=0.3)
    n = sum(h * w for h, w in SHAPES)
    query, x = torch.randn(2, 4, 8, dtype=torch.float64), torch.randn(2, n, 8, dtype=torch.float64)
    ref = torch.rand(2, 4, 2, 2, dtype=torch.float64)
    padding = torch.zeros(2, n, dtype=torch.bool)
    padding[1, 3:7] = True
    out, loc, w = attn(query, ref, x, SHAPES, padding)
    offsets = attn.sampling_offsets(query).view(2, 4, 2, 2, 3, 2)
    size = torch.tensor([[wd, h] for h, wd in SHAPES], dtype=torch.float64)  # (L, 2) as (W_l, H_l)
    expected_loc = ref[:, :, None, :, None, :] + offsets / size[None, None, None, :, None, :]
    value = attn.value_proj(x).masked_fill(padding[..., None], 0.0).view(2, n, 2, 4)
    ref_out, ref_w = kda_loop(attn.query_proj(query).view(2, 4, 2, 4), value, value, SHAPES, expected_loc)
    assert (loc - expected_loc).abs().max() < 1e-12
    assert (w - ref_w).abs().max() < 1e-12
    assert (out - attn.output_proj(ref_out)).abs().max() < 1e-12


def test_key_aware_initialisation_matches_deformable_attention():
    """The offsets start on the same ring as MSDeformAttn's; there is no attention_weights layer."""
    torch.manual_seed(0)
    kda = KeyAwareDeformAttn(32, 4, 8, 4)
    base = tutorial.ops.deformable_attention.MSDeformAttn(32, 4, 8, 4)
    assert torch.equal(kda.sampling_offsets.bias, base.sampling_offsets.bias)
    assert (kda.sampling_offsets.weight == 0).all() and not hasattr(kda, "attention_weights")
    assert (kda.query_proj.bias == 0).all() and kda.query_proj.weight.abs().sum() > 0


# --- the interleaved schedule ----------------------------------------------------------------------


def test_encoder_schedule():
    assert encoder_schedule(6, 3, 4, 3) == [(1, 2, 3), (0, 1, 2, 3)] * 3  # official DINO_4scale
    assert encoder_schedule(6, 2, 4, 3) == [(1, 2, 3), (1, 2, 3), (0, 1, 2, 3)] * 2
    assert encoder_schedule(3, 1, 4, 2) == [(2, 3), (2, 3), (0, 1, 2, 3)]
    assert encoder_schedule(2, 2, 4, 3) == [(0, 1, 2, 3)] * 2  # one layer per block: every layer is all-level
    with pytest.raises(ValueError, match="num_blocks"):
        encoder_schedule(6, 4, 4, 3)
    with pytest.raises(ValueError, match="high_levels"):
        encoder_schedule(6, 3, 4, 5)
    assert tutorial.build_model("lite_dino_tiny").schedule == [(1, 2, 3), (1, 2, 3), (0, 1, 2, 3)]


def encoder_inputs(seed=0, c=16):
    """A 2-image batch over 4 levels, image 1 padded."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(6, 8), (3, 4), (2, 2), (1, 1)]
    n = sum(h * w for h, w in shapes)
    src, pos = torch.randn(2, n, c, generator=g), torch.randn(2, n, c, generator=g)
    masks = [torch.zeros(2, h, w, dtype=torch.bool) for h, w in shapes]
    masks[0][1, :, 6:] = True
    masks[1][1, :, 3:] = True
    padding = torch.cat([m.flatten(1) for m in masks], 1)  # (B, N)
    ratios = torch.tensor([[[1.0, 1.0]] * 4, [[0.75, 1.0], [0.75, 1.0], [1.0, 1.0], [1.0, 1.0]]])  # (B, L, 2)
    return src, pos, shapes, ratios, padding


def small_encoder(num_layers=4, num_blocks=2, **changes):
    torch.manual_seed(0)
    tc = tiny_transformer(DeformableTransformerConfig, d_model=16, num_heads=2, num_encoder_layers=num_layers,
                          dim_feedforward=32)
    return LiteEncoder(LiteDINOConfig(transformer=tc, num_blocks=num_blocks, **changes)).eval()


@pytest.mark.parametrize("key_aware", [True, False])
def test_high_level_layer_leaves_low_level_tokens_bitwise_unchanged(key_aware):
    """Schedule high, all, high, all: after layer 0 the stride-8 tokens are the input bit for bit and
    every high-level token has changed; after layer 1 the low-level tokens have changed too."""
    encoder = small_encoder(key_aware=key_aware)
    assert encoder.schedule == [(1, 2, 3), (0, 1, 2, 3)] * 2
    src, pos, shapes, ratios, padding = encoder_inputs()
    n_low = shapes[0][0] * shapes[0][1]
    with torch.no_grad():
        one, _, sampling = encoder(src, pos, shapes, ratios, padding, return_sampling=True, num_layers=1)
        two, _, _ = encoder(src, pos, shapes, ratios, padding, num_layers=2)
    assert torch.equal(one[:, :n_low], src[:, :n_low])
    assert ((one[:, n_low:] - src[:, n_low:]).abs().amax(-1) > 1e-3).all()
    assert ((two[:, :n_low] - src[:, :n_low]).abs().amax(-1) > 1e-3).all()
    assert sampling[0][0].shape[:2] == (2, src.shape[1] - n_low)  # only the high-level tokens were queries


def test_small_ffn_only_in_all_level_layers():
    encoder = small_encoder()
    assert [layer.low_ffn is not None for layer in encoder.layers] == [False, True, False, True]
    assert encoder.layers[1].low_ffn.linear1.out_features == 16  # C -> C -> C
    assert all(layer.low_ffn is None for layer in small_encoder(small_low_ffn=False).layers)


def test_padding_does_not_reach_valid_tokens():
    """Changing the features of image 1's padded pixels changes none of its valid tokens: padded
    values and keys are zero in every layer (KDA gives them logit 0 and nothing to add)."""
    encoder = small_encoder()
    src, pos, shapes, ratios, padding = encoder_inputs()
    noisy = src.clone()
    noisy[padding] = torch.randn(int(padding.sum()), src.shape[-1]) * 10
    with torch.no_grad():
        a, _, _ = encoder(src, pos, shapes, ratios, padding)
        b, _, _ = encoder(noisy, pos, shapes, ratios, padding)
    assert (a[~padding] - b[~padding]).abs().max() < 1e-5


# --- the model ------------------------------------------------------------------------------------


def test_output_shapes_on_a_padded_batch():
    model = small().eval()
    images, mask, _ = padded_batch()
    with torch.no_grad():
        out = model(images, mask, return_intermediates=True)
    assert out["pred_logits"].shape == (2, 6, 6) and out["pred_boxes"].shape == (2, 6, 4)
    assert len(out["aux_outputs"]) == 1 and out["interm_outputs"]["pred_boxes"].shape == (2, 6, 4)
    assert out["encoder_schedule"] == [(1, 2, 3), (0, 1, 2, 3)]
    shapes = out["spatial_shapes"]
    n, n_low = sum(h * w for h, w in shapes), shapes[0][0] * shapes[0][1]
    assert [loc.shape[1] for loc, _ in out["encoder_sampling"]] == [n - n_low, n]
    assert out["decoder_sampling"][0][1].shape == (2, 6, 8, 4, 4)  # (B, Q, M, L, P) weights from q·k
    assert torch.isfinite(out["pred_boxes"]).all() and torch.isfinite(out["pred_logits"]).all()
    dets = model.postprocess(out, torch.tensor([[96, 112], [64, 80]]))
    assert len(dets) == 2 and dets[1]["boxes"].shape[-1] == 4


def test_tiny_trains_a_step_and_gradients_reach_every_parameter():
    model = small().train()
    images, mask, targets = padded_batch()
    out = model(images, mask, targets=targets)
    losses = model.build_criterion()(out, targets)
    for name in ("loss_ce", "loss_bbox", "loss_ce_dn", "loss_ce_interm"):
        assert losses[name] > 0
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    enc = model.encoder.layers
    assert enc[0].self_attn.query_proj.weight.grad.abs().sum() > 0  # KDA's W_q in a high-level layer
    assert enc[1].low_ffn.linear2.weight.grad.abs().sum() > 0  # the small FFN of the low-level tokens
    assert model.decoder.layers[0].cross_attn.query_proj.weight.grad.abs().sum() > 0  # KDA in the decoder


def test_lite_dino_tiny_preset_as_shipped_trains_a_step():
    torch.manual_seed(0)
    model = tutorial.build_model("lite_dino_tiny").train()
    assert isinstance(model, tutorial.models.dino.DINO) and model.cfg.key_aware
    images, mask, targets = padded_batch()
    losses = model.build_criterion()(model(images, mask, targets=targets), targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and losses["loss_ce_dn"] > 0
