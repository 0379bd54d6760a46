"""Checkers for the box operations (tutorial/ops/box_ops.py); oracle: `torchvision.ops`."""
from __future__ import annotations

import torch
from torchvision import ops

from .common import random_boxes_cxcywh, report


def check_box_cxcywh_to_xyxy(fn) -> float:
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes_cxcywh(50, g)
    return report("box_cxcywh_to_xyxy", fn(boxes), ops.box_convert(boxes, "cxcywh", "xyxy"), 1e-12)


def check_box_xyxy_to_cxcywh(fn) -> float:
    g = torch.Generator().manual_seed(1)
    boxes = ops.box_convert(random_boxes_cxcywh(50, g), "cxcywh", "xyxy")
    return report("box_xyxy_to_cxcywh", fn(boxes), ops.box_convert(boxes, "xyxy", "cxcywh"), 1e-12)


def check_box_iou(fn) -> float:
    g = torch.Generator().manual_seed(2)
    a = ops.box_convert(random_boxes_cxcywh(7, g), "cxcywh", "xyxy")
    b = ops.box_convert(random_boxes_cxcywh(5, g), "cxcywh", "xyxy")
    iou, union = fn(a, b)
    iou_expected = ops.box_iou(a, b)  # (7, 5)
    # |A ∪ B| = |A| + |B| - |A ∩ B| and |A ∩ B| = IoU·|A ∪ B|, so |A ∪ B| = (|A| + |B|) / (1 + IoU)
    union_expected = (ops.box_area(a)[:, None] + ops.box_area(b)[None, :]) / (1 + iou_expected)
    return max(report("box_iou (IoU)", iou, iou_expected, 1e-12),
               report("box_iou (union)", union, union_expected, 1e-12))


def check_generalized_box_iou(fn) -> float:
    g = torch.Generator().manual_seed(3)
    a = ops.box_convert(random_boxes_cxcywh(7, g), "cxcywh", "xyxy")
    b = ops.box_convert(random_boxes_cxcywh(5, g), "cxcywh", "xyxy")
    far = torch.tensor([[5.0, 5.0, 6.0, 6.0]], dtype=torch.float64)  # disjoint from everything: GIoU < 0
    a = torch.cat([a, far])
    return report("generalized_box_iou", fn(a, b), ops.generalized_box_iou(a, b), 1e-12)
