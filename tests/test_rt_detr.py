"""RT-DETR: the official parameter counts, the ResNet-vd backbone, IoU-aware query selection
(against a loop), the varifocal loss (against torchvision's focal loss and plain BCE), contrastive
denoising with VFL, the decoder cut at inference, a training step, and the training loop."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss
from torchvision.ops.misc import FrozenBatchNorm2d

import tutorial
from tutorial.training.checkpoint import load_model
from tutorial.exercises import BY_NAME
from tutorial.models.presnet import PResNet, PResNetConfig
from tutorial.models.query_selection import select_top_k, token_locations
from tutorial.matching.varifocal import varifocal_loss, vfl_class_loss
from tutorial.training.train import TrainConfig, train

from .tiny import padded_batch, small_model

torch.set_num_threads(1)


@pytest.mark.parametrize("name, expected", [("rtdetr_r50", 42_891_372), ("rtdetr_r18", 20_184_464)])
def test_paper_presets_have_the_official_parameter_count(name, expected):
    """lyuwenyu/RT-DETR's rtdetr_r50vd (frozen BN: no BN parameters in the backbone) and
    rtdetr_r18vd (trainable BN, counted), 80 classes."""
    model = tutorial.build_model(name)
    assert sum(p.numel() for p in model.parameters()) == expected


def test_resnet_vd_backbone():
    """Deep stem of three 3x3 convs, average-pool shortcut when downsampling, a projection in
    every stage's first block; frozen BN for R50 (stem frozen), trainable BN for R18."""
    r50 = PResNet(PResNetConfig(depth=50))
    assert [m.conv.kernel_size for m in r50.conv1] == [(3, 3)] * 3
    assert [m.conv.out_channels for m in r50.conv1] == [32, 32, 64]
    assert isinstance(r50.res_layers[1].blocks[0].short.pool, torch.nn.AvgPool2d)
    assert r50.res_layers[1].blocks[0].short.conv.conv.stride == (1, 1)
    assert all(not isinstance(m, torch.nn.BatchNorm2d) for m in r50.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in r50.modules())
    assert not any(p.requires_grad for p in r50.conv1.parameters())  # freeze_at 0: the stem only
    assert r50.res_layers[0].blocks[0].branch2a.conv.weight.requires_grad
    assert r50.num_channels == [512, 1024, 2048] and r50.strides == [8, 16, 32]
    r18 = PResNet(PResNetConfig(depth=18, freeze_at=-1, freeze_norm=False))
    assert r18.res_layers[0].blocks[0].short.conv.weight.shape == (64, 64, 1, 1)  # torchvision has none here
    assert all(p.requires_grad for p in r18.parameters())
    feats = r18(torch.randn(1, 3, 150, 97), torch.zeros(1, 150, 97, dtype=torch.bool))
    assert [tuple(f.shape[-2:]) for f, _ in feats] == [(19, 13), (10, 7), (5, 4)]


SMALL = {"decoder": {"d_model": 32, "num_decoder_layers": 3, "dim_feedforward": 64},
         "encoder": {"hidden_dim": 32, "dim_feedforward": 64}, "num_queries": 6, "dn_number": 4}


def small(**overrides):
    return small_model("rtdetr_tiny", SMALL, **overrides)


def inputs():
    return padded_batch()


def test_tiny_preset_is_small():
    assert sum(p.numel() for p in tutorial.build_model("rtdetr_tiny").parameters()) < 3_300_000


# --- IoU-aware query selection ---------------------------------------------------------------------


def test_query_selection_picks_the_top_scoring_tokens():
    """The selected tokens are the top-Q by best class score of every token (a loop over tokens),
    their levels and cells are where they sit, and the decoder starts from their boxes."""
    model = small().eval()
    images, mask, _ = inputs()
    with torch.no_grad():
        out = model(images, mask, return_intermediates=True)
    shapes = out["spatial_shapes"]
    cells = [(lvl, y, x) for lvl, (h, w) in enumerate(shapes) for y in range(h) for x in range(w)]
    for b in range(2):
        best = [max(row) for row in out["encoder_logits"][b].tolist()]
        expected = sorted(range(len(best)), key=lambda t: best[t], reverse=True)[:6]
        assert out["selected_indices"][b].tolist() == expected
        for j, t in enumerate(expected):
            lvl, y, x = cells[t]
            assert out["selected_levels"][b, j] == lvl and out["selected_cells"][b, j].tolist() == [y, x]
    assert torch.allclose(out["reference_points"][0], out["interm_outputs"]["pred_boxes"], atol=1e-6)


