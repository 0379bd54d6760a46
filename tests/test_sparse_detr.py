"""Sparse DETR: the official parameter count, the tiny preset end to end on a padded batch, the
sparse encoder (untouched tokens, ρ = 1 is Deformable DETR's encoder), the top-ρ selection and the
DAM against brute-force oracles."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tutorial
from tutorial.errors import ConfigError
from tutorial.models.deformable_transformer import DeformableEncoder, DeformableTransformerConfig
from tutorial.models.sparse_detr import (SparseEncoder, dam_loss, dam_target, decoder_attention_map,
                                         num_sparse_tokens, select_sparse_tokens)
from tutorial.ops.deformable_attention import ms_deform_attn_core

from .tiny import padded_batch, small_model

torch.set_num_threads(1)

SMALL = {"transformer": {"d_model": 32, "num_encoder_layers": 2, "num_decoder_layers": 2, "dim_feedforward": 64},
         "num_queries": 6}
SHAPES = [(6, 7), (3, 4), (2, 2)]  # a small 3-level pyramid for the encoder tests, N = 62


def small(**overrides):
    return small_model("sparse_detr_tiny", SMALL, **overrides)


def test_paper_preset_has_the_official_parameter_count():
    """Deformable DETR two-stage (41,181,529) - pos_trans 2C->C (131,840) + scoring network (107,521)
    + 5 encoder aux heads (5 x 155,999) = 41,937,205."""
    model = tutorial.build_model("sparse_detr_r50")
    assert sum(p.numel() for p in model.parameters()) == 41_937_205


def test_tiny_preset_trains_a_step_on_a_padded_batch():
    model = small()
    images, mask, targets = padded_batch(second_empty=True)
    out = model(images, mask, return_intermediates=True)
    n = sum(h * w for h, w in out["spatial_shapes"])
    assert out["pred_logits"].shape == (2, 6, 6) and out["pred_boxes"].shape == (2, 6, 4)
    assert len(out["aux_outputs"]) == 1 and len(out["aux_outputs_enc"]) == 1  # 2 decoder, 2 encoder layers
    k = out["kept_indices"].shape[1]
    assert out["aux_outputs_enc"][0]["pred_logits"].shape == (2, k, 6)
    assert out["token_scores"].shape == out["kept_mask"].shape == (2, n)
    valid = (~out["padding_mask"]).sum(1)
    assert out["num_kept"].tolist() == [math.floor(0.1 * v) + 1 for v in valid.tolist()]
    assert out["kept_mask"].sum(1).tolist() == out["num_kept"].tolist()
    assert not (out["kept_mask"] & out["padding_mask"]).any()  # padding is never kept
    losses = model.build_criterion()(out, targets)
    assert {"loss_dam", "loss_ce_enc", "loss_ce_enc_0", "loss_ce_0"} <= set(losses)
    losses["loss"].backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None and "backbone" not in n]
    assert missing == []


def test_scoring_network_is_trained_by_the_dam_loss_alone():
    """The top-k selection has no gradient: the scores learn only from the DAM target."""
    model = small()
    images, mask, targets = padded_batch()
    out = model(images, mask)
    losses = model.build_criterion()(out, targets)
    (losses["loss"] - losses["loss_dam"]).backward(retain_graph=True)
    assert all(p.grad is None or not p.grad.any() for p in model.scoring_network.parameters())
    losses["loss_dam"].backward()
    assert all(p.grad is not None and p.grad.any() for p in model.scoring_network.parameters())


def encoder_inputs(b: int = 2, c: int = 32):
    torch.manual_seed(1)
    n = sum(h * w for h, w in SHAPES)
    padding = torch.zeros(b, n, dtype=torch.bool)
    start = 0
    for h, w in SHAPES:  # the second image: right half of every level padded
        level = torch.zeros(h, w, dtype=torch.bool)
        level[:, (w + 1) // 2:] = True
        padding[1, start:start + h * w] = level.flatten()
        start += h * w
    ratios = torch.ones(b, len(SHAPES), 2)
    ratios[1, :, 0] = torch.tensor([((w + 1) // 2) / w for _, w in SHAPES])
    return torch.randn(b, n, c), torch.randn(b, n, c), padding, ratios


def encoder(cls=SparseEncoder):
    torch.manual_seed(0)
    return cls(DeformableTransformerConfig(d_model=32, num_heads=4, num_encoder_layers=2, dim_feedforward=64,
                                           dropout=0.0, num_levels=len(SHAPES))).eval()


def test_tokens_outside_the_kept_set_are_untouched():
    src, pos, padding, ratios = encoder_inputs()
    scores = torch.randn(src.shape[:2])
    kept, num_kept = select_sparse_tokens(scores, padding, rho=0.2)
    with torch.no_grad():
        memory, _, states, _ = encoder()(src, pos, SHAPES, ratios, padding, kept, num_kept)
    written = torch.zeros_like(padding)
    for b in range(2):
        written[b, kept[b, :num_kept[b]]] = True
    assert torch.equal(memory[~written], src[~written])  # bitwise: never touched
    assert (memory[written] != src[written]).any(-1).all()  # every kept token was updated
    assert torch.equal(memory[0, kept[0]], states[-1][0])  # and holds the last layer's state


@pytest.mark.parametrize("rho", [0.05, 0.1, 0.3, 0.5, 1.0])
def test_top_rho_selection_against_brute_force_sort(rho):
    torch.manual_seed(2)
    scores = torch.randn(4, 40)
    padding = torch.zeros(4, 40, dtype=torch.bool)
    padding[1, 30:] = True
    padding[2, ::3] = True
    padding[3, 5:] = True
    kept, num_kept = select_sparse_tokens(scores, padding, rho)
    for b in range(4):
        valid = [i for i in range(40) if not padding[b, i]]
        expected_n = min(math.floor(rho * len(valid)) + 1, len(valid))  # official floor(ρ·n) + 1
        expected = sorted(valid, key=lambda i: -scores[b, i].item())[:expected_n]
        assert num_kept[b].item() == expected_n
        assert kept[b, :expected_n].tolist() == expected  # by decreasing score
    assert kept.shape[1] == num_kept.max()


def test_num_sparse_tokens_matches_the_official_formula():
    padding = torch.zeros(3, 300, dtype=torch.bool)
    padding[1, 123:] = True
    padding[2, 7:] = True
    assert num_sparse_tokens(padding, 0.1).tolist() == [31, 13, 1]
    assert num_sparse_tokens(padding, 1.0).tolist() == [300, 123, 7]  # capped at n_b


def test_rho_one_keeps_every_token_and_is_the_deformable_encoder():
    src, pos, padding, ratios = encoder_inputs()
    kept, num_kept = select_sparse_tokens(torch.randn(src.shape[:2]), padding, rho=1.0)
    assert num_kept.tolist() == (~padding).sum(1).tolist()
    sparse, dense = encoder(), encoder(DeformableEncoder)
    dense.load_state_dict(sparse.state_dict())
    with torch.no_grad():
        memory, *_ = sparse(src, pos, SHAPES, ratios, padding, kept, num_kept)
        expected, *_ = dense(src, pos, SHAPES, ratios, padding)
    valid = ~padding
    assert torch.allclose(memory[valid], expected[valid], atol=1e-5)


def random_sampling(b=2, q=5, m=2, p=3, layers=2):
    torch.manual_seed(3)
    return [(torch.rand(b, q, m, len(SHAPES), p, 2) * 1.3 - 0.15,  # some samples off the map
             torch.rand(b, q, m, len(SHAPES), p).softmax(-1)) for _ in range(layers)]


def test_dam_is_the_gradient_of_the_sampled_values():
    """Oracle: Σ (sampled values · weights) is linear in the value map, so its gradient with respect
    to each token is exactly the attention that reached that token."""
    sampling = random_sampling()
    n = sum(h * w for h, w in SHAPES)
    value = torch.ones(2, n, 2, 1, requires_grad=True)  # (B, N, M, d=1)
    total = sum(ms_deform_attn_core(value, SHAPES, loc, w).sum() for loc, w in sampling)
    (grad,) = torch.autograd.grad(total, value)
    dam = decoder_attention_map(sampling, SHAPES)
    assert torch.allclose(dam, grad.sum((2, 3)), atol=1e-5)


def test_official_dam_grid_is_shifted_by_half_a_pixel():
    """`pixel_centres=False` (official `attn_map_to_flat_grid`) reads location x as the sampler reads x + 0.5/W."""
    sampling = random_sampling()
    size = torch.tensor([[w, h] for h, w in SHAPES], dtype=torch.float32)[:, None, :]  # (L, 1, 2)
    shifted = [(loc + 0.5 / size, w) for loc, w in sampling]
    assert torch.allclose(decoder_attention_map(sampling, SHAPES, pixel_centres=False),
                          decoder_attention_map(shifted, SHAPES), atol=1e-5)


def test_dam_target_and_loss_against_brute_force():
    torch.manual_seed(4)
    dam, scores = torch.rand(2, 20), torch.randn(2, 20)
    padding = torch.zeros(2, 20, dtype=torch.bool)
    padding[1, 12:] = True
    dam[1, 15] = 9.0  # a padded token with the largest DAM is still not a target
    num_kept = num_sparse_tokens(padding, 0.25)  # [6, 4]
    target = dam_target(dam, padding, num_kept)
    for b in range(2):
        valid = [i for i in range(20) if not padding[b, i]]
        top = sorted(valid, key=lambda i: -dam[b, i].item())[:num_kept[b]]
        assert torch.equal(target[b].nonzero().flatten().sort().values, torch.tensor(sorted(top)))
    # the loss on a model's outputs equals the official multilabel_soft_margin_loss on that target
    model = small().eval()
    images, mask, _ = padded_batch()
    with torch.no_grad():
        out = model(images, mask)
        dam = decoder_attention_map(out["decoder_sampling"], out["spatial_shapes"])
        target = dam_target(dam, out["padding_mask"], out["num_kept"])
        assert torch.allclose(dam_loss(out), F.multilabel_soft_margin_loss(out["token_scores"], target), atol=1e-6)


def test_rho_can_be_changed_per_call_and_one_keeps_every_valid_token():
    model = small().eval()
    images, mask, _ = padded_batch()
    with torch.no_grad():
        counts = [model(images, mask, rho=rho)["num_kept"] for rho in (0.1, 0.5, 1.0)]
        out = model(images, mask, rho=1.0)
    assert (counts[0] < counts[1]).all() and (counts[1] < counts[2]).all()
    assert torch.equal(out["kept_mask"], ~out["padding_mask"])


def test_bad_configs_name_the_field():
    with pytest.raises(ConfigError, match="two_stage"):
        small(two_stage=False)
    with pytest.raises(ConfigError, match="rho"):
        small(rho=0.0)
