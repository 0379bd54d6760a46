"""Checkers for deformable attention (tutorial/ops/deformable_attention.py); oracles: `F.grid_sample`
and a loop over heads, levels and points."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .common import report


def check_bilinear_sample(fn) -> float:
    g = torch.Generator().manual_seed(30)
    value = torch.randn(2, 3, 5, 7, generator=g, dtype=torch.float64)
    loc = torch.rand(2, 4, 6, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3  # some outside [0, 1]
    expected = F.grid_sample(value, 2 * loc - 1, mode="bilinear", padding_mode="zeros", align_corners=False)
    return report("bilinear_sample (vs F.grid_sample)", fn(value, loc), expected, 1e-10)


def bilinear_pixel_loop(img: Tensor, x: float, y: float) -> Tensor:
    """One bilinear sample of img (d, H, W) at normalised (x, y), zero outside, corner by corner."""
    d, h, w = img.shape
    px, py = x * w - 0.5, y * h - 0.5
    x0, y0 = math.floor(px), math.floor(py)
    out = torch.zeros(d, dtype=img.dtype)
    for xi in (x0, x0 + 1):
        for yi in (y0, y0 + 1):
            if 0 <= xi < w and 0 <= yi < h:
                out += (1 - abs(px - xi)) * (1 - abs(py - yi)) * img[:, yi, xi]
    return out


def ms_deform_attn_loop(value, shapes, loc, weights) -> Tensor:
    """The inner sum of Deformable DETR's Eq. 3, one head, level and point at a time."""
    b, _, m, d = value.shape
    q = loc.shape[1]
    out = torch.zeros(b, q, m * d, dtype=value.dtype)
    starts = [0]
    for h, w in shapes:
        starts.append(starts[-1] + h * w)
    for n in range(b):
        for i in range(q):
            for head in range(m):
                acc = torch.zeros(d, dtype=value.dtype)
                for lvl, (h, w) in enumerate(shapes):
                    img = value[n, starts[lvl]:starts[lvl + 1], head].T.reshape(d, h, w)
                    for k in range(loc.shape[4]):
                        x, y = loc[n, i, head, lvl, k].tolist()
                        acc += weights[n, i, head, lvl, k] * bilinear_pixel_loop(img, x, y)
                out[n, i, head * d:(head + 1) * d] = acc
    return out


def check_ms_deform_attn_core(fn) -> float:
    g = torch.Generator().manual_seed(31)
    shapes = [(4, 6), (2, 3), (1, 2)]
    b, q, m, d, p = 2, 3, 2, 3, 2
    value = torch.randn(b, sum(h * w for h, w in shapes), m, d, generator=g, dtype=torch.float64)
    loc = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=torch.float64) * 1.4 - 0.2
    weights = torch.rand(b, q, m, len(shapes), p, generator=g, dtype=torch.float64)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    expected = ms_deform_attn_loop(value, shapes, loc, weights)
    return report("ms_deform_attn_core (vs a loop over heads, levels, points)", fn(value, shapes, loc, weights),
                  expected, 1e-10)
