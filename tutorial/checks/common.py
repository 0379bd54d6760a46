"""What every checker uses: `report` (compare, print one line, raise if wrong) and random boxes."""
from __future__ import annotations

import torch
from torch import Tensor


def report(name: str, got: Tensor, expected: Tensor, atol: float) -> float:
    """Compare, print one line, raise if the difference exceeds `atol`. Returns max |diff|."""
    got, expected = torch.as_tensor(got), torch.as_tensor(expected)
    if got.shape != expected.shape:
        raise AssertionError(f"✗ {name}: returned shape {tuple(got.shape)}, expected {tuple(expected.shape)}")
    diff = (got.double() - expected.double()).abs().max().item() if got.numel() else 0.0
    if not diff <= atol:  # also catches NaN
        raise AssertionError(f"✗ {name}: max |diff| = {diff:.3e} exceeds tolerance {atol:.0e}")
    print(f"✓ {name}: max |diff| = {diff:.3e} (tolerance {atol:.0e})")
    return diff


def random_boxes_cxcywh(n: int, generator: torch.Generator) -> Tensor:
    """(n, 4) cxcywh boxes in [0, 1] (float64), some overlapping, some not."""
    cxcy = torch.rand(n, 2, generator=generator, dtype=torch.float64)
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * 0.5 + 0.02
    return torch.cat([cxcy, wh], dim=1)
