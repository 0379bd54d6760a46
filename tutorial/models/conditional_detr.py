"""Conditional DETR (Meng et al., ICCV 2021): what it adds to DETR, and nothing else.

In DETR's decoder cross-attention a query is content + learned position, *added*, and the one
dot product with a key (pixel content + pixel position) must find both what and where. The seed
("DAB-DETR", "Understanding the queries") shows the result: DETR's positional attention maps have
several concentration centres. Conditional DETR keeps content and position apart, side by side
within each attention head:

    q = Cat(c_q, p_q),  k = Cat(c_k, p_k)   per head,  so   qᵀk = c_qᵀc_k + p_qᵀp_k,

with values v = the pixels' content only (so q and k have 2C channels, v has C). The spatial query
("conditional spatial query") is

    p_q = λ_q ⊙ PE(s),   s = sigmoid(MLP(o_q)),   λ_q = FFN(decoder embedding),

s a reference point predicted once from the learned object query o_q, PE(s) its sine encoding
(the pixels' encoding, so p_qᵀp_k peaks around s) and λ_q a per-channel scale predicted from the
decoder embedding (λ = 1 in the first layer). The first layer also adds o_q and the pixel
positions DETR-style. Each box is predicted relative to s, in logit space: b = σ(Δb + (σ⁻¹(s), 0, 0)).
The paper reports 6.7x (R50, R101) to 10x (DC5) faster training than DETR for the same AP.

Everything else is a step already taken: DETR's backbone, encoder layers and post-norm
(`tutorial/models/transformer.py`); Deformable DETR's sigmoid focal loss and focal matching cost
(`tutorial/matching/focal.py`), prior-probability init and top-k post-processing
(`tutorial/models/heads.py`), with 300 queries.
Official code: Atten4Vis/ConditionalDETR, `models/transformer.py` and `models/conditional_detr.py`.

Glossary (code -> paper): tgt = decoder embedding (content query c_q), query_pos = o_q (learned
object query), reference = s, spatial_query = λ_q ⊙ PE(s) before its projection, memory = pixel
content c_k, pos = pixel positions p_k. Shapes: B batch, Q queries, C width, N = H·W pixels,
M heads, d = C/M per head, K classes (sigmoid, no ∅), L_dec decoder layers.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import chain
from typing import NamedTuple

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from ..ops.attention import PreProjectedAttention
from .backbone import Backbone, BackboneConfig
from ..matching.criterion import LossWeights
from ..matching.focal import FocalSetCriterion, focal_matcher
from .heads import init_focal_head, inverse_sigmoid, topk_detections, zero_box_head
from ..matching.matcher import MatcherWeights
from ..ops.mlp import MLP
from ..ops.position_encoding import SinePositionEncoding, anchor_position_encoding
from .tiny import detr_tiny_sizes
from .transformer import FFN, EncoderLayer, TransformerConfig


@dataclass
class ConditionalDETRConfig:
    num_classes: int = 91  # K sigmoid outputs (no ∅ class)
    num_queries: int = 300
    backbone: BackboneConfig = field(default_factory=BackboneConfig)  # DETR's: R50, layer4, frozen BN
    transformer: TransformerConfig = field(default_factory=TransformerConfig)  # DETR's sizes (C=256, 6+6, FFN 2048)
    activation: str = "relu"  # the FFNs' nonlinearity (DAB-DETR: "prelu")
    position_temperature: float = 10000.0  # T of the feature map's sine encoding (DAB-DETR: 20)
    aux_loss: bool = True
    focal_alpha: float = 0.25
    matcher: MatcherWeights = field(default_factory=lambda: MatcherWeights(cost_class=2.0))
    loss: LossWeights = field(default_factory=lambda: LossWeights(loss_ce=2.0))
    num_detections: int = 100  # top-k (query, class) pairs kept by `postprocess`


def concat_heads(a: Tensor, b: Tensor, num_heads: int) -> Tensor:
    """Concatenate two (B, T, M·d) tensors head by head -> (B, T, M·2d): head m of the result is
    Cat(head m of a, head m of b), so a query-key product in head m is a_qᵀa_k + b_qᵀb_k."""
    a = rearrange(a, "b t (m d) -> b t m d", m=num_heads)  # (B, T, M, d)
    b = rearrange(b, "b t (m d) -> b t m d", m=num_heads)  # (B, T, M, d)
    return rearrange(torch.cat([a, b], dim=-1), "b t m d -> b t (m d)")  # (B, T, M·2d)


def positional_attention(spatial_query: Tensor, spatial_key: Tensor, num_heads: int,
                         padding_mask: Tensor | None = None) -> Tensor:
    """The spatial term of the conditional cross-attention on its own: per head, softmax over the
    pixels of p_qᵀp_k / √(2d) (the scale of the full logits). spatial_query (B, Q, C) and
    spatial_key (B, N, C) are a layer's projected p_q and p_k (outputs "spatial_queries" and
    "spatial_keys") -> (B, M, Q, N): the seed's "positional attention maps" (DAB-DETR Fig. 2)."""
    q = rearrange(spatial_query, "b q (m d) -> b m q d", m=num_heads)  # (B, M, Q, d)
    k = rearrange(spatial_key, "b n (m d) -> b m n d", m=num_heads)  # (B, M, N, d)
    logits = q @ k.transpose(-2, -1) / math.sqrt(2 * q.shape[-1])  # (B, M, Q, N)
    if padding_mask is not None:
        logits = logits.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    return logits.softmax(-1)  # (B, M, Q, N)


