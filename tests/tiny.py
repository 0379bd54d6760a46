"""Tiny inputs and models shared by the model tests (fast on a CPU)."""
from __future__ import annotations

import torch

import tutorial


def small_model(name: str, base: dict, **overrides):
    """`build_model(name)` shrunk by `base` (the test file's small sizes), then `overrides`, seeded."""
    torch.manual_seed(0)
    return tutorial.build_model(name, **{**base, **overrides})


def padded_batch(size: tuple[int, int] = (96, 112), valid: tuple[int, int] = (64, 80), second_empty: bool = False):
    """Two images of `size`, the second padded down to `valid` (h, w); targets with two boxes in the
    first image and one (or, with `second_empty`, none) in the second. -> (images, mask, targets)."""
    h, w = size
    images = torch.randn(2, 3, h, w)
    mask = torch.zeros(2, h, w, dtype=torch.bool)
    mask[1, valid[0]:, :] = True
    mask[1, :, valid[1]:] = True
    first = {"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.4, 0.2]])}
    second = ({"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)} if second_empty else
              {"labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.4, 0.3, 0.5]])})
    return images, mask, [first, second]
