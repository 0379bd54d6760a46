"""DINO (Zhang et al., ICLR 2023): DETR with improved deNoising anchOr boxes.

DINO is Deformable DETR (`tutorial/models/deformable_detr.py`: its multi-scale front end
`tutorial/models/multiscale.py`, deformable encoder and decoder layers) whose queries are DAB-DETR's anchor boxes
(`tutorial/models/dab_detr.py`), trained with DN-DETR's denoising (`tutorial/models/dn_detr.py`), plus three
ideas, each small in code:

1. Contrastive denoising (Sec. 3.3, Fig. 3). Every denoising group holds two copies of each
   object: a positive, whose box is noised by less than λ1 (it must reconstruct the object), and
   a negative, noised by λ1 ≤ |noise| < λ2 (it must say "no object"). Officially λ2 = 2·λ1 and the
   noise moves each corner of the box: |Δx0|, |Δx1| < λ·w/2 for positives, λ·w/2 ≤ |Δ| < λ·w for
   negatives (`noise_box_corners`, λ = `dn_box_noise_scale` = 0.4). Negatives teach the model to
   reject a second, worse anchor near an object, which the Hungarian loss alone learns slowly.
   `dn_number` = 100 is a budget: P = 100 // max_b n_b groups (at least one), each of 2·max n_b
   slots (DINO's code divides so only for dn_number ≥ 50, and uses 2·dn_number groups below;
   RT-DETR's divides for every value, as here); a label is replaced by a random class with
   probability 0.25 (the official `dn_label_noise_ratio` 0.5 is halved in `prepare_for_cdn`). The attention mask is DN-DETR's a_ij with groups of 2·max n_b.
   The loss (`contrastive_denoising_loss`): the focal class loss over all denoising queries, with
   the positives' target their class and everything else (negatives, padding slots) no object;
   L1 + GIoU on the positives only; divided by the number of positives.
2. Mixed query selection (Sec. 3.4, Fig. 5 (c)). The anchors are the boxes of the top-K encoder
   tokens (`tutorial/models/query_selection.py`, Deformable DETR's two-stage proposals); the content
   queries stay learned (`tgt_embed`), because the selected encoder features are preliminary and
   may be ambiguous (a token can cover several objects or only part of one). The selected tokens'
   class and box heads are trained with the full class labels ("interm_outputs").
3. Look forward twice (Sec. 3.5, Fig. 6). With iterative refinement each layer corrects the
   previous layer's box b_{i-1}: b'_i = σ(Δ_i + σ⁻¹(b_{i-1})). Deformable DETR detaches b_{i-1}
   (look forward once: Δ_i alone is trained by layer i's loss). DINO still feeds the *detached*
   box to layer i as its reference, but computes layer i's predicted box from the *undetached*
   one, so layer i's loss also reaches the parameters that produced b_{i-1}:
       reference_i = sg(b_{i-1}),   pred_i = σ(Δ_i + σ⁻¹(b_{i-1}))   (gradient flows into b_{i-1}).

Everything else is official DINO-4scale (`config/DINO/DINO_4scale.py`): R50 with frozen BN, 4
levels (strides 8, 16, 32 and an extra 64), 6 + 6 layers, FFN 2048, dropout 0, 900 queries, the
feature map's sine encoding with temperature 20, the positional query P_q = MLP(PE(anchor))
(`ref_point_head` MLP(2C, C, C, 2), DAB-DETR's, without its query scaling or w/h modulation,
`rm_dec_query_scale`; here `query_pos_head`), one class head and one box head shared by the 6 decoder layers
(`dec_pred_*_embed_share`), separate heads for the encoder proposals (`two_stage_*_share` False),
a final decoder LayerNorm, the label embedding nn.Embedding(91 + 1, C) (`dn_labelbook_size` + 1),
focal loss with matching costs 2, 5, 2 and loss weights 1, 5, 2, top-300 post-processing.
One quirk kept as officially: the next layer's reference is refined from the decoder output
*before* the final LayerNorm, while the predicted box uses the normalised output.
Official code: IDEA-Research/DINO, `models/dino/dino.py`, `deformable_transformer.py`,
`dn_components.py`, `utils.py`.

Glossary (code -> paper): anchors (B, Q, 4) logit space, reference = σ(anchor) the box a layer
attends around, tgt the content queries, query_pos P_q, P = num_groups, M = 2·max n_b slots per
group, T = P·M + Q decoder queries. B batch, N tokens, L levels, C width, K classes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain
from typing import NamedTuple

import torch
from einops import repeat
from torch import Tensor, nn
from torchvision.ops import box_convert

from .backbone import BackboneConfig, tiny_backbone
from ..matching.criterion import LossWeights, box_losses
from ..matching.focal import focal_class_loss, focal_matcher
from ..ops.deformable_attention import MSDeformAttn
from .deformable_transformer import DeformableDecoderLayer, DeformableEncoder, DeformableTransformerConfig
from .dn_detr import DNCriterion, DenoisingGroups, make_denoising_groups, prepend_denoising_queries, signed_uniform
from .heads import init_focal_head, inverse_sigmoid, topk_detections, zero_box_head
from ..matching.matcher import MatcherWeights
from ..ops.mlp import MLP
from ..ops.position_encoding import anchor_position_encoding
from .multiscale import flatten_levels, level_positions, multiscale_front_end
from .query_selection import QuerySelection, Selection, token_locations
from .transformer import tiny_transformer


@dataclass
class DINOConfig:
    num_classes: int = 91  # K sigmoid outputs
    num_queries: int = 900  # Q, the top-Q encoder tokens
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(
        return_layers=("layer2", "layer3", "layer4")))
    transformer: DeformableTransformerConfig = field(default_factory=lambda: DeformableTransformerConfig(
        dim_feedforward=2048, dropout=0.0))
    position_temperature: float = 20.0  # official pe_temperatureH = pe_temperatureW = 20
    dn_number: int = 100  # budget of positive denoising queries: P = dn_number // max n_b groups
    dn_label_noise: float = 0.25  # probability of replacing a label (official ratio 0.5, halved)
    dn_box_noise_scale: float = 0.4  # λ: positives |Δcorner| < λ·(w, h)/2, negatives in [λ, 2λ)·(w, h)/2
    aux_loss: bool = True
    focal_alpha: float = 0.25
    matcher: MatcherWeights = field(default_factory=lambda: MatcherWeights(cost_class=2.0))
    loss: LossWeights = field(default_factory=lambda: LossWeights(loss_ce=1.0))
    num_detections: int = 300  # top-k (query, class) pairs kept by `postprocess` (official num_select)


# --- contrastive denoising ----------------------------------------------------------------------


def noise_box_corners(boxes: Tensor, scale: float, generator: torch.Generator | None = None, low: float = 0.0,
                      high: float = 1.0) -> Tensor:
    """DINO's (and RT-DETR's) box noise: boxes (..., 4) cxcywh in [0, 1] -> noised boxes (..., 4).
    Each corner coordinate moves by ±u·λ·(w/2 for x, h/2 for y), u uniform in [low, high)
    (positives [0, 1), negatives [1, 2)), then the corners are clipped to [0, 1]."""
    corners = box_convert(boxes, "cxcywh", "xyxy")  # (..., 4)
    half = torch.cat([boxes[..., 2:], boxes[..., 2:]], -1) / 2  # (..., 4): w/2, h/2, w/2, h/2
    u = signed_uniform(boxes.shape, low, high, generator, boxes.dtype, boxes.device)  # (..., 4)
    corners = (corners + u * half * scale).clamp(0.0, 1.0)
    return box_convert(corners, "xyxy", "cxcywh")  # a negative can come out with w or h ≤ 0, as officially


def contrastive_groups(targets: list[dict], dn_number: int, label_noise: float, box_noise_scale: float,
                       num_classes: int, generator: torch.Generator | None = None) -> DenoisingGroups:
    """P = max(1, dn_number // max_b n_b) groups of positive and negative copies (official
    `prepare_for_cdn`, RT-DETR's `get_contrastive_denoising_training_group`)."""
    n_max = max((len(t["labels"]) for t in targets), default=0)
    num_groups = max(1, dn_number // max(n_max, 1))
    return make_denoising_groups(targets, num_groups, label_noise, box_noise_scale, num_classes, generator,
                                 contrastive=True, box_noise=noise_box_corners)


def contrastive_denoising_loss(pred_logits: Tensor, pred_boxes: Tensor, positive_index: Tensor,
                               targets: list[dict], alpha: float) -> dict[str, Tensor]:
    """One decoder layer's contrastive denoising loss. pred_logits (B, S, K), pred_boxes (B, S, 4)
    for the S = P·M denoising queries; positive_index (B, S): the object a positive copy was noised
    from, -1 on negatives and padding -> unweighted {"loss_ce": focal loss over every (query,
    class) pair, positives towards their class and all others towards no object; "loss_bbox",
    "loss_giou": on the positives}, each divided by the number of positives (official `loss_labels`
    and `loss_boxes` with `dn_pos_idx`, normaliser num_boxes · P)."""
    indices = [(torch.nonzero(row >= 0).flatten(), row[row >= 0]) for row in positive_index]  # per image
    num = max(int((positive_index >= 0).sum()), 1)
    loss_ce = focal_class_loss(pred_logits, targets, indices, num, alpha)  # unmatched rows: all-zero targets
    return {"loss_ce": loss_ce, **box_losses(pred_boxes, targets, indices, num)}


# --- the decoder: anchors, positional queries from their sine encoding, look forward twice -------


class Decoded(NamedTuple):
    hs: Tensor  # (L_dec, B, T, C) each layer's (normalised) output
    boxes: Tensor  # (L_dec, B, T, 4) each layer's predicted boxes, cxcywh in [0, 1]
    references: list[Tensor]  # per layer the (detached) reference box it attended around, (B, T, 4)
    sampling: list[tuple[Tensor, Tensor]]  # per layer (locations (B, T, M, L, P, 2), weights (B, T, M, L, P))


class DINODecoder(nn.Module):
    """Deformable DETR's decoder layers driven by anchor boxes: in every layer the positional query
    is recomputed from the current reference box (`query_pos`), the layer attends around that box,
    and the box head refines it; predictions look forward twice (module docstring, item 3)."""

    def __init__(self, cfg: DeformableTransformerConfig):
        super().__init__()
        c = cfg.d_model
        self.layers = nn.ModuleList(DeformableDecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.query_pos_head = self.build_query_pos_head(c)
        self.norm = self.build_norm(c)

    # --- the parts RT-DETR replaces (`tutorial/models/rt_detr.py`) ---------------------------------------

    def build_query_pos_head(self, c: int) -> nn.Module:
        """P_q = MLP(PE(x, y, w, h)): 4 x C/2 sine channels -> C (official `ref_point_head`)."""
        return MLP(2 * c, c, c, 2)

    def build_norm(self, c: int) -> nn.Module:
        """Applied to every layer's output before the heads (official `decoder_norm`)."""
        return nn.LayerNorm(c)

    def query_pos(self, reference: Tensor, ratios: Tensor) -> Tensor:
        """reference (B, T, 4) in [0, 1], ratios (B, L, 2) -> P_q (B, T, C): the sine encoding of the
        box seen through level 0's valid ratio (official `reference_points_input[:, :, 0]`)."""
        scale = torch.cat([ratios[:, 0], ratios[:, 0]], -1)[:, None]  # (B, 1, 4)
        pe = anchor_position_encoding(reference * scale, self.query_pos_head.layers[0].in_features // 4)  # (B, T, 2C)
        return self.query_pos_head(pe)  # (B, T, C)

    def forward(self, tgt: Tensor, anchors: Tensor, memory: Tensor, spatial_shapes: list[tuple[int, int]],
                ratios: Tensor, padding_mask: Tensor, box_heads: nn.ModuleList, self_attn_mask: Tensor | None = None,
                num_layers: int | None = None, return_sampling: bool = False) -> Decoded:
        """tgt (B, T, C) content queries, anchors (B, T, 4) in logit space (detached), memory (B, N, C),
        ratios (B, L, 2), padding_mask (B, N); box_heads[i] predicts layer i's Δ. Runs the first
        `num_layers` layers (all by default) -> `Decoded`."""
        layers = self.layers if num_layers is None else self.layers[:num_layers]
        if num_layers is not None and not 1 <= num_layers <= len(self.layers):
            raise ValueError(f"num_decoder_layers: expected 1..{len(self.layers)}, got {num_layers}")
        reference = anchors.sigmoid()  # (B, T, 4): what layer 0 attends around
        undetached = reference  # the previous layer's box with its gradient (layer 0: the anchors)
        hs, boxes, references, sampling = [], [], [], []
        for lid, layer in enumerate(layers):
            query_pos = self.query_pos(reference, ratios)  # (B, T, C)
            ref_input = reference[:, :, None] * torch.cat([ratios, ratios], -1)[:, None]  # (B, T, L, 4)
            tgt, loc, w = layer(tgt, query_pos, ref_input, memory, spatial_shapes, padding_mask, self_attn_mask)
            h = self.norm(tgt)  # (B, T, C)
            boxes.append((box_heads[lid](h) + inverse_sigmoid(undetached)).sigmoid())  # (B, T, 4): look forward twice
            refined = (box_heads[lid](tgt) + inverse_sigmoid(reference)).sigmoid()  # (B, T, 4): the next reference
            references.append(reference)
            hs.append(h)
            if return_sampling:
                sampling.append((loc, w))
            undetached, reference = refined, refined.detach()
        return Decoded(torch.stack(hs), torch.stack(boxes), references, sampling)


# --- the criterion --------------------------------------------------------------------------------


class DINOCriterion(DNCriterion):
    """DN-DETR's criterion (focal set loss on the matching queries, every layer; denoising terms
    every layer, here contrastive) plus the loss of the selected encoder tokens ("interm_outputs",
    Hungarian-matched to the full class labels, weighted like the others; suffix "_interm")."""

    def denoising_terms(self, pred_logits: Tensor, pred_boxes: Tensor, dn: dict, targets: list[dict]) -> dict:
        return contrastive_denoising_loss(pred_logits, pred_boxes, dn["target_index"], targets, self.alpha)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        if "interm_outputs" in outputs:
            self.add_set_loss(losses, outputs["interm_outputs"], targets, "_interm")
        return losses


# --- the model ------------------------------------------------------------------------------------


class DINOBase(nn.Module):
    """What DINO and RT-DETR (`tutorial/models/rt_detr.py`) share after their encoders: the decoder's
    queries (denoising groups before the matching queries), the decoder, the heads, the output dict
    (`decode`) and the top-k post-processing, no NMS (`postprocess`).

    A subclass builds `cfg` (num_queries, num_classes, aux_loss, dn_number, dn_label_noise,
    dn_box_noise_scale, num_detections), `decoder` (a `DINODecoder`), `bbox_embed` (the box head of
    each decoder layer) and `label_embed` (nn.Embedding(K + 1, C), the denoising content), and
    provides the two hooks in which the models differ:
      matching_queries(selection, batch_size) -> (content (B, Q, C), anchors (B, Q, 4) logit space)
      predict_logits(hs (L_dec, B, T, C)) -> class logits (L_dec, B, T, K)
    Its `forward` runs its own encoder and query selection, then `decode`."""

    uses_targets = True  # the training loop passes `targets=` to forward (denoising)

    def denoising_groups(self, targets: list[dict] | None) -> DenoisingGroups | None:
        """Contrastive denoising groups of `targets` in training mode, else None."""
        if not (self.training and targets is not None and self.cfg.dn_number > 0):
            return None
        groups = contrastive_groups(targets, self.cfg.dn_number, self.cfg.dn_label_noise, self.cfg.dn_box_noise_scale,
                                    self.cfg.num_classes)
        return groups if groups.group_size > 0 else None  # no object in the batch: nothing to denoise

    def decode(self, selection: Selection, memory: Tensor, shapes, ratios: Tensor, padding: Tensor, batch_size: int,
               targets: list[dict] | None, return_intermediates: bool, num_decoder_layers: int | None) -> dict:
        """Queries (denoising + matching), the decoder, the heads and the output dict (`DINO`'s docstring)."""
        tgt, anchors = self.matching_queries(selection, batch_size)  # (B, Q, C), (B, Q, 4)
        groups = self.denoising_groups(targets)
        n_dn, attn_mask = 0, None
        if groups is not None:  # T = P·M + Q queries
            tgt, anchors, attn_mask, n_dn = prepend_denoising_queries(groups, self.label_embed(groups.labels), tgt,
                                                                      anchors)
        dec = self.decoder(tgt, anchors, memory, shapes, ratios, padding, self.bbox_embed, attn_mask,
                           num_decoder_layers, return_sampling=return_intermediates)
        logits, boxes = self.predict_logits(dec.hs), dec.boxes  # (L_dec, B, T, K), (L_dec, B, T, 4)
        out = {"pred_logits": logits[-1, :, n_dn:], "pred_boxes": boxes[-1, :, n_dn:],
               "interm_outputs": {"pred_logits": selection.logits, "pred_boxes": selection.boxes.sigmoid()}}
        if self.cfg.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg[:, n_dn:], "pred_boxes": bx[:, n_dn:]}
                                  for lg, bx in zip(logits[:-1], boxes[:-1])]
        if groups is not None:
            out["dn_outputs"] = {"pred_logits": logits[:, :, :n_dn], "pred_boxes": boxes[:, :, :n_dn],
                                 "target_index": groups.positive_index}
        if return_intermediates:
            levels_, cells = token_locations(selection.indices, shapes)
            out.update(selected_indices=selection.indices, selected_levels=levels_, selected_cells=cells,
                       encoder_logits=selection.token_logits, layer_boxes=boxes[:, :, n_dn:],
                       reference_points=[r[:, n_dn:] for r in dec.references],
                       decoder_sampling=[(loc[:, n_dn:], w[:, n_dn:]) for loc, w in dec.sampling])
            if groups is not None:
                out.update(dn_anchors=groups.boxes, dn_labels=groups.labels, dn_negative=groups.negative,
                           dn_target_index=groups.target_index, dn_target_boxes=groups.target_boxes,
                           dn_attention_mask=attn_mask, dn_groups=(groups.num_groups, groups.group_size))
        return out

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """The top `num_detections` (query, class) pairs by sigmoid score, no NMS (`heads.topk_detections`)."""
        return topk_detections(outputs, target_sizes, self.cfg.num_detections)


class DINO(DINOBase):
    """`forward(images, mask, targets=None, return_intermediates=False, num_decoder_layers=None)`.

    Returns "pred_logits" (B, Q, K) (sigmoid), "pred_boxes" (B, Q, 4) cxcywh in [0, 1],
    "aux_outputs" (the earlier layers) and "interm_outputs" (the Q selected encoder tokens' logits
    and boxes); in training mode with targets also "dn_outputs" {"pred_logits" (L_dec, B, P·M, K),
    "pred_boxes", "target_index" (B, P·M): the positives' objects, -1 elsewhere}. With
    `return_intermediates=True` also "selected_indices" (B, Q), "selected_levels" (B, Q) and
    "selected_cells" (B, Q, 2) (y, x) of the tokens query selection picked, "encoder_logits"
    (B, N, K), "spatial_shapes", "level_masks", "reference_points" [(B, Q, 4)] per layer,
    "layer_boxes" (L_dec, B, Q, 4), "encoder_sampling", "decoder_sampling", and with denoising
    "dn_anchors" (B, P·M, 4), "dn_labels", "dn_negative" (B, P·M) bool, "dn_target_index",
    "dn_target_boxes", "dn_attention_mask" (T, T) and "dn_groups" (P, M).
    `num_decoder_layers` runs only the first layers; the outputs then come from the last one run."""

    def __init__(self, cfg: DINOConfig):
        super().__init__()
        self.cfg = cfg
        tc = cfg.transformer
        c = tc.d_model
        self.backbone, self.input_proj, self.position_encoding, self.level_embed = multiscale_front_end(
            cfg.backbone, c, tc.num_levels, cfg.position_temperature)
        self.encoder = self.build_encoder(tc)
        self.decoder = self.build_decoder(tc)
        self.tgt_embed = nn.Embedding(cfg.num_queries, c)  # the learned content queries
        for p in chain(self.encoder.parameters(), self.decoder.parameters(), self.tgt_embed.parameters()):
            if p.dim() > 1:  # official DeformableTransformer._reset_parameters
                nn.init.xavier_uniform_(p)
        for m in self.modules():
            if isinstance(m, MSDeformAttn):
                m.reset_parameters()
        nn.init.normal_(self.level_embed)
        self.selection = QuerySelection(c, cfg.num_classes)  # anchors from the top-Q encoder tokens
        self.label_embed = nn.Embedding(cfg.num_classes + 1, c)  # denoising content (official label_enc)
        self.class_embed = init_focal_head(nn.Linear(c, cfg.num_classes))  # shared by all decoder layers
        self.bbox_embed = nn.ModuleList([zero_box_head(MLP(c, c, 4, 3))] * tc.num_decoder_layers)  # one head, shared

    def build_encoder(self, tc: DeformableTransformerConfig) -> nn.Module:
        """Deformable DETR's encoder (Lite DINO, `tutorial/models/lite_detr.py`, replaces it)."""
        return DeformableEncoder(tc)

    def build_decoder(self, tc: DeformableTransformerConfig) -> DINODecoder:
        """The anchor-box decoder (Lite DINO makes its cross-attention key-aware)."""
        return DINODecoder(tc)

    def matching_queries(self, selection: Selection, batch_size: int) -> tuple[Tensor, Tensor]:
        """Mixed query selection: (content (B, Q, C) learned, anchors (B, Q, 4) logit space: the
        selected tokens' boxes, detached)."""
        return repeat(self.tgt_embed.weight, "q c -> b q c", b=batch_size), selection.boxes.detach()

    def predict_logits(self, hs: Tensor) -> Tensor:
        """hs (L_dec, B, T, C) -> logits (L_dec, B, T, K) with the shared class head."""
        return self.class_embed(hs)

    def forward(self, images: Tensor, mask: Tensor, targets: list[dict] | None = None,
                return_intermediates: bool = False, num_decoder_layers: int | None = None) -> dict:
        levels = self.input_proj(self.backbone(images, mask), mask)  # L x ((B, C, H_l, W_l), (B, H_l, W_l))
        src, padding, shapes, ratios = flatten_levels(levels)  # (B, N, C), (B, N), [(H_l, W_l)], (B, L, 2)
        pos = level_positions(levels, self.position_encoding, self.level_embed)  # (B, N, C)
        memory, _, enc_sampling = self.encoder(src, pos, shapes, ratios, padding, return_intermediates)  # (B, N, C)
        selection = self.selection(memory, padding, shapes, self.cfg.num_queries)  # the top-Q tokens
        out = self.decode(selection, memory, shapes, ratios, padding, images.shape[0], targets,
                          return_intermediates, num_decoder_layers)
        if return_intermediates:
            out.update(spatial_shapes=shapes, level_masks=[m for _, m in levels], encoder_sampling=enc_sampling)
        return out

    def build_criterion(self) -> DINOCriterion:
        return DINOCriterion(focal_matcher(self.cfg.matcher, self.cfg.focal_alpha), self.cfg.loss,
                             self.cfg.focal_alpha)


# --- presets ----------------------------------------------------------------------------------


def dino_4scale_r50() -> DINOConfig:
    """The paper's DINO-4scale-R50 (official `config/DINO/DINO_4scale.py`): 46,893,182 parameters,
    as the official implementation (paper: 47M)."""
    return DINOConfig()


def dino_tiny() -> DINOConfig:
    """CPU scale on shapes, with deformable_detr_tiny's backbone and sizes: stages layer2, layer3
    (strides 8, 16) plus two extra levels, C=128, 8 heads, 3+3 layers, FFN 512, 25 queries,
    no dropout; a denoising budget of 25 positive queries."""
    return DINOConfig(
        num_classes=6,
        num_queries=25,
        backbone=tiny_backbone("layer2", "layer3"),
        transformer=tiny_transformer(DeformableTransformerConfig),
        dn_number=25,
    )
