"""Anchor DETR (Wang et al., AAAI 2022, "Anchor DETR: Query Design for Transformer-Based Detector").

What it adds, and nothing else:
- **anchor points as queries** (paper Sec. 3.2, "Anchor Points"): the positional query of each
  object query is a learned 2-D point (x, y) in [0, 1] (initialised uniformly, not squashed by a
  sigmoid), encoded as Q_p = g(Pos(x, y)), Pos the sine encoding and g a 2-layer MLP (`adapt_pos2d`);
- **multiple patterns** (Sec. 3.2, "Multiple Predictions for Each Anchor Point"): N_p learned
  pattern embeddings are the content queries, Q_f = Embedding(N_p, C); every pattern is paired with
  every point, so Q = N_A · N_p queries, query q = p·N_A + i having point i and pattern p. Points
  with several patterns can each predict several objects;
- **row-column decoupled attention, RCDA** (Sec. 3.3, Eq. 4-6): instead of one softmax over the
  H·W pixels, one softmax over the W columns (the "row" attention, keys averaged over H) and one
  over the H rows (the "column" attention, keys averaged over W):

      A_x = softmax(Q_x K_xᵀ / √d) ∈ R^{Q×W},   A_y = softmax(Q_y K_yᵀ / √d) ∈ R^{Q×H},
      Z = weighted_sumW(A_x, weighted_sumH(A_y, V)),

  with Q_x = query + g_1D(Pos_1D(x)), Q_y = query + g_1D(Pos_1D(y)) and the pixels' keys
  K_x = feature + g_1D(Pos_1D(column x)), K_y = feature + g_1D(Pos_1D(row y)) (one 1-D MLP
  `adapt_pos1d` shared by queries and keys). Memory is Q·H·W·d per head instead of Q·H·W per head
  *and* per pair: the 2-D map is A_y ⊗ A_x, a product of a column and a row profile;
- `attention="standard"` swaps RCDA for ordinary multi-head attention over the H·W pixels (the
  paper's comparison, Table 4), with the pixels' 2-D encoding g(Pos(x, y)) on the keys.

Boxes are predicted by one class head and one box MLP shared by all decoder layers, relative to
the layer's anchor point in logit space: b = σ(Δ + (σ⁻¹(x, y), 0, 0)); the points are the same in
every layer (no layer-by-layer update). Everything else is a step already taken: the ResNet-50
DC5 backbone with frozen batch norm (`tutorial/models/backbone.py`, `dilation=True`), DETR's FFN
(`tutorial/models/transformer.py`), post-norm layers, Deformable DETR's focal loss, focal matching
cost and top-k post-processing (`tutorial/matching/focal.py`, `tutorial/models/heads.py`).
Official code: megvii-research/AnchorDETR, `models/transformer.py`,
`models/row_column_decoupled_attention.py`, `models/anchor_detr.py`, `main.py`.

Glossary (code -> paper): anchor_points = the N_A learned points (x, y), patterns = Q_f^pat
(N_p, C), tgt = content query, query_pos = Q_p = g(Pos(x, y)), query_pos_x / query_pos_y = the
1-D encodings of the point's x and y, pos_row (B, W, C) = g_1D of every column's x, pos_col
(B, H, C) = g_1D of every row's y, attn_row = A_x (softmax over W), attn_col = A_y (softmax over
H). Shapes as in `tutorial/__init__.py`: Q = N_A · N_p queries, M heads, d = C/M, K classes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from ..matching.criterion import LossWeights
from ..matching.focal import FocalSetCriterion, focal_matcher
from ..matching.matcher import MatcherWeights
from ..ops.attention import MultiHeadAttention
from ..ops.mlp import MLP
from ..ops.position_encoding import anchor_position_encoding
from .backbone import Backbone, BackboneConfig
from .heads import init_focal_head, inverse_sigmoid, topk_detections, zero_box_head
from .tiny import detr_tiny_sizes
from .transformer import FFN, TransformerConfig

ATTENTIONS = ("rcda", "standard")


@dataclass
class AnchorDETRConfig:
    num_classes: int = 91  # K sigmoid outputs (no ∅ class)
    num_anchor_points: int = 300  # N_A (official num_query_position)
    num_patterns: int = 3  # N_p (official num_query_pattern)
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(dilation=True))  # R50-DC5
    transformer: TransformerConfig = field(
        default_factory=lambda: TransformerConfig(dim_feedforward=1024, dropout=0.0))  # official main.py
    attention: str = "rcda"  # "rcda" (row-column decoupled) or "standard" (over all H·W pixels)
    aux_loss: bool = True
    focal_alpha: float = 0.25
    matcher: MatcherWeights = field(default_factory=lambda: MatcherWeights(cost_class=2.0))
    loss: LossWeights = field(default_factory=lambda: LossWeights(loss_ce=2.0))
    num_detections: int = 100  # top-k (query, class) pairs kept by `postprocess` (official: 100)

    def __post_init__(self):
        if self.attention not in ATTENTIONS:
            raise ValueError(f"AnchorDETRConfig.attention: expected one of {ATTENTIONS}, got {self.attention!r}")
        if self.num_anchor_points < 1 or self.num_patterns < 1:
            raise ValueError(f"AnchorDETRConfig: num_anchor_points and num_patterns must be >= 1, got "
                             f"{self.num_anchor_points} and {self.num_patterns}")

    @property
    def num_queries(self) -> int:
        """Q = N_A · N_p: every pattern at every anchor point."""
        return self.num_anchor_points * self.num_patterns


# --- positional encodings --------------------------------------------------------------------


def sine_encoding_1d(v: Tensor, num_pos_feats: int, temperature: float = 10000.0) -> Tensor:
    """The sine encoding of one coordinate (official `pos2posemb1d`): v (...) in [0, 1] ->
    (..., F); channel 2k is sin(2πv / T^(2k/F)), channel 2k+1 is cos of the same."""
    i = torch.arange(num_pos_feats, dtype=v.dtype, device=v.device)  # (F,)
    freq = temperature ** (2 * (i // 2) / num_pos_feats)  # (F,)
    angle = v[..., None] * (2 * math.pi) / freq  # (..., F)
    return torch.stack([angle[..., 0::2].sin(), angle[..., 1::2].cos()], dim=-1).flatten(-2)  # (..., F)


def pixel_centres(mask: Tensor) -> tuple[Tensor, Tensor]:
    """Normalised pixel centres of a padded feature map (official `mask2pos`): mask (B, H, W) True
    on padding -> (y (B, H), x (B, W)), (index + 0.5) / valid length, so the valid part spans (0, 1)."""
    valid = (~mask).float()  # (B, H, W)
    y = valid[:, :, 0].cumsum(1)  # (B, H): 1, 2, ... down the first column
    x = valid[:, 0, :].cumsum(1)  # (B, W): 1, 2, ... along the first row
    return (y - 0.5) / y[:, -1:], (x - 0.5) / x[:, -1:]  # (B, H), (B, W)


def adapter(c: int) -> nn.Sequential:
    """Linear -> ReLU -> Linear (official `adapt_pos1d`, `adapt_pos2d`): the g of Q_p = g(Pos)."""
    return nn.Sequential(nn.Linear(c, c), nn.ReLU(), nn.Linear(c, c))


# --- row-column decoupled attention ----------------------------------------------------------


class RCDAOutput(NamedTuple):
    out: Tensor  # (B, Q, C)
    attn_row: Tensor | None  # (B, M, Q, W): A_x, softmax over the columns
    attn_col: Tensor | None  # (B, M, Q, H): A_y, softmax over the rows


class RowColumnAttention(nn.Module):
    """Multi-head row-column decoupled attention (paper Sec. 3.3, Eq. 4-6; official `MultiheadRCDA`).

    Five input projections (queries and keys for rows and columns, values) and one output
    projection: 5C² + 5C + C² + C parameters, as the official packed `in_proj_weight` (5C, C).
    The keys are projected per pixel and averaged over H (row keys, one per column) or W (column
    keys, one per row), as officially."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"RowColumnAttention: d_model {d_model} is not divisible by num_heads {num_heads}")
        self.num_heads, self.dropout = num_heads, nn.Dropout(dropout)
        self.q_row, self.q_col, self.k_row, self.k_col, self.v_proj = (nn.Linear(d_model, d_model) for _ in range(5))
        self.out_proj = nn.Linear(d_model, d_model)
        for lin in (self.q_row, self.q_col, self.k_row, self.k_col, self.v_proj):
            # the official xavier_uniform_ of the whole (5C, C) matrix: the bound of a (C, C) piece times √(1/3)
            nn.init.xavier_uniform_(lin.weight, gain=math.sqrt(1 / 3))
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.out_proj.bias)

    def heads(self, x: Tensor) -> Tensor:
        return rearrange(x, "b ... (m d) -> b m ... d", m=self.num_heads)  # (B, M, ..., d)

    def forward(self, query_row: Tensor, query_col: Tensor, key_row: Tensor, key_col: Tensor, value: Tensor,
                padding_mask: Tensor | None = None, need_weights: bool = False) -> RCDAOutput:
        """query_row, query_col (B, Q, C); key_row, key_col, value (B, H, W, C); padding_mask
        (B, H, W) True on padding (a padded batch pads whole rows and columns) -> `RCDAOutput`."""
        d = query_row.shape[-1] // self.num_heads
        q_x = self.heads(self.q_row(query_row)) / math.sqrt(d)  # (B, M, Q, d)
        q_y = self.heads(self.q_col(query_col)) / math.sqrt(d)  # (B, M, Q, d)
        k_x = self.heads(self.k_row(key_row).mean(1))  # (B, M, W, d): one key per column
        k_y = self.heads(self.k_col(key_col).mean(2))  # (B, M, H, d): one key per row
        v = self.heads(self.v_proj(value))  # (B, M, H, W, d)
        logits_x = q_x @ k_x.transpose(-2, -1)  # (B, M, Q, W)
        logits_y = q_y @ k_y.transpose(-2, -1)  # (B, M, Q, H)
        if padding_mask is not None:
            logits_x = logits_x.masked_fill(padding_mask[:, None, None, 0, :], float("-inf"))  # padded columns
            logits_y = logits_y.masked_fill(padding_mask[:, None, None, :, 0], float("-inf"))  # padded rows
        attn_x, attn_y = logits_x.softmax(-1), logits_y.softmax(-1)  # (B, M, Q, W), (B, M, Q, H)
        # Eq. 6: first the weighted sum over H (columns of V), then over W
        z = torch.einsum("bmqh,bmhwd->bmqwd", self.dropout(attn_y), v)  # (B, M, Q, W, d)
        z = torch.einsum("bmqw,bmqwd->bmqd", self.dropout(attn_x), z)  # (B, M, Q, d)
        out = self.out_proj(rearrange(z, "b m q d -> b q (m d)"))  # (B, Q, C)
        return RCDAOutput(out, attn_x if need_weights else None, attn_y if need_weights else None)


