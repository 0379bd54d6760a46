"""The CNN backbone: a torchvision ResNet with frozen batch norm, returning chosen stages.

As in DETR (`models/backbone.py`): the ResNet's classification head is dropped, batch norm is
frozen (`torchvision.ops.misc.FrozenBatchNorm2d`: statistics and affine terms are buffers, not
parameters, so they do not count as parameters), and the padding mask is downsampled to each
returned feature map. Nothing is downloaded: the ResNet starts from random weights, or loads a
torchvision ResNet state dict from a local file (`BackboneConfig.weights`).

The tiny presets start from `data/pretrained/resnet_tiny.pt`, this package's own pretraining of
the tiny ResNet on dense labelling of generated shapes (`tutorial/training/pretrain.py`), the analogue of
the papers' ImageNet weights. They keep ordinary (trainable) batch norm (`norm="bn"`), since the
statistics of so short a pretraining are not worth freezing.

Glossary: B batch, H, W image size, C_l channels of stage l, stride s_l = 4, 8, 16, 32 for
layer1..layer4.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models import resnet

from ..ops.frozen_norm import FrozenBatchNorm2d
from ..training.pretrain import resolve_weights

LAYERS = ("layer1", "layer2", "layer3", "layer4")


def feature_mask(mask: Tensor, size) -> Tensor:
    """The image's padding mask (B, H, W), True on padding, resized (nearest) to a feature map's
    size (H_l, W_l) -> (B, H_l, W_l). Every level's mask comes from the full-resolution mask, as in
    the official DETR and Deformable DETR (`NestedTensor` masks): resizing an already downsampled
    mask again disagrees with it for many padded sizes."""
    return F.interpolate(mask[:, None].float(), size=tuple(size))[:, 0].bool()  # (B, H_l, W_l)


@dataclass
class BackboneConfig:
    """Which ResNet, which stages it returns, and how it is normalised and initialised."""

    name: str = "resnet50"  # a torchvision ResNet constructor: resnet18, resnet34, resnet50, resnet101
    depths: tuple[int, ...] | None = None  # blocks per stage, overriding `name`'s (tiny presets)
    return_layers: tuple[str, ...] = ("layer4",)  # stages whose outputs the detector uses
    norm: str = "frozen_bn"  # "frozen_bn" (the papers, with pretrained weights) or "bn" (from scratch)
    dilation: bool = False  # DC5: layer4 with dilation instead of stride (DETR-DC5)
    train_from: str = "layer2"  # the stem and stages before this one are frozen (DETR: layer2);
    # "stem" trains everything (needed from scratch)
    weights: str | None = None  # path to a local torchvision ResNet state dict, or "pretrained:<name>"
    # for data/pretrained/<name>.pt (tutorial/training/pretrain.py)


def tiny_backbone(*return_layers: str) -> BackboneConfig:
    """The tiny presets' backbone: a torchvision ResNet with one BasicBlock per stage up to layer3
    (strides 4, 8, 16), trainable batch norm, every layer trained, starting from the shipped
    dense-labelling pretraining (`tutorial/training/pretrain.py`; `weights=None` starts from scratch)."""
    return BackboneConfig(name="resnet18", depths=(1, 1, 1), return_layers=return_layers or ("layer3",), norm="bn",
                          train_from="stem", weights="pretrained:resnet_tiny")


def build_resnet(cfg: BackboneConfig) -> resnet.ResNet:
    """The torchvision ResNet of `cfg`, without its pooling and classification head."""
    norm_layer = {"frozen_bn": FrozenBatchNorm2d, "bn": nn.BatchNorm2d}[cfg.norm]
    if cfg.depths is not None:
        block = resnet.BasicBlock if cfg.name in ("resnet18", "resnet34") else resnet.Bottleneck
        depths = list(cfg.depths) + [1] * (4 - len(cfg.depths))
        net = resnet.ResNet(block, depths, norm_layer=norm_layer)
    else:
        net = getattr(resnet, cfg.name)(weights=None, norm_layer=norm_layer,
                                        replace_stride_with_dilation=[False, False, cfg.dilation])
    last = max(LAYERS.index(name) for name in cfg.return_layers)
    if cfg.weights is not None:
        path = resolve_weights(cfg.weights)
        state = torch.load(path, map_location="cpu", weights_only=True)
        missing, unexpected = net.load_state_dict(state, strict=False)
        unused = ("fc.",) + tuple(f"{name}." for name in LAYERS[last + 1:])  # dropped below: not expected
        wrong = [k for k in missing if not k.startswith(unused)] + [k for k in unexpected if not k.startswith("fc.")]
        if wrong:
            raise ValueError(f"backbone weights {path}: keys do not fit {cfg.name}: {wrong[:5]}")
    for name in LAYERS[last + 1:]:
        delattr(net, name)  # stages after the last returned one are not part of the detector
    del net.avgpool, net.fc
    return net


class Backbone(nn.Module):
    """Runs the ResNet stem and stages; returns the requested stages' maps and padding masks."""

    def __init__(self, cfg: BackboneConfig):
        super().__init__()
        self.cfg = cfg
        self.body = build_resnet(cfg)
        self.stages = LAYERS[: max(LAYERS.index(n) for n in cfg.return_layers) + 1]
        trainable = LAYERS[LAYERS.index(cfg.train_from):] if cfg.train_from != "stem" else ("",)
        for name, p in self.body.named_parameters():
            p.requires_grad_(any(name.startswith(t) for t in trainable))
        # stage i of a ResNet has 64·2^i·expansion channels (expansion: 1 BasicBlock, 4 Bottleneck)
        self.num_channels = [64 * 2 ** LAYERS.index(n) * getattr(self.body, n)[-1].expansion
                             for n in cfg.return_layers]  # C_l per returned stage
        self.strides = [2 ** (LAYERS.index(n) + 2) for n in cfg.return_layers]
        if cfg.dilation and "layer4" in cfg.return_layers:
            self.strides[cfg.return_layers.index("layer4")] = 16

    def forward(self, images: Tensor, mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """images (B, 3, H, W), mask (B, H, W) True on padding -> [(feature (B, C_l, H_l, W_l),
        mask (B, H_l, W_l))] for each returned stage, in `return_layers` order."""
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(images))))  # (B, 64, H/4, W/4)
        features = {}
        for name in self.stages:
            x = getattr(b, name)(x)  # (B, C_l, H/s_l, W/s_l)
            features[name] = x
        out = []
        for name in self.cfg.return_layers:
            f = features[name]
            out.append((f, feature_mask(mask, f.shape[-2:])))  # (B, C_l, H_l, W_l), (B, H_l, W_l)
        return out
