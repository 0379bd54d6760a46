"""Deformable DETR (Zhu et al., ICLR 2021): what it adds to DETR, and nothing else.

    ResNet stages (strides 8, 16, 32) + an extra stride-2 conv (stride 64) -> L = 4 levels,
    each projected to C channels (1x1 conv + GroupNorm), + sine position + a learned level embedding
    -> deformable encoder (every pixel of every level a query) -> memory
    Q queries (a learned (position, content) pair each; the position predicts a reference point)
    -> deformable decoder -> per layer: class logits (sigmoid, K classes, no ∅) and a box
       predicted *relative to the reference point* (in logit space).

Training changes: sigmoid focal loss for the classes (α=0.25, γ=2) and the matching cost built on
it; class weight 2 (`tutorial/matching/focal.py`). Options: iterative bounding-box refinement and
two-stage (App. A.4). The pieces later models share live in their own files: the multi-scale front
end (`tutorial/models/multiscale.py`), the deformable layers (`tutorial/models/deformable_transformer.py`),
the sigmoid heads' init and top-k post-processing (`tutorial/models/heads.py`). Everything else
(backbone, matcher, criterion, box losses, training loop) is DETR's.
Official code: fundamentalvision/Deformable-DETR, `models/deformable_detr.py`.

Glossary: B batch, Q queries, K classes, C width, L levels, N = Σ_l H_l·W_l, M heads, P points.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .backbone import BackboneConfig, tiny_backbone
from ..matching.criterion import LossWeights
from ..matching.focal import FocalSetCriterion, focal_matcher
from .deformable_transformer import (DeformableTransformerConfig,
                                     encoder_proposals, proposal_position_encoding)
from .heads import init_focal_head, inverse_sigmoid, topk_detections, zero_box_head
from ..matching.matcher import MatcherWeights
from ..ops.mlp import MLP
from .multiscale import deformable_body, flatten_levels, level_positions
from .transformer import tiny_transformer


@dataclass
class DeformableDETRConfig:
    num_classes: int = 91  # K sigmoid outputs (no ∅ class)
    num_queries: int = 300
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(
        return_layers=("layer2", "layer3", "layer4")))
    transformer: DeformableTransformerConfig = field(default_factory=DeformableTransformerConfig)
    with_box_refine: bool = False
    two_stage: bool = False
    aux_loss: bool = True
    focal_alpha: float = 0.25
    matcher: MatcherWeights = field(default_factory=lambda: MatcherWeights(cost_class=2.0))
    loss: LossWeights = field(default_factory=lambda: LossWeights(loss_ce=2.0))
    num_detections: int = 100  # top-k (query, class) pairs kept by `postprocess`


class DeformableDETR(nn.Module):
    """`forward(images, mask)` returns DETR's output dict (sigmoid logits (B, Q, K)), plus
    "enc_outputs" when two-stage; with `return_intermediates=True` also "reference_points"
    [(B, Q, 2|4)] per decoder layer, "layer_boxes" (L_dec, B, Q, 4), "spatial_shapes", "encoder_reference_points" (B, N, L, 2),
    "encoder_sampling" and "decoder_sampling": per layer (locations (B, Q, M, L, P, 2),
    weights (B, Q, M, L, P)), and "level_masks"."""

    def __init__(self, cfg: DeformableDETRConfig):
        super().__init__()
        self.cfg = cfg
        tc = cfg.transformer
        c = tc.d_model
        (self.backbone, self.input_proj, self.position_encoding, self.level_embed, self.encoder,
         self.decoder) = deformable_body(cfg.backbone, tc)
        num_pred = tc.num_decoder_layers + (1 if cfg.two_stage else 0)  # +1: the encoder's proposal head
        class_embed, bbox_embed = init_focal_head(nn.Linear(c, cfg.num_classes)), zero_box_head(MLP(c, c, 4, 3))
        if cfg.with_box_refine:  # one head per decoder layer; the decoder uses them to refine
            self.class_embed = nn.ModuleList(copy.deepcopy(class_embed) for _ in range(num_pred))
            self.bbox_embed = nn.ModuleList(copy.deepcopy(bbox_embed) for _ in range(num_pred))
            nn.init.constant_(self.bbox_embed[0].layers[-1].bias[2:], -2.0)
            self.decoder.bbox_embed = self.bbox_embed
        else:  # one head shared by all layers
            nn.init.constant_(bbox_embed.layers[-1].bias[2:], -2.0)
            self.class_embed = nn.ModuleList([class_embed] * num_pred)
            self.bbox_embed = nn.ModuleList([bbox_embed] * num_pred)
        if cfg.two_stage:
            for head in self.bbox_embed:
                nn.init.constant_(head.layers[-1].bias[2:], 0.0)
            self.enc_output = nn.Linear(c, c)
            self.enc_output_norm = nn.LayerNorm(c)
            self.pos_trans = nn.Linear(2 * c, 2 * c)
            self.pos_trans_norm = nn.LayerNorm(2 * c)
        else:
            self.query_embed = nn.Embedding(cfg.num_queries, 2 * c)  # (position, content) per query
            self.reference_points = nn.Linear(c, 2)
            nn.init.xavier_uniform_(self.reference_points.weight, gain=1.0)
            nn.init.constant_(self.reference_points.bias, 0.0)

    def queries(self, memory: Tensor, padding: Tensor, shapes, out: dict):
        """The decoder's (content tgt, position query_pos, reference points) for each image."""
        b, c = memory.shape[0], self.cfg.transformer.d_model
        if not self.cfg.two_stage:
            query_pos, tgt = self.query_embed.weight.split(c, dim=1)  # (Q, C) each
            query_pos, tgt = query_pos.expand(b, -1, -1), tgt.expand(b, -1, -1)  # (B, Q, C)
            return tgt, query_pos, self.reference_points(query_pos).sigmoid()  # (B, Q, 2)
        # Two-stage: every encoder pixel proposes a box; the top-Q (by class score) become the queries.
        memory, proposals = encoder_proposals(memory, padding, shapes)  # (B, N, C), (B, N, 4)
        memory = self.enc_output_norm(self.enc_output(memory))
        head = self.cfg.transformer.num_decoder_layers
        enc_logits = self.class_embed[head](memory)  # (B, N, K)
        enc_boxes = self.bbox_embed[head](memory) + proposals  # (B, N, 4) logit space
        out["enc_outputs"] = {"pred_logits": enc_logits, "pred_boxes": enc_boxes.sigmoid()}
        topk = torch.topk(enc_logits[..., 0], self.cfg.num_queries, dim=1).indices  # (B, Q)
        boxes = torch.gather(enc_boxes, 1, topk[..., None].expand(-1, -1, 4)).detach()  # (B, Q, 4)
        pos = self.pos_trans_norm(self.pos_trans(proposal_position_encoding(boxes, c // 2)))  # (B, Q, 2C)
        query_pos, tgt = pos.split(c, dim=2)
        out["proposal_indices"] = topk
        return tgt, query_pos, boxes.sigmoid()

    def forward(self, images: Tensor, mask: Tensor, return_intermediates: bool = False) -> dict:
        levels = self.input_proj(self.backbone(images, mask), mask)  # L x ((B, C, H_l, W_l), (B, H_l, W_l))
        src, padding, shapes, ratios = flatten_levels(levels)  # (B, N, C), (B, N), [(H_l, W_l)], (B, L, 2)
        pos = level_positions(levels, self.position_encoding, self.level_embed)  # (B, N, C)
        memory, enc_ref, enc_sampling = self.encoder(src, pos, shapes, ratios, padding, return_intermediates)
        out: dict = {}
        tgt, query_pos, reference = self.queries(memory, padding, shapes, out)
        hs, refs, dec_sampling = self.decoder(tgt, reference, memory, shapes, ratios, padding, query_pos,
                                              return_sampling=return_intermediates)  # (L_dec, B, Q, C), [(B, Q, 2|4)]
        logits, boxes = self.layer_predictions(hs, refs)
        out.update(pred_logits=logits[-1], pred_boxes=boxes[-1])
        if self.cfg.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        if return_intermediates:
            out.update(reference_points=refs, spatial_shapes=shapes, encoder_reference_points=enc_ref,
                       encoder_sampling=enc_sampling, decoder_sampling=dec_sampling,
                       level_masks=[m for _, m in levels], layer_boxes=torch.stack(boxes))
        return out

    def layer_predictions(self, hs: Tensor, refs: list[Tensor]) -> tuple[list[Tensor], list[Tensor]]:
        """hs (L_dec, B, Q, C) and each layer's reference [(B, Q, 2|4)] -> per layer class logits
        (B, Q, K) and boxes (B, Q, 4) in [0, 1], each box predicted relative to its layer's reference."""
        logits, boxes = [], []
        for lid in range(hs.shape[0]):
            delta = self.bbox_embed[lid](hs[lid])  # (B, Q, 4)
            ref = inverse_sigmoid(refs[lid])
            delta = delta + ref if ref.shape[-1] == 4 else torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1)
            logits.append(self.class_embed[lid](hs[lid]))  # (B, Q, K)
            boxes.append(delta.sigmoid())  # (B, Q, 4)
        return logits, boxes

    def build_criterion(self) -> FocalSetCriterion:
        return FocalSetCriterion(focal_matcher(self.cfg.matcher, self.cfg.focal_alpha), self.cfg.loss,
                                 self.cfg.focal_alpha)

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """The top `num_detections` (query, class) pairs by sigmoid score (`heads.topk_detections`):
        a query may report several classes. Boxes xyxy in pixels of `target_sizes` (B, 2) = (h, w)."""
        return topk_detections(outputs, target_sizes, self.cfg.num_detections)


# --- presets ----------------------------------------------------------------------------------


def deformable_detr_r50() -> DeformableDETRConfig:
    """The paper's Deformable DETR (R50, single-scale queries, 300 queries): 40,069,665 parameters."""
    return DeformableDETRConfig()


def deformable_detr_r50_refine() -> DeformableDETRConfig:
    """+ iterative bounding-box refinement: 40,849,660 parameters."""
    return DeformableDETRConfig(with_box_refine=True)


def deformable_detr_r50_two_stage() -> DeformableDETRConfig:
    """++ two-stage (with refinement, as in the paper's table): 41,181,529 parameters."""
    return DeformableDETRConfig(with_box_refine=True, two_stage=True)


def deformable_detr_tiny() -> DeformableDETRConfig:
    """CPU scale on shapes, with detr_tiny's backbone: stages layer2, layer3 (strides 8, 16) plus
    two extra levels (32, 64), C=128, 3+3 layers, 25 queries, iterative refinement."""
    return DeformableDETRConfig(
        num_classes=6,
        num_queries=25,
        backbone=tiny_backbone("layer2", "layer3"),
        transformer=tiny_transformer(DeformableTransformerConfig),
        with_box_refine=True,
    )
