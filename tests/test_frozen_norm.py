"""Frozen batch norm (tutorial/ops/frozen_norm.py): torchvision's result bit for bit in float32, its
state-dict keys, and a bf16 feature map kept in bf16 (where torchvision's promotes it to float32)."""
from __future__ import annotations

import torch
from torchvision.ops import misc

from tutorial.ops.frozen_norm import FrozenBatchNorm2d


def pair(channels: int = 8):
    ours, theirs = FrozenBatchNorm2d(channels), misc.FrozenBatchNorm2d(channels)
    g = torch.Generator().manual_seed(0)
    for name in ("weight", "bias", "running_mean", "running_var"):
        value = torch.rand(channels, generator=g) + 0.5
        getattr(ours, name).copy_(value)
        getattr(theirs, name).copy_(value)
    return ours, theirs


def test_float32_equals_torchvision_bitwise():
    ours, theirs = pair()
    x = torch.randn(2, 8, 5, 7)
    assert torch.equal(ours(x), theirs(x))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert not list(ours.parameters())  # buffers only: frozen BN counts no parameters


def test_bfloat16_stays_bfloat16_and_close():
    ours, theirs = pair()
    x = torch.randn(2, 8, 5, 7).bfloat16()
    assert theirs(x).dtype == torch.float32  # what cost the casts under autocast
    out = ours(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), theirs(x), atol=3e-2, rtol=2e-2)
