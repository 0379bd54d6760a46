"""Deformable DETR (Zhu et al., ICLR 2021): what it adds to DETR, and nothing else.

    ResNet stages (strides 8, 16, 32) + an extra stride-2 conv (stride 64) -> L = 4 levels,
    each projected to C channels (1x1 conv + GroupNorm), + sine position + a learned level embedding
    -> deformable encoder (every pixel of every level a query) -> memory
    Q queries (a learned (position, content) pair each; the position predicts a reference point)
    -> deformable decoder -> per layer: class logits (sigmoid, K classes, no ∅) and a box
       predicted *relative to the reference point* (in logit space).

Training changes: sigmoid focal loss for the classes (torchvision's `sigmoid_focal_loss`, α=0.25,
γ=2) and the matching cost built on it; class weight 2. Options: iterative bounding-box
refinement and two-stage (App. A.4). Everything else (backbone, matcher, criterion, box losses,
training loop) is DETR's. Official code: fundamentalvision/Deformable-DETR, `models/deformable_detr.py`.

Glossary: B batch, Q queries, K classes, C width, L levels, N = Σ_l H_l·W_l, M heads, P points.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

from .backbone import Backbone, BackboneConfig, feature_mask, tiny_backbone
from ..matching.criterion import LossWeights, SetCriterion, matched_pairs, num_boxes_across_processes
from .deformable_transformer import (DeformableDecoder, DeformableEncoder, DeformableTransformerConfig,
                                     encoder_proposals, inverse_sigmoid, proposal_position_encoding, valid_ratios)
from ..matching.matcher import HungarianMatcher, MatcherWeights
from ..ops.mlp import MLP
from ..ops.position_encoding import SinePositionEncoding


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


# --- what the focal loss changes in matching and in the loss -----------------------------------


def focal_matching_cost(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                        cost_class: float = 2.0, cost_bbox: float = 5.0, cost_giou: float = 2.0,
                        alpha: float = 0.25, gamma: float = 2.0) -> Tensor:
    """Deformable DETR's L_match: the class term is the focal loss of calling the target's class
    positive minus that of calling it negative. pred_logits (Q, K) -> cost (Q, n)."""
    p = pred_logits.sigmoid()  # (Q, K)
    neg = (1 - alpha) * p**gamma * -torch.log(1 - p + 1e-8)  # (Q, K)
    pos = alpha * (1 - p) ** gamma * -torch.log(p + 1e-8)  # (Q, K)
    class_cost = pos[:, tgt_labels] - neg[:, tgt_labels]  # (Q, n)
    l1_cost = torch.cdist(pred_boxes, tgt_boxes, p=1)  # (Q, n)
    giou = generalized_box_iou(box_convert(pred_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy"))
    return cost_class * class_cost + cost_bbox * l1_cost + cost_giou * (-giou)  # (Q, n)


def focal_class_loss(pred_logits: Tensor, targets: list[dict], indices, num_boxes: float, alpha: float) -> Tensor:
    """Σ over all B·Q·K (query, class) pairs of the sigmoid focal loss, / number of boxes."""
    batch_idx, pred_idx = matched_pairs(indices)
    onehot = torch.zeros_like(pred_logits)  # (B, Q, K): every pair negative ...
    labels = torch.cat([t["labels"][j] for t, (_, j) in zip(targets, indices)])
    onehot[batch_idx, pred_idx, labels] = 1.0  # ... except each matched query's target class
    return sigmoid_focal_loss(pred_logits, onehot, alpha=alpha, gamma=2.0, reduction="sum") / num_boxes


class FocalSetCriterion(SetCriterion):
    """DETR's set criterion with the focal class loss, plus the two-stage encoder-proposal loss."""

    def __init__(self, matcher: HungarianMatcher, weights: LossWeights, alpha: float):
        super().__init__(matcher, weights)
        self.alpha = alpha

    def class_loss(self, pred_logits, targets, indices, num_boxes):
        return focal_class_loss(pred_logits, targets, indices, num_boxes, self.alpha)

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        if "enc_outputs" in outputs:  # two-stage: proposals are trained class-agnostically
            num_boxes = num_boxes_across_processes(targets, outputs["pred_logits"].device)
            binary = [{**t, "labels": torch.zeros_like(t["labels"])} for t in targets]
            terms = self.layer_loss(outputs["enc_outputs"], binary, num_boxes)
            losses["loss"] = losses["loss"] + self.weighted_sum(terms)
            losses.update({f"{k}_enc": v for k, v in terms.items()})
        return losses


