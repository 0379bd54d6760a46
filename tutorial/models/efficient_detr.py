"""Efficient DETR (Yao, Ai, Li, Zhang, 2021): "Improving End-to-End Object Detector with Dense Prior".

The paper's finding (Sec. 3): DETR and Deformable DETR need a cascade of 6 decoder layers because
their *object containers* (the reference points and the object queries) start from learned,
image-independent values; with one decoder layer Deformable DETR loses most of its accuracy.
Initialising both containers from a *dense prior* closes most of that gap, so the paper's
detector (Sec. 4) has only 3 encoder layers and 1 decoder layer:

    backbone + multi-scale front end (Deformable DETR's: strides 8, 16, 32, 64, C channels)
    -> 3 deformable encoder layers -> memory (B, N, C)
    dense part:  a class head and a box head on every token (a dense detector over N tokens, the
                 box relative to the token's anchor), trained with its own Hungarian set loss;
                 the top-k tokens by class score are the proposals
    sparse part: 1 deformable decoder layer whose reference boxes are the k proposals' boxes and
                 whose content queries are the k tokens' encoder features -> k detections,
                 trained with the Hungarian loss.

What is new compared with Deformable DETR's two-stage variant (`tutorial/models/deformable_detr.py`):
the content queries are the selected encoder features themselves (two-stage re-embeds only the
box positions, `pos_trans`), the dense part predicts the real classes (two-stage's proposals are
class-agnostic), and the cascade is gone (1 decoder layer, so no refinement and no auxiliary
decoder losses). Everything else is reused: the front end (`multiscale.py`), the deformable
encoder and decoder (`deformable_transformer.py`), the anchors of every token
(`deformable_transformer.encoder_proposals`), the top-k gather (`query_selection.select_top_k`),
the sigmoid heads (`heads.py`), and the focal matcher and set criterion (`matching/focal.py`).
No official code is public; the choices the paper leaves open are marked "(choice)".

Glossary (code -> paper): memory -> the encoder's output feature map, flattened; dense_outputs ->
the dense part's predictions; k = num_queries -> the number of proposals (paper: 100);
proposals -> the dense prior; tgt -> the object queries; reference -> the reference points (here
4-d boxes). B batch, N = Σ_l H_l·W_l tokens, L levels, K classes, C width, k proposals.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..matching.criterion import LossWeights
from ..matching.focal import FocalSetCriterion, focal_matcher
from ..matching.matcher import MatcherWeights
from ..ops.mlp import MLP
from .backbone import BackboneConfig, tiny_backbone
from .deformable_transformer import (DeformableTransformerConfig,
                                     encoder_proposals, proposal_position_encoding)
from .heads import init_focal_head, inverse_sigmoid, topk_detections, zero_box_head
from .multiscale import deformable_body, flatten_levels, level_positions
from .query_selection import select_top_k
from .transformer import tiny_transformer

INVALID_LOGIT = -1e4  # the dense class logits of padded/border tokens: never matched, zero focal loss


@dataclass
class EfficientDETRConfig:
    num_classes: int = 91  # K sigmoid outputs (no ∅ class)
    num_queries: int = 100  # k proposals from the dense part = the decoder's queries
    backbone: BackboneConfig = field(default_factory=lambda: BackboneConfig(
        return_layers=("layer2", "layer3", "layer4")))
    transformer: DeformableTransformerConfig = field(default_factory=lambda: DeformableTransformerConfig(
        num_encoder_layers=3, num_decoder_layers=1))
    share_heads: bool = True  # one class and one box head for both parts (our reading of Sec. 4); False: a pair each
    aux_loss: bool = True  # auxiliary losses of the decoder layers before the last (none with 1 layer)
    focal_alpha: float = 0.25
    matcher: MatcherWeights = field(default_factory=lambda: MatcherWeights(cost_class=2.0))
    loss: LossWeights = field(default_factory=lambda: LossWeights(loss_ce=2.0))
    num_detections: int = 100  # top-k (query, class) pairs kept by `postprocess`


class EfficientDETRCriterion(FocalSetCriterion):
    """The Hungarian (focal) set loss on the sparse part (the decoder's k predictions, and any
    auxiliary layers) plus the same loss on the dense part ("dense_outputs", all N tokens matched
    one-to-one to the targets with their real classes; terms suffixed "_dense"), weighted alike."""

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        losses = super().forward(outputs, targets)
        if "dense_outputs" in outputs:
            self.add_set_loss(losses, outputs["dense_outputs"], targets, "_dense")
        return losses


class EfficientDETR(nn.Module):
    """`forward(images, mask, return_intermediates=False)` returns DETR's output dict for the sparse
    part ("pred_logits" (B, k, K) sigmoid logits, "pred_boxes" (B, k, 4), "aux_outputs"), plus
    "dense_outputs" (the dense part on every token: "pred_logits" (B, N, K), "pred_boxes" (B, N, 4))
    and "proposals", the dense prior before the decoder: "indices" (B, k) tokens, "boxes" (B, k, 4)
    cxcywh in [0, 1], "scores" (B, k) max_K sigmoid, "logits" (B, k, K), "features" (B, k, C).
    With `return_intermediates=True` also "reference_points" [(B, k, 4)] per decoder layer,
    "layer_boxes" (L_dec, B, k, 4), "spatial_shapes", "level_masks", "memory" (B, N, C) the encoder's
    output, "query_content" (B, k, C) and
    "query_pos" (B, k, C) (what entered the decoder), "encoder_sampling", "decoder_sampling"."""

    def __init__(self, cfg: EfficientDETRConfig):
        super().__init__()
        self.cfg = cfg
        tc = cfg.transformer
        c = tc.d_model
        (self.backbone, self.input_proj, self.position_encoding, self.level_embed, self.encoder,
         self.decoder) = deformable_body(cfg.backbone, tc)
        heads = 1 if cfg.share_heads else 2  # [0]: sparse part (all decoder layers), [-1]: dense part
        self.class_embed = nn.ModuleList(init_focal_head(nn.Linear(c, cfg.num_classes)) for _ in range(heads))
        self.bbox_embed = nn.ModuleList(zero_box_head(MLP(c, c, 4, 3)) for _ in range(heads))  # Δ = 0: boxes = anchors
        # (choice) the positional query of a proposal: its box's sine encoding, projected (two-stage's pos_trans)
        self.pos_trans = nn.Linear(2 * c, c)
        self.pos_trans_norm = nn.LayerNorm(c)

    def dense_part(self, memory: Tensor, padding: Tensor, shapes) -> tuple[Tensor, Tensor, Tensor]:
        """The dense detector on the encoder's output (paper Sec. 4, "dense part"): each token t has an
        anchor a_t (centred on it, side 0.05·2^l on level l) and predicts class logits and the box
        σ(Δ_t + σ⁻¹(a_t)). memory (B, N, C), padding (B, N) -> (logits (B, N, K) with INVALID_LOGIT
        on padded and border tokens, boxes (B, N, 4) logit space (inf where invalid), valid (B, N))."""
        zeroed, anchors = encoder_proposals(memory, padding, shapes)  # (B, N, C), (B, N, 4) σ⁻¹, inf if invalid
        valid = torch.isfinite(anchors).all(-1)  # (B, N)
        logits = self.class_embed[-1](zeroed).masked_fill(~valid[..., None], INVALID_LOGIT)  # (B, N, K)
        boxes = self.bbox_embed[-1](zeroed) + anchors  # (B, N, 4)
        return logits, boxes, valid

    def select_proposals(self, logits: Tensor, boxes: Tensor, memory: Tensor, valid: Tensor) -> dict:
        """The dense prior: the k valid tokens with the highest best-class score (padded tokens are
        never chosen). -> {"indices" (B, k), "logits" (B, k, K), "boxes" (B, k, 4) logit space,
        "features" (B, k, C) the tokens' encoder features}."""
        k = self.cfg.num_queries
        if k > int(valid.sum(1).min()):
            raise ValueError(f"EfficientDETR: num_queries={k} proposals requested but an image has only "
                             f"{int(valid.sum(1).min())} valid encoder tokens; lower num_queries or use larger images")
        ranked = logits.masked_fill(~valid[..., None], float("-inf"))  # (B, N, K): padding ranks last
        indices, top_logits, top_boxes, features = select_top_k(ranked, boxes, memory, k)  # (B, k), ...
        return {"indices": indices, "logits": top_logits, "boxes": top_boxes, "features": features}

    def object_containers(self, proposals: dict) -> tuple[Tensor, Tensor, Tensor]:
        """Paper Sec. 4: the decoder's object queries are the selected encoder features and its
        reference points the selected boxes (4-d). -> (tgt (B, k, C), query_pos (B, k, C), reference
        (B, k, 4) in [0, 1]). The reference is detached, as in Deformable DETR's two-stage; the
        content keeps its gradient, so the sparse loss also trains the selected features (choice)."""
        boxes = proposals["boxes"].detach()  # (B, k, 4) logit space
        c = self.cfg.transformer.d_model
        query_pos = self.pos_trans_norm(self.pos_trans(proposal_position_encoding(boxes, c // 2)))  # (B, k, C)
        return proposals["features"], query_pos, boxes.sigmoid()

    def forward(self, images: Tensor, mask: Tensor, return_intermediates: bool = False) -> dict:
        levels = self.input_proj(self.backbone(images, mask), mask)  # L x ((B, C, H_l, W_l), (B, H_l, W_l))
        src, padding, shapes, ratios = flatten_levels(levels)  # (B, N, C), (B, N), [(H_l, W_l)], (B, L, 2)
        pos = level_positions(levels, self.position_encoding, self.level_embed)  # (B, N, C)
        memory, _, enc_sampling = self.encoder(src, pos, shapes, ratios, padding, return_intermediates)  # (B, N, C)
        # 1) dense part: every token detects; 2) the top-k are the dense prior
        dense_logits, dense_boxes, valid = self.dense_part(memory, padding, shapes)  # (B, N, K), (B, N, 4), (B, N)
        proposals = self.select_proposals(dense_logits, dense_boxes, memory, valid)
        # 3) sparse part: one decoder layer from the dense prior
        tgt, query_pos, reference = self.object_containers(proposals)  # (B, k, C), (B, k, C), (B, k, 4)
        hs, refs, dec_sampling = self.decoder(tgt, reference, memory, shapes, ratios, padding, query_pos,
                                              return_sampling=return_intermediates)  # (L_dec, B, k, C), [(B, k, 4)]
        logits = self.class_embed[0](hs)  # (L_dec, B, k, K)
        boxes = (self.bbox_embed[0](hs) + inverse_sigmoid(torch.stack(refs))).sigmoid()  # (L_dec, B, k, 4)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1],
               "dense_outputs": {"pred_logits": dense_logits, "pred_boxes": dense_boxes.sigmoid()},
               "proposals": {"indices": proposals["indices"], "logits": proposals["logits"],
                             "scores": proposals["logits"].sigmoid().max(-1).values,  # (B, k)
                             "boxes": proposals["boxes"].sigmoid(), "features": proposals["features"]}}
        if self.cfg.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        if return_intermediates:
            out.update(reference_points=refs, layer_boxes=boxes, spatial_shapes=shapes,
                       level_masks=[m for _, m in levels], memory=memory, query_content=tgt, query_pos=query_pos,
                       encoder_sampling=enc_sampling, decoder_sampling=dec_sampling)
        return out

    def build_criterion(self) -> EfficientDETRCriterion:
        return EfficientDETRCriterion(focal_matcher(self.cfg.matcher, self.cfg.focal_alpha), self.cfg.loss,
                                      self.cfg.focal_alpha)

    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """The sparse part's top `num_detections` (query, class) pairs (`heads.topk_detections`), no NMS.
        Boxes xyxy in pixels of `target_sizes` (B, 2) = (h, w)."""
        return topk_detections(outputs, target_sizes, self.cfg.num_detections)


# --- presets ----------------------------------------------------------------------------------


def efficient_detr_r50() -> EfficientDETRConfig:
    """The paper's efficient configuration (Sec. 4-5): ResNet-50, 4 levels, deformable attention,
    3 encoder layers, 1 decoder layer, 100 proposals, shared heads: 32,674,079 parameters
    (this package's count; 91 class logits as the package's other COCO presets)."""
    return EfficientDETRConfig()


def efficient_detr_tiny() -> EfficientDETRConfig:
    """CPU scale on shapes, sized like deformable_detr_tiny (detr_tiny's pretrained backbone, stages
    layer2, layer3 plus two extra levels, C=128, FFN 512), with the paper's 3 encoder layers and
    1 decoder layer, and 25 proposals."""
    return EfficientDETRConfig(
        num_classes=6,
        num_queries=25,
        backbone=tiny_backbone("layer2", "layer3"),
        transformer=tiny_transformer(DeformableTransformerConfig, num_encoder_layers=3, num_decoder_layers=1),
    )
