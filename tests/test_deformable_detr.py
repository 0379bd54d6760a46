"""Deformable DETR: exact parameter counts of the paper presets, the tiny preset end to end,
refinement and two-stage, focal matching and loss, reference points under padding."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import sigmoid_focal_loss

import tutorial
from tutorial.matching.focal import focal_class_loss, focal_matching_cost
from tutorial.models.deformable_transformer import encoder_reference_points, valid_ratios
from tutorial.models.heads import inverse_sigmoid

from .tiny import padded_batch, small_model


@pytest.mark.parametrize("name, expected", [
    ("deformable_detr_r50", 40_069_665),
    ("deformable_detr_r50_refine", 40_849_660),
    ("deformable_detr_r50_two_stage", 41_181_529),
])
def test_paper_presets_have_the_official_parameter_count(name, expected):
    model = tutorial.build_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


SMALL = {"transformer": {"d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 2, "dim_feedforward": 64},
         "num_queries": 6}


def small(**overrides):
    return small_model("deformable_detr_tiny", SMALL, **overrides)


def inputs():
    return padded_batch(second_empty=True)


@pytest.mark.parametrize("variant", [dict(with_box_refine=False), dict(with_box_refine=True),
                                     dict(with_box_refine=True, two_stage=True)], ids=["plain", "refine", "two_stage"])
def test_variants_train_a_step(variant):
    model = small(**variant)
    images, mask, targets = inputs()
    out = model(images, mask, return_intermediates=True)
    assert out["pred_logits"].shape == (2, 6, 6) and out["pred_boxes"].shape == (2, 6, 4)
    assert len(out["aux_outputs"]) == 1 and len(out["decoder_sampling"]) == 2
    assert [tuple(s) for s in out["spatial_shapes"]] == [(12, 14), (6, 7), (3, 4), (2, 2)]
    losses = model.build_criterion()(out, targets)
    assert ("loss_ce_enc" in losses) == variant.get("two_stage", False)
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad and "backbone" not in n)


def test_refinement_moves_reference_boxes_layer_by_layer():
    model = small(with_box_refine=True).eval()
    images, mask, _ = inputs()
    out = model(images, mask, return_intermediates=True)
    first, second = out["reference_points"]
    assert first.shape[-1] == 2 and second.shape[-1] == 4  # points, then refined boxes
    assert torch.allclose(second, out["layer_boxes"][0], atol=1e-6)  # layer 1's reference = layer 0's box


def test_encoder_reference_points_ignore_padding():
    """The padded image's reference points equal the unpadded image's on the valid part."""
    mask = torch.zeros(2, 6, 8, dtype=torch.bool)
    mask[1, 3:] = True
    mask[1, :, 4:] = True
    ratios = torch.stack([valid_ratios(mask)], 1)  # (B, 1, 2)
    ref = encoder_reference_points([(6, 8)], ratios)  # (B, 48, 1, 2)
    alone = encoder_reference_points([(3, 4)], torch.ones(1, 1, 2))  # (1, 12, 1, 2)
    valid = (~mask[1]).flatten()
    assert torch.allclose(ref[1][valid] / ratios[1], alone[0])


def test_focal_matching_cost_is_focal_loss_difference():
    """cost_class = FL(p, y=1) - FL(p, y=0) at the target's class, with torchvision's focal loss."""
    torch.manual_seed(0)
    logits, boxes = torch.randn(5, 4), torch.rand(5, 4) * 0.5 + 0.25
    labels, tgt = torch.tensor([2, 0]), torch.rand(2, 4) * 0.5 + 0.25
    cost = focal_matching_cost(logits, boxes, labels, tgt, 1.0, 0.0, 0.0)
    pos = sigmoid_focal_loss(logits[:, labels], torch.ones(5, 2), reduction="none")
    neg = sigmoid_focal_loss(logits[:, labels], torch.zeros(5, 2), reduction="none")
    assert torch.allclose(cost, pos - neg, atol=1e-5)


def test_focal_class_loss_counts_every_query_class_pair():
    logits = torch.randn(2, 3, 4)
    targets = [{"labels": torch.tensor([1])}, {"labels": torch.tensor([3, 0])}]
    indices = [(torch.tensor([2]), torch.tensor([0])), (torch.tensor([0, 1]), torch.tensor([1, 0]))]
    onehot = torch.zeros(2, 3, 4)
    onehot[0, 2, 1] = onehot[1, 0, 0] = onehot[1, 1, 3] = 1  # query 0 <- target 1 (class 0), query 1 <- target 0
    expected = sigmoid_focal_loss(logits, onehot, reduction="sum") / 3
    assert torch.allclose(focal_class_loss(logits, targets, indices, 3.0, 0.25), expected)


def test_inverse_sigmoid():
    x = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(inverse_sigmoid(x).sigmoid(), x)


def test_postprocess_takes_top_query_class_pairs():
    model = small().eval()
    logits = torch.full((1, 6, 6), -9.0)
    logits[0, 4, 2], logits[0, 4, 5], logits[0, 1, 3] = 3.0, 2.0, 1.0
    boxes = torch.rand(1, 6, 4) * 0.5 + 0.25
    det = model.postprocess({"pred_logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))[0]
    assert det["labels"][:3].tolist() == [2, 5, 3] and det["queries"][:3].tolist() == [4, 4, 1]