def rcda_map(attn_row: Tensor, attn_col: Tensor) -> Tensor:
    """The 2-D attention map RCDA implies: attn_row (..., W), attn_col (..., H) -> (..., H, W),
    A[h, w] = A_y[h] · A_x[w] (it sums to 1 over the H·W pixels)."""
    return attn_col[..., :, None] * attn_row[..., None, :]  # (..., H, W)


# --- encoder and decoder layers --------------------------------------------------------------


def pixel_attention(cfg: TransformerConfig, attention: str) -> nn.Module:
    """The attention that reads the pixels: RCDA, or multi-head attention over all H·W of them."""
    cls = RowColumnAttention if attention == "rcda" else MultiHeadAttention
    return cls(cfg.d_model, cfg.num_heads, cfg.dropout)


class PixelPositions(NamedTuple):
    """The pixels' positional encodings of a feature map: with RCDA row (B, W, C) g_1D of each
    column's x and col (B, H, C) g_1D of each row's y; with standard attention pos_2d (B, H, W, C)
    g(Pos(x, y)), the anchor points' encoding of every pixel centre. The others are None."""

    row: Tensor | None
    col: Tensor | None
    pos_2d: Tensor | None


class AnchorEncoderLayer(nn.Module):
    """Self-attention over the pixels (RCDA or standard), then the FFN; post-norm (official
    `TransformerEncoderLayerSpatial`)."""

    def __init__(self, cfg: TransformerConfig, attention: str):
        super().__init__()
        c, p = cfg.d_model, cfg.dropout
        self.rcda = attention == "rcda"
        self.self_attn = pixel_attention(cfg, attention)
        self.ffn = FFN(c, cfg.dim_feedforward, p)
        self.norm1, self.norm2 = nn.LayerNorm(c), nn.LayerNorm(c)
        self.dropout1, self.dropout2 = nn.Dropout(p), nn.Dropout(p)

    def attend(self, src: Tensor, pos: PixelPositions, mask: Tensor, need_weights: bool) -> tuple[Tensor, tuple]:
        h = src.shape[1]
        if self.rcda:
            src_x = src + pos.row[:, None]  # (B, H, W, C): feature + the column's x encoding
            src_y = src + pos.col[:, :, None]  # (B, H, W, C): feature + the row's y encoding
            # every pixel is a query: its row query carries its x, its column query its y
            r = self.self_attn(src_x.flatten(1, 2), src_y.flatten(1, 2), src_x, src_y, src, mask,
                               need_weights)  # out (B, N, C), maps (B, M, N, W), (B, M, N, H)
            return rearrange(r.out, "b (h w) c -> b h w c", h=h), (r.attn_row, r.attn_col)  # (B, H, W, C)
        qk = (src + pos.pos_2d).flatten(1, 2)  # (B, N, C)
        out, attn = self.self_attn(qk, qk, src.flatten(1, 2), mask.flatten(1), need_weights=need_weights)  # (B, N, C)
        return rearrange(out, "b (h w) c -> b h w c", h=h), (attn,)  # (B, H, W, C)

    def forward(self, src: Tensor, pos: PixelPositions, mask: Tensor, need_weights: bool = False):
        """src (B, H, W, C), mask (B, H, W) -> (src (B, H, W, C), attention maps or Nones)."""
        out, maps = self.attend(src, pos, mask, need_weights)
        src = self.norm1(src + self.dropout1(out))
        return self.norm2(src + self.dropout2(self.ffn(src))), maps


