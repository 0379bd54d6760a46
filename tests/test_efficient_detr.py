"""Efficient DETR: the presets' sizes, the tiny model end to end on a padded batch, the dense prior
(top-k by a brute-force sort) initialising the decoder's reference boxes and content queries, and
padded tokens never proposed."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

import tutorial
from tutorial.models.efficient_detr import EfficientDETR
from tutorial.models.query_selection import select_top_k

from .tiny import padded_batch, small_model

torch.set_num_threads(1)

SMALL = {"transformer": {"d_model": 32, "num_encoder_layers": 1, "dim_feedforward": 64}, "num_queries": 6}


def small(**overrides) -> EfficientDETR:
    return small_model("efficient_detr_tiny", SMALL, **overrides)


def padding_of(out: dict) -> torch.Tensor:
    """(B, N) True on padded tokens, from the level masks, flattened level by level."""
    return torch.cat([m.flatten(1) for m in out["level_masks"]], 1)


def test_paper_preset_is_3_encoder_layers_1_decoder_layer_and_its_parameter_count():
    model = tutorial.build_model("efficient_detr_r50")
    assert len(model.encoder.layers) == 3 and len(model.decoder.layers) == 1
    assert model.cfg.num_queries == 100
    assert sum(p.numel() for p in model.parameters()) == 32_674_079  # this package's count


def test_tiny_preset_is_3_encoder_layers_1_decoder_layer():
    model = tutorial.build_model("efficient_detr_tiny")
    assert len(model.encoder.layers) == 3 and len(model.decoder.layers) == 1
    assert model.cfg.num_classes == 6 and model.cfg.backbone.weights == "pretrained:resnet_tiny"
    assert sum(p.numel() for p in model.parameters()) == 2_719_178


@pytest.mark.parametrize("share_heads", [True, False], ids=["shared_heads", "separate_heads"])
def test_padded_batch_shapes_and_a_training_step(share_heads):
    model = small(share_heads=share_heads)
    images, mask, targets = padded_batch(second_empty=True)
    out = model(images, mask, return_intermediates=True)
    n = sum(h * w for h, w in out["spatial_shapes"])
    assert [tuple(s) for s in out["spatial_shapes"]] == [(12, 14), (6, 7), (3, 4), (2, 2)]
    assert out["pred_logits"].shape == (2, 6, 6) and out["pred_boxes"].shape == (2, 6, 4)
    assert out["aux_outputs"] == []  # one decoder layer: no auxiliary layer
    dense = out["dense_outputs"]
    assert dense["pred_logits"].shape == (2, n, 6) and dense["pred_boxes"].shape == (2, n, 4)
    prop = out["proposals"]
    assert prop["boxes"].shape == (2, 6, 4) and prop["scores"].shape == (2, 6) and prop["indices"].shape == (2, 6)
    assert out["layer_boxes"].shape == (1, 2, 6, 4) and torch.equal(out["layer_boxes"][-1], out["pred_boxes"])
    assert torch.isfinite(out["pred_boxes"]).all() and torch.isfinite(prop["boxes"]).all()
    losses = model.build_criterion()(out, targets)
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_ce_dense", "loss_bbox_dense", "loss_giou_dense"} <= set(losses)
    assert torch.isfinite(losses["loss"])
    losses["loss"].backward()
    missing = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []
    # the box head's last layer: zero-initialised, it blocks the gradient to the earlier ones at first
    dense_head = [model.class_embed[-1].weight, model.bbox_embed[-1].layers[-1].weight]
    sparse = [model.decoder.layers[0].cross_attn.value_proj.weight, model.class_embed[0].weight]
    assert all(p.grad.abs().sum() > 0 for p in dense_head + sparse)


def test_each_part_has_its_own_loss():
    """The dense loss alone trains the dense head and not the decoder; the sparse loss trains the decoder."""
    model = small(share_heads=False)
    images, mask, targets = padded_batch()
    out = model(images, mask)
    losses = model.build_criterion()(out, targets)
    dense = sum(losses[f"{k}_dense"] * w for k, w in [("loss_ce", 2.0), ("loss_bbox", 5.0), ("loss_giou", 2.0)])
    dense.backward(retain_graph=True)
    assert model.class_embed[1].weight.grad.abs().sum() > 0
    assert model.bbox_embed[1].layers[-1].weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.decoder.parameters())
    sparse = 2 * losses["loss_ce"] + 5 * losses["loss_bbox"] + 2 * losses["loss_giou"]
    assert torch.allclose(losses["loss"], dense + sparse)
    dense_grad = model.class_embed[1].weight.grad.clone()
    sparse.backward()  # the reference is detached and the selection is an index: the dense head is untouched
    assert all(p.grad is not None for p in model.decoder.parameters())
    assert torch.equal(model.class_embed[1].weight.grad, dense_grad)


def test_decoder_starts_from_the_top_k_dense_boxes_and_encoder_features():
    """An independent top-k: sort every unpadded token of each image by its best-class dense score."""
    torch.manual_seed(1)
    model = small().eval()
    images, mask, _ = padded_batch()
    with torch.no_grad():
        out = model(images, mask, return_intermediates=True)
    dense, padded = out["dense_outputs"], padding_of(out)
    for b in range(2):
        scores = dense["pred_logits"][b].max(-1).values.tolist()  # (N,)
        order = sorted((t for t in range(len(scores)) if not padded[b, t]), key=lambda t: -scores[t])[:6]
        assert out["proposals"]["indices"][b].tolist() == order
        assert torch.allclose(out["reference_points"][0][b], dense["pred_boxes"][b, order], atol=1e-6)
        assert torch.allclose(out["proposals"]["boxes"][b], dense["pred_boxes"][b, order], atol=1e-6)
        assert torch.equal(out["query_content"][b], out["memory"][b, order])  # the paper's object queries
        assert torch.allclose(out["proposals"]["scores"][b], torch.tensor(scores)[order].sigmoid())


def test_padded_tokens_are_never_proposed():
    model = small().eval()
    images, mask, _ = padded_batch(valid=(40, 48))
    with torch.no_grad():
        out = model(images, mask, return_intermediates=True)
    padded = padding_of(out)
    assert padded[1].any()
    assert not torch.gather(padded, 1, out["proposals"]["indices"]).any()


def test_padded_tokens_are_never_proposed_even_when_they_score_best():
    """Valid tokens' features point against the class head, so padded tokens (features zeroed,
    logit = bias) would win an unmasked top-k; the model's selection still skips them."""
    model = small().eval()
    shapes = [(4, 4), (2, 2)]
    padding = torch.zeros(1, 20, dtype=torch.bool)
    padding[0, :16] = torch.arange(16).remainder(4) >= 2  # right half of level 0 padded
    padding[0, 16:] = torch.tensor([False, True, False, True])  # right column of level 1 padded
    memory = torch.full((1, 20, 32), -1.0)  # (B, N, C)
    with torch.no_grad():
        model.class_embed[-1].weight.fill_(1.0)  # valid logit = -32 + bias < bias = padded logit
        logits, boxes, valid = model.dense_part(memory, padding, shapes)
        unmasked = select_top_k(model.class_embed[-1](memory.masked_fill(padding[..., None], 0.0)), boxes, memory, 6)[0]
        chosen = model.select_proposals(logits, boxes, memory, valid)["indices"]
    assert padding[0, unmasked[0]].any()  # the test is decisive: an unmasked top-k takes padding
    assert not padding[0, chosen[0]].any() and valid[0, chosen[0]].all()


