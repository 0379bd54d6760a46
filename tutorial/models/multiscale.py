"""The multi-scale front end of Deformable DETR and DINO, and the flattening every multi-scale model shares.

    ResNet stages (strides 8, 16, 32) + extra stride-2 convs (stride 64, ...) -> L levels,
    each projected to C channels (1x1 conv + GroupNorm; `MultiScaleProjection`)
    -> tokens (B, N, C), N = Σ_l H_l·W_l (`flatten_levels`), with positions = the sine encoding
       of each level's mask + a learned embedding of the level (`level_positions`).

(Deformable DETR Sec. 4.1 and Fig. 4 (a); official `DeformableDETR.input_proj` and
`DeformableTransformer.forward`.) RT-DETR has its own front end (a hybrid encoder, then a 1x1
conv + BN per level, no positions: `tutorial/models/rt_detr.py`) and shares only `flatten_levels`.

Glossary: B batch, C width, L levels, H_l, W_l level l's map, N tokens over all levels.
"""
from __future__ import annotations

import torch
from einops import rearrange
from torch import Tensor, nn

from .backbone import Backbone, BackboneConfig, feature_mask
from .deformable_transformer import DeformableDecoder, DeformableEncoder, DeformableTransformerConfig, valid_ratios
from ..ops.position_encoding import SinePositionEncoding


class MultiScaleProjection(nn.Module):
    """Backbone stages -> L maps of C channels: 1x1 conv + GroupNorm per stage, then 3x3 stride-2
    conv + GroupNorm for each extra level (on the last stage, then on the previous extra level)."""

    def __init__(self, in_channels: list[int], d_model: int, num_levels: int):
        super().__init__()
        layers = [nn.Sequential(nn.Conv2d(c, d_model, 1), nn.GroupNorm(32, d_model)) for c in in_channels]
        c = in_channels[-1]
        for _ in range(num_levels - len(in_channels)):
            layers.append(nn.Sequential(nn.Conv2d(c, d_model, 3, stride=2, padding=1), nn.GroupNorm(32, d_model)))
            c = d_model
        self.layers = nn.ModuleList(layers)
        for proj in self.layers:
            nn.init.xavier_uniform_(proj[0].weight, gain=1)
            nn.init.constant_(proj[0].bias, 0)

    def forward(self, features: list[tuple[Tensor, Tensor]], image_mask: Tensor) -> list[tuple[Tensor, Tensor]]:
        """[(feature (B, C_l, H_l, W_l), mask (B, H_l, W_l))] and the image's mask (B, H, W) -> L pairs
        with C channels. An extra level's mask is resized from the image's mask (official code), not
        from the previous level's."""
        out = [(proj(f), m) for proj, (f, m) in zip(self.layers, features)]
        x = features[-1][0]
        for proj in self.layers[len(features):]:
            x = proj(x)  # (B, C, H/2, W/2)
            out.append((x, feature_mask(image_mask, x.shape[-2:])))  # (B, C, H_l, W_l), (B, H_l, W_l)
        return out


def multiscale_front_end(backbone: BackboneConfig, d_model: int, num_levels: int, temperature: float = 10000.0,
                         offset: float = 0.0) -> tuple[Backbone, MultiScaleProjection, SinePositionEncoding,
                                                       nn.Parameter]:
    """The pieces a model stores as `backbone`, `input_proj`, `position_encoding` and `level_embed`
    (the official names): the ResNet, its projection to `num_levels` maps of `d_model` channels, the
    sine encoding (temperature, offset) and the level embeddings (L, C), left uninitialised: the
    caller draws them (Deformable DETR at once, DINO after its transformer's init)."""
    net = Backbone(backbone)
    proj = MultiScaleProjection(net.num_channels, d_model, num_levels)
    position = SinePositionEncoding(d_model // 2, temperature, offset=offset)
    return net, proj, position, nn.Parameter(torch.empty(num_levels, d_model))


def deformable_body(backbone: BackboneConfig, tc: DeformableTransformerConfig) -> tuple[
        Backbone, MultiScaleProjection, SinePositionEncoding, nn.Parameter, DeformableEncoder, DeformableDecoder]:
    """Deformable DETR's body, shared by the models built on it without its heads (Efficient DETR):
    the front end of `multiscale_front_end` (sine offset -0.5, level embeddings drawn from N(0, 1) at
    once), then the deformable encoder and decoder, built in that order (the parameters' init order)."""
    net, proj, position, level_embed = multiscale_front_end(backbone, tc.d_model, tc.num_levels, offset=-0.5)
    nn.init.normal_(level_embed)
    return net, proj, position, level_embed, DeformableEncoder(tc), DeformableDecoder(tc)


def flatten_levels(levels: list[tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor, list[tuple[int, int]], Tensor]:
    """L maps [(x (B, C, H_l, W_l), mask (B, H_l, W_l) True on padding)] -> tokens (B, N, C),
    padding (B, N), spatial shapes [(H_l, W_l)] and valid ratios (B, L, 2)."""
    shapes = [tuple(x.shape[-2:]) for x, _ in levels]
    src = torch.cat([rearrange(x, "b c h w -> b (h w) c") for x, _ in levels], 1)  # (B, N, C)
    padding = torch.cat([m.flatten(1) for _, m in levels], 1)  # (B, N)
    ratios = torch.stack([valid_ratios(m) for _, m in levels], 1)  # (B, L, 2)
    return src, padding, shapes, ratios


def level_positions(levels: list[tuple[Tensor, Tensor]], position_encoding: nn.Module, level_embed: Tensor) -> Tensor:
    """Each token's position: the sine encoding of its level's mask + that level's embedding
    (level_embed (L, C)) -> (B, N, C), in `flatten_levels`' order."""
    pos = [rearrange(position_encoding(m), "b c h w -> b (h w) c") + level_embed[lvl]  # (B, H_l·W_l, C)
           for lvl, (_, m) in enumerate(levels)]
    return torch.cat(pos, 1)  # (B, N, C)
