"""The sigmoid focal loss in matching and in the set criterion (Deformable DETR, Zhu et al., ICLR 2021).

With K sigmoid outputs per query and no ∅ class (`tutorial/models/heads.py`), every (query, class)
pair is a binary problem, almost all of them negatives. The focal loss (RetinaNet, Lin et al.,
ICCV 2017, Eq. 5) down-weights the easy ones:

    FL(p_t) = -α_t (1 - p_t)^γ log(p_t),   α = 0.25, γ = 2.

Deformable DETR uses it twice: as the class loss over all B·Q·K pairs (`focal_class_loss`), and
in the matching cost, whose class term is the focal loss of calling the target's class positive
minus that of calling it negative (`focal_matching_cost`, class weight 2). Every later model here
(Conditional DETR, DAB-DETR, DN-DETR, DINO, RT-DETR's matcher) keeps both. Official code:
fundamentalvision/Deformable-DETR, `models/matcher.py` and `models/deformable_detr.py` (`loss_labels`).

Glossary: B batch, Q queries, K classes, n targets of an image.
"""
from __future__ import annotations

from functools import partial

import torch
from torch import Tensor
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from .criterion import LossWeights, SetCriterion, matched_pairs
from .matcher import HungarianMatcher, MatcherWeights


def focal_matching_cost(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                        cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                        alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Deformable DETR's L_match: the class term is the focal loss of calling the target's class
    positive minus that of calling it negative. pred_logits (Q, K) -> cost (Q, n)."""
    p = pred_logits.sigmoid()  # (Q, K)
    neg = (1 - alpha) * p**gamma * -torch.log(1 - p + 1e-8)  # (Q, K)
    pos = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8)  # (Q, K)
    class_cost = pos[:, tgt_labels] - neg[:, tgt_labels]  # (Q, n)
    l1_cost = torch.cdist(pred_boxes, tgt_boxes, p=1)  # (Q, n)
    giou = generalized_box_iou(box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"))
    return cost_class * class_cost + cost_bbox * l1_cost + cost_giou * (-giou)  # (Q, n)


def focal_matcher(weights: MatcherWeights, alpha: float = 0.25) -> HungarianMatcher:
    """The Hungarian matcher with `focal_matching_cost` (focal α = `alpha`) and the λ's `weights`."""
    return HungarianMatcher(weights, partial(focal_matching_cost, alpha=alpha))


def focal_class_loss(pred_logits: Tensor, targets: list[dict], indices, num_boxes: float, alpha: float) -> Tensor:
    """Σ over all B·Q·K (query, class) pairs of the sigmoid focal loss, / number of boxes."""
    batch_idx, pred_idx = matched_pairs(indices)
    onehot = torch.zeros_like(pred_logits)  # (B, Q, K): every pair negative ...
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    onehot[batch_idx, pred_idx, labels] = 1.0  # ... except each matched query's target class
    return sigmoid_focal_loss(pred_logits, onehot, alpha=alpha, gamma=2.0, reduction="sum") / num_boxes


class FocalSetCriterion(SetCriterion):
    """DETR's set criterion with the focal class loss, plus Deformable DETR's two-stage loss: when the
    outputs carry "enc_outputs" (the encoder's proposals), those are trained class-agnostically
    (every target relabelled 0), terms suffixed "_enc". With `class_agnostic_enc=False` they keep
    their classes (Efficient DETR's class-specific proposal head, used by Sparse DETR)."""

    def __init__(self, matcher: HungarianMatcher, weights: LossWeights, alpha: float, class_agnostic_enc: bool = True):
        super().__init__(matcher, weights)
        self.alpha = alpha
        self.class_agnostic_enc = class_agnostic_enc

    def class_loss(self, pred_logits, targets, indices, num_boxes):
        return focal_class_loss(pred_logits, targets, indices, num_boxes, self.alpha)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        if "enc_outputs" in outputs:  # two-stage: proposals are trained class-agnostically (by default)
            if self.class_agnostic_enc:
                targets = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            self.add_set_loss(losses, outputs["enc_outputs"], targets, "_enc")
        return losses
