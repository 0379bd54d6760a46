"""The varifocal loss: IoU-aware classification (VarifocalNet, Zhang et al., CVPR 2021; RT-DETR Sec. 4.3).

Trained with the plain focal loss (`tutorial/matching/focal.py`), a class score says "there is an
object here", not "my box fits it". The varifocal loss makes the target of a matched (query, class)
pair the IoU q of the predicted box with its ground truth, so that a high score also means a
well-placed box. RT-DETR trains every decoder layer and its query selection with it
(`tutorial/models/rt_detr.py`), and the NMS baseline its dense class scores
(`tutorial/models/dense_detector.py`).

Glossary: B batch, Q queries, K classes, n matched pairs, p = σ(logit) a predicted score,
q the IoU-aware target score, α, γ the varifocal exponents.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import box_convert, box_iou

from .criterion import matched_pairs


def varifocal_loss(logits: Tensor, quality: Tensor, positive: Tensor, alpha: float = 0.75,
                   gamma: float = 2.0) -> Tensor:
    """The varifocal loss (VarifocalNet, Zhang et al., CVPR 2021, Eq. 2), summed.  [exercise]

    logits (...) class logits, p = σ(logit); quality q (...) in [0, 1] the target score: the IoU
    of the predicted box with its ground truth at the matched (query, class) pairs, 0 elsewhere;
    positive (...) bool, True at the matched pairs -> scalar Σ over all elements of

        VFL(p, q) = -q · (q log p + (1 - q) log(1 - p))   at positives: BCE towards q, weighted by q,
        VFL(p, q) = -α · p^γ · log(1 - p)                  elsewhere: BCE towards 0, focal-weighted.

    The weights q and α·p^γ are constants (no gradient through them, p detached), as officially
    (`loss_labels_vfl`: weight = α p^γ (1 - onehot) + q). A positive with q = 0 (a matched box that
    does not overlap its object) then costs nothing; the paper writes the cases as q > 0 / q = 0.
    """
    p = logits.sigmoid().detach()
    weight = torch.where(positive, quality, alpha * p**gamma)  # (...)
    return F.binary_cross_entropy_with_logits(logits, quality, weight=weight, reduction="sum")


def matched_iou(pred_boxes: Tensor, targets: list[dict], indices) -> Tensor:
    """IoU of each matched (prediction, target) pair -> (n,) in `matched_pairs` order (detached)."""
    batch_idx, pred_idx = matched_pairs(indices)
    src = box_convert(pred_boxes[batch_idx, pred_idx], "cxcywh", "xyxy")  # (n, 4)
    tgt = box_convert(torch.cat([t["boxes"][j] for t, (_, j) in zip(targets, indices)]), "cxcywh", "xyxy")  # (n, 4)
    return box_iou(src, tgt).diagonal().detach() if len(src) else src.new_zeros(0)  # (n,)


def vfl_class_loss(pred_logits: Tensor, pred_boxes: Tensor, targets: list[dict], indices, num_boxes: float,
                   alpha: float, gamma: float) -> Tensor:
    """The varifocal loss over every (query, class) pair of (B, Q, K) logits, the matched pairs'
    target being their IoU, / num_boxes (official RT-DETR `loss_labels_vfl`)."""
    batch_idx, pred_idx = matched_pairs(indices)
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])  # (n,)
    quality = torch.zeros_like(pred_logits)  # (B, Q, K): 0 everywhere ...
    positive = torch.zeros_like(pred_logits, dtype=torch.bool)
    quality[batch_idx, pred_idx, labels] = matched_iou(pred_boxes, targets, indices).to(quality)  # ... but the IoU
    positive[batch_idx, pred_idx, labels] = True
    return varifocal_loss(pred_logits, quality, positive, alpha, gamma) / num_boxes