def test_select_top_k_checker_catches_a_wrong_ranking():
    def by_sum(scores, boxes, memory, k):  # ranks by the sum over classes, not the best class
        idx = scores.sum(-1).topk(k, dim=1).indices
        gather = lambda x: torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))  # noqa: E731
        return idx, gather(scores), gather(boxes), gather(memory)

    with pytest.raises(AssertionError):
        BY_NAME["select_top_k"].checks[0](by_sum)
    idx, *_ = select_top_k(torch.tensor([[[0.1, 0.9], [0.5, 0.6], [0.95, 0.0]]]), torch.zeros(1, 3, 4),
                           torch.zeros(1, 3, 2), 2)
    assert idx.tolist() == [[2, 0]]
    level, cell = token_locations(torch.tensor([0, 5, 6, 7, 9]), [(2, 3), (1, 2), (1, 2)])
    assert level.tolist() == [0, 0, 1, 1, 2] and cell.tolist() == [[0, 0], [1, 2], [0, 0], [0, 1], [0, 1]]


# --- the varifocal loss ---------------------------------------------------------------------------


def test_varifocal_loss_is_focal_on_negatives_and_iou_weighted_bce_on_positives():
    torch.manual_seed(0)
    logits = torch.randn(40, dtype=torch.float64) * 2
    zeros = torch.zeros(40, dtype=torch.float64)
    negatives = varifocal_loss(logits, zeros, torch.zeros(40, dtype=torch.bool), 0.75, 2.0)
    # torchvision's focal loss at target 0 weighs (1 - alpha_focal) p^γ: alpha_focal = 1 - 0.75
    assert torch.allclose(negatives, sigmoid_focal_loss(logits, zeros, alpha=0.25, gamma=2.0, reduction="sum"))
    q = torch.rand(40, dtype=torch.float64)
    positives = varifocal_loss(logits, q, torch.ones(40, dtype=torch.bool))
    assert torch.allclose(positives, (q * F.binary_cross_entropy(logits.sigmoid(), q, reduction="none")).sum())
    ones = varifocal_loss(logits, torch.ones(40, dtype=torch.float64), torch.ones(40, dtype=torch.bool))
    assert torch.allclose(ones, -F.logsigmoid(logits).sum())  # q = 1: plain BCE towards 1


def test_varifocal_checker_catches_wrong_answers():
    def focal(logits, quality, positive, alpha=0.75, gamma=2.0):  # the focal loss: ignores the IoU
        return sigmoid_focal_loss(logits, positive.to(logits), alpha=1 - alpha, gamma=gamma, reduction="sum")

    def undetached(logits, quality, positive, alpha=0.75, gamma=2.0):  # gradient through the weights
        p = logits.sigmoid()
        weight = torch.where(positive, quality, alpha * p**gamma)
        return -(weight * (quality * F.logsigmoid(logits) + (1 - quality) * F.logsigmoid(-logits))).sum()

    for wrong in (focal, undetached):
        with pytest.raises(AssertionError):
            for checker in BY_NAME["varifocal_loss"].checks:
                checker(wrong)


