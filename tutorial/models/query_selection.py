"""Query selection: the encoder proposes, the decoder starts from the best proposals.

Deformable DETR's two-stage variant (`tutorial/models/deformable_detr.py`) already scores every encoder
token as a proposal box and keeps the top ones. DINO (Zhang et al., ICLR 2023, Sec. 3.4 and
Fig. 5) and RT-DETR (Zhao et al., CVPR 2024, Sec. 4.3) keep that step and change what is done
with the selection:

- every token t of the flattened multi-scale memory (N = Σ_l H_l·W_l tokens) gets a proposal
  anchor a_t, a box centred on the token of side 0.05·2^l on level l (`encoder_proposals`, the
  official `gen_encoder_output_proposals` / `_generate_anchors`: identical on unpadded images);
- the memory goes through Linear + LayerNorm (`enc_output`), then a class head gives K scores
  per token and a box head a correction Δ_t: the token's box is σ(Δ_t + σ⁻¹(a_t));
- the k tokens with the highest best-class score are kept (`select_top_k`): their boxes become
  the decoder's initial anchors (detached), and the class and box heads are trained on them
  (DINO's "interm_outputs", RT-DETR's extra auxiliary output) with the real class labels.

What the content queries are is the models' choice: DINO's *mixed* query selection takes only
the positions from the encoder and learns the content (Fig. 5 (c)); RT-DETR takes both from the
encoder (the selected features, detached) and trains the scores to track the IoU of the box
(IoU-aware query selection, the varifocal loss in `tutorial/models/rt_detr.py`).

Glossary: B batch, N tokens over all levels, K classes, C width, k (or Q) selected tokens,
L levels; (y, x) a token's cell in its own level's grid.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from .deformable_transformer import encoder_proposals
from .heads import init_focal_head, zero_box_head
from ..ops.mlp import MLP


def select_top_k(scores: Tensor, boxes: Tensor, memory: Tensor, k: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The k tokens of each image with the highest best-class score, and their rows.  [exercise]

    scores (B, N, K) class logits (or probabilities) of every token, boxes (B, N, 4), memory
    (B, N, C) -> (indices (B, k) int64, sorted by decreasing max_K score; scores (B, k, K);
    boxes (B, k, 4); memory (B, k, C)): the rows of the chosen tokens, in that order. A token
    is ranked by its best class, max over K (official `topk(enc_outputs_class.max(-1).values, k)`).
    """
    indices = scores.max(-1).values.topk(k, dim=1).indices  # (B, k)

    def gather(x: Tensor) -> Tensor:  # (B, N, D) -> (B, k, D)
        return torch.gather(x, 1, indices[..., None].expand(-1, -1, x.shape[-1]))

    return indices, gather(scores), gather(boxes), gather(memory)


def token_locations(indices: Tensor, spatial_shapes: list[tuple[int, int]]) -> tuple[Tensor, Tensor]:
    """indices (...) into the flattened levels -> (level (...), cell (..., 2) as (y, x) in that
    level's grid): where the selected tokens sit, for drawing them on the feature maps."""
    starts = torch.tensor([0] + [h * w for h, w in spatial_shapes], device=indices.device).cumsum(0)  # (L+1,)
    level = torch.bucketize(indices, starts[1:], right=True)  # (...): the level whose range holds the index
    widths = torch.tensor([w for _, w in spatial_shapes], device=indices.device)  # (L,)
    offset = indices - starts[level]  # (...): row-major index within the level
    return level, torch.stack([offset // widths[level], offset % widths[level]], -1)  # (...), (..., 2)


class Selection(NamedTuple):
    """What query selection returns (all rows in the order of `indices`)."""

    indices: Tensor  # (B, k) chosen tokens
    logits: Tensor  # (B, k, K) their class logits (trained: "interm_outputs")
    boxes: Tensor  # (B, k, 4) their boxes in logit space, not detached (trained), σ(.) in [0, 1]
    features: Tensor  # (B, k, C) their features after enc_output (RT-DETR's content queries)
    token_logits: Tensor  # (B, N, K) the class logits of every token (the score map)


class QuerySelection(nn.Module):
    """enc_output (Linear + LayerNorm), a class head Linear(C, K) and a box head MLP(C, C, 4, 3)
    on every encoder token, then the top-k tokens (official DINO `enc_output`, `enc_output_norm`,
    `enc_out_class_embed`, `enc_out_bbox_embed`; RT-DETR `enc_output`, `enc_score_head`,
    `enc_bbox_head`). The class bias starts at the focal-loss prior p = 0.01 and the box head's
    last layer at zero, so the first boxes are the anchors themselves."""

    def __init__(self, d_model: int, num_classes: int):
        super().__init__()
        self.enc_output = nn.Linear(d_model, d_model)
        self.enc_output_norm = nn.LayerNorm(d_model)
        self.class_head = nn.Linear(d_model, num_classes)
        self.box_head = MLP(d_model, d_model, 4, 3)
        nn.init.xavier_uniform_(self.enc_output.weight)
        init_focal_head(self.class_head)
        zero_box_head(self.box_head)

    def forward(self, memory: Tensor, padding_mask: Tensor, spatial_shapes: list[tuple[int, int]],
                k: int) -> Selection:
        """memory (B, N, C), padding_mask (B, N) True on padding -> `Selection` of the top k."""
        memory, anchors = encoder_proposals(memory, padding_mask, spatial_shapes)  # (B, N, C) 0 if invalid, (B, N, 4)
        memory = self.enc_output_norm(self.enc_output(memory))  # (B, N, C)
        logits = self.class_head(memory)  # (B, N, K)
        boxes = self.box_head(memory) + anchors  # (B, N, 4): σ⁻¹ of the token's box (inf where invalid)
        if k > memory.shape[1]:
            raise ValueError(f"QuerySelection: {k} queries requested from only {memory.shape[1]} encoder tokens; "
                             f"lower num_queries or use larger images")
        indices, top_logits, top_boxes, top_features = select_top_k(logits, boxes, memory, k)
        return Selection(indices, top_logits, top_boxes, top_features, logits)
