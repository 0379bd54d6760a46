"""Deformable DETR's encoder and decoder (Zhu et al., ICLR 2021, Sec. 4.1-4.2 and App. A.2-A.4).

What changes from DETR's transformer (`tutorial/models/transformer.py`):
- the encoder's self-attention is multi-scale deformable attention: every pixel of every level
  is a query whose reference point is its own (normalised) centre;
- the decoder keeps standard self-attention between queries, but its cross-attention is
  deformable, sampling around each query's reference point;
- iterative bounding-box refinement (App. A.4): each decoder layer predicts a correction to the
  previous layer's box, and the refined box (detached) is the next layer's reference;
- two-stage (App. A.4): the encoder itself proposes boxes (one per pixel, in
  `encoder_proposals`), and the top-scoring proposals become the decoder's reference boxes.

Reference points are scaled by each level's valid ratio (the unpadded fraction of the map) so
that a padded image's points land where the unpadded image's would.

Glossary: B batch, N = Σ_l H_l·W_l tokens, L levels, Q queries, C width, M heads, P points.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.attention import MultiHeadAttention
from ..ops.deformable_attention import MSDeformAttn
from .heads import inverse_sigmoid
from .transformer import FFN, with_pos


@dataclass
class DeformableTransformerConfig:
    d_model: int = 256
    num_heads: int = 8
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 1024
    dropout: float = 0.1
    num_levels: int = 4  # L
    enc_points: int = 4  # P in the encoder
    dec_points: int = 4  # P in the decoder


def valid_ratios(mask: Tensor) -> Tensor:
    """mask (B, H, W), True on padding -> (B, 2): the unpadded fraction (w, h) of the map."""
    h, w = mask.shape[-2:]
    valid_h = (~mask[:, :, 0]).sum(1)  # (B,)
    valid_w = (~mask[:, 0, :]).sum(1)  # (B,)
    return torch.stack([valid_w / w, valid_h / h], -1).float()  # (B, 2)


def encoder_reference_points(spatial_shapes: list[tuple[int, int]], ratios: Tensor) -> Tensor:
    """Each pixel's centre, normalised by its level's valid size, seen on every level.

    ratios (B, L, 2) -> reference points (B, N, L, 2), as the official `get_reference_points`.
    """
    points = []
    for lvl, (h, w) in enumerate(spatial_shapes):
        ys, xs = torch.meshgrid(torch.arange(h, device=ratios.device) + 0.5,
                                torch.arange(w, device=ratios.device) + 0.5, indexing="ij")  # (H_l, W_l)
        ref_y = ys.reshape(1, -1) / (ratios[:, None, lvl, 1] * h)  # (B, H_l·W_l)
        ref_x = xs.reshape(1, -1) / (ratios[:, None, lvl, 0] * w)  # (B, H_l·W_l)
        points.append(torch.stack([ref_x, ref_y], -1))  # (B, H_l·W_l, 2)
    points = torch.cat(points, 1)  # (B, N, 2), relative to the valid part of its own level
    return points[:, :, None] * ratios[:, None]  # (B, N, L, 2)


class DeformableEncoderLayer(nn.Module):
    """src <- LN(src + MSDeformAttn(src + pos, ref, src)); src <- LN(src + FFN(src))."""

    def __init__(self, cfg: DeformableTransformerConfig):
        super().__init__()
        self.self_attn = MSDeformAttn(cfg.d_model, cfg.num_levels, cfg.num_heads, cfg.enc_points)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.ffn = FFN(cfg.d_model, cfg.dim_feedforward, cfg.dropout)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.dropout1, self.dropout2 = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, padding_mask, value=None):
        """src, pos (B, N, C), reference_points (B, N, L, 2) -> (src (B, N, C), locations, weights).
        `value` (B, N_v, C), default `src`: the tokens attended to when only some of them are the
        queries (Sparse DETR: src is then the (B, k, C) kept tokens, value all N of them)."""
        value = src if value is None else value
        out, loc, w = self.self_attn(with_pos(src, pos), reference_points, value, spatial_shapes, padding_mask)
        src = self.norm1(src + self.dropout1(out))
        src = self.norm2(src + self.dropout2(self.ffn(src)))
        return src, loc, w


class DeformableDecoderLayer(nn.Module):
    """tgt <- LN(tgt + SelfAttn); tgt <- LN(tgt + MSDeformAttn(tgt + pos, ref, memory)); tgt <- LN(tgt + FFN)."""

    def __init__(self, cfg: DeformableTransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.norm1 = nn.LayerNorm(cfg.d_model)
        self.cross_attn = MSDeformAttn(cfg.d_model, cfg.num_levels, cfg.num_heads, cfg.dec_points)
        self.norm2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FFN(cfg.d_model, cfg.dim_feedforward, cfg.dropout)
        self.norm3 = nn.LayerNorm(cfg.d_model)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(cfg.dropout) for _ in range(3))

    def forward(self, tgt, query_pos, reference_points, memory, spatial_shapes, padding_mask, self_attn_mask=None):
        """tgt, query_pos (B, Q, C), reference_points (B, Q, L, 2 or 4) -> (tgt, locations, weights)."""
        q = k = with_pos(tgt, query_pos)
        out, _ = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)  # (B, Q, C)
        tgt = self.norm1(tgt + self.dropout1(out))
        out, loc, w = self.cross_attn(with_pos(tgt, query_pos), reference_points, memory, spatial_shapes,
                                      padding_mask)  # (B, Q, C)
        tgt = self.norm2(tgt + self.dropout2(out))
        tgt = self.norm3(tgt + self.dropout3(self.ffn(tgt)))
        return tgt, loc, w


class DeformableEncoder(nn.Module):
    def __init__(self, cfg: DeformableTransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(DeformableEncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))

    def forward(self, src, pos, spatial_shapes, ratios, padding_mask, return_sampling: bool = False):
        """src, pos (B, N, C), ratios (B, L, 2) -> (memory (B, N, C), reference points (B, N, L, 2),
        [(locations, weights)] per layer if `return_sampling`)."""
        ref = encoder_reference_points(spatial_shapes, ratios)  # (B, N, L, 2)
        sampling = []
        for layer in self.layers:
            src, loc, w = layer(src, pos, ref, spatial_shapes, padding_mask)
            if return_sampling:
                sampling.append((loc, w))
        return src, ref, sampling


class DeformableDecoder(nn.Module):
    """Returns every layer's output and reference boxes; refines them when given box heads."""

    def __init__(self, cfg: DeformableTransformerConfig):
        super().__init__()
        self.layers = nn.ModuleList(DeformableDecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.bbox_embed = None  # set by the model for iterative box refinement (one head per layer)

    def forward(self, tgt, reference_points, memory, spatial_shapes, ratios, padding_mask, query_pos,
                self_attn_mask=None, return_sampling: bool = False):
        """tgt, query_pos (B, Q, C), reference_points (B, Q, 2 or 4) in [0, 1] ->
        (hs (L_dec, B, Q, C), [reference (B, Q, 2 or 4)] per layer: the reference that layer's box
        is predicted relative to (points for the first layer, boxes after a refinement),
        [(locations, weights)] per layer)."""
        hs, refs, sampling = [], [], []
        for lid, layer in enumerate(self.layers):
            scale = ratios if reference_points.shape[-1] == 2 else torch.cat([ratios, ratios], -1)  # (B, L, 2|4)
            ref_input = reference_points[:, :, None] * scale[:, None]  # (B, Q, L, 2|4)
            refs.append(reference_points)
            tgt, loc, w = layer(tgt, query_pos, ref_input, memory, spatial_shapes, padding_mask, self_attn_mask)
            if return_sampling:
                sampling.append((loc, w))
            if self.bbox_embed is not None:  # iterative refinement: b_{d} = σ(Δb_d + σ⁻¹(b_{d-1}))
                delta = self.bbox_embed[lid](tgt)  # (B, Q, 4)
                if reference_points.shape[-1] == 4:
                    new = delta + inverse_sigmoid(reference_points)
                else:
                    new = torch.cat([delta[..., :2] + inverse_sigmoid(reference_points), delta[..., 2:]], -1)
                reference_points = new.sigmoid().detach()  # gradients do not flow through the reference
            hs.append(tgt)
        return torch.stack(hs), refs, sampling


def proposal_position_encoding(proposals: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine encoding of each coordinate of (B, K, 4) unsquashed boxes -> (B, K, 4·num_pos_feats)
    (official `get_proposal_pos_embed`), the two-stage decoder's query positions."""
    i = torch.arange(num_pos_feats, dtype=torch.float32, device=proposals.device)
    freq = temperature ** (2 * (i // 2) / num_pos_feats)  # (F,)
    pos = proposals.sigmoid()[..., None] * 2 * math.pi / freq  # (B, K, 4, F)
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=4).flatten(2)  # (B, K, 4·F)
    return pos


def encoder_proposals(memory: Tensor, padding_mask: Tensor, spatial_shapes: list[tuple[int, int]]):
    """One proposal box per encoder pixel (official `gen_encoder_output_proposals`): centred on the
    pixel, of side 0.05·2^l on level l. Returns (memory with invalid tokens zeroed (B, N, C),
    proposals in logit space (B, N, 4), inf where padded or too close to the border)."""
    proposals, start = [], 0
    for lvl, (h, w) in enumerate(spatial_shapes):
        mask = padding_mask[:, start:start + h * w].view(-1, h, w)  # (B, H_l, W_l)
        valid_h, valid_w = (~mask[:, :, 0]).sum(1), (~mask[:, 0, :]).sum(1)  # (B,)
        ys, xs = torch.meshgrid(torch.arange(h, device=memory.device), torch.arange(w, device=memory.device),
                                indexing="ij")  # (H_l, W_l)
        grid = torch.stack([xs, ys], -1).float()[None] + 0.5  # (1, H_l, W_l, 2)
        grid = grid / torch.stack([valid_w, valid_h], -1)[:, None, None, :]  # (B, H_l, W_l, 2)
        wh = torch.full_like(grid, 0.05 * 2.0**lvl)  # (B, H_l, W_l, 2)
        proposals.append(torch.cat([grid, wh], -1).flatten(1, 2))  # (B, H_l·W_l, 4)
        start += h * w
    proposals = torch.cat(proposals, 1)  # (B, N, 4) in [0, 1]
    valid = ((proposals > 0.01) & (proposals < 0.99)).all(-1, keepdim=True)  # (B, N, 1)
    proposals = torch.log(proposals / (1 - proposals))  # inverse sigmoid
    proposals = proposals.masked_fill(padding_mask[..., None] | ~valid, float("inf"))
    memory = memory.masked_fill(padding_mask[..., None] | ~valid, 0.0)
    return memory, proposals