class ConditionalDecoderLayer(nn.Module):
    """Self-attention (content and position projected separately, then added), conditional
    cross-attention (content and spatial parts concatenated per head), FFN; post-norm as in DETR.

    Every projection is explicit, with the official names: sa_* for self-attention, ca_* for
    cross-attention; `ca_qpos_proj` exists in the first layer only (`first=True`)."""

    def __init__(self, cfg: TransformerConfig, first: bool, activation: str = "relu"):
        super().__init__()
        c, p = cfg.d_model, cfg.dropout
        self.num_heads = cfg.num_heads
        self.sa_qcontent_proj, self.sa_qpos_proj = nn.Linear(c, c), nn.Linear(c, c)
        self.sa_kcontent_proj, self.sa_kpos_proj = nn.Linear(c, c), nn.Linear(c, c)
        self.sa_v_proj = nn.Linear(c, c)
        self.self_attn = PreProjectedAttention(c, cfg.num_heads, p)
        self.ca_qcontent_proj = nn.Linear(c, c)
        self.ca_qpos_proj = nn.Linear(c, c) if first else None
        self.ca_qpos_sine_proj = nn.Linear(c, c)  # projects the spatial query p_q
        self.ca_kcontent_proj, self.ca_kpos_proj = nn.Linear(c, c), nn.Linear(c, c)
        self.ca_v_proj = nn.Linear(c, c)
        self.cross_attn = PreProjectedAttention(c, cfg.num_heads, p)
        self.ffn = FFN(c, cfg.dim_feedforward, p, activation)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(c) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(p) for _ in range(3))

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor, memory_pos: Tensor, spatial_query: Tensor,
                memory_padding_mask: Tensor, self_attn_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, dict | None]:
        """tgt, query_pos, spatial_query (B, Q, C); memory, memory_pos (B, N, C) -> (tgt (B, Q, C),
        info): with `need_weights`, info = {"attention" (B, M, Q, N), "spatial_query" (B, Q, C),
        "spatial_key" (B, N, C)} (the projected p_q and p_k), else None."""
        m = self.num_heads
        # 1) self-attention between queries: Q = K = content + position, V = content
        q = self.sa_qcontent_proj(tgt) + self.sa_qpos_proj(query_pos)  # (B, Q, C)
        k = self.sa_kcontent_proj(tgt) + self.sa_kpos_proj(query_pos)  # (B, Q, C)
        out, _ = self.self_attn(q, k, self.sa_v_proj(tgt), attn_mask=self_attn_mask)  # (B, Q, C)
        tgt = self.norm1(tgt + self.dropout1(out))
        # 2) cross-attention to the pixels: content and spatial halves side by side in each head
        q_content = self.ca_qcontent_proj(tgt)  # (B, Q, C)
        k_content = self.ca_kcontent_proj(memory)  # (B, N, C)
        k_spatial = self.ca_kpos_proj(memory_pos)  # (B, N, C): p_k
        if self.ca_qpos_proj is not None:  # first layer: positions also added, as in DETR
            q_content = q_content + self.ca_qpos_proj(query_pos)
            k_content = k_content + k_spatial
        q_spatial = self.ca_qpos_sine_proj(spatial_query)  # (B, Q, C): p_q
        q = concat_heads(q_content, q_spatial, m)  # (B, Q, 2C)
        k = concat_heads(k_content, k_spatial, m)  # (B, N, 2C)
        out, attn = self.cross_attn(q, k, self.ca_v_proj(memory), key_padding_mask=memory_padding_mask,
                                    need_weights=need_weights)  # (B, Q, C), (B, M, Q, N)
        tgt = self.norm2(tgt + self.dropout2(out))
        # 3) feed-forward
        tgt = self.norm3(tgt + self.dropout3(self.ffn(tgt)))
        info = {"attention": attn, "spatial_query": q_spatial, "spatial_key": k_spatial} if need_weights else None
        return tgt, info