def test_too_many_queries_for_the_valid_tokens_is_an_error():
    model = small(num_queries=500).eval()
    images, mask, _ = padded_batch()
    with pytest.raises(ValueError, match="num_queries"):
        model(images, mask)


def test_dense_loss_uses_the_real_classes():
    """loss_ce_dense is the focal loss over all N tokens with the matched tokens' real labels."""
    model = small()
    images, mask, targets = padded_batch()
    with torch.no_grad():
        out = model(images, mask)
    criterion = model.build_criterion()
    losses = criterion(out, targets)
    dense = out["dense_outputs"]
    indices = criterion.matcher(dense["pred_logits"], dense["pred_boxes"], targets)
    onehot = torch.zeros_like(dense["pred_logits"])
    for b, (src, tgt) in enumerate(indices):
        onehot[b, src, targets[b]["labels"][tgt]] = 1.0
    expected = sigmoid_focal_loss(dense["pred_logits"], onehot, reduction="sum") / 3  # 3 target boxes
    assert torch.allclose(losses["loss_ce_dense"], expected, rtol=1e-5)


def test_postprocess_keeps_num_detections():
    model = small(num_detections=10).eval()
    images, mask, _ = padded_batch()
    with torch.no_grad():
        det = model.postprocess(model(images, mask), torch.tensor([[96, 112], [64, 80]]))
    assert len(det) == 2 and det[0]["boxes"].shape == (10, 4) and det[0]["scores"].shape == (10,)
