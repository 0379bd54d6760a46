"""Checkers for RT-DETR's varifocal loss (`varifocal_loss`); oracle: the formula, element by element."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import report


def varifocal_loop(logits: Tensor, quality: Tensor, positive: Tensor, alpha: float, gamma: float) -> float:
    """Σ VFL(p, q): -q (q log p + (1 - q) log(1 - p)) at positives, -α p^γ log(1 - p) elsewhere."""
    total = 0.0
    for z, q, pos in zip(logits.flatten().tolist(), quality.flatten().tolist(), positive.flatten().tolist()):
        p = 1 / (1 + math.exp(-z))
        if pos:
            total += -q * (q * math.log(p) + (1 - q) * math.log(1 - p))
        else:
            total += -alpha * p**gamma * math.log(1 - p)
    return total


def check_varifocal_loss(fn) -> float:
    g = torch.Generator().manual_seed(51)
    logits = torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * 2
    positive = torch.zeros(2, 5, 3, dtype=torch.bool)
    positive[0, 1, 2] = positive[0, 3, 0] = positive[1, 0, 1] = positive[1, 4, 2] = True
    quality = torch.rand(2, 5, 3, generator=g, dtype=torch.float64) * positive  # IoUs at the positives
    quality[1, 4, 2] = 0.0  # a matched box that misses its object: costs nothing
    worst = 0.0
    for alpha, gamma in ((0.75, 2.0), (0.25, 1.5)):
        got = fn(logits, quality, positive, alpha, gamma)
        expected = torch.tensor(varifocal_loop(logits, quality, positive, alpha, gamma), dtype=torch.float64)
        worst = max(worst, report(f"varifocal_loss (α={alpha}, γ={gamma}, vs the formula per element)",
                                  got, expected, 1e-10))
    z = logits.clone().requires_grad_(True)  # the weights are constants: d/dz at a negative is α p^γ · p
    fn(z, quality, positive, 0.75, 2.0).backward()
    p = logits.sigmoid()
    expected_grad = torch.where(positive, quality * (p - quality), 0.75 * p**2 * p)
    return max(worst, report("varifocal_loss gradient (weights detached)", z.grad, expected_grad, 1e-10))
