"""DN-DETR: the official parameter count, the noise (bounds and rate), the group layout, the
attention mask (the seed's a_ij, and in the decoder: groups and matching queries cannot see what
they must not), the reconstruction losses, nothing of it in eval mode, and the training loop."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tutorial
from tutorial.checks import dn_mask_loop
from tutorial.models.dn_detr import denoising_loss, dn_attention_mask, make_denoising_groups, noise_boxes, noise_labels
from tutorial.exercises import BY_NAME
from tutorial.training.train import TrainConfig, train_one_epoch

torch.set_num_threads(1)


def test_dn_detr_r50_parameter_count_equals_official():
    """43,694,977: IDEA-Research/DN-DETR's DN-DAB-DETR-R50 = DAB-DETR's 43,671,517 + the label
    embedding nn.Embedding(91 + 1, 256 - 1)."""
    model = tutorial.build_model("dn_detr_r50")
    assert sum(p.numel() for p in model.parameters()) == 43_694_977
    assert model.label_embed.weight.shape == (92, 255)


# --- noise ----------------------------------------------------------------------------------------


def test_box_noise_stays_within_its_bounds():
    """|Δcx| ≤ λ·w/2, |Δcy| ≤ λ·h/2, |Δw| ≤ λ·w, |Δh| ≤ λ·h, and the noise fills those bounds."""
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([torch.rand(5000, 2, generator=g), torch.rand(5000, 2, generator=g) * 0.5 + 0.01], 1)
    lam = 0.4
    noised = noise_boxes(boxes, lam, g)
    delta = (noised - boxes).abs()  # (n, 4)
    bound = torch.cat([boxes[:, 2:] / 2, boxes[:, 2:]], 1) * lam
    assert (delta <= bound + 1e-6).all()
    assert (noised >= 0).all() and (noised <= 1).all()
    inside = ((boxes[:, :2] - boxes[:, 2:]).min(1).values > 0) & ((boxes[:, :2] + boxes[:, 2:]).max(1).values < 1)
    ratio = delta[inside] / bound[inside]  # U(0, 1) where no clipping happened
    assert 0.45 < ratio.mean() < 0.55 and ratio.max() > 0.99
    assert torch.equal(noise_boxes(boxes, 0.0, g), boxes)


def test_labels_flip_at_the_requested_rate():
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 91, (40000,), generator=g)
    changed = (noise_labels(labels, 0.2, 91, g) != labels).float().mean().item()
    assert abs(changed - 0.2 * 90 / 91) < 0.01  # the drawn class can be the same one
    assert torch.equal(noise_labels(labels, 0.0, 91, g), labels)
    assert ((noise_labels(labels, 1.0, 91, g) >= 0) & (noise_labels(labels, 1.0, 91, g) < 91)).all()


def targets_example():
    return [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.4, 0.2]])},
            {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.4, 0.3, 0.5]])},
            {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]


def test_denoising_groups_layout():
    """P groups of M = max n_b slots; image b's objects first in every group, then padding."""
    targets = targets_example()
    groups = make_denoising_groups(targets, 3, 0.2, 0.4, 6, torch.Generator().manual_seed(2))
    assert (groups.num_groups, groups.group_size) == (3, 2)
    assert groups.target_index.tolist() == [[0, 1] * 3, [0, -1] * 3, [-1, -1] * 3]
    for b, t in enumerate(targets):
        for slot, k in enumerate(groups.target_index[b].tolist()):
            if k >= 0:
                assert torch.equal(groups.target_boxes[b, slot], t["boxes"][k])
                bound = torch.cat([t["boxes"][k, 2:] / 2, t["boxes"][k, 2:]]) * 0.4
                assert ((groups.boxes[b, slot] - t["boxes"][k]).abs() <= bound + 1e-6).all()
            else:
                assert groups.labels[b, slot] == 6  # the "unknown" class on padding
    assert not torch.equal(groups.boxes[0, :2], groups.boxes[0, 2:4])  # every group has its own noise
    empty = make_denoising_groups([targets[2]], 5, 0.2, 0.4, 6)
    assert empty.group_size == 0 and empty.boxes.shape == (1, 0, 4)


# --- the attention mask -------------------------------------------------------------------------


def test_mask_equals_the_seed_formula():
    for p, m, q in [(5, 2, 6), (1, 3, 4), (2, 1, 3), (3, 4, 0), (0, 0, 5)]:
        assert torch.equal(dn_attention_mask(p, m, q), dn_mask_loop(p, m, q))


