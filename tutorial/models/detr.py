"""DETR: End-to-End Object Detection with Transformers (Carion et al., ECCV 2020).

    image -> ResNet -> 1x1 conv to C channels -> + positions -> transformer encoder -> memory
    Q learned object queries -> transformer decoder (attends to memory) -> per query:
        class  = Linear(C, K+1)          (K classes + "no object" ∅)
        box    = sigmoid(MLP(C, C, 4))   (cx, cy, w, h), relative to the image

Trained with the set criterion (`tutorial/matching/criterion.py`) over a Hungarian matching
(`tutorial/matching/matcher.py`), so there are no anchors and no NMS: duplicates are penalised by the
loss itself. Official code: facebookresearch/detr, `models/detr.py`.

Glossary: B batch, Q queries, K+1 classes with ∅ last, C width, H, W feature map, N = H·W,
L_dec decoder layers, M heads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from einops import rearrange, repeat
from torch import Tensor, nn
from torchvision.ops import box_convert

from .backbone import Backbone, BackboneConfig
from ..matching.criterion import LossWeights, SetCriterion
from ..matching.matcher import HungarianMatcher, MatcherWeights
from ..ops.mlp import MLP
from ..ops.position_encoding import build_position_encoding
from .tiny import detr_tiny_sizes
from .transformer import Transformer, TransformerConfig


@dataclass
class DETRConfig:
    num_classes: int = 91  # K: category ids 0..K-1 (COCO's ids go up to 90); logit K is ∅
    num_queries: int = 100  # Q
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    position_embedding: str = "sine"  # spatial encoding: "sine" | "learned"
    aux_loss: bool = True  # losses on every decoder layer
    matcher: MatcherWeights = field(default_factory=MatcherWeights)
    loss: LossWeights = field(default_factory=LossWeights)


class DETR(nn.Module):
    """The detector. `forward(images, mask)` returns a dict:

    "pred_logits" (B, Q, K+1), "pred_boxes" (B, Q, 4) cxcywh in [0, 1], "aux_outputs" (one
    such dict per earlier decoder layer); with `return_attention=True` also
    "encoder_attention" [(B, M, N, N)] and "decoder_attention" [(B, M, Q, N)] per layer,
    "feature_size" (H, W) and "feature_mask" (B, H, W) to draw them.
    """

    def __init__(self, cfg: DETRConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.transformer.d_model
        self.backbone = Backbone(cfg.backbone)
        self.position_encoding = build_position_encoding(cfg.position_embedding, c)
        self.input_proj = nn.Conv2d(self.backbone.num_channels[-1], c, kernel_size=1)
        self.transformer = Transformer(cfg.transformer)
        self.query_embed = nn.Embedding(cfg.num_queries, c)
        self.class_embed = nn.Linear(c, cfg.num_classes + 1)
        self.bbox_embed = MLP(c, c, 4, 3)

    def forward(self, images: Tensor, mask: Tensor, return_attention: bool = False) -> dict:
        """images (B, 3, H_img, W_img), mask (B, H_img, W_img) True on padding."""
        feature, fmask = self.backbone(images, mask)[-1]  # (B, C_backbone, H, W), (B, H, W)
        h, w = feature.shape[-2:]
        pos = rearrange(self.position_encoding(fmask), "b c h w -> b (h w) c")  # (B, N, C)
        src = rearrange(self.input_proj(feature), "b c h w -> b (h w) c")  # (B, N, C)
        padding = fmask.flatten(1)  # (B, N)
        memory, enc_attn = self.transformer.encode(src, pos, padding, return_attention)  # (B, N, C)
        queries = repeat(self.query_embed.weight, "q c -> b q c", b=images.shape[0])  # (B, Q, C)
        hs, dec_attn = self.transformer.decode(memory, pos, padding, queries,
                                               need_weights=return_attention)  # (L_dec, B, Q, C)
        logits = self.class_embed(hs)  # (L_dec, B, Q, K+1)
        boxes = self.bbox_embed(hs).sigmoid()  # (L_dec, B, Q, 4)
        out = {"pred_logits": logits[-1], "pred_boxes": boxes[-1]}
        if self.cfg.aux_loss:
            out["aux_outputs"] = [{"pred_logits": lg, "pred_boxes": bx} for lg, bx in zip(logits[:-1], boxes[:-1])]
        if return_attention:
            out.update(encoder_attention=enc_attn, decoder_attention=dec_attn, feature_size=(h, w),
                       feature_mask=fmask)
        return out

    def positional_attention(self, feature_mask: Tensor, layer: int = 0) -> Tensor:
        """The positional part of decoder layer `layer`'s cross-attention on its own: per head,
        softmax over the pixels of (W_q o_q + b_q)ᵀ(W_k p_k) / √d, with o_q the learned object query
        (`query_embed`), p_k the pixels' sine encoding of `feature_mask` and W_q, b_q, W_k that
        layer's query and key projections (the key bias adds the same amount to every pixel, so
        the softmax ignores it). The full logits add content terms (decoder embedding, pixel
        features) to both sides; this keeps only position against position, which is what the
        seed's "positional attention maps between the learned queries and the positional
        embeddings from a feature map" show (DAB-DETR Fig. 2(a)). It depends on no image, only on
        the grid: `feature_mask` (B, H, W) True on padding, any H, W -> (B, M, Q, N), N = H·W.
        (A sine encoding's positions are normalised to the valid grid, so a finer grid samples
        the same maps more densely.)"""
        pos = rearrange(self.position_encoding(feature_mask), "b c h w -> b (h w) c")  # (B, N, C)
        attn = self.transformer.decoder_layers[layer].cross_attn
        q = rearrange(attn.q_proj(self.query_embed.weight), "q (m d) -> m q d", m=attn.num_heads)  # (M, Q, d)
        k = rearrange(attn.k_proj(pos), "b n (m d) -> b m n d", m=attn.num_heads)  # (B, M, N, d)
        logits = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])  # (B, M, Q, N)
        logits = logits.masked_fill(feature_mask.flatten(1)[:, None, None, :], float("-inf"))
        return logits.softmax(-1)  # (B, M, Q, N)

    def build_criterion(self) -> SetCriterion:
        return SetCriterion(HungarianMatcher(self.cfg.matcher), self.cfg.loss)

    @torch.no_grad()
    def postprocess(self, outputs: dict, target_sizes: Tensor) -> list[dict]:
        """Per image {"scores" (Q,), "labels" (Q,), "boxes" (Q, 4) xyxy in pixels of `target_sizes`
        (B, 2) = (h, w)}: each query's most likely real class (official `PostProcess`)."""
        prob = outputs["pred_logits"].softmax(-1)  # (B, Q, K+1)
        scores, labels = prob[..., :-1].max(-1)  # (B, Q) each
        boxes = box_convert(outputs["pred_boxes"], "cxcywh", "xyxy")  # (B, Q, 4) relative
        h, w = target_sizes.unbind(1)
        boxes = boxes * torch.stack([w, h, w, h], dim=1)[:, None, :].to(boxes)  # (B, Q, 4) pixels
        return [{"scores": s, "labels": lb, "boxes": b} for s, lb, b in zip(scores, labels, boxes)]


