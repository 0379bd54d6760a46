"""RT-DETR's backbone: ResNet-vd (He et al., "Bag of Tricks", CVPR 2019, Fig. 2 (d)), official `PResNet`.

Two changes to the ResNet the other models use (`tutorial/models/backbone.py`), both about not throwing
information away when downsampling:
- the stem is three 3x3 convolutions (3 -> 32 (stride 2) -> 32 -> 64) instead of one 7x7;
- a shortcut that halves the resolution first averages 2x2 pixels, then projects with a 1x1
  convolution of stride 1, instead of a 1x1 convolution of stride 2, which reads only one pixel
  in four.
Every stage's first block has a projection shortcut (`short`), even where neither the width nor
the resolution changes (stage 1 of ResNet-18/34 has a 1x1 convolution 64 -> 64 that torchvision's
ResNet does not), and in a bottleneck the stride sits on the 3x3 convolution. torchvision's
`BasicBlock`/`Bottleneck` cannot express the pooled shortcut, so the blocks are written here,
with the official module names (`conv1.conv1_1`, `res_layers.i.blocks.j.branch2a`, ...), so an
official PResNet state dict loads as is (`PResNetConfig.weights`, a local file).

Normalisation, as in the official configs (`configs/rtdetr/include/rtdetr_r50vd.yml`,
`rtdetr_r18vd_6x_coco.yml`): R50 `freeze_norm: True` (torchvision's `FrozenBatchNorm2d`: the
statistics and affine terms are buffers, not parameters) and `freeze_at: 0` (the stem is not
trained); R18 `freeze_norm: False` (ordinary batch norm, trained, its weight and bias counted as
parameters) and `freeze_at: -1` (everything trained).

Glossary: B batch, C_i channels of stage i, stride 4, 8, 16, 32 for stages 0..3 (`return_idx`).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .backbone import feature_mask
from ..ops.frozen_norm import FrozenBatchNorm2d
from ..training.pretrain import resolve_weights

ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
BLOCKS_PER_STAGE = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}


@dataclass
class PResNetConfig:
    depth: int = 50  # 18, 34 (basic blocks) or 50, 101 (bottlenecks)
    return_idx: tuple[int, ...] = (1, 2, 3)  # stages returned: strides 8, 16, 32
    freeze_at: int = 0  # -1: train everything; 0: freeze the stem; k: the stem and the first k stages
    freeze_norm: bool = True  # frozen batch norm (buffers) instead of trainable batch norm
    depths: tuple[int, ...] | None = None  # blocks per stage, overriding `depth`'s (tiny presets)
    width: int = 64  # C_0 before expansion (official 64; tiny presets narrower)
    weights: str | None = None  # path to a local official PResNet state dict, or "pretrained:<name>"

    def __post_init__(self):
        if self.depth not in BLOCKS_PER_STAGE:
            raise ValueError(f"PResNetConfig.depth: expected one of {tuple(BLOCKS_PER_STAGE)}, got {self.depth}")


def presnet_tiny() -> PResNetConfig:
    """The tiny presets' PResNet (rtdetr_tiny, dense_tiny): a narrow ResNet18-vd (base width 32, one
    block per stage, trainable BN, nothing frozen; strides 8, 16, 32 with 64, 128, 256 channels),
    starting from the shipped pretraining (`tutorial/training/pretrain.py`)."""
    return PResNetConfig(depth=18, depths=(1, 1, 1, 1), width=32, freeze_at=-1, freeze_norm=False,
                         weights="pretrained:presnet_tiny")


class ConvNormLayer(nn.Module):
    """Conv (no bias, 'same' padding) -> batch norm -> activation (none by default): the official
    `ConvNormLayer`, used by the backbone and the hybrid encoder."""

    def __init__(self, ch_in: int, ch_out: int, kernel_size: int, stride: int = 1, act: str | None = None,
                 norm_layer=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(ch_in, ch_out, kernel_size, stride, padding=(kernel_size - 1) // 2, bias=False)
        self.norm = norm_layer(ch_out)
        self.act = nn.Identity() if act is None else ACTIVATIONS[act]()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.norm(self.conv(x)))


def shortcut(ch_in: int, ch_out: int, stride: int, norm_layer) -> nn.Module:
    """The vd projection shortcut: 2x2 average pooling then a stride-1 1x1 conv when the block
    downsamples, a plain 1x1 conv otherwise."""
    if stride == 2:
        return nn.Sequential(OrderedDict([("pool", nn.AvgPool2d(2, 2, 0, ceil_mode=True)),
                                          ("conv", ConvNormLayer(ch_in, ch_out, 1, 1, norm_layer=norm_layer))]))
    return ConvNormLayer(ch_in, ch_out, 1, stride, norm_layer=norm_layer)


class BasicBlock(nn.Module):
    """3x3 (stride s) -> 3x3, plus the shortcut, then ReLU (ResNet-18/34)."""

    expansion = 1

    def __init__(self, ch_in: int, ch_out: int, stride: int, project: bool, norm_layer):
        super().__init__()
        self.branch2a = ConvNormLayer(ch_in, ch_out, 3, stride, "relu", norm_layer)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, 1, None, norm_layer)
        self.short = shortcut(ch_in, ch_out, stride, norm_layer) if project else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch2b(self.branch2a(x)) + self.short(x))


class BottleNeck(nn.Module):
    """1x1 -> 3x3 (stride s) -> 1x1 (x4 channels), plus the shortcut, then ReLU (ResNet-50/101)."""

    expansion = 4

    def __init__(self, ch_in: int, ch_out: int, stride: int, project: bool, norm_layer):
        super().__init__()
        self.branch2a = ConvNormLayer(ch_in, ch_out, 1, 1, "relu", norm_layer)
        self.branch2b = ConvNormLayer(ch_out, ch_out, 3, stride, "relu", norm_layer)
        self.branch2c = ConvNormLayer(ch_out, ch_out * 4, 1, 1, None, norm_layer)
        self.short = shortcut(ch_in, ch_out * 4, stride, norm_layer) if project else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.branch2c(self.branch2b(self.branch2a(x))) + self.short(x))


class Stage(nn.Module):
    def __init__(self, block, ch_in: int, ch_out: int, count: int, stride: int, norm_layer):
        super().__init__()
        self.blocks = nn.ModuleList(
            block(ch_in if i == 0 else ch_out * block.expansion, ch_out, stride if i == 0 else 1, i == 0, norm_layer)
            for i in range(count))

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x


class PResNet(nn.Module):
    """forward(images (B, 3, H, W), mask (B, H, W)) -> [(feature (B, C_i, H/s_i, W/s_i), mask)] for
    each stage in `return_idx` (the interface of `tutorial/models/backbone.py`'s `Backbone`)."""

    def __init__(self, cfg: PResNetConfig):
        super().__init__()
        self.cfg = cfg
        norm_layer = FrozenBatchNorm2d if cfg.freeze_norm else nn.BatchNorm2d
        block = BottleNeck if cfg.depth >= 50 else BasicBlock
        depths = cfg.depths if cfg.depths is not None else BLOCKS_PER_STAGE[cfg.depth]
        c = cfg.width
        self.conv1 = nn.Sequential(OrderedDict([  # the deep stem: (B, 3, H, W) -> (B, C_0, H/2, W/2)
            ("conv1_1", ConvNormLayer(3, c // 2, 3, 2, "relu", norm_layer)),
            ("conv1_2", ConvNormLayer(c // 2, c // 2, 3, 1, "relu", norm_layer)),
            ("conv1_3", ConvNormLayer(c // 2, c, 3, 1, "relu", norm_layer))]))
        widths = [c * 2**i for i in range(len(depths))]  # 64, 128, 256, 512 before expansion
        ins = [c] + [w * block.expansion for w in widths[:-1]]
        self.res_layers = nn.ModuleList(Stage(block, ins[i], widths[i], depths[i], 1 if i == 0 else 2, norm_layer)
                                        for i in range(len(depths)))
        if cfg.weights is not None:
            self.load_state_dict(torch.load(resolve_weights(cfg.weights), map_location="cpu", weights_only=True))
        frozen = [self.conv1] + list(self.res_layers[:max(cfg.freeze_at, 0)]) if cfg.freeze_at >= 0 else []
        for module in frozen:
            module.requires_grad_(False)
        self.num_channels = [widths[i] * block.expansion for i in cfg.return_idx]  # C_i per returned stage
        self.strides = [2 ** (i + 2) for i in cfg.return_idx]

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        x = F.max_pool2d(self.conv1(images), kernel_size=3, stride=2, padding=1)  # (B, C_0, H/4, W/4)
        out = []
        for i, stage in enumerate(self.res_layers):
            x = stage(x)  # (B, C_i, H/2^(i+2), W/2^(i+2))
            if i in self.cfg.return_idx:
                out.append((x, feature_mask(mask, x.shape[-2:])))  # (B, C_i, H_i, W_i), (B, H_i, W_i)
            if i == max(self.cfg.return_idx):
                break
        return out
