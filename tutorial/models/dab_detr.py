"""DAB-DETR (Liu et al., ICLR 2022): Conditional DETR whose queries are dynamic anchor boxes.

Seed, "DAB-DETR": each query q is a learned anchor box A_q = (x_q, y_q, w_q, h_q) (stored in
logit space, passed through a sigmoid) and a content part C_q (the decoder embedding). Its
positional query is the anchor's sine encoding, mapped to C channels:

    P_q = MLP(PE(A_q)),   PE(A_q) = Cat(PE(x_q), PE(y_q), PE(w_q), PE(h_q))   (order y, x, w, h in code),

    Self-Attn:   Q_q = C_q + P_q,  K_q = C_q + P_q,  V_q = C_q
    Cross-Attn:  Q_q = Cat(C_q, PE(x_q, y_q) · MLP^(csq)(C_q)),  K_{x,y} = Cat(F_{x,y}, PE(x, y)),  V_{x,y} = F_{x,y}

which is exactly Conditional DETR's decoder layer (`ConditionalDecoderLayer`, reused as is) with
the reference point s replaced by the anchor's centre. What is new:
- anchors, not points: P_q comes from the whole box, and the cross-attention is width/height-
  modulated (paper, "Width & Height-Modulated Gaussian Kernel"): the x half of PE(x_q, y_q) is
  scaled by w_ref/w_q and the y half by h_ref/h_q, with (w_ref, h_ref) = σ(MLP(C_q)), so each
  query's positional attention is as wide and as tall as its box;
- anchors are updated layer by layer: layer l predicts Δ with the box head shared by all layers and
  the next layer's anchor is σ(Δ + σ⁻¹(A_q)), detached (no gradient flows between layers' anchors);
  every layer's box is predicted relative to the anchor it was given;
- `anchor_dim=2` learns points (x, y) only, the seed's "learn 2D coordinates only" comparison
  (then there is no w, h to modulate with);
- the encoder rescales the pixel positions in every layer by MLP(pixel content);
- official defaults: PReLU in the FFNs, dropout 0, feature-map sine temperature 20, 300 queries,
  focal loss with class weight 2 in matching and 1 in the loss, top-300 post-processing.
Official code: IDEA-Research/DAB-DETR, `models/DAB_DETR/transformer.py` and `DABDETR.py`.

Glossary (code -> paper): anchors = A_q (logit space), reference = σ(A_q), query_pos = P_q,
tgt = C_q, memory = F, pos = PE(x, y) of the pixels. Shapes as in `tutorial/__init__.py`; A = 2
or 4 anchor coordinates.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from einops import repeat
from torch import Tensor, nn

from .conditional_detr import (ConditionalDecoder, ConditionalDETR, ConditionalDETRConfig, Decoded, Encoded,
                               Encoder)
from ..matching.criterion import LossWeights
from .heads import inverse_sigmoid
from ..ops.mlp import MLP
from ..ops.position_encoding import anchor_position_encoding
from .tiny import detr_tiny_sizes
from .transformer import TransformerConfig


@dataclass
class DABDETRConfig(ConditionalDETRConfig):
    transformer: TransformerConfig = field(default_factory=lambda: TransformerConfig(dropout=0.0))
    activation: str = "prelu"
    position_temperature: float = 20.0  # official pe_temperatureH = pe_temperatureW = 20
    loss: LossWeights = field(default_factory=lambda: LossWeights(loss_ce=1.0))
    num_detections: int = 300
    anchor_dim: int = 4  # 4: anchor boxes (x, y, w, h); 2: points (x, y) only
    modulate_hw_attn: bool = True  # width/height-modulated cross-attention (needs anchor_dim 4)
    random_refpoints_xy: bool = False  # anchors' x, y drawn uniformly in [0, 1] and frozen

    def __post_init__(self):
        if self.anchor_dim not in (2, 4):
            raise ValueError(f"DABDETRConfig.anchor_dim: expected 2 or 4, got {self.anchor_dim}")
        if self.modulate_hw_attn and self.anchor_dim != 4:
            raise ValueError("DABDETRConfig.modulate_hw_attn needs anchor_dim=4 (a width and a height); "
                             "set modulate_hw_attn=False for points")


class ScaledPositionEncoder(Encoder):
    """DETR's encoder, but every layer multiplies the pixel positions by MLP(pixel content)
    (official `TransformerEncoder.query_scale`)."""

    def __init__(self, cfg: TransformerConfig, activation: str = "relu"):
        super().__init__(cfg, activation)
        self.query_scale = MLP(cfg.d_model, cfg.d_model, cfg.d_model, 2)

    def layer_pos(self, src: Tensor, pos: Tensor) -> Tensor:
        return pos * self.query_scale(src)  # (B, N, C)


def modulate_hw(spatial: Tensor, wh_ref: Tensor, anchor: Tensor) -> Tensor:
    """Width/height modulation: spatial (..., C) = [y half | x half] of PE(x, y)·MLP^(csq)(C_q);
    the x half is scaled by w_ref / w and the y half by h_ref / h. wh_ref (..., 2), anchor (..., 4)."""
    half = spatial.shape[-1] // 2
    y_part = spatial[..., :half] * (wh_ref[..., 1] / anchor[..., 3])[..., None]  # (..., C/2)
    x_part = spatial[..., half:] * (wh_ref[..., 0] / anchor[..., 2])[..., None]  # (..., C/2)
    return torch.cat([y_part, x_part], -1)  # (..., C)


class AnchorDecoder(ConditionalDecoder):
    """Conditional DETR's decoder with P_q = MLP(PE(A_q)) recomputed in every layer from the
    current anchors, optional width/height modulation, and anchors refined layer by layer."""

    def __init__(self, cfg: TransformerConfig, anchor_dim: int = 4, modulate_hw_attn: bool = True,
                 activation: str = "relu"):
        super().__init__(cfg, activation)
        c = cfg.d_model
        self.anchor_dim = anchor_dim
        self.ref_point_head = MLP(anchor_dim // 2 * c, c, c, 2)  # P_q = MLP(PE(A_q)) (replaces s = MLP(o_q))
        self.ref_anchor_head = MLP(c, c, 2, 2) if modulate_hw_attn else None  # (w_ref, h_ref) from C_q

    def forward(self, tgt: Tensor, anchors: Tensor, memory: Tensor, pos: Tensor, padding_mask: Tensor,
                self_attn_mask: Tensor | None = None, need_weights: bool = False,
                box_head: nn.Module | None = None) -> Decoded:
        """tgt (B, Q, C), anchors (B, Q, A) in logit space, memory, pos (B, N, C) -> `Decoded`.
        With `box_head` (the model's shared box MLP) the anchors are refined after every layer."""
        c = tgt.shape[-1]
        reference = anchors.sigmoid()  # (B, Q, A) in [0, 1]
        hs, references, query_pos_list, infos = [], [], [], []
        for lid, layer in enumerate(self.layers):
            pe = anchor_position_encoding(reference, c // 2)  # (B, Q, A/2·C): PE(y), PE(x) (, PE(w), PE(h))
            query_pos = self.ref_point_head(pe)  # (B, Q, C): P_q
            scale = 1.0 if lid == 0 else self.query_scale(tgt)  # (B, Q, C): MLP^(csq)(C_q)
            spatial = pe[..., :c] * scale  # (B, Q, C): PE(x, y) · MLP^(csq)(C_q)
            if self.ref_anchor_head is not None:
                spatial = modulate_hw(spatial, self.ref_anchor_head(tgt).sigmoid(), reference)  # (B, Q, C)
            tgt, info = layer(tgt, memory, query_pos, pos, spatial, padding_mask, self_attn_mask, need_weights)
            references.append(reference)
            query_pos_list.append(query_pos)
            infos.append(info)
            hs.append(self.norm(tgt))
            if box_head is not None:  # A_q <- σ(Δ + σ⁻¹(A_q)), from the un-normalised output as officially
                delta = box_head(tgt)[..., :self.anchor_dim]  # (B, Q, A)
                reference = (delta + inverse_sigmoid(reference)).sigmoid().detach()  # (B, Q, A)
        return Decoded(torch.stack(hs), references, query_pos_list, infos)  # hs (L_dec, B, Q, C)


class DABDETR(ConditionalDETR):
    """Conditional DETR's model with anchor queries. Outputs as `ConditionalDETR`'s, with
    "reference_points" (B, Q, A) the anchors each layer received (the first: the learned ones)
    and "query_pos" (B, Q, C) each layer's P_q."""

    def build_transformer(self) -> tuple[nn.Module, nn.Module]:
        cfg, tc = self.cfg, self.cfg.transformer
        return (ScaledPositionEncoder(tc, cfg.activation),
                AnchorDecoder(tc, cfg.anchor_dim, cfg.modulate_hw_attn, cfg.activation))

    def build_queries(self) -> None:
        self.refpoint_embed = nn.Embedding(self.cfg.num_queries, self.cfg.anchor_dim)  # A_q, logit space
        if self.cfg.random_refpoints_xy:
            with torch.no_grad():
                self.refpoint_embed.weight[:, :2] = inverse_sigmoid(torch.rand(self.cfg.num_queries, 2))

    def anchors(self) -> Tensor:
        """The learned anchors (Q, A) in logit space. With `random_refpoints_xy` their x, y are
        detached: they keep their random initial values. (The official line meant to freeze them,
        `weight.data[:, :2].requires_grad = False`, sets the flag on a slice of `.data`, a
        different tensor object, and so leaves them trainable.)"""
        w = self.refpoint_embed.weight  # (Q, A)
        return torch.cat([w[:, :2].detach(), w[:, 2:]], 1) if self.cfg.random_refpoints_xy else w

    def queries(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """(tgt (B, Q, C): zeros, the content queries; anchors (B, Q, A) in logit space)."""
        anchors = repeat(self.anchors(), "q a -> b q a", b=batch_size)  # (B, Q, A)
        tgt = anchors.new_zeros(batch_size, self.cfg.num_queries, self.cfg.transformer.d_model)  # (B, Q, C)
        return tgt, anchors

    def run_decoder(self, tgt: Tensor, queries: Tensor, enc: Encoded, self_attn_mask: Tensor | None,
                    need_weights: bool) -> Decoded:
        return self.decoder(tgt, queries, enc.memory, enc.pos, enc.padding, self_attn_mask, need_weights,
                            box_head=self.bbox_embed)


# --- presets ----------------------------------------------------------------------------------


def dab_detr_r50() -> DABDETRConfig:
    """The paper's DAB-DETR-R50 (official defaults): 43,671,517 parameters, as the official
    implementation (paper: 44M)."""
    return DABDETRConfig()


def dab_detr_tiny() -> DABDETRConfig:
    """CPU scale on shapes, with detr_tiny's backbone and sizes (C=128, 3+3 layers, FFN 512,
    25 queries, no dropout)."""
    return DABDETRConfig(**detr_tiny_sizes())