class AnchorDecoderLayer(nn.Module):
    """Self-attention between the queries (Q = K = content + Q_p, V = content), cross-attention
    to the pixels (RCDA: row queries + x encoding, column queries + y encoding; or standard: + Q_p),
    FFN; post-norm (official `TransformerDecoderLayer`)."""

    def __init__(self, cfg: TransformerConfig, attention: str):
        super().__init__()
        c, p = cfg.d_model, cfg.dropout
        self.rcda = attention == "rcda"
        self.self_attn = MultiHeadAttention(c, cfg.num_heads, p)
        self.cross_attn = pixel_attention(cfg, attention)
        self.ffn = FFN(c, cfg.dim_feedforward, p)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(p) for _ in range(3))

    def cross(self, tgt: Tensor, qpos: "QueryPositions", memory: Tensor, pos: PixelPositions, mask: Tensor,
              need_weights: bool) -> tuple[Tensor, tuple]:
        if self.rcda:
            r = self.cross_attn(tgt + qpos.x, tgt + qpos.y, memory + pos.row[:, None], memory + pos.col[:, :, None],
                                memory, mask, need_weights)  # out (B, Q, C), maps (B, M, Q, W), (B, M, Q, H)
            return r.out, (r.attn_row, r.attn_col)
        out, attn = self.cross_attn(tgt + qpos.pos_2d, (memory + pos.pos_2d).flatten(1, 2), memory.flatten(1, 2),
                                    mask.flatten(1), need_weights=need_weights)  # (B, Q, C), (B, M, Q, N)
        return out, (attn,)

    def forward(self, tgt: Tensor, qpos: "QueryPositions", memory: Tensor, pos: PixelPositions, mask: Tensor,
                need_weights: bool = False):
        """tgt (B, Q, C), memory (B, H, W, C), mask (B, H, W) -> (tgt (B, Q, C), cross-attention maps)."""
        q = k = tgt + qpos.pos_2d  # (B, Q, C)
        out, _ = self.self_attn(q, k, tgt, need_weights=False)  # (B, Q, C)
        tgt = self.norm1(tgt + self.dropout1(out))
        out, maps = self.cross(tgt, qpos, memory, pos, mask, need_weights)  # (B, Q, C)
        tgt = self.norm2(tgt + self.dropout2(out))
        return self.norm3(tgt + self.dropout3(self.ffn(tgt))), maps


