"""2-D positional encodings of a feature map: sine (fixed) and learned (DETR, Sec. 3.2 and A.4);
and the same sine encoding of points and boxes (Conditional DETR, DAB-DETR).

Attention is permutation-invariant, so where a feature sits must be added to it. DETR uses the
Transformer's sinusoid in each of y and x, with half the channels for each:

    PE(pos, 2i) = sin(pos / T^(2i/d)),  PE(pos, 2i+1) = cos(pos / T^(2i/d)),  d = C/2, T = 10000,

where pos is the row (or column) index counted over valid, unpadded pixels only and normalised
to (0, 2π], so a padded image gets the same encoding as the same image unpadded. The learned
variant has one embedding per row and per column (50 each, as in the official code).

Seed: the positional-encoding ablation table (DETR Table 3) compares where these are added;
see `tutorial/models/transformer.py`. Conditional DETR and DAB-DETR encode a query's reference point
(or anchor box) with the same sinusoid (`anchor_position_encoding`), so that a query and a
pixel at the same place get similar codes: seed, "DAB-DETR", P_q = MLP(PE(A_q)).

Glossary: B batch, H, W feature map, C channels (C/2 per axis).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def sine_position_encoding(mask: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0,
                           normalize: bool = True, scale: float = 2 * math.pi, offset: float = 0.0) -> Tensor:
    """DETR's 2-D sine encoding of a padded batch.  [exercise]

    mask (B, H, W), True on padding -> pos (B, 2·num_pos_feats, H, W), channels [y then x].
    Row index y_i = number of valid pixels at or above i in its column (a cumulative sum), same
    for x along rows; with `normalize`, y ← (y + offset) / y_last · scale. Channel 2k of each
    half is sin(y / T^(2k/num_pos_feats)), channel 2k+1 is cos(y / T^(2k/num_pos_feats)).
    (DETR uses offset 0; Deformable DETR uses offset -0.5, the pixel centre.)
    """
    not_mask = (~mask).float()  # (B, H, W)
    y = not_mask.cumsum(1)  # (B, H, W): 1, 2, ... down each column
    x = not_mask.cumsum(2)  # (B, H, W): 1, 2, ... along each row
    if normalize:
        eps = 1e-6
        y = (y + offset) / (y[:, -1:, :] + eps) * scale
        x = (x + offset) / (x[:, :, -1:] + eps) * scale
    i = torch.arange(num_pos_feats, dtype=torch.float32, device=mask.device)  # (d,)
    freq = temperature ** (2 * (i // 2) / num_pos_feats)  # (d,): pairs (2k, 2k+1) share a frequency
    pos_y = y[..., None] / freq  # (B, H, W, d)
    pos_x = x[..., None] / freq  # (B, H, W, d)
    pos_y = torch.stack([pos_y[..., 0::2].sin(), pos_y[..., 1::2].cos()], dim=4).flatten(3)  # (B, H, W, d)
    pos_x = torch.stack([pos_x[..., 0::2].sin(), pos_x[..., 1::2].cos()], dim=4).flatten(3)  # (B, H, W, d)
    return torch.cat([pos_y, pos_x], dim=3).permute(0, 3, 1, 2)  # (B, 2d, H, W)


def anchor_position_encoding(anchors: Tensor, num_pos_feats: int = 128, temperature: float = 10000.0) -> Tensor:
    """Sine encoding of reference points or anchor boxes, PE(x, y) or PE(x, y, w, h).  [exercise]

    anchors (..., 2) points (x, y) or (..., 4) boxes (x, y, w, h), in [0, 1] -> (..., 2·F) or
    (..., 4·F), F = num_pos_feats. Each coordinate v gets F channels of the feature map's
    sinusoid, 2πv playing the normalised pixel index: channel 2k is sin(2πv / T^(2k/F)) and
    channel 2k+1 is cos(2πv / T^(2k/F)). The blocks are concatenated in the order y, x, w, h:
    y before x as in the feature map's encoding above, so that PE(x, y) of a point lines up with
    the pixels' (official `gen_sineembed_for_position`). Seed, "DAB-DETR":
    PE(A_q) = Cat(PE(x_q), PE(y_q), PE(w_q), PE(h_q)), up to that order.
    """
    if anchors.shape[-1] not in (2, 4):
        raise ValueError(f"anchor_position_encoding: expected (..., 2) points or (..., 4) boxes, "
                         f"got shape {tuple(anchors.shape)}")
    i = torch.arange(num_pos_feats, dtype=anchors.dtype, device=anchors.device)  # (F,)
    freq = temperature ** (2 * (i // 2) / num_pos_feats)  # (F,): pairs (2k, 2k+1) share a frequency
    angle = anchors[..., None] * (2 * math.pi) / freq  # (..., 2|4, F)
    pe = torch.stack([angle[..., 0::2].sin(), angle[..., 1::2].cos()], dim=-1).flatten(-2)  # (..., 2|4, F)
    order = [1, 0, 2, 3][: anchors.shape[-1]]  # y, x (, w, h)
    return pe[..., order, :].flatten(-2)  # (..., 2F | 4F)


class SinePositionEncoding(nn.Module):
    """`sine_position_encoding` as a module (no parameters)."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0, offset: float = 0.0):
        super().__init__()
        self.num_pos_feats, self.temperature, self.offset = num_pos_feats, temperature, offset

    def forward(self, mask: Tensor) -> Tensor:
        return sine_position_encoding(mask, self.num_pos_feats, self.temperature, offset=self.offset)


class LearnedPositionEncoding(nn.Module):
    """One learned vector per row and per column, concatenated: (B, H, W) -> (B, 2·d, H, W).

    Like the official code it ignores the padding mask (a padded image's rows keep their index).
    """

    def __init__(self, num_pos_feats: int = 128, max_size: int = 50):
        super().__init__()
        self.row_embed = nn.Embedding(max_size, num_pos_feats)
        self.col_embed = nn.Embedding(max_size, num_pos_feats)
        nn.init.uniform_(self.row_embed.weight)
        nn.init.uniform_(self.col_embed.weight)

    def forward(self, mask: Tensor) -> Tensor:
        b, h, w = mask.shape
        if h > self.row_embed.num_embeddings or w > self.col_embed.num_embeddings:
            raise ValueError(f"LearnedPositionEncoding: feature map {h}x{w} exceeds max_size "
                             f"{self.row_embed.num_embeddings}")
        y = self.row_embed(torch.arange(h, device=mask.device))  # (H, d)
        x = self.col_embed(torch.arange(w, device=mask.device))  # (W, d)
        pos = torch.cat([y[:, None, :].expand(h, w, -1), x[None, :, :].expand(h, w, -1)], dim=-1)  # (H, W, 2d)
        return pos.permute(2, 0, 1)[None].expand(b, -1, -1, -1)  # (B, 2d, H, W)


def build_position_encoding(kind: str, d_model: int) -> nn.Module:
    """"sine" or "learned", with d_model/2 channels per axis."""
    if kind == "sine":
        return SinePositionEncoding(d_model // 2)
    if kind == "learned":
        return LearnedPositionEncoding(d_model // 2)
    raise ValueError(f"position_embedding: expected 'sine' or 'learned', got {kind!r}")