# --- the model ---------------------------------------------------------------------------------


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
        self.backbone = Backbone(cfg.backbone)
        self.input_proj = MultiScaleProjection(self.backbone.num_channels, c, tc.num_levels)
        self.position_encoding = SinePositionEncoding(c // 2, offset=-0.5)
        self.level_embed = nn.Parameter(torch.empty(tc.num_levels, c).normal_())
        self.encoder = DeformableEncoder(tc)
        self.decoder = DeformableDecoder(tc)
        num_pred = tc.num_decoder_layers + (1 if cfg.two_stage else 0)  # +1: the encoder's proposal head
        class_embed, bbox_embed = nn.Linear(c, cfg.num_classes), MLP(c, c, 4, 3)
        nn.init.constant_(class_embed.bias, -math.log((1 - 0.01) / 0.01))  # focal-loss prior: p = 0.01
        nn.init.constant_(bbox_embed.layers[-1].weight, 0)
        nn.init.constant_(bbox_embed.layers[-1].bias, 0)
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

    def flatten_levels(self, levels: list[tuple[Tensor, Tensor]]):
        """L maps -> tokens (B, N, C), positions + level embeddings (B, N, C), padding (B, N),
        spatial shapes [(H_l, W_l)] and valid ratios (B, L, 2)."""
        src, pos, pad, shapes, ratios = [], [], [], [], []
        for lvl, (x, m) in enumerate(levels):
            shapes.append(tuple(x.shape[-2:]))
            src.append(rearrange(x, "b c h w -> b (h w) c"))  # (B, H_l·W_l, C)
            p = rearrange(self.position_encoding(m), "b c h w -> b (h w) c")  # (B, H_l·W_l, C)
            pos.append(p + self.level_embed[lvl])
            pad.append(m.flatten(1))  # (B, H_l·W_l)
            ratios.append(valid_ratios(m))  # (B, 2)
        return torch.cat(src, 1), torch.cat(pos, 1), torch.cat(pad, 1), shapes, torch.stack(ratios, 1)

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
        src, pos, padding, shapes, ratios = self.flatten_levels(levels)  # (B, N, C) ...
        memory, enc_ref, enc_sampling = self.encoder(src, pos, shapes, ratios, padding, return_intermediates)
        out: dict = {}
        tgt, query_pos, reference = self.queries(memory, padding, shapes, out)
        hs, refs, dec_sampling = self.decoder(tgt, reference, memory, shapes, ratios, padding, query_pos,
                                              return_sampling=return_intermediates)  # (L_dec, B, Q, C), [(B, Q, 2|4)]
        logits, boxes = [], []
        for lid in range(hs.shape[0]):  # each layer's box is relative to that layer's reference
            delta = self.bbox_embed[lid](hs[lid])  # (B, Q, 4)
            ref = inverse_sigmoid(refs[lid])
            delta = delta + ref if ref.shape[-1] == 4 else torch.cat([delta[..., :2] + ref, delta[..., 2:]], -1)
            logits.append(self.class_embed[lid](hs[lid]))  # (B, Q, K)
            boxes.append(delta.sigmoid())  # (B, Q, 4)
        out.update(pred_logits=logits[-1], pred_boxes=boxes[-1])
        if self.cfg.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        if return_intermediates:
            out.update(reference_points=refs, spatial_shapes=shapes, encoder_reference_points=enc_ref,
                       encoder_sampling=enc_sampling, decoder_sampling=dec_sampling,
                       level_masks=[m for _, m in levels], layer_boxes=torch.stack(boxes))
        return out

    def build_criterion(self) -> FocalSetCriterion:
        cost = lambda *a: focal_matching_cost(*a, alpha=self.cfg.focal_alpha)  # noqa: E731
        return FocalSetCriterion(HungarianMatcher(self.cfg.matcher, cost), self.cfg.loss, self.cfg.focal_alpha)

    @torch.no_grad()
    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """The top `num_detections` (query, class) pairs by sigmoid score (official `PostProcess`):
        a query may report several classes. Boxes xyxy in pixels of `target_sizes` (B, 2) = (h, w)."""
        logits = outputs["pred_logits"]  # (B, Q, K)
        b, q, k = logits.shape
        scores, index = logits.sigmoid().flatten(1).topk(min(self.cfg.num_detections, q * k), dim=1)  # (B, T)
        query, labels = index // k, index % k  # (B, T)
        boxes = box_convert(outputs["pred_boxes"], "cxcywh", "xyxy")  # (B, Q, 4)
        boxes = torch.gather(boxes, 1, query[..., None].expand(-1, -1, 4))  # (B, T, 4)
        h, w = target_sizes.unbind(1)
        boxes = boxes * torch.stack([w, h, w, h], dim=1)[:, None, :].to(boxes)
        return [{"scores": s, "labels": lb, "boxes": bx, "queries": qi}
                for s, lb, bx, qi in zip(scores, labels, boxes, query)]


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
        transformer=DeformableTransformerConfig(d_model=128, num_heads=8, num_encoder_layers=3,
                                                num_decoder_layers=3, dim_feedforward=512, dropout=0.0),
        with_box_refine=True,
    )