class QueryPositions(NamedTuple):
    """An anchor point's encodings: pos_2d (B, Q, C) Q_p = g(Pos(x, y)); x, y (B, Q, C) g_1D of x and
    of y (RCDA only, else None)."""

    pos_2d: Tensor
    x: Tensor | None
    y: Tensor | None


# --- the model -------------------------------------------------------------------------------


class AnchorDETR(nn.Module):
    """`forward(images, mask)` returns "pred_logits" (B, Q, K) (sigmoid), "pred_boxes" (B, Q, 4)
    cxcywh in [0, 1] and "aux_outputs"; with `return_intermediates=True` also "reference_points"
    (B, Q, 2) (each query's anchor point), "layer_boxes" (L_dec, B, Q, 4), "feature_size" (H, W),
    "feature_mask" (B, H, W) and, per layer, the attention maps: with RCDA "decoder_attn_row"
    (B, M, Q, W), "decoder_attn_col" (B, M, Q, H), "encoder_attn_row" (B, M, N, W),
    "encoder_attn_col" (B, M, N, H) (see `rcda_map`); with standard attention "decoder_attention"
    (B, M, Q, N) and "encoder_attention" (B, M, N, N)."""

    def __init__(self, cfg: AnchorDETRConfig):
        super().__init__()
        self.cfg = cfg
        tc = cfg.transformer
        c = tc.d_model
        self.backbone = Backbone(cfg.backbone)
        self.input_proj = nn.Sequential(nn.Conv2d(self.backbone.num_channels[-1], c, kernel_size=1),
                                        nn.GroupNorm(min(32, c), c))
        nn.init.xavier_uniform_(self.input_proj[0].weight)
        nn.init.zeros_(self.input_proj[0].bias)
        self.encoder_layers = nn.ModuleList(AnchorEncoderLayer(tc, cfg.attention) for _ in range(tc.num_encoder_layers))
        self.decoder_layers = nn.ModuleList(AnchorDecoderLayer(tc, cfg.attention) for _ in range(tc.num_decoder_layers))
        self.patterns = nn.Embedding(cfg.num_patterns, c)  # content queries, one per pattern
        self.anchor_points = nn.Embedding(cfg.num_anchor_points, 2)  # (x, y), used as is (no sigmoid)
        nn.init.uniform_(self.anchor_points.weight, 0, 1)
        self.adapt_pos2d = adapter(c)  # g: Q_p = g(Pos(x, y))
        self.adapt_pos1d = adapter(c) if cfg.attention == "rcda" else None  # g_1D, for RCDA's rows and columns
        self.class_embed = init_focal_head(nn.Linear(c, cfg.num_classes))  # shared by all layers
        self.bbox_embed = zero_box_head(MLP(c, c, 4, 3))  # shared by all layers
        nn.init.constant_(self.bbox_embed.layers[-1].bias[2:], -2.0)  # first boxes: w = h = σ(-2) ≈ 0.12

    # --- queries: anchor points × patterns (Sec. 3.2) -----------------------------------------

    def queries(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """(tgt (B, Q, C), points (B, Q, 2)), query q = p·N_A + i: pattern p's embedding at point i
        (official order: the points repeated once per pattern)."""
        p, n = self.cfg.num_patterns, self.cfg.num_anchor_points
        tgt = repeat(self.patterns.weight, "p c -> b (p n) c", b=batch_size, n=n)  # (B, Q, C)
        points = repeat(self.anchor_points.weight, "n a -> b (p n) a", b=batch_size, p=p)  # (B, Q, 2)
        return tgt, points

    def query_positions(self, points: Tensor) -> QueryPositions:
        """points (B, Q, 2) (x, y) -> their 2-D and 1-D encodings (official `pos2posemb2d`, `pos2posemb1d`)."""
        c = self.cfg.transformer.d_model
        pos_2d = self.adapt_pos2d(anchor_position_encoding(points, c // 2))  # (B, Q, C)
        if self.adapt_pos1d is None:  # standard attention: Q_p only
            return QueryPositions(pos_2d, None, None)
        return QueryPositions(pos_2d, self.adapt_pos1d(sine_encoding_1d(points[..., 0], c)),  # (B, Q, C)
                              self.adapt_pos1d(sine_encoding_1d(points[..., 1], c)))  # (B, Q, C)

    def pixel_positions(self, mask: Tensor) -> PixelPositions:
        """mask (B, H, W) -> the pixels' encodings, from the same sinusoids and MLPs as the queries'."""
        c = self.cfg.transformer.d_model
        y, x = pixel_centres(mask)  # (B, H), (B, W)
        if self.adapt_pos1d is not None:  # RCDA: one encoding per column and one per row
            return PixelPositions(self.adapt_pos1d(sine_encoding_1d(x, c)),  # (B, W, C)
                                  self.adapt_pos1d(sine_encoding_1d(y, c)), None)  # (B, H, C)
        grid = torch.stack(torch.broadcast_tensors(x[:, None, :], y[:, :, None]), -1)  # (B, H, W, 2) (x, y)
        return PixelPositions(None, None, self.adapt_pos2d(anchor_position_encoding(grid, c // 2)))  # (B, H, W, C)

    # --- forward ------------------------------------------------------------------------------

    def encode(self, images: Tensor, mask: Tensor, need_weights: bool):
        """-> (memory (B, H, W, C), positions, feature mask (B, H, W), encoder maps per layer)."""
        feature, fmask = self.backbone(images, mask)[-1]  # (B, C_backbone, H, W), (B, H, W)
        src = rearrange(self.input_proj(feature), "b c h w -> b h w c")  # (B, H, W, C)
        pos = self.pixel_positions(fmask)
        maps = []
        for layer in self.encoder_layers:
            src, m = layer(src, pos, fmask, need_weights)  # (B, H, W, C)
            maps.append(m)
        return src, pos, fmask, maps

    def predict(self, tgt: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """tgt (B, Q, C) -> (logits (B, Q, K), boxes (B, Q, 4)): b = σ(Δ + (σ⁻¹(x, y), 0, 0))."""
        delta = self.bbox_embed(tgt)  # (B, Q, 4)
        boxes = torch.cat([delta[..., :2] + inverse_sigmoid(points), delta[..., 2:]], -1).sigmoid()  # (B, Q, 4)
        return self.class_embed(tgt), boxes  # (B, Q, K), (B, Q, 4)

    def forward(self, images: Tensor, mask: Tensor, return_intermediates: bool = False) -> dict:
        memory, pos, fmask, enc_maps = self.encode(images, mask, return_intermediates)
        tgt, points = self.queries(images.shape[0])  # (B, Q, C), (B, Q, 2)
        qpos = self.query_positions(points)  # the points are the same in every layer: encoded once
        logits, boxes, dec_maps = [], [], []
        for layer in self.decoder_layers:
            tgt, m = layer(tgt, qpos, memory, pos, fmask, return_intermediates)  # (B, Q, C)
            lg, bx = self.predict(tgt, points)
            logits.append(lg)
            boxes.append(bx)
            dec_maps.append(m)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.cfg.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        if return_intermediates:
            out.update(reference_points=points, layer_boxes=torch.stack(boxes), feature_size=tuple(fmask.shape[-2:]),
                       feature_mask=fmask, **self.named_maps(enc_maps, dec_maps))
        return out

    def named_maps(self, enc_maps: list[tuple], dec_maps: list[tuple]) -> dict:
        if self.cfg.attention == "rcda":
            return {"encoder_attn_row": [m[0] for m in enc_maps], "encoder_attn_col": [m[1] for m in enc_maps],
                    "decoder_attn_row": [m[0] for m in dec_maps], "decoder_attn_col": [m[1] for m in dec_maps]}
        return {"encoder_attention": [m[0] for m in enc_maps], "decoder_attention": [m[0] for m in dec_maps]}

    # Deformable DETR's focal criterion and top-k post-processing, unchanged (official main.py weights).
    def build_criterion(self) -> FocalSetCriterion:
        return FocalSetCriterion(focal_matcher(self.cfg.matcher, self.cfg.focal_alpha), self.cfg.loss,
                                 self.cfg.focal_alpha)

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """The top `num_detections` (query, class) pairs by sigmoid score (`heads.topk_detections`)."""
        return topk_detections(outputs, target_sizes, self.cfg.num_detections)


# --- presets ----------------------------------------------------------------------------------


def anchor_detr_r50() -> AnchorDETRConfig:
    """The paper's Anchor DETR-DC5-R50 (official main.py defaults: RCDA, one level, 300 points × 3
    patterns, 6+6 layers, FFN 1024, C=256, 8 heads, no dropout): 37,038,711 parameters, as the
    official implementation (paper Table 1: 37M)."""
    return AnchorDETRConfig()


def anchor_detr_tiny() -> AnchorDETRConfig:
    """CPU scale on shapes, with detr_tiny's backbone and transformer (C=128, 3+3 layers, FFN 512,
    no dropout) and 9 anchor points × 3 patterns = 27 queries (detr_tiny: 25)."""
    sizes = {k: v for k, v in detr_tiny_sizes().items() if k != "num_queries"}  # Q comes from points × patterns
    return AnchorDETRConfig(num_anchor_points=9, num_patterns=3, **sizes)