class Decoded(NamedTuple):
    """A decoder's outputs: hs (L_dec, B, Q, C) normalised embeddings; per layer the reference
    each box is relative to (B, Q, 2|4) in [0, 1], the positional query (B, Q, C) and the layer's
    info dict (or None)."""

    hs: Tensor
    references: list[Tensor]
    query_pos: list[Tensor]
    infos: list[dict | None]


class ConditionalDecoder(nn.Module):
    """The decoder layers, λ_q = FFN(decoder embedding) (`query_scale`), s = σ(MLP(o_q))
    (`ref_point_head`) and the final LayerNorm applied to every layer's output."""

    def __init__(self, cfg: TransformerConfig, activation: str = "relu"):
        super().__init__()
        c = cfg.d_model
        self.layers = nn.ModuleList(ConditionalDecoderLayer(cfg, first=i == 0, activation=activation)
                                    for i in range(cfg.num_decoder_layers))
        self.query_scale = MLP(c, c, c, 2)
        self.ref_point_head = MLP(c, c, 2, 2)
        self.norm = nn.LayerNorm(c)

    def forward(self, tgt: Tensor, query_pos: Tensor, memory: Tensor, pos: Tensor, padding_mask: Tensor,
                self_attn_mask: Tensor | None = None, need_weights: bool = False) -> Decoded:
        """tgt, query_pos (B, Q, C); memory, pos (B, N, C); padding_mask (B, N) -> `Decoded`."""
        c = tgt.shape[-1]
        reference = self.ref_point_head(query_pos).sigmoid()  # (B, Q, 2): s, the same for every layer
        pe = anchor_position_encoding(reference, c // 2)  # (B, Q, C): PE(s)
        hs, infos = [], []
        for lid, layer in enumerate(self.layers):
            scale = 1.0 if lid == 0 else self.query_scale(tgt)  # (B, Q, C): λ_q
            tgt, info = layer(tgt, memory, query_pos, pos, pe * scale, padding_mask, self_attn_mask, need_weights)
            hs.append(self.norm(tgt))
            infos.append(info)
        n = len(self.layers)
        return Decoded(torch.stack(hs), [reference] * n, [query_pos] * n, infos)  # hs (L_dec, B, Q, C)


class Encoder(nn.Module):
    """DETR's encoder: its post-norm layers (`tutorial/models/transformer.py`), stacked, positions added
    to queries and keys of every layer."""

    def __init__(self, cfg: TransformerConfig, activation: str = "relu"):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(cfg, activation) for _ in range(cfg.num_encoder_layers))

    def layer_pos(self, src: Tensor, pos: Tensor) -> Tensor:
        """The positions a layer adds to its queries and keys (DAB-DETR rescales them)."""
        return pos

    def forward(self, src: Tensor, pos: Tensor, padding_mask: Tensor,
                need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """src, pos (B, N, C) -> (memory (B, N, C), [attention (B, M, N, N)] per layer if `need_weights`)."""
        attns = []
        for layer in self.layers:
            src, attn = layer(src, self.layer_pos(src, pos), padding_mask, need_weights)  # (B, N, C)
            if need_weights:
                attns.append(attn)
        return src, attns


class Encoded(NamedTuple):
    memory: Tensor  # (B, N, C)
    pos: Tensor  # (B, N, C) the pixels' positional encodings
    padding: Tensor  # (B, N) True on padding
    mask: Tensor  # (B, H, W) the feature map's padding mask
    attention: list[Tensor]  # [(B, M, N, N)] per encoder layer, when asked


class ConditionalDETR(nn.Module):
    """`forward(images, mask)` returns "pred_logits" (B, Q, K) (sigmoid), "pred_boxes" (B, Q, 4)
    cxcywh in [0, 1] and "aux_outputs"; with `return_intermediates=True` also, per decoder layer,
    "reference_points" (B, Q, 2) (s), "query_pos" (B, Q, C) (o_q), "decoder_attention"
    (B, M, Q, N), "spatial_queries" (B, Q, C) and "spatial_keys" (B, N, C) (projected p_q, p_k:
    see `positional_attention`), plus "layer_boxes" (L_dec, B, Q, 4), "pos_embed" (B, N, C),
    "encoder_attention", "feature_size" (H, W) and "feature_mask" (B, H, W)."""

    def __init__(self, cfg: ConditionalDETRConfig):
        super().__init__()
        self.cfg = cfg
        tc = cfg.transformer
        places = (tc.encoder_pos, tc.decoder_pos, tc.query_pos)
        if places != ("attn", "attn", "attn"):
            raise ValueError(f"{type(self).__name__}: transformer.encoder_pos/decoder_pos/query_pos are DETR's "
                             f"ablation options and must stay 'attn', got {places}")
        c = tc.d_model
        self.backbone = Backbone(cfg.backbone)
        self.position_encoding = SinePositionEncoding(c // 2, cfg.position_temperature)
        self.input_proj = nn.Conv2d(self.backbone.num_channels[-1], c, kernel_size=1)
        self.encoder, self.decoder = self.build_transformer()
        for p in chain(self.encoder.parameters(), self.decoder.parameters()):  # official _reset_parameters
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        self.build_queries()
        self.class_embed = init_focal_head(nn.Linear(c, cfg.num_classes))  # focal-loss prior p = 0.01
        self.bbox_embed = zero_box_head(MLP(c, c, 4, 3))  # the first boxes sit on their references

    # --- the parts DAB-DETR replaces ------------------------------------------------------------

    def build_transformer(self) -> tuple[nn.Module, nn.Module]:
        tc, act = self.cfg.transformer, self.cfg.activation
        return Encoder(tc, act), ConditionalDecoder(tc, act)

    def build_queries(self) -> None:
        self.query_embed = nn.Embedding(self.cfg.num_queries, self.cfg.transformer.d_model)  # o_q

    def queries(self, batch_size: int) -> tuple[Tensor, Tensor]:
        """(decoder input tgt (B, Q, C): zeros, as in DETR; learned object queries o_q (B, Q, C))."""
        query_pos = repeat(self.query_embed.weight, "q c -> b q c", b=batch_size)  # (B, Q, C)
        return torch.zeros_like(query_pos), query_pos

    def run_decoder(self, tgt: Tensor, queries: Tensor, enc: Encoded, self_attn_mask: Tensor | None,
                    need_weights: bool) -> Decoded:
        return self.decoder(tgt, queries, enc.memory, enc.pos, enc.padding, self_attn_mask, need_weights)

    # --- shared by Conditional DETR, DAB-DETR and DN-DETR ---------------------------------------

    def encode(self, images: Tensor, mask: Tensor, need_weights: bool = False) -> Encoded:
        """images (B, 3, H_img, W_img), mask (B, H_img, W_img) True on padding -> `Encoded`."""
        feature, fmask = self.backbone(images, mask)[-1]  # (B, C_backbone, H, W), (B, H, W)
        pos = rearrange(self.position_encoding(fmask), "b c h w -> b (h w) c")  # (B, N, C)
        src = rearrange(self.input_proj(feature), "b c h w -> b (h w) c")  # (B, N, C)
        padding = fmask.flatten(1)  # (B, N)
        memory, attn = self.encoder(src, pos, padding, need_weights)  # (B, N, C)
        return Encoded(memory, pos, padding, fmask, attn)

    def predict(self, dec: Decoded) -> tuple[Tensor, Tensor]:
        """Per layer: class logits (L_dec, B, Q, K) and boxes (L_dec, B, Q, 4), each box predicted
        relative to that layer's reference in logit space: b = σ(Δb + σ⁻¹(ref)) on ref's coordinates."""
        logits = self.class_embed(dec.hs)  # (L_dec, B, Q, K)
        boxes = []
        for h, ref in zip(dec.hs, dec.references):
            delta = self.bbox_embed(h)  # (B, Q, 4)
            a = ref.shape[-1]  # 2: a point (centre only), 4: a box
            boxes.append(torch.cat([delta[..., :a] + inverse_sigmoid(ref), delta[..., a:]], -1).sigmoid())  # (B, Q, 4)
        return logits, torch.stack(boxes)  # (L_dec, B, Q, K), (L_dec, B, Q, 4)

    def outputs(self, predictions: tuple[Tensor, Tensor], dec: Decoded, enc: Encoded, keep: slice = slice(None),
                return_intermediates: bool = False) -> dict:
        """The output dict for the queries in `keep` (DN-DETR keeps the matching part), from
        `predictions` = `predict(dec)`."""
        logits, boxes = predictions[0][:, :, keep], predictions[1][:, :, keep]  # (L_dec, B, Q, K), (L_dec, B, Q, 4)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.cfg.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        if return_intermediates:
            out.update(
                reference_points=[r[:, keep] for r in dec.references],
                query_pos=[p[:, keep] for p in dec.query_pos],
                decoder_attention=[i["attention"][:, :, keep] for i in dec.infos],
                spatial_queries=[i["spatial_query"][:, keep] for i in dec.infos],
                spatial_keys=[i["spatial_key"] for i in dec.infos],
                layer_boxes=boxes, pos_embed=enc.pos, encoder_attention=enc.attention,
                feature_size=tuple(enc.mask.shape[-2:]), feature_mask=enc.mask)
        return out

    def forward(self, images: Tensor, mask: Tensor, return_intermediates: bool = False) -> dict:
        enc = self.encode(images, mask, return_intermediates)
        tgt, queries = self.queries(images.shape[0])  # (B, Q, C), (B, Q, C | 4 | 2)
        dec = self.run_decoder(tgt, queries, enc, None, return_intermediates)
        return self.outputs(self.predict(dec), dec, enc, return_intermediates=return_intermediates)

    def spatial_keys(self, feature_mask: Tensor, layer: int = 0) -> Tensor:
        """Decoder layer `layer`'s projected pixel positions p_k (output "spatial_keys") for any grid:
        feature_mask (B, H, W) True on padding -> (B, N, C). With a layer's "spatial_queries",
        `positional_attention` evaluates the positional maps on that grid, e.g. a finer one than
        the image's feature map (the sine positions are normalised, so the maps keep their shape)."""
        pos = rearrange(self.position_encoding(feature_mask), "b c h w -> b (h w) c")  # (B, N, C)
        return self.decoder.layers[layer].ca_kpos_proj(pos)  # (B, N, C)

    # Deformable DETR's focal criterion and top-k post-processing, unchanged.
    def build_criterion(self) -> FocalSetCriterion:
        return FocalSetCriterion(focal_matcher(self.cfg.matcher, self.cfg.focal_alpha), self.cfg.loss,
                                 self.cfg.focal_alpha)

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """The top `num_detections` (query, class) pairs by sigmoid score (`heads.topk_detections`)."""
        return topk_detections(outputs, target_sizes, self.cfg.num_detections)


# --- presets ----------------------------------------------------------------------------------


def conditional_detr_r50() -> ConditionalDETRConfig:
    """The paper's Conditional DETR-R50: DETR's backbone and sizes, 300 queries, focal loss
    (class weight 2 in matching and loss). 43,418,401 parameters, as the official implementation
    (paper: 44M)."""
    return ConditionalDETRConfig()


def conditional_detr_tiny() -> ConditionalDETRConfig:
    """CPU scale on shapes, with detr_tiny's backbone and sizes (C=128, 3+3 layers, FFN 512,
    25 queries, no dropout)."""
    return ConditionalDETRConfig(**detr_tiny_sizes())
