"""Checkers for the positional encodings (tutorial/ops/position_encoding.py); oracles: the sine
formula pixel by pixel (DETR) and the sin/cos formula element by element (DAB-DETR's anchors)."""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .common import report


def sine_encoding_loop(mask: Tensor, d: int, temperature: float = 10000.0) -> Tensor:
    """DETR's normalised 2-D sine encoding, one pixel and one channel at a time."""
    b, h, w = mask.shape
    out = torch.zeros(b, 2 * d, h, w, dtype=torch.float64)
    for n in range(b):
        valid = ~mask[n]
        hv = int(valid[:, 0].sum())  # valid rows (padding is at the bottom / right)
        wv = int(valid[0, :].sum())
        for i in range(h):
            for j in range(w):
                y = min(i + 1, hv) / (hv + 1e-6) * 2 * math.pi  # cumulative count, normalised
                x = min(j + 1, wv) / (wv + 1e-6) * 2 * math.pi
                for c in range(d):
                    f = temperature ** (2 * (c // 2) / d)
                    trig = math.sin if c % 2 == 0 else math.cos
                    out[n, c, i, j] = trig(y / f)
                    out[n, d + c, i, j] = trig(x / f)
    return out


def check_sine_position_encoding(fn) -> float:
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:, :] = True  # image 1 is 3 x 4, padded to 5 x 7
    mask[1, :, 4:] = True
    got = fn(mask, 8)
    expected = sine_encoding_loop(mask, 8)
    valid = (~mask)[:, None].expand_as(expected)  # padding positions are free to differ
    return report("sine_position_encoding", got.double()[valid], expected[valid], 1e-5)


def anchor_encoding_loop(anchors: Tensor, f: int, temperature: float = 10000.0) -> Tensor:
    """PE(x, y[, w, h]) of each anchor, one coordinate and one channel at a time, blocks y, x, w, h."""
    k = anchors.shape[-1]
    flat = anchors.reshape(-1, k).tolist()
    out = torch.zeros(len(flat), k * f, dtype=torch.float64)
    order = [1, 0, 2, 3][:k]  # y, x, w, h: the official gen_sineembed_for_position order
    for n, anchor in enumerate(flat):
        for block, coord in enumerate(order):
            v = anchor[coord] * 2 * math.pi
            for c in range(f):
                trig = math.sin if c % 2 == 0 else math.cos
                out[n, block * f + c] = trig(v / temperature ** (2 * (c // 2) / f))
    return out.reshape(*anchors.shape[:-1], k * f)


def check_anchor_position_encoding(fn) -> float:
    g = torch.Generator().manual_seed(40)
    boxes = torch.rand(2, 3, 4, generator=g, dtype=torch.float64)  # (B, Q, 4) anchor boxes
    points = torch.rand(5, 2, generator=g, dtype=torch.float64)  # (Q, 2) reference points
    return max(report("anchor_position_encoding (boxes)", fn(boxes, 8), anchor_encoding_loop(boxes, 8), 1e-10),
               report("anchor_position_encoding (points)", fn(points, 6, 20.0),
                      anchor_encoding_loop(points, 6, 20.0), 1e-10))
