"""Lite DETR (Li et al., CVPR 2023): an interleaved multi-scale encoder for efficient DETR, on DINO.

A 4-level encoder spends most of its work on the largest map: at strides 8, 16, 32, 64 the
stride-8 level holds about 75% of the tokens (the paper's abstract). Lite DETR splits the levels into
*high-level* tokens (the small maps, strides 16-64: few tokens, rich semantics) and *low-level*
tokens (the large stride-8 map: many tokens, local detail) and updates them at different rates:

1. Interleaved update (Fig. 2). The encoder is B blocks of A + 1 layers. In the first
   A layers of a block only the high-level tokens are queries (Sec. 3.4, Fig. 2 (a)): they attend
   to all levels, the low-level ones included, but the low-level tokens are not updated (they pass
   through bitwise unchanged). The block's last layer updates the low-level tokens, which fuse the
   refreshed high-level features (Sec. 3.5, Fig. 2 (b)); in the official code its queries are all
   tokens, so the high-level ones are updated once more there too, as here. Officially (`enc_scale=3`,
   `num_expansion=3`, 6 layers) A = 1, B = 3: high, all, high, all, high, all (`encoder_schedule`,
   `LiteDINO.schedule`, plain data a notebook can draw).
2. Key-aware deformable attention (Sec. 3.3, `tutorial/ops/key_aware_attention.py`): the weights
   of the sampled points come from query·key dot products of keys sampled at the points, not from
   a linear layer of the query. Officially in every deformable attention, encoder and decoder.
3. In the all-level layers the low-level tokens go through their own small FFN, C -> C -> C with
   its own LayerNorm, instead of the C -> 2048 -> C one of the high-level tokens (official
   `small_expand=True`: `linear12`, `linear22`, `norm22`; here `low_ffn`, `low_norm`).

Everything else is DINO (`tutorial/models/dino.py`): the front end, query selection, decoder,
denoising, criterion and post-processing; `LiteDINO` subclasses `DINO` and replaces only the encoder
and the decoder's cross-attention. Lite-DINO-4scale-R50 has 47,684,222 parameters, 791,040 more than
DINO's 46,893,182: KDA trades each attention's `attention_weights` Linear(C, M·L·P) for a
`query_proj` Linear(C, C) (+32,896 x 12 attentions) and the 3 all-level layers add the small FFN
and its norm (+132,096 x 3).
Official code: IDEA-Research/Lite-DETR, `models/dino/deformable_transformer.py`
(`TransformerEncoder.forward`, `DeformableTransformerEncoderLayer` with `small_expand`),
`config/DINO/DINO_4scale.py` and `coco_transformer.py` (the encoder's defaults), run with `key_aware=True`.

Glossary (code -> paper): high_levels = the official `enc_scale` (how many of the smallest maps are
high-level, S1-S3 in Fig. 2); num_blocks = B (`num_expansion`); A = num_encoder_layers / B - 1
high-level updates per block; schedule[i] = the levels layer i updates. In shape comments B is the
batch, N tokens, N_q a layer's queries, N_low low-level tokens (they come first in the flattened
order), L levels, C width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .backbone import tiny_backbone
from .deformable_transformer import DeformableEncoderLayer, DeformableTransformerConfig, encoder_reference_points
from .dino import DINO, DINOConfig, DINODecoder
from ..ops.key_aware_attention import KeyAwareDeformAttn
from .transformer import FFN, tiny_transformer, with_pos


@dataclass
class LiteDINOConfig(DINOConfig):
    high_levels: int = 3  # the last 3 levels (strides 16, 32, 64) are high-level (official enc_scale)
    num_blocks: int = 3  # B encoder blocks, each A high-level layers + 1 all-level layer (official num_expansion)
    small_low_ffn: bool = True  # low-level tokens get a C -> C -> C FFN in the all-level layers (small_expand)
    key_aware: bool = True  # KDA in the encoder and the decoder cross-attention (official key_aware)

    @property
    def schedule(self) -> list[tuple[int, ...]]:
        """The levels each encoder layer updates (`encoder_schedule`)."""
        tc = self.transformer
        return encoder_schedule(tc.num_encoder_layers, self.num_blocks, tc.num_levels, self.high_levels)


def encoder_schedule(num_layers: int, num_blocks: int, num_levels: int, high_levels: int) -> list[tuple[int, ...]]:
    """Which levels each encoder layer updates (Fig. 2): B = num_blocks blocks of
    A = num_layers / B - 1 layers updating only the high levels (the last `high_levels`), then one
    updating all levels (official: layer i is all-level when (i + 1) % (num_layers / B) == 0).
    E.g. (6, 3, 4, 3) -> [(1, 2, 3), (0, 1, 2, 3)] * 3."""
    if num_blocks < 1 or num_layers % num_blocks:
        raise ValueError(f"LiteDINOConfig.num_blocks: expected a divisor of num_encoder_layers ({num_layers}), "
                         f"got {num_blocks}")
    if not 1 <= high_levels <= num_levels:
        raise ValueError(f"LiteDINOConfig.high_levels: expected 1..{num_levels} (num_levels), got {high_levels}")
    per_block = num_layers // num_blocks
    high, every = tuple(range(num_levels - high_levels, num_levels)), tuple(range(num_levels))
    return [every if (i + 1) % per_block == 0 else high for i in range(num_layers)]


class LiteEncoderLayer(DeformableEncoderLayer):
    """Deformable DETR's encoder layer whose queries are a subset of the tokens (`queries`, the last
    ones in the flattened order) while the values are all tokens (`src`); with `low_ffn` the first
    `num_low` queries (low-level tokens) take the small FFN. Key-aware attention when `key_aware`."""

    def __init__(self, cfg: DeformableTransformerConfig, key_aware: bool, low_ffn: bool):
        super().__init__(cfg)
        if key_aware:
            self.self_attn = KeyAwareDeformAttn(cfg.d_model, cfg.num_levels, cfg.num_heads, cfg.enc_points)
        self.low_ffn = FFN(cfg.d_model, cfg.d_model, cfg.dropout) if low_ffn else None  # official linear12, linear22
        self.low_norm = nn.LayerNorm(cfg.d_model) if low_ffn else None  # official norm22
        self.dropout3 = nn.Dropout(cfg.dropout)

    def forward(self, queries: Tensor, pos: Tensor, reference_points: Tensor, src: Tensor,
                spatial_shapes: list[tuple[int, int]], padding_mask: Tensor, num_low: int = 0):
        """queries, pos (B, N_q, C) the tokens to update, reference_points (B, N_q, L, 2), src (B, N, C)
        every token (the values) -> (updated queries (B, N_q, C), locations, weights)."""
        out, loc, w = self.self_attn(with_pos(queries, pos), reference_points, src, spatial_shapes, padding_mask)
        x = self.norm1(queries + self.dropout1(out))  # (B, N_q, C)
        if self.low_ffn is None:
            return self.norm2(x + self.dropout2(self.ffn(x))), loc, w
        low, high = x[:, :num_low], x[:, num_low:]  # (B, N_low, C), (B, N_q - N_low, C)
        low = self.low_norm(low + self.dropout3(self.low_ffn(low)))
        high = self.norm2(high + self.dropout2(self.ffn(high)))
        return torch.cat([low, high], 1), loc, w  # (B, N_q, C)


class LiteEncoder(nn.Module):
    """The interleaved encoder (module docstring, items 1 and 3). Same interface as
    `DeformableEncoder`: forward(src, pos (B, N, C), spatial_shapes, ratios (B, L, 2), padding_mask
    (B, N), return_sampling) -> (memory (B, N, C), reference points (B, N, L, 2), [(locations,
    weights)] per layer, each over the tokens that layer updates: (B, N_q, M, L, P, 2), (B, N_q, M, L, P))."""

    def __init__(self, cfg: LiteDINOConfig):
        super().__init__()
        tc = cfg.transformer
        self.schedule = cfg.schedule
        self.num_low_levels = tc.num_levels - cfg.high_levels
        self.layers = nn.ModuleList(
            LiteEncoderLayer(tc, cfg.key_aware, cfg.small_low_ffn and len(levels) == tc.num_levels)
            for levels in self.schedule)

    def forward(self, src, pos, spatial_shapes, ratios, padding_mask, return_sampling: bool = False,
                num_layers: int | None = None):
        """`num_layers` runs only the first layers (all by default), e.g. to see what one layer changes."""
        ref = encoder_reference_points(spatial_shapes, ratios)  # (B, N, L, 2)
        n_low = sum(h * w for h, w in spatial_shapes[:self.num_low_levels])  # low-level tokens come first
        sampling = []
        for layer, levels in list(zip(self.layers, self.schedule))[:num_layers]:
            start = sum(h * w for h, w in spatial_shapes[:levels[0]])  # 0 (all levels) or N_low (high only)
            updated, loc, w = layer(src[:, start:], pos[:, start:], ref[:, start:], src, spatial_shapes,
                                    padding_mask, num_low=max(n_low - start, 0))  # (B, N - start, C)
            src = torch.cat([src[:, :start], updated], 1)  # (B, N, C): the first `start` tokens unchanged
            if return_sampling:
                sampling.append((loc, w))
        return src, ref, sampling


class LiteDINO(DINO):
    """DINO with Lite DETR's encoder and key-aware attention; the interface, outputs and criterion
    of `DINO`. With `return_intermediates=True` also "encoder_schedule" (the levels each encoder
    layer updates); "encoder_sampling" then holds, per layer, only the tokens that layer updates
    (the high-level ones, the last in the flattened order, in a high-level layer)."""

    cfg: LiteDINOConfig

    def build_encoder(self, tc: DeformableTransformerConfig) -> LiteEncoder:
        return LiteEncoder(self.cfg)

    def build_decoder(self, tc: DeformableTransformerConfig) -> DINODecoder:
        """DINO's decoder; with `key_aware` its cross-attention is KDA (official `key_aware` reaches
        the decoder layers too)."""
        decoder = DINODecoder(tc)
        if self.cfg.key_aware:
            for layer in decoder.layers:
                layer.cross_attn = KeyAwareDeformAttn(tc.d_model, tc.num_levels, tc.num_heads, tc.dec_points)
        return decoder

    @property
    def schedule(self) -> list[tuple[int, ...]]:
        """The levels each encoder layer updates, e.g. [(1, 2, 3), (0, 1, 2, 3)] * 3."""
        return self.encoder.schedule

    def forward(self, images: Tensor, mask: Tensor, targets: list[dict] | None = None,
                return_intermediates: bool = False, num_decoder_layers: int | None = None) -> dict:
        out = super().forward(images, mask, targets, return_intermediates, num_decoder_layers)
        if return_intermediates:
            out["encoder_schedule"] = self.schedule
        return out


# --- presets ----------------------------------------------------------------------------------


def lite_dino_4scale_r50() -> LiteDINOConfig:
    """Lite-DINO-4scale-R50: official `config/DINO/DINO_4scale.py` (DINO's preset) with the encoder
    defaults of `coco_transformer.py` (enc_scale 3, num_expansion 3, small_expand, proj_key False,
    same_loc False) and key_aware=True: 47,684,222 parameters."""
    return LiteDINOConfig()


def lite_dino_tiny() -> LiteDINOConfig:
    """`dino_tiny`'s sizes (4 levels at strides 8-64, C=128, 3+3 layers, 25 queries, 6 classes)
    with one encoder block of 2 high-level layers and 1 all-level layer (3 layers cannot hold the
    official 3 blocks of 1 + 1)."""
    return LiteDINOConfig(
        num_classes=6,
        num_queries=25,
        backbone=tiny_backbone("layer2", "layer3"),
        transformer=tiny_transformer(DeformableTransformerConfig),
        dn_number=25,
        num_blocks=1,
    )
