"""DAB-DETR: the official parameter count, anchors refined layer by layer, the anchor encoding
(the seed's PE(x, y, w, h), in the official order and on the pixels' scale), width/height
modulation, the 2-D (points) variant and frozen random x, y."""
from __future__ import annotations

import pytest
import torch

import tutorial
from tutorial.models.dab_detr import modulate_hw
from tutorial.exercises import BY_NAME, implementation
from tutorial.ops.position_encoding import anchor_position_encoding, sine_position_encoding

from .tiny import padded_batch, small_model

torch.set_num_threads(1)


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def test_dab_detr_r50_parameter_count_equals_official():
    """43,671,517: IDEA-Research/DAB-DETR's R50 model (PReLU in the 12 FFNs, the encoder's
    position scaling, ref_point_head MLP(2C, C, C), ref_anchor_head, 300 4-D anchors)."""
    model = tutorial.build_model("dab_detr_r50")
    assert count(model) == 43_671_517
    assert sum(isinstance(m, torch.nn.PReLU) for m in model.modules()) == 12
    assert model.refpoint_embed.weight.shape == (300, 4)
    assert model.position_encoding.temperature == 20


SMALL = {"transformer": {"d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 3, "dim_feedforward": 64},
         "num_queries": 6}


def small(**overrides):
    return small_model("dab_detr_tiny", SMALL, **overrides)


def inputs():
    return padded_batch((64, 80), (48, 80))


@pytest.mark.parametrize("variant", [{}, {"anchor_dim": 2, "modulate_hw_attn": False}, {"random_refpoints_xy": True}],
                         ids=["boxes", "points", "random_xy"])
def test_tiny_trains_a_step(variant):
    model = small(**variant)
    images, mask, targets = inputs()
    out = model(images, mask, return_intermediates=True)
    a = variant.get("anchor_dim", 4)
    assert out["pred_logits"].shape == (2, 6, 6) and out["pred_boxes"].shape == (2, 6, 4)
    assert [r.shape for r in out["reference_points"]] == [(2, 6, a)] * 3
    assert len(out["query_pos"]) == 3 and out["query_pos"][0].shape == (2, 6, 32)
    losses = model.build_criterion()(out, targets)
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    grad = model.refpoint_embed.weight.grad
    if variant.get("random_refpoints_xy"):  # x, y stay where they were drawn; w, h learn
        assert grad[:, :2].abs().max() == 0 and grad[:, 2:].abs().max() > 0
    else:
        assert grad.abs().max() > 0


def test_anchors_are_refined_layer_by_layer():
    model = small().eval()
    with torch.no_grad():  # the zero-initialised head would leave every anchor in place
        torch.nn.init.normal_(model.bbox_embed.layers[-1].weight, std=0.1)
    images, mask, _ = inputs()
    out = model(images, mask, return_intermediates=True)
    refs = out["reference_points"]
    assert torch.allclose(refs[0], model.refpoint_embed.weight.sigmoid().expand(2, -1, -1))  # learned anchors
    for before, after in zip(refs[:-1], refs[1:]):
        assert not torch.allclose(before, after, atol=1e-4)  # every layer moves them ...
        assert not after.requires_grad  # ... and they are detached between layers
    # every layer's box is predicted relative to the anchor it received
    delta = torch.logit(out["layer_boxes"], eps=1e-6) - torch.logit(torch.stack(refs), eps=1e-6)
    assert delta.abs().max() < 1.0  # small corrections, not free boxes (head weights std 0.1)


def test_points_variant_has_no_width_height_heads():
    model = small(anchor_dim=2, modulate_hw_attn=False)
    assert model.decoder.ref_anchor_head is None and model.refpoint_embed.weight.shape == (6, 2)
    assert model.decoder.ref_point_head.layers[0].in_features == 32  # PE(x, y) only
    with pytest.raises(ValueError, match="modulate_hw_attn"):
        small(anchor_dim=2)


def test_anchor_encoding_matches_the_pixels_encoding():
    """Seed: "position queries encoded in the same way as the image positional embeddings". A point
    at pixel (i, j)'s normalised position gets that pixel's sine encoding (same temperature)."""
    h, w, f = 5, 7, 16
    pixels = sine_position_encoding(torch.zeros(1, h, w, dtype=torch.bool), f)[0]  # (2F, H, W), [y | x]
    i, j = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    points = torch.stack([(j + 1) / w, (i + 1) / h], -1).float()  # (H, W, 2): the cumulative-count positions
    assert torch.allclose(anchor_position_encoding(points, f), pixels.permute(1, 2, 0), atol=1e-4)


def test_anchor_encoding_order_is_y_x_w_h():
    box = torch.tensor([[0.1, 0.2, 0.3, 0.4]])
    pe = anchor_position_encoding(box, 8)  # (1, 32)
    for block, coord in enumerate([1, 0, 2, 3]):
        single = anchor_position_encoding(box[:, [coord, coord]], 8)[:, :8]
        assert torch.allclose(pe[:, block * 8:(block + 1) * 8], single)


def test_anchor_encoding_checker_catches_the_seed_order():
    """The exercise follows the official order (y, x, w, h): an x-first encoding fails the checker."""
    ref = implementation("anchor_position_encoding")

    def x_first(anchors, num_pos_feats=128, temperature=10000.0):
        pe = ref(anchors, num_pos_feats, temperature)
        return torch.cat([pe[..., num_pos_feats:2 * num_pos_feats], pe[..., :num_pos_feats],
                          pe[..., 2 * num_pos_feats:]], -1)

    with pytest.raises(AssertionError):
        for checker in BY_NAME["anchor_position_encoding"].checks:
            checker(x_first)


def test_width_height_modulation():
    """The x half of PE(x, y) is scaled by w_ref / w, the y half by h_ref / h."""
    spatial = torch.ones(1, 1, 8)
    out = modulate_hw(spatial, torch.tensor([[[0.2, 0.3]]]), torch.tensor([[[0.5, 0.5, 0.4, 0.1]]]))
    assert torch.allclose(out[..., :4], torch.full((1, 1, 4), 3.0))  # y: 0.3 / 0.1
    assert torch.allclose(out[..., 4:], torch.full((1, 1, 4), 0.5))  # x: 0.2 / 0.4


def test_official_training_defaults():
    cfg = tutorial.build_model("dab_detr_tiny").cfg
    assert (cfg.matcher.cost_class, cfg.loss.loss_ce) == (2.0, 1.0)
    assert (cfg.transformer.dropout, cfg.activation, cfg.num_detections) == (0.0, "prelu", 300)
    model = small().eval()
    out = model(*inputs()[:2])
    det = model.postprocess(out, torch.tensor([[64, 80], [48, 80]]))[0]
    assert len(det["scores"]) == min(300, 6 * 6)  # top-k over (query, class) pairs
