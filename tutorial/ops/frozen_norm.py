"""Frozen batch norm whose affine runs in the input's dtype.

DETR's backbones freeze batch norm: y = x · s + b with s = γ / sqrt(σ² + ε), b = β − μ · s, all
buffers (torchvision's `FrozenBatchNorm2d`, whose state-dict keys and float32 result this keeps
bit for bit). torchvision computes it with float32 s and b, so under bfloat16 autocast every
convolution's bf16 output is promoted to float32 and cast back to bf16 by the next convolution.
Measured on `detr_r50` inference at 800 × 1216, one AMX core, channels_last: those casts and the
float32 multiply-adds took 66% of the bf16 forward, the convolutions 14%. Here s and b are cast to
x's dtype first, so a bf16 feature map stays bf16 (float32 inputs are unchanged).
"""
from __future__ import annotations

from torch import Tensor
from torchvision.ops import misc


class FrozenBatchNorm2d(misc.FrozenBatchNorm2d):
    """x (B, C, H, W) -> x · s + b per channel, s and b in x's dtype (see the module docstring)."""

    def forward(self, x: Tensor) -> Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()  # (C,)
        bias = self.bias - self.running_mean * scale  # (C,)
        return x * scale.to(x.dtype)[:, None, None] + bias.to(x.dtype)[:, None, None]  # (B, C, H, W)
