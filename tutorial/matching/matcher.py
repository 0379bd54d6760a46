"""Bipartite (Hungarian) matching between predictions and ground truth: DETR's set prediction.

Seed, "Set Prediction" (DETR paper, Eq. 1):

    σ̂ = argmin_{σ ∈ S_N} Σ_i L_match(y_i, ŷ_σ(i)),
    L_match(y_i, ŷ_σ(i)) = -1{c_i ≠ ∅} p̂_σ(i)(c_i) + 1{c_i ≠ ∅} L_box(b_i, b̂_σ(i)),
    L_box = λ_L1 ||b_i - b̂_σ(i)||_1 + λ_giou L_giou(b_i, b̂_σ(i)).

Every ground-truth object gets exactly one prediction; the remaining Q - n predictions are
matched to "no object" (∅). The optimal σ̂ is found by the Hungarian algorithm, here scipy's
`linear_sum_assignment` (a Jonker-Volgenant solver, O(Q n²)).

Glossary: Q predictions (queries) per image, n ground-truth boxes, K classes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou


def matching_cost(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                  cost_class: float = 1.0, cost_bbox: float = 5.0, cost_giou: float = 2.0) -> Tensor:
    """The seed's L_match for every (prediction, target) pair of one image.  [exercise]

    pred_logits (Q, K+1) with the last class "no object", pred_boxes (Q, 4) cxcywh in [0, 1],
    tgt_labels (n,), tgt_boxes (n, 4) cxcywh -> cost (Q, n). The class term is -p̂(c) (a
    probability, not a log-probability, as in the paper: it keeps the terms on similar scales).
    """
    prob = pred_logits.softmax(-1)  # (Q, K+1)
    class_cost = -prob[:, tgt_labels]  # (Q, n)
    l1_cost = torch.cdist(pred_boxes, tgt_boxes, p=1)  # (Q, n)
    giou = generalized_box_iou(box_convert(pred_boxes, "cxcywh", "xyxy"),
                               box_convert(tgt_boxes, "cxcywh", "xyxy"))  # (Q, n)
    return cost_class * class_cost + cost_bbox * l1_cost + cost_giou * (-giou)  # (Q, n)


def hungarian_match(cost: Tensor) -> tuple[Tensor, Tensor]:
    """Minimum-cost one-to-one assignment for a (Q, n) cost matrix, Q >= n.  [exercise]

    Returns (pred_idx (n,), tgt_idx (n,)) int64 such that prediction pred_idx[k] is matched to
    target tgt_idx[k], sorted by pred_idx. Uses scipy's `linear_sum_assignment`.
    """
    rows, cols = linear_sum_assignment(cost.detach().cpu().numpy())
    return torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)


@dataclass
class MatcherWeights:
    """λ's of the matching cost (DETR: class 1, L1 5, GIoU 2)."""

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0


class HungarianMatcher(nn.Module):
    """Matches each image's predictions to its targets (no gradients flow through matching)."""

    def __init__(self, weights: MatcherWeights = MatcherWeights(), cost_fn=matching_cost):
        super().__init__()
        self.weights = weights
        self.cost_fn = cost_fn  # Deformable DETR swaps in the focal-loss class cost

    @torch.no_grad()
    def forward(self, pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict]) -> list[tuple[Tensor, Tensor]]:
        """pred_logits (B, Q, K+1), pred_boxes (B, Q, 4), targets[b] with "labels" (n_b,) and
        "boxes" (n_b, 4) -> per image (pred_idx (n_b,), tgt_idx (n_b,)).

        One cost matrix for the whole batch (every prediction against every target of every image,
        as the official matcher computes it), then one Hungarian call per image on its own block;
        an image without targets matches nothing (all its queries are "no object")."""
        b, q = pred_logits.shape[:2]
        sizes = [len(t["labels"]) for t in targets]
        if sum(sizes) == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return [(empty, empty) for _ in targets]
        labels = torch.cat([t["labels"] for t in targets])  # (Σn,)
        boxes = torch.cat([t["boxes"] for t in targets])  # (Σn, 4)
        cost = self.cost_fn(pred_logits.flatten(0, 1), pred_boxes.flatten(0, 1), labels, boxes,
                            self.weights.cost_class, self.weights.cost_bbox, self.weights.cost_giou)  # (B·Q, Σn)
        blocks = cost.view(b, q, -1).cpu().split(sizes, -1)  # B x (B, Q, n_b)
        return [hungarian_match(block[i]) for i, block in enumerate(blocks)]