# --- presets ----------------------------------------------------------------------------------


def detr_r50() -> DETRConfig:
    """The paper's DETR (R50): 6+6 layers, C=256, 8 heads, FFN 2048, 100 queries, 91 classes.
    41,524,768 parameters, as the official implementation (paper: 41M)."""
    return DETRConfig()


def detr_tiny() -> DETRConfig:
    """The same code at CPU scale for the shapes set (5 classes: ids 1..5): a ResNet with one
    BasicBlock per stage up to layer3 (stride 16, trainable batch norm, from scratch), C=128,
    3+3 layers, 25 queries; 2.7M parameters, about 40 training images/s on 2 CPU cores."""
    return DETRConfig(**detr_tiny_sizes())


# Every row of the seed's positional-encoding ablation (DETR Table 3) as `build_model` overrides.
# Keys: (spatial pos. enc. in encoder, in decoder, output pos. enc. in decoder).
PE_ABLATION = {
    ("none", "none", "learned at input"):
        {"transformer": dict(encoder_pos="none", decoder_pos="none", query_pos="input")},
    ("sine at input", "sine at input", "learned at input"):
        {"transformer": dict(encoder_pos="input", decoder_pos="input", query_pos="input")},
    ("learned at attn.", "learned at attn.", "learned at attn."): {"position_embedding": "learned"},
    ("none", "sine at attn.", "learned at attn."): {"transformer": dict(encoder_pos="none")},
    ("sine at attn.", "sine at attn.", "learned at attn."): {},  # the default
}
