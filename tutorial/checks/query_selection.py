"""Checkers for the query selection (tutorial/models/query_selection.py); oracle: an explicit loop over
images and tokens."""
from __future__ import annotations

import torch
from torch import Tensor

from .common import report


def top_k_loop(scores: Tensor, boxes: Tensor, memory: Tensor, k: int):
    """Per image: each token's best class score, the k best tokens by sorting a Python list, then
    their rows copied one by one."""
    b, n, _ = scores.shape
    indices = torch.zeros(b, k, dtype=torch.int64)
    got = [torch.zeros(b, k, x.shape[-1], dtype=x.dtype) for x in (scores, boxes, memory)]
    for i in range(b):
        best = [max(scores[i, t].tolist()) for t in range(n)]
        order = sorted(range(n), key=lambda t: best[t], reverse=True)[:k]
        for j, t in enumerate(order):
            indices[i, j] = t
            for out, x in zip(got, (scores, boxes, memory)):
                out[i, j] = x[i, t]
    return indices, *got


def check_select_top_k(fn) -> float:
    g = torch.Generator().manual_seed(50)
    b, n, k_cls, c, k = 3, 11, 4, 5, 6
    scores = torch.randn(b, n, k_cls, generator=g, dtype=torch.float64)  # distinct: no ties
    boxes = torch.randn(b, n, 4, generator=g, dtype=torch.float64)
    memory = torch.randn(b, n, c, generator=g, dtype=torch.float64)
    got = fn(scores, boxes, memory, k)
    expected = top_k_loop(scores, boxes, memory, k)
    names = ("indices", "scores", "boxes", "memory")
    if len(got) != 4:
        raise AssertionError(f"✗ select_top_k: returned {len(got)} tensors, expected 4 ({', '.join(names)})")
    return max(report(f"select_top_k {name} (vs a loop over images and tokens)", x, y, 0)
               for name, x, y in zip(names, got, expected))
