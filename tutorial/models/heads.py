"""The prediction heads of DETR's successors: sigmoid class scores and boxes refined in logit space.

Deformable DETR (`tutorial/models/deformable_detr.py`) replaced DETR's softmax over K+1 classes by K
sigmoids trained with the focal loss (`tutorial/matching/focal.py`), and predicts each box as a
correction of a reference in logit space; every later model here keeps both. What they share:

- `inverse_sigmoid`: σ⁻¹, so that b = σ(Δ + σ⁻¹(reference)) (Deformable DETR Sec. 4.1, App. A.4);
- `init_focal_head`: the class bias starts at -log((1 - π)/π), every score at the prior π = 0.01
  (RetinaNet, Lin et al., ICCV 2017, Sec. 4.1 "Initialization": the many easy negatives would
  otherwise dominate the first updates);
- `zero_box_head`: the box MLP's last layer starts at zero, Δ = 0, so the first boxes are the references;
- `topk_detections`: the post-processing of sigmoid scores (official Deformable DETR `PostProcess`):
  the best (query, class) pairs over all Q·K of them, so a query may report several classes; no NMS.

Glossary: B batch, Q queries, K classes, T kept detections.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torchvision.ops import box_convert

from ..ops.mlp import MLP


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """log(x / (1 - x)), clamped: boxes are refined in logit space and squashed back by a sigmoid."""
    x = x.clamp(0, 1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


def init_focal_head(layer: nn.Module, prior: float = 0.01) -> nn.Module:
    """Set the bias of a class head (a Linear or Conv2d producing logits) to -log((1 - prior)/prior),
    so that σ(logit) = prior everywhere at the start. Returns the layer."""
    nn.init.constant_(layer.bias, -math.log((1 - prior) / prior))
    return layer


def zero_box_head(head: MLP) -> MLP:
    """Zero the last layer (weight and bias) of a box MLP: it predicts Δ = 0 until trained. Returns it."""
    nn.init.zeros_(head.layers[-1].weight)
    nn.init.zeros_(head.layers[-1].bias)
    return head


@torch.no_grad()
def topk_detections(outputs: dict, target_sizes: Tensor, num_detections: int) -> list[dict]:
    """The top `num_detections` (query, class) pairs by sigmoid score (official `PostProcess`).
    outputs["pred_logits"] (B, Q, K), outputs["pred_boxes"] (B, Q, 4) cxcywh in [0, 1], target_sizes
    (B, 2) = (h, w) -> per image {"scores" (T,), "labels" (T,), "boxes" (T, 4) xyxy in pixels,
    "queries" (T,) the query each detection came from}."""
    logits = outputs["pred_logits"]  # (B, Q, K)
    b, q, k = logits.shape
    scores, index = logits.sigmoid().flatten(1).topk(min(num_detections, q * k), dim=1)  # (B, T)
    query, labels = index // k, index % k  # (B, T)
    boxes = box_convert(outputs["pred_boxes"], "cxcywh", "xyxy")  # (B, Q, 4)
    boxes = torch.gather(boxes, 1, query[..., None].expand(-1, -1, 4))  # (B, T, 4)
    h, w = target_sizes.unbind(1)
    boxes = boxes * torch.stack([w, h, w, h], dim=1)[:, None, :].to(boxes)  # (B, T, 4) pixels
    return [{"scores": s, "labels": lb, "boxes": bx, "queries": qi}
            for s, lb, bx, qi in zip(scores, labels, boxes, query)]
