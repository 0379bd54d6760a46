"""The set criterion: DETR's Hungarian loss, with auxiliary losses at every decoder layer.

Seed, "Set Prediction" (DETR paper, Eq. 2):

    L_Hungarian(y, ŷ) = Σ_i [ -log p̂_σ̂(i)(c_i) + 1{c_i ≠ ∅} L_box(b_i, b̂_σ̂(i)) ]

with σ̂ the optimal matching (`tutorial/matching/matcher.py`). As in the official code:
- the log-probability term of "no object" (∅) predictions is down-weighted by `no_object_weight`
  (0.1) to account for class imbalance, and the classification loss is a weighted mean over all
  B·Q predictions;
- L_box = λ_L1 · L1 + λ_giou · (1 - GIoU), summed over matched pairs and divided by the number
  of target boxes in the whole batch, averaged over processes when training is distributed;
- every decoder layer's output gets the same loss (auxiliary decoding losses, paper Sec. 3.2).

Glossary: B batch, Q queries, K classes (the last logit is ∅), n_b targets in image b.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou_loss

from .matcher import HungarianMatcher


def matched_pairs(indices: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Flatten per-image matches to (batch_idx (n,), pred_idx (n,)) for indexing (B, Q, ...) tensors."""
    batch_idx = torch.cat([torch.full_like(src, b) for b, (src, _) in enumerate(indices)])
    pred_idx = torch.cat([src for src, _ in indices])
    return batch_idx, pred_idx


def classification_loss(pred_logits: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
                        no_object_weight: float = 0.1) -> Tensor:
    """Softmax cross-entropy over all B·Q predictions; unmatched ones have target ∅ (weighted)."""
    num_classes = pred_logits.shape[-1] - 1
    batch_idx, pred_idx = matched_pairs(indices)  # (n,), (n,)
    target_classes = torch.full(pred_logits.shape[:2], num_classes, dtype=torch.int64,
                                device=pred_logits.device)  # (B, Q): ∅ everywhere ...
    target_classes[batch_idx, pred_idx] = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])  # ... but matches
    class_weight = torch.ones(num_classes + 1, dtype=pred_logits.dtype, device=pred_logits.device)  # (K+1,)
    class_weight[-1] = no_object_weight
    return F.cross_entropy(pred_logits.transpose(1, 2), target_classes, class_weight)  # CE wants (B, K+1, Q)


def box_losses(pred_boxes: Tensor, targets: list[dict], indices: list[tuple[Tensor, Tensor]],
               num_boxes: float) -> dict[str, Tensor]:
    """Σ L1 and Σ (1 - GIoU) over matched pairs, each divided by `num_boxes`."""
    batch_idx, pred_idx = matched_pairs(indices)
    src = pred_boxes[batch_idx, pred_idx]  # (n, 4)
    tgt = torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)])  # (n, 4)
    loss_bbox = F.l1_loss(src, tgt, reduction="sum") / num_boxes
    loss_giou = generalized_box_iou_loss(box_convert(src, "cxcywh", "xyxy"),
                                         box_convert(tgt, "cxcywh", "xyxy"), reduction="sum") / num_boxes
    return {"loss_bbox": loss_bbox, "loss_giou": loss_giou}


def hungarian_loss(pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict],
                   indices: list[tuple[Tensor, Tensor]], num_boxes: float,
                   no_object_weight: float = 0.1) -> dict[str, Tensor]:
    """The seed's L_Hungarian for one decoder layer, given the matching.  [exercise]

    pred_logits (B, Q, K+1), pred_boxes (B, Q, 4) cxcywh; targets[b]["labels"] (n_b,),
    ["boxes"] (n_b, 4); indices[b] = (pred_idx, tgt_idx). Returns unweighted
    {"loss_ce": weighted-mean cross-entropy over all B·Q predictions (∅ weighted by
    no_object_weight), "loss_bbox": Σ L1 / num_boxes, "loss_giou": Σ (1 - GIoU) / num_boxes}.
    """
    return {"loss_ce": classification_loss(pred_logits, targets, indices, no_object_weight),
            **box_losses(pred_boxes, targets, indices, num_boxes)}


def num_boxes_across_processes(targets: list[dict], device: torch.device) -> float:
    """Number of target boxes in the batch, averaged over processes, at least 1 (official `num_boxes`)."""
    n = torch.tensor([float(sum(len(t["labels"]) for t in targets))], device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(n)
        n = n / dist.get_world_size()
    return max(n.item(), 1.0)


@dataclass
class LossWeights:
    """λ's of the loss (DETR: CE 1, L1 5, GIoU 2; ∅ weighted 0.1)."""

    loss_ce: float = 1.0
    loss_bbox: float = 5.0
    loss_giou: float = 2.0
    no_object_weight: float = 0.1


class SetCriterion(nn.Module):
    """Matches, then sums the weighted Hungarian loss over the last layer and every auxiliary layer.

    `forward` returns a dict with each unweighted term (suffixed `_0`, `_1`, ... for auxiliary
    layers) and "loss", the weighted total to back-propagate.
    """

    def __init__(self, matcher: HungarianMatcher, weights: LossWeights = LossWeights()):
        super().__init__()
        self.matcher = matcher
        self.weights = weights

    def class_loss(self, pred_logits: Tensor, targets: list[dict], indices, num_boxes: float) -> Tensor:
        """DETR's softmax cross-entropy; Deformable DETR overrides this with the focal loss."""
        return classification_loss(pred_logits, targets, indices, self.weights.no_object_weight)

    def layer_loss(self, out: dict, targets: list[dict], num_boxes: float) -> dict[str, Tensor]:
        """Match one decoder layer's predictions, then its loss terms (unweighted)."""
        indices = self.matcher(out["pred_logits"], out["pred_boxes"], targets)
        return {"loss_ce": self.class_loss(out["pred_logits"], targets, indices, num_boxes),
                **box_losses(out["pred_boxes"], targets, indices, num_boxes)}

    def weighted_sum(self, terms: dict[str, Tensor]) -> Tensor:
        return sum(getattr(self.weights, name) * value for name, value in terms.items())

    def add_terms(self, losses: dict[str, Tensor], terms: dict[str, Tensor], suffix: str) -> dict[str, Tensor]:
        """Adds the weighted sum of `terms` to losses["loss"] and records each term as `<name><suffix>`."""
        losses["loss"] = losses["loss"] + self.weighted_sum(terms)
        losses.update({f"{name}{suffix}": value for name, value in terms.items()})
        return losses

    def add_set_loss(self, losses: dict[str, Tensor], part: dict, targets: list[dict], suffix: str) -> dict[str, Tensor]:
        """The Hungarian loss of one more prediction set (two-stage proposals, DINO's intermediate
        outputs, Efficient DETR's dense part, Sparse DETR's encoder layers), added by `add_terms`."""
        num_boxes = num_boxes_across_processes(targets, part["pred_logits"].device)
        return self.add_terms(losses, self.layer_loss(part, targets, num_boxes), suffix)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        num_boxes = num_boxes_across_processes(targets, outputs["pred_logits"].device)
        losses = self.layer_loss(outputs, targets, num_boxes)
        total = self.weighted_sum(losses)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            terms = self.layer_loss(aux, targets, num_boxes)
            total = total + self.weighted_sum(terms)
            losses.update({f"{name}_{i}": value for name, value in terms.items()})
        losses["loss"] = total
        return losses
