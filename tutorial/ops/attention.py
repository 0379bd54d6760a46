"""Multi-head attention, written out so its weights come back to the caller (no hooks).

Seed, "Deformable-DETR" (the DETR decoder's attention, Deformable DETR Eq. 1):

    MultiHeadAttn(z_q, x) = Σ_m W_m [ Σ_k A_mqk · W'_m x_k ],   Σ_k A_mqk = 1,
    A_mqk ∝ exp(z_qᵀ U_mᵀ V_m x_k / √d_head).

The projections have the same shapes (and so the same parameter count) as
`torch.nn.MultiheadAttention`'s, which the official DETR uses.

Glossary: B batch, Q queries, N keys, C width, M heads, d = C / M channels per head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                                 attn_mask: Tensor | None = None, dropout: float = 0.0) -> tuple[Tensor, Tensor]:
    """softmax(q kᵀ / √d) v per head.

    q (B, M, Q, d), k (B, M, N, d), v (B, M, N, d_v); key_padding_mask (B, N) and attn_mask
    (Q, N) are True where attention is *not* allowed. Returns (out (B, M, Q, d_v),
    weights (B, M, Q, N)), the weights before dropout.
    """
    logits = (q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)  # (B, M, Q, N)
    if key_padding_mask is not None:
        logits = logits.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if attn_mask is not None:
        logits = logits.masked_fill(attn_mask, float("-inf"))
    weights = logits.softmax(dim=-1)  # (B, M, Q, N)
    out = F.dropout(weights, dropout) @ v  # (B, M, Q, d_v)
    return out, weights


def allowed_mask(key_padding_mask: Tensor | None, attn_mask: Tensor | None) -> Tensor | None:
    """Our masks (True = blocked) as one `F.scaled_dot_product_attention` mask (True = allowed)."""
    blocked = None
    if key_padding_mask is not None:
        blocked = key_padding_mask[:, None, None, :]  # (B, 1, 1, N)
    if attn_mask is not None:
        blocked = attn_mask if blocked is None else blocked | attn_mask  # (B, 1, Q, N)
    return None if blocked is None else ~blocked


class MultiHeadAttention(nn.Module):
    """Project, split into M heads, attend, merge, project: (B, Q, C) x (B, N, C) -> (B, Q, C)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        assert d_model % num_heads == 0, f"d_model {d_model} is not divisible by num_heads {num_heads}"
        self.num_heads, self.dropout = num_heads, dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        for lin in (self.q_proj, self.k_proj, self.v_proj):  # as nn.MultiheadAttention initialises
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None, need_weights: bool = True) -> tuple[Tensor, Tensor | None]:
        """query (B, Q, C), key and value (B, N, C) -> (out (B, Q, C), weights (B, M, Q, N) or None).

        Without `need_weights` the same computation runs in PyTorch's fused
        `F.scaled_dot_product_attention` (several times faster on a CPU; tested equal).
        """
        dropout = self.dropout if self.training else 0.0
        out, weights = attend(self.q_proj(query), self.k_proj(key), self.v_proj(value), self.num_heads,
                              key_padding_mask, attn_mask, dropout, need_weights)  # (B, Q, C), (B, M, Q, N)
        return self.out_proj(out), weights


def attend(q: Tensor, k: Tensor, v: Tensor, num_heads: int, key_padding_mask: Tensor | None = None,
           attn_mask: Tensor | None = None, dropout: float = 0.0,
           need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """Split projected q (B, Q, M·d), k (B, N, M·d), v (B, N, M·d_v) into M heads, attend, merge.

    Returns (out (B, Q, M·d_v), weights (B, M, Q, N) or None). With `need_weights` the explicit
    `scaled_dot_product_attention` above runs; otherwise PyTorch's fused kernel (same result).
    """
    q = rearrange(q, "b q (m d) -> b m q d", m=num_heads)  # (B, M, Q, d)
    k = rearrange(k, "b n (m d) -> b m n d", m=num_heads)  # (B, M, N, d)
    v = rearrange(v, "b n (m d) -> b m n d", m=num_heads)  # (B, M, N, d_v)
    if need_weights:
        out, weights = scaled_dot_product_attention(q, k, v, key_padding_mask, attn_mask, dropout)
    else:
        out, weights = fused_attention(q, k, v, allowed_mask(key_padding_mask, attn_mask), dropout), None
    return rearrange(out, "b m q d -> b q (m d)"), weights  # (B, Q, M·d_v)


def fused_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor | None, dropout: float) -> Tensor:
    """`F.scaled_dot_product_attention` -> (B, M, Q, d_v). Under bfloat16 autocast on a CPU it runs in
    float32: there the fused bfloat16 backward is several times slower than the float32 one
    (measured in detr_tiny's training step: 772 ms against 118 ms for the same three steps)."""
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        with torch.autocast("cpu", enabled=False):
            return F.scaled_dot_product_attention(q.float(), k.float(), v.float(), allowed, dropout_p=dropout)
    return F.scaled_dot_product_attention(q, k, v, allowed, dropout_p=dropout)


class PreProjectedAttention(nn.Module):
    """Multi-head attention whose queries, keys and values arrive already projected: only the
    output projection is learned (official Conditional DETR / DAB-DETR `MultiheadAttention`, whose
    in-projections were removed).

    The caller builds q and k, e.g. by concatenating a content and a spatial part within each
    head, so q and k may be wider (M·d_qk) than v (M·d_v = C). The logits are scaled by
    1/√d_qk, the width of one head's query, as in the official code.
    """

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        assert d_model % num_heads == 0, f"d_model {d_model} is not divisible by num_heads {num_heads}"
        self.num_heads, self.dropout = num_heads, dropout
        self.out_proj = nn.Linear(d_model, d_model)  # C -> C: only the values' width matters here
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None, need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """q (B, Q, M·d_qk), k (B, N, M·d_qk), v (B, N, C) -> (out (B, Q, C), weights (B, M, Q, N) or None)."""
        if q.shape[-1] != k.shape[-1] or q.shape[-1] % self.num_heads:
            raise ValueError(f"PreProjectedAttention: q width {q.shape[-1]} and k width {k.shape[-1]} must be "
                             f"equal and divisible by num_heads {self.num_heads}")
        dropout = self.dropout if self.training else 0.0
        out, weights = attend(q, k, v, self.num_heads, key_padding_mask, attn_mask, dropout,
                              need_weights)  # (B, Q, C), (B, M, Q, N)
        return self.out_proj(out), weights