def test_vfl_target_is_the_iou_of_the_matched_box():
    """A prediction exactly on its object has target 1 at the object's class; one that half
    overlaps has target 1/3 (IoU of two equal boxes shifted by half their width)."""
    logits = torch.zeros(1, 2, 3)
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.6, 0.5, 0.2, 0.2]]])
    targets = [{"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}]
    got = vfl_class_loss(logits, boxes, targets, [(torch.tensor([0]), torch.tensor([0]))], 1.0, 0.75, 2.0)
    positive = torch.zeros(1, 2, 3, dtype=torch.bool)
    positive[0, 0, 2] = True
    assert torch.allclose(got, varifocal_loss(logits, positive.float(), positive))
    got = vfl_class_loss(logits, boxes, targets, [(torch.tensor([1]), torch.tensor([0]))], 1.0, 0.75, 2.0)
    quality = torch.zeros(1, 2, 3)
    quality[0, 1, 2] = 1 / 3
    assert torch.allclose(got, varifocal_loss(logits, quality, quality > 0), atol=1e-5)


# --- the model ------------------------------------------------------------------------------------


def test_tiny_trains_a_step():
    model = small().train()
    images, mask, targets = inputs()
    out = model(images, mask, targets=targets, return_intermediates=True)
    assert out["pred_logits"].shape == (2, 6, 6) and len(out["aux_outputs"]) == 2
    p, m = out["dn_groups"]
    assert (p, m) == (2, 4) and torch.equal(out["dn_attention_mask"], tutorial.models.dn_detr.dn_attention_mask(p, m, 6))
    assert out["aifi_attention"][0].shape[-1] == 12  # S5 of a 96 x 112 batch: 3 x 4 tokens
    losses = model.build_criterion()(out, targets)
    for name in ("loss_vfl", "loss_vfl_dn", "loss_bbox_dn_1", "loss_vfl_interm", "loss_giou_interm"):
        assert losses[name] > 0
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    # no final norm: each layer's predicted box is the next layer's reference (same value)
    for lid in range(2):
        assert torch.allclose(out["layer_boxes"][lid], out["reference_points"][lid + 1], atol=1e-6)


def test_negative_denoising_queries_are_trained_towards_no_object():
    model = small()
    criterion = model.build_criterion()
    _, _, targets = inputs()
    index = torch.tensor([[0, 1, -1, -1], [0, -1, -1, -1]])  # positives, then negatives / padding
    boxes = torch.tensor([t["boxes"][0].tolist() for t in targets])[:, None].repeat(1, 4, 1)
    logits = torch.full((2, 4, 6), -6.0, requires_grad=True)
    terms = criterion.denoising_terms(logits, boxes, {"target_index": index}, targets)
    terms["loss_vfl"].backward()
    assert (logits.grad[:, 2:] > 0).all()  # every class of a negative is pushed down
    assert logits.grad[0, 0, 1] < 0  # the positive's class is pushed up (towards its IoU)


def test_decoder_cut_at_inference_returns_an_earlier_layer():
    """Dec^k: in eval mode the model with `num_decoder_layers_eval=k` returns exactly the full
    model's layer k; training still runs every layer."""
    model = small().eval()
    images, mask, _ = inputs()
    with torch.no_grad():
        full = model(images, mask)
        for k in (1, 2):
            model.cfg.num_decoder_layers_eval = k
            cut = model(images, mask)
            assert torch.equal(cut["pred_logits"], full["aux_outputs"][k - 1]["pred_logits"])
            assert torch.equal(cut["pred_boxes"], full["aux_outputs"][k - 1]["pred_boxes"])
            assert len(cut["aux_outputs"]) == k - 1
        model.train()
        assert len(model(images, mask)["aux_outputs"]) == 2
    with pytest.raises(ValueError, match="num_decoder_layers"):
        model(images, mask, num_decoder_layers=4)


def test_postprocess_takes_top_query_class_pairs():
    model = small().eval()
    logits = torch.full((1, 6, 6), -9.0)
    logits[0, 4, 2], logits[0, 4, 5], logits[0, 1, 3] = 3.0, 2.0, 1.0
    det = model.postprocess({"pred_logits": logits, "pred_boxes": torch.rand(1, 6, 4) * 0.5 + 0.25},
                            torch.tensor([[100, 200]]))[0]
    assert det["labels"][:3].tolist() == [2, 5, 3] and det["queries"][:3].tolist() == [4, 4, 1]


def test_training_loop_and_checkpoint(small_shapes, tmp_path):
    """tutorial/training/train.py and evaluate.py run RT-DETR unchanged (targets passed for denoising)."""
    overrides = {"decoder": {"d_model": 32, "num_decoder_layers": 2, "dim_feedforward": 64},
                 "encoder": {"hidden_dim": 32, "dim_feedforward": 64}, "num_queries": 8, "dn_number": 8}
    cfg = TrainConfig(model="rtdetr_tiny", data=str(small_shapes), out=str(tmp_path / "run"), epochs=1, batch_size=8,
                      workers=0, train_images=16, val_images=8, progress=False, model_overrides=overrides)
    train(cfg)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["loss_vfl_dn"] > 0 and "AP" in record
    assert load_model(tmp_path / "run" / "checkpoint.pt").preset == "rtdetr_tiny"


def test_rtdetr_tiny_preset_as_shipped_trains_a_step():
    torch.manual_seed(0)
    model = tutorial.build_model("rtdetr_tiny").train()
    images, mask, targets = inputs()
    losses = model.build_criterion()(model(images, mask, targets=targets), targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and losses["loss_vfl_dn"] > 0
