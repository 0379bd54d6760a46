"""Checkers for the Hungarian loss (tutorial/matching/criterion.py); oracle: explicit loops over
images and predictions, and the loss's invariance to the order of the predictions."""
from __future__ import annotations

import math

import torch
from torchvision import ops

from .common import random_boxes_cxcywh, report


def hungarian_loss_loop(logits, boxes, targets, indices, num_boxes, no_object_weight) -> dict[str, float]:
    b, q, k1 = logits.shape
    ce_sum = weight_sum = l1 = giou = 0.0
    for n in range(b):
        match = dict(zip(indices[n][0].tolist(), indices[n][1].tolist()))
        for i in range(q):
            cls = int(targets[n]["labels"][match[i]]) if i in match else k1 - 1
            wt = 1.0 if cls != k1 - 1 else no_object_weight
            logp = logits[n, i].tolist()
            lse = math.log(sum(math.exp(v) for v in logp))
            ce_sum += wt * (lse - logp[cls])
            weight_sum += wt
            if i in match:
                t = targets[n]["boxes"][match[i]]
                l1 += (boxes[n, i] - t).abs().sum().item()
                giou += 1 - ops.generalized_box_iou(ops.box_convert(boxes[n, i][None], "cxcywh", "xyxy"),
                                                    ops.box_convert(t[None], "cxcywh", "xyxy")).item()
    return {"loss_ce": ce_sum / weight_sum, "loss_bbox": l1 / num_boxes, "loss_giou": giou / num_boxes}


def check_hungarian_loss(fn) -> float:
    g = torch.Generator().manual_seed(20)
    b, q, k = 3, 6, 4
    logits = torch.randn(b, q, k + 1, generator=g, dtype=torch.float64)
    boxes = random_boxes_cxcywh(b * q, g).view(b, q, 4)
    counts = [3, 0, 5]  # one image without objects
    targets = [{"labels": torch.randint(0, k, (c,), generator=g), "boxes": random_boxes_cxcywh(c, g)} for c in counts]
    indices = [(torch.randperm(q, generator=g)[:c].sort().values, torch.randperm(c, generator=g)) for c in counts]
    num_boxes = float(sum(counts))
    got = fn(logits, boxes, targets, indices, num_boxes, 0.1)
    expected = hungarian_loss_loop(logits, boxes, targets, indices, num_boxes, 0.1)
    # 1e-6: torchvision's generalized_box_iou_loss adds eps=1e-7 to its denominators
    return max(report(f"hungarian_loss ({key})", got[key], torch.tensor(value, dtype=torch.float64), 1e-6)
               for key, value in expected.items())


def check_hungarian_loss_permutation(fn) -> float:
    """Property: permuting the predictions (and their matches with them) leaves the loss unchanged."""
    g = torch.Generator().manual_seed(21)
    q = 6
    logits = torch.randn(1, q, 4, generator=g, dtype=torch.float64)
    boxes = random_boxes_cxcywh(q, g)[None]
    targets = [{"labels": torch.tensor([0, 2]), "boxes": random_boxes_cxcywh(2, g)}]
    indices = [(torch.tensor([1, 4]), torch.tensor([1, 0]))]
    perm = torch.randperm(q, generator=g)  # new position i holds old prediction perm[i]
    inverse = torch.argsort(perm)
    indices_p = [(inverse[indices[0][0]], indices[0][1])]
    a = fn(logits, boxes, targets, indices, 2.0, 0.1)
    b = fn(logits[:, perm], boxes[:, perm], targets, indices_p, 2.0, 0.1)
    return max(report(f"hungarian_loss permutation invariance ({k})", b[k], a[k], 1e-12) for k in a)