@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 6), m=st.integers(1, 5), q=st.integers(0, 7), data=st.data())
def test_mask_properties(p, m, q, data):
    """Groups cannot see each other, matching queries cannot see any denoising query, and every
    query sees its own group and all the matching queries."""
    mask = dn_attention_mask(p, m, q)
    t = p * m + q
    i = data.draw(st.integers(0, t - 1))
    j = data.draw(st.integers(0, t - 1))
    if j >= p * m:  # everyone sees the matching queries
        assert not mask[i, j]
    elif i >= p * m:  # a matching query never sees a denoising one
        assert mask[i, j]
    else:  # two denoising queries: visible iff same group
        assert bool(mask[i, j]) == (i // m != j // m)


def test_mask_checkers_catch_a_leaky_mask():
    def leaky(p, m, q):  # forgets the second line of a_ij: matching queries see the ground truth
        t = p * m + q
        i, j = torch.arange(t)[:, None], torch.arange(t)[None, :]
        return (j < p * m) & (i < p * m) & (i // m != j // m)

    for checker in BY_NAME["dn_attention_mask"].checks:
        with pytest.raises(AssertionError):
            checker(leaky)


# --- the model ----------------------------------------------------------------------------------


def small(**overrides):
    torch.manual_seed(0)
    base = {"transformer": {"d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 2, "dim_feedforward": 64},
            "num_queries": 6, "dn_number": 3}
    base.update(overrides)
    return tutorial.build_model("dn_detr_tiny", **base)


def images_and_mask():
    images = torch.randn(3, 3, 64, 80)
    mask = torch.zeros(3, 64, 80, dtype=torch.bool)
    mask[1, 48:, :] = True
    return images, mask


def test_training_step_has_denoising_outputs_and_losses():
    model = small().train()
    images, mask = images_and_mask()
    targets = targets_example()
    out = model(images, mask, targets=targets, return_intermediates=True)
    assert out["pred_logits"].shape == (3, 6, 6)  # only the matching queries are predictions
    dn = out["dn_outputs"]
    assert dn["pred_logits"].shape == (2, 3, 6, 6) and dn["pred_boxes"].shape == (2, 3, 6, 4)  # P·M = 3·2
    assert out["dn_anchors"].shape == (3, 6, 4) and out["dn_attention_mask"].shape == (12, 12)
    assert torch.equal(out["dn_attention_mask"], dn_attention_mask(3, 2, 6))
    assert out["dn_groups"] == (3, 2) and len(out["reference_points"]) == 2
    assert out["reference_points"][0].shape == (3, 6, 4)  # intermediates: the matching queries
    losses = model.build_criterion()(out, targets)
    for name in ("loss_ce_dn", "loss_bbox_dn", "loss_giou_dn", "loss_ce_dn_0", "loss_bbox_dn_0", "loss_giou_dn_0"):
        assert losses[name] > 0
    losses["loss"].backward()
    assert model.label_embed.weight.grad.abs().max() > 0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_denoising_queries_vanish_in_eval_mode():
    model = small()
    images, mask = images_and_mask()
    model.eval()
    out = model(images, mask, targets=targets_example(), return_intermediates=True)
    assert "dn_outputs" not in out and "dn_anchors" not in out
    assert out["pred_logits"].shape == (3, 6, 6) and out["decoder_attention"][0].shape[2] == 6
    losses = model.build_criterion()(out, targets_example())
    assert losses["loss_ce_dn"] == 0 and losses["loss_bbox_dn_0"] == 0  # same keys, no contribution
    model.train()
    assert "dn_outputs" not in model(images, mask)  # no targets, no denoising


def decode(model, enc, content, anchors, attn_mask):
    return model.run_decoder(content, anchors, enc, attn_mask, False).hs  # (L_dec, B, T, C)


def test_groups_and_matching_queries_cannot_see_what_they_must_not():
    """In the decoder itself: changing group 1's queries changes nothing in group 0 nor in the
    matching queries, and the matching queries' outputs equal those of a run without any
    denoising query at all."""
    model = small().eval()
    images, mask = images_and_mask()
    with torch.no_grad():
        enc = model.encode(images, mask)
        tgt, anchors = model.queries(3)  # (B, Q, C), (B, Q, 4)
        p, m, q = 3, 2, 6
        dn_content, dn_anchors = torch.randn(3, p * m, 32), torch.randn(3, p * m, 4)
        attn_mask = dn_attention_mask(p, m, q)
        base = decode(model, enc, torch.cat([dn_content, tgt], 1), torch.cat([dn_anchors, anchors], 1), attn_mask)
        changed_content = dn_content.clone()
        changed_content[:, m:2 * m] = torch.randn(3, m, 32)  # group 1 only
        changed = decode(model, enc, torch.cat([changed_content, tgt], 1), torch.cat([dn_anchors, anchors], 1),
                         attn_mask)
        alone = decode(model, enc, tgt, anchors, None)
    assert torch.allclose(base[:, :, :m], changed[:, :, :m], atol=1e-5)  # group 0
    assert torch.allclose(base[:, :, 2 * m:], changed[:, :, 2 * m:], atol=1e-5)  # group 2 and matching
    assert not torch.allclose(base[:, :, m:2 * m], changed[:, :, m:2 * m], atol=1e-3)  # group 1 itself
    assert torch.allclose(base[:, :, p * m:], alone, atol=1e-5)


def test_denoising_loss_is_zero_for_perfect_reconstructions():
    targets = targets_example()[:2]
    index = torch.tensor([[0, 1, 1], [-1, 0, -1]])
    boxes = torch.full((2, 3, 4), 0.5)
    logits = torch.full((2, 3, 6), -30.0)
    for b, row in enumerate(index):
        for slot, k in enumerate(row.tolist()):
            if k >= 0:
                boxes[b, slot] = targets[b]["boxes"][k]
                logits[b, slot, targets[b]["labels"][k]] = 30.0
    loss = denoising_loss(logits, boxes, index, targets, 0.25)
    assert all(v.abs() < 1e-5 for v in loss.values())  # GIoU in float32: ~1e-6
    # one wrong box among the 4 denoising queries with an object: L1 divided by 4
    boxes[0, 0, 0] += 0.2
    assert torch.isclose(denoising_loss(logits, boxes, index, targets, 0.25)["loss_bbox"], torch.tensor(0.05))


def test_train_loop_passes_targets_to_models_that_use_them():
    model = small()
    assert model.uses_targets and not getattr(tutorial.build_model("dab_detr_tiny"), "uses_targets", False)
    images, mask = images_and_mask()
    loader = [(images, mask, targets_example())]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    stats = train_one_epoch(model, model.build_criterion(), loader, optimizer, scheduler,
                            TrainConfig(progress=False), 0, torch.device("cpu"))
    assert stats["loss_ce_dn"] > 0
