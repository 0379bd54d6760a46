"""Checkers for the Hungarian matching (tutorial/matching/matcher.py); oracles: the cost by explicit
loops, the assignment by brute force over every permutation."""
from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor
from torchvision import ops

from .common import random_boxes_cxcywh, report


def _match_problem(seed: int, q: int = 6, n: int = 4, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(q, k + 1, generator=g, dtype=torch.float64)
    boxes = random_boxes_cxcywh(q, g)
    labels = torch.randint(0, k, (n,), generator=g)
    tgt = random_boxes_cxcywh(n, g)
    return logits, boxes, labels, tgt


def matching_cost_loop(logits, boxes, labels, tgt, w_class=1.0, w_bbox=5.0, w_giou=2.0) -> Tensor:
    """The seed's L_match, one (prediction, target) pair at a time."""
    q, n = len(logits), len(labels)
    cost = torch.zeros(q, n, dtype=torch.float64)
    for i in range(q):
        p = [math.exp(v) for v in logits[i].tolist()]
        p = [v / sum(p) for v in p]
        for j in range(n):
            l1 = sum(abs(x - y) for x, y in zip(boxes[i].tolist(), tgt[j].tolist()))
            giou = ops.generalized_box_iou(ops.box_convert(boxes[i:i + 1], "cxcywh", "xyxy"),
                                           ops.box_convert(tgt[j:j + 1], "cxcywh", "xyxy")).item()
            cost[i, j] = -w_class * p[labels[j]] + w_bbox * l1 - w_giou * giou
    return cost


def check_matching_cost(fn) -> float:
    logits, boxes, labels, tgt = _match_problem(4)
    got = fn(logits, boxes, labels, tgt, 1.0, 5.0, 2.0)
    return report("matching_cost", got, matching_cost_loop(logits, boxes, labels, tgt), 1e-10)


def brute_force_assignment(cost: Tensor) -> float:
    """Minimum total cost over every injective map targets -> predictions (Q!/(Q-n)! of them)."""
    q, n = cost.shape
    return min(sum(cost[p, j].item() for j, p in enumerate(perm)) for perm in itertools.permutations(range(q), n))


def check_hungarian_match(fn) -> float:
    worst = 0.0
    for seed, (q, n) in enumerate([(6, 4), (5, 5), (7, 2), (3, 1)]):
        g = torch.Generator().manual_seed(10 + seed)
        cost = torch.randn(q, n, generator=g, dtype=torch.float64)
        pred_idx, tgt_idx = fn(cost)
        pred_idx, tgt_idx = torch.as_tensor(pred_idx), torch.as_tensor(tgt_idx)
        if sorted(tgt_idx.tolist()) != list(range(n)) or len(set(pred_idx.tolist())) != n:
            raise AssertionError(f"✗ hungarian_match: not a one-to-one assignment of {n} targets "
                                 f"to {q} predictions: pred_idx={pred_idx.tolist()}, tgt_idx={tgt_idx.tolist()}")
        total = cost[pred_idx, tgt_idx].sum().item()
        worst = max(worst, abs(total - brute_force_assignment(cost)))
    return report("hungarian_match (total cost vs brute force)", torch.tensor(worst), torch.tensor(0.0), 1e-9)
