"""Box utilities, derived here to teach them (exercises), checked against `torchvision.ops`.

Boxes are either (cx, cy, w, h), the format DETR predicts (normalised to [0, 1]), or
(x0, y0, x1, y1), the format IoU is computed in. Shapes: (N, 4) and (M, 4) boxes give (N, M)
pairwise matrices.

Generalised IoU (Rezatofighi et al., CVPR 2019, Alg. 1): GIoU = IoU - |C \\ (A ∪ B)| / |C|, where
C is the smallest box enclosing A and B. It lies in (-1, 1] and, unlike IoU, still has a
gradient when the boxes do not overlap, which is why DETR's box loss uses it next to L1.
The rest of the package calls `torchvision.ops` (`box_convert`, `generalized_box_iou`);
`tests/test_box_ops.py` checks that these derivations equal it. `boxes_to_pixels` (no exercise)
turns DETR's normalised cxcywh boxes into the xyxy pixel boxes the figures draw.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import box_convert


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """(..., 4) boxes (cx, cy, w, h) -> (..., 4) boxes (x0, y0, x1, y1).  [exercise]"""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)  # (..., 4)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """(..., 4) boxes (x0, y0, x1, y1) -> (..., 4) boxes (cx, cy, w, h).  [exercise]"""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)  # (..., 4)


def box_area(boxes: Tensor) -> Tensor:
    """(N, 4) xyxy boxes -> (N,) areas."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def box_iou(boxes1: Tensor, boxes2: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU of (N, 4) and (M, 4) xyxy boxes -> (IoU (N, M), union (N, M)).  [exercise]"""
    area1, area2 = box_area(boxes1), box_area(boxes2)  # (N,), (M,)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2): zero when they do not overlap
    inter = wh[..., 0] * wh[..., 1]  # (N, M)
    union = area1[:, None] + area2[None, :] - inter  # (N, M)
    return inter / union, union


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """Pairwise generalised IoU of (N, 4) and (M, 4) xyxy boxes -> (N, M).  [exercise]

    GIoU = IoU - (|C| - |A ∪ B|) / |C| with C the smallest enclosing box (GIoU paper, Alg. 1).
    """
    iou, union = box_iou(boxes1, boxes2)  # (N, M) each
    top_left = torch.min(boxes1[:, None, :2], boxes2[None, :, :2])  # (N, M, 2)
    bottom_right = torch.max(boxes1[:, None, 2:], boxes2[None, :, 2:])  # (N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)  # (N, M, 2)
    enclosing = wh[..., 0] * wh[..., 1]  # (N, M)
    return iou - (enclosing - union) / enclosing


def boxes_to_pixels(boxes: Tensor, size) -> Tensor:
    """(n, 4) cxcywh boxes normalised by the image size (DETR's targets and predictions) and
    size = (h, w) -> (n, 4) xyxy boxes in pixels."""
    h, w = (int(v) for v in size)
    xyxy = box_convert(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), "cxcywh", "xyxy")  # (n, 4)
    return xyxy * torch.tensor([w, h, w, h], dtype=torch.float32)  # (n, 4) pixels
