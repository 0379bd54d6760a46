"""DINO: the official parameter count, contrastive denoising (noise bands, layout, the loss pushes
negatives to "no object", the attention mask keeps groups apart), mixed query selection, look
forward twice, and a training step of the tiny preset."""
from __future__ import annotations

import torch
from torchvision.ops import box_convert, sigmoid_focal_loss

import tutorial
from tutorial.models.deformable_transformer import DeformableTransformerConfig
from tutorial.models.dino import DINODecoder, contrastive_denoising_loss, contrastive_groups, noise_box_corners
from tutorial.models.dn_detr import dn_attention_mask
from tutorial.ops.mlp import MLP

from .tiny import padded_batch, small_model

torch.set_num_threads(1)


def test_dino_4scale_r50_parameter_count_equals_official():
    """46,893,182: IDEA-Research/DINO's DINO-4scale-R50 (frozen-BN R50, 91 classes, 900 queries,
    FFN 2048, shared decoder heads, separate encoder-proposal heads, label_enc 92 x 256)."""
    model = tutorial.build_model("dino_4scale_r50")
    assert sum(p.numel() for p in model.parameters()) == 46_893_182
    assert model.label_embed.weight.shape == (92, 256) and model.tgt_embed.weight.shape == (900, 256)
    assert model.bbox_embed[0] is model.bbox_embed[5]  # one box head for all decoder layers
    assert model.selection.box_head is not model.bbox_embed[0]  # the encoder's is its own


