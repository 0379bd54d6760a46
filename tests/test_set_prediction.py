"""Matcher and set criterion: the batched module against brute force, and the loss's properties."""
from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tutorial.checks import brute_force_assignment, matching_cost_loop, random_boxes_cxcywh
from tutorial.matching.criterion import LossWeights, SetCriterion
from tutorial.matching.matcher import HungarianMatcher


def _batch(seed: int, q: int = 5, k: int = 4, counts=(3, 0, 5)):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(counts), q, k + 1, generator=g, dtype=torch.float64)
    boxes = random_boxes_cxcywh(len(counts) * q, g).view(len(counts), q, 4)
    targets = [{"labels": torch.randint(0, k, (c,), generator=g), "boxes": random_boxes_cxcywh(c, g)} for c in counts]
    return logits, boxes, targets


def test_matcher_is_optimal_per_image():
    logits, boxes, targets = _batch(0)
    indices = HungarianMatcher()(logits, boxes, targets)
    for b, (src, tgt) in enumerate(indices):
        n = len(targets[b]["labels"])
        assert len(src) == len(tgt) == n
        if n == 0:
            continue
        cost = matching_cost_loop(logits[b], boxes[b], targets[b]["labels"], targets[b]["boxes"])
        assert abs(cost[src, tgt].sum().item() - brute_force_assignment(cost)) < 1e-9


def test_matcher_of_a_batch_without_targets_matches_nothing():
    logits, boxes, targets = _batch(1, counts=(0, 0))
    assert [(len(s), len(t)) for s, t in HungarianMatcher()(logits, boxes, targets)] == [(0, 0), (0, 0)]


def test_matcher_prefers_the_exact_prediction():
    """A prediction equal to the target with a confident class is matched to it."""
    logits = torch.full((1, 4, 3), -5.0)
    boxes = torch.tensor([[[0.2, 0.2, 0.1, 0.1], [0.7, 0.7, 0.2, 0.3], [0.5, 0.5, 0.4, 0.4], [0.1, 0.9, 0.1, 0.1]]])
    logits[0, 1, 1] = 5.0
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.7, 0.7, 0.2, 0.3]])}]
    (src, tgt), = HungarianMatcher()(logits, boxes, targets)
    assert src.tolist() == [1] and tgt.tolist() == [0]


def _outputs(logits, boxes, aux_layers: int = 2):
    return {"pred_logits": logits, "pred_boxes": boxes,
            "aux_outputs": [{"pred_logits": logits * (i + 2), "pred_boxes": boxes} for i in range(aux_layers)]}


def test_criterion_has_every_layer_and_weighted_total():
    logits, boxes, targets = _batch(1)
    losses = SetCriterion(HungarianMatcher())(_outputs(logits, boxes), targets)
    for suffix in ("", "_0", "_1"):
        for term in ("loss_ce", "loss_bbox", "loss_giou"):
            assert term + suffix in losses
    w = LossWeights()
    expected = sum(w.loss_ce * losses[f"loss_ce{s}"] + w.loss_bbox * losses[f"loss_bbox{s}"]
                   + w.loss_giou * losses[f"loss_giou{s}"] for s in ("", "_0", "_1"))
    assert torch.allclose(losses["loss"], expected)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_set_loss_is_invariant_to_prediction_order(seed):
    """The set loss does not care in which order the queries list their predictions."""
    logits, boxes, targets = _batch(seed)
    perm = torch.randperm(logits.shape[1], generator=torch.Generator().manual_seed(seed))
    criterion = SetCriterion(HungarianMatcher())
    a = criterion(_outputs(logits, boxes, 0), targets)["loss"]
    b = criterion(_outputs(logits[:, perm], boxes[:, perm], 0), targets)["loss"]
    assert torch.allclose(a, b, atol=1e-10)


def test_duplicates_are_penalised():
    """Two perfect copies of one object cost more than one copy plus a confident 'no object':
    the set loss itself removes duplicates, which is why DETR needs no NMS."""
    box = torch.tensor([0.5, 0.5, 0.2, 0.2])
    targets = [{"labels": torch.tensor([0]), "boxes": box[None]}]
    obj, none = torch.tensor([6.0, -6.0]), torch.tensor([-6.0, 6.0])  # logits (class 0, ∅)
    boxes = torch.stack([box, box])[None]
    duplicate = SetCriterion(HungarianMatcher())(_outputs(torch.stack([obj, obj])[None], boxes, 0), targets)
    unique = SetCriterion(HungarianMatcher())(_outputs(torch.stack([obj, none])[None], boxes, 0), targets)
    assert duplicate["loss_ce"] > 10 * unique["loss_ce"]