SMALL = {"transformer": {"d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 2, "dim_feedforward": 64},
         "num_queries": 6, "dn_number": 4}


def small(**overrides):
    return small_model("dino_tiny", SMALL, **overrides)


def inputs():
    return padded_batch()


# --- contrastive denoising ---------------------------------------------------------------------


def test_negative_noise_is_larger_than_positive_noise():
    """Each corner moves by u·λ·(w or h)/2 with u in [0, 1) for positives and [1, 2) for negatives
    (where clipping to the image does not interfere), and the bands are filled."""
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([torch.rand(4000, 2, generator=g) * 0.4 + 0.3, torch.rand(4000, 2, generator=g) * 0.1 + 0.05], 1)
    lam = 0.4
    half = torch.cat([boxes[:, 2:], boxes[:, 2:]], 1) / 2  # (n, 4)
    corners = box_convert(boxes, "cxcywh", "xyxy")
    ratio_pos = (box_convert(noise_box_corners(boxes, lam, g), "cxcywh", "xyxy") - corners).abs() / (lam * half)
    negatives = noise_box_corners(boxes, lam, g, 1.0, 2.0)
    ratio_neg = (box_convert(negatives, "cxcywh", "xyxy") - corners).abs() / (lam * half)
    assert ratio_pos.max() < 1 + 1e-4 and ratio_neg.min() > 1 - 1e-4 and ratio_neg.max() < 2 + 1e-4
    assert 0.45 < ratio_pos.mean() < 0.55 and 1.45 < ratio_neg.mean() < 1.55


def test_contrastive_groups_layout():
    """P = dn_number // max n_b groups of 2·max n_b slots: positives first, then negatives."""
    _, _, targets = inputs()
    groups = contrastive_groups(targets, 5, 0.25, 0.4, 6, torch.Generator().manual_seed(1))
    assert (groups.num_groups, groups.group_size) == (2, 4)  # 5 // 2 groups of 2 + 2 slots
    assert groups.target_index.tolist() == [[0, 1, 0, 1] * 2, [0, -1, 0, -1] * 2]
    assert groups.negative.tolist()[0] == [False, False, True, True] * 2
    assert groups.positive_index.tolist() == [[0, 1, -1, -1] * 2, [0, -1, -1, -1] * 2]
    for b, t in enumerate(targets):  # every negative is farther from its object than λ·half on some corner
        for slot in torch.nonzero(groups.negative[b] & groups.valid[b]).flatten().tolist():
            k = groups.target_index[b, slot]
            moved = (box_convert(groups.boxes[b, slot], "cxcywh", "xyxy")
                     - box_convert(t["boxes"][k], "cxcywh", "xyxy")).abs()
            half = torch.cat([t["boxes"][k, 2:], t["boxes"][k, 2:]]) / 2
            assert (moved >= 0.4 * half - 1e-5).all()  # (no corner here is clipped below that)


def test_contrastive_loss_pushes_negatives_to_no_object():
    """The class target of a negative (and of a padding slot) is 'no object' for every class; a
    negative's box does not enter the box losses; the normaliser is the number of positives."""
    _, _, targets = inputs()
    positive_index = torch.tensor([[0, 1, -1, -1], [0, -1, -1, -1]])  # image 1: slot 1 padding, 2-3 negatives
    logits = torch.randn(2, 4, 6)
    boxes = torch.rand(2, 4, 4) * 0.3 + 0.3
    terms = contrastive_denoising_loss(logits, boxes, positive_index, targets, 0.25)
    onehot = torch.zeros(2, 4, 6)
    onehot[0, 0, 1] = onehot[0, 1, 3] = onehot[1, 0, 2] = 1
    assert torch.allclose(terms["loss_ce"], sigmoid_focal_loss(logits, onehot, reduction="sum") / 3, atol=1e-6)
    moved = boxes.clone()
    moved[0, 2:] = torch.rand(2, 4)  # the negatives' boxes
    assert torch.equal(contrastive_denoising_loss(logits, moved, positive_index, targets, 0.25)["loss_bbox"],
                       terms["loss_bbox"])
    z = logits.clone().requires_grad_(True)
    contrastive_denoising_loss(z, boxes, positive_index, targets, 0.25)["loss_ce"].backward()
    assert (z.grad[0, 2:] > 0).all()  # gradient descent lowers every class score of the negatives


def test_denoising_groups_cannot_see_each_other_in_the_decoder():
    """With the DN mask of groups of 2·n slots, changing group 1 changes nothing in group 0 or in
    the matching queries, whose outputs equal a run without denoising queries."""
    torch.manual_seed(0)
    cfg = DeformableTransformerConfig(d_model=32, num_heads=4, num_decoder_layers=2, dim_feedforward=64, dropout=0.0,
                                      num_levels=2)
    decoder = DINODecoder(cfg).eval()
    heads = torch.nn.ModuleList([MLP(32, 32, 4, 3)] * 2)
    shapes = [(6, 7), (3, 4)]
    memory = torch.randn(2, 54, 32)
    ratios, padding = torch.ones(2, 2, 2), torch.zeros(2, 54, dtype=torch.bool)
    p, m, q = 3, 4, 5
    tgt, anchors = torch.randn(2, p * m + q, 32), torch.randn(2, p * m + q, 4)
    mask = dn_attention_mask(p, m, q)
    with torch.no_grad():
        base = decoder(tgt, anchors, memory, shapes, ratios, padding, heads, mask)
        changed_tgt = tgt.clone()
        changed_tgt[:, m:2 * m] = torch.randn(2, m, 32)
        changed = decoder(changed_tgt, anchors, memory, shapes, ratios, padding, heads, mask)
        alone = decoder(tgt[:, p * m:], anchors[:, p * m:], memory, shapes, ratios, padding, heads)
    assert torch.allclose(base.hs[:, :, :m], changed.hs[:, :, :m], atol=1e-5)
    assert torch.allclose(base.hs[:, :, 2 * m:], changed.hs[:, :, 2 * m:], atol=1e-5)
    assert not torch.allclose(base.hs[:, :, m:2 * m], changed.hs[:, :, m:2 * m], atol=1e-3)
    assert torch.allclose(base.boxes[:, :, p * m:], alone.boxes, atol=1e-5)


# --- look forward twice --------------------------------------------------------------------------


def test_look_forward_twice():
    """Layer 1 attends around the detached refined box of layer 0, but its predicted box is built
    on the undetached one: layer 1's loss reaches layer 0's box head (through the box only)."""
    torch.manual_seed(0)
    cfg = DeformableTransformerConfig(d_model=32, num_heads=4, num_decoder_layers=2, dim_feedforward=64, dropout=0.0,
                                      num_levels=1)
    decoder = DINODecoder(cfg)
    heads = torch.nn.ModuleList([MLP(32, 32, 4, 3), MLP(32, 32, 4, 3)])  # separate heads, to see where grads go
    memory, shapes = torch.randn(1, 12, 32), [(3, 4)]
    ratios, padding = torch.ones(1, 1, 2), torch.zeros(1, 12, dtype=torch.bool)
    dec = decoder(torch.randn(1, 5, 32), torch.randn(1, 5, 4), memory, shapes, ratios, padding, heads,
                  return_sampling=True)
    assert not dec.references[1].requires_grad  # the reference is detached ...
    out1 = dec.hs[1]
    expected = (heads[1](out1) + torch.logit(dec.references[1], eps=1e-5)).sigmoid()
    assert torch.allclose(dec.boxes[1], expected, atol=1e-5)  # ... and the prediction sits on the same box value
    dec.boxes[1].sum().backward()
    assert heads[0].layers[-1].weight.grad.abs().sum() > 0  # ... but its gradient reaches layer 0's box head


# --- the model -----------------------------------------------------------------------------------


def test_tiny_trains_a_step_with_contrastive_denoising():
    model = small().train()
    images, mask, targets = inputs()
    out = model(images, mask, targets=targets, return_intermediates=True)
    assert out["pred_logits"].shape == (2, 6, 6) and out["pred_boxes"].shape == (2, 6, 4)
    p, m = out["dn_groups"]
    assert (p, m) == (2, 4) and out["dn_outputs"]["pred_logits"].shape == (2, 2, p * m, 6)
    assert torch.equal(out["dn_attention_mask"], dn_attention_mask(p, m, 6))
    assert torch.equal(out["dn_outputs"]["target_index"], out["dn_target_index"].masked_fill(out["dn_negative"], -1))
    losses = model.build_criterion()(out, targets)
    for name in ("loss_ce_dn", "loss_bbox_dn", "loss_ce_dn_0", "loss_ce_interm", "loss_giou_interm"):
        assert losses[name] > 0
    losses["loss"].backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    assert model.label_embed.weight.grad.abs().sum() > 0 and model.tgt_embed.weight.grad.abs().sum() > 0


def test_mixed_query_selection_takes_anchors_from_the_encoder():
    """The first layer's reference boxes are the selected tokens' boxes (their interm predictions),
    and the selected tokens are the top-Q by best class score."""
    model = small().eval()
    images, mask, _ = inputs()
    with torch.no_grad():
        out = model(images, mask, return_intermediates=True)
    assert torch.allclose(out["reference_points"][0], out["interm_outputs"]["pred_boxes"], atol=1e-6)
    best = out["encoder_logits"].max(-1).values  # (B, N)
    for b in range(2):
        expected = sorted(range(best.shape[1]), key=lambda t: best[b, t].item(), reverse=True)[:6]
        assert out["selected_indices"][b].tolist() == expected
    assert "dn_outputs" not in out


def test_depth_reduction_and_eval_without_denoising():
    model = small().eval()
    images, mask, targets = inputs()
    with torch.no_grad():
        full = model(images, mask, targets=targets)
        cut = model(images, mask, num_decoder_layers=1)
    assert torch.allclose(cut["pred_boxes"], full["aux_outputs"][0]["pred_boxes"], atol=1e-6)
    losses = model.build_criterion()(full, targets)
    assert losses["loss_ce_dn"] == 0 and "loss_ce_interm" in losses


def test_dino_tiny_preset_as_shipped_trains_a_step():
    torch.manual_seed(0)
    model = tutorial.build_model("dino_tiny").train()
    images, mask, targets = inputs()
    losses = model.build_criterion()(model(images, mask, targets=targets), targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and losses["loss_ce_dn"] > 0
