"""Key-aware deformable attention (KDA): Lite DETR (Li et al., CVPR 2023), Sec. 3.3.

Deformable attention (`tutorial/ops/deformable_attention.py`, Deformable DETR Eq. 3) predicts its
weights from the query alone, A_mlqk = softmax(Linear(z_q)): a query decides how much each point
counts before it has seen what lies there. KDA samples a *key* at every sampling location, next to
the value, and weighs the points by how well the query matches their keys, as standard attention does:

    K = Sample(W_k x, p̂_q + Δp),  V = Sample(W_v x, p̂_q + Δp)       (B, Q, M, L·P, d) each
    KDA(z_q, p̂_q, x) = W_o [ softmax_{l,p}( (W_q z_q) · K / √d ) V ]    per head m

The offsets Δp still come from a linear layer of z_q (as in Deformable DETR); the linear layer
that gave A is gone and a query projection W_q takes its place. Lite DETR uses KDA in every
deformable attention of the model (encoder and decoder cross-attention). Its official
DINO configuration shares W_k with W_v (`proj_key=False`: the keys are the sampled values), as
here; padded pixels and samples outside the maps give zero keys (logit 0), not -inf, as officially.

Official code: IDEA-Research/Lite-DETR, `models/dino/ops/modules/ms_deform_attn.py` (`MSDeformAttn`
with `key_aware=True`) and `ms_deform_attn_core_pytorch_key_aware` in
`models/dino/ops/functions/ms_deform_attn_func.py`.

Glossary: B batch, Q queries, N value tokens Σ_l H_l·W_l, M heads, L levels, P points per level,
d = C / M channels per head.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .deformable_attention import MSDeformAttn, split_levels


def sample_levels(value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor) -> Tensor:
    """Bilinear samples of every level at its locations, zero outside (`F.grid_sample`, the official
    conventions). value (B, N, M, d), sampling_locations (B, Q, M, L, P, 2) -> (B, Q, M, L, P, d)."""
    b, m = value.shape[0], value.shape[2]
    samples = []
    for lvl, v in enumerate(split_levels(value, spatial_shapes)):  # v (B·M, d, H_l, W_l)
        grid = rearrange(2 * sampling_locations[:, :, :, lvl] - 1, "b q m p xy -> (b m) q p xy")  # (B·M, Q, P, 2)
        s = F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False)  # (B·M, d, Q, P)
        samples.append(rearrange(s, "(b m) d q p -> b q m p d", b=b, m=m))  # (B, Q, M, P, d)
    return torch.stack(samples, 3)  # (B, Q, M, L, P, d)


def key_aware_core(query: Tensor, value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor,
                   key: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The inner part of KDA (module docstring): softmax over the L·P sampled keys of q·k/√d, then
    the weighted sum of the sampled values.

    query (B, Q, M, d) already projected (W_q z_q), value (B, N, M, d) projected, key (B, N, M, d)
    or None for key = value (the official `proj_key=False`), sampling_locations (B, Q, M, L, P, 2)
    -> (out (B, Q, M·d), attention weights (B, Q, M, L, P), Σ_lp = 1).
    """
    d = query.shape[-1]
    values = sample_levels(value, spatial_shapes, sampling_locations)  # (B, Q, M, L, P, d)
    keys = values if key is None else sample_levels(key, spatial_shapes, sampling_locations)  # (B, Q, M, L, P, d)
    logits = torch.einsum("bqmd,bqmlpd->bqmlp", query, keys) / math.sqrt(d)  # (B, Q, M, L, P)
    weights = logits.flatten(-2).softmax(-1).view_as(logits)  # (B, Q, M, L, P): Σ_lp A = 1
    out = torch.einsum("bqmlp,bqmlpd->bqmd", weights, values)  # (B, Q, M, d)
    return out.flatten(-2), weights  # (B, Q, M·d), (B, Q, M, L, P)


class KeyAwareDeformAttn(MSDeformAttn):
    """Multi-scale deformable attention whose weights come from query·key (KDA, Sec. 3.3).

    The same interface and outputs as `MSDeformAttn`: forward(query (B, Q, C), reference_points
    (B, Q, L, 2 or 4), value_input (B, N, C), spatial_shapes, padding_mask (B, N)) -> (out (B, Q, C),
    sampling_locations (B, Q, M, L, P, 2), attention_weights (B, Q, M, L, P)). Parameters (official
    names): `sampling_offsets`, `value_proj` (W_v = W_k), `query_proj` (W_q), `output_proj` (W_o);
    no `attention_weights` layer. The sampling always runs in PyTorch (`key_aware_core`); the
    `core` of `MSDeformAttn` (the CUDA kernel's plug) is not used.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4):
        super().__init__(d_model, n_levels, n_heads, n_points)
        del self.attention_weights  # A is computed from q·k, not predicted from z_q
        self.query_proj = nn.Linear(d_model, d_model)  # W_q
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Offsets on a ring as `MSDeformAttn`; W_v, W_q, W_o Xavier with zero bias (official)."""
        if not hasattr(self, "query_proj"):  # called by MSDeformAttn.__init__ before query_proj exists
            return
        self.reset_sampling_offsets()
        for proj in (self.value_proj, self.query_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.constant_(proj.bias, 0.0)

    def forward(self, query: Tensor, reference_points: Tensor, value_input: Tensor,
                spatial_shapes: list[tuple[int, int]], padding_mask: Tensor | None = None):
        value = self.project_values(value_input, padding_mask)  # (B, N, M, d), also the keys
        q = rearrange(self.query_proj(query), "b q (m d) -> b q m d", m=self.n_heads)  # (B, Q, M, d)
        locations = self.sampling_locations(query, reference_points, spatial_shapes)  # (B, Q, M, L, P, 2)
        out, weights = key_aware_core(q, value, spatial_shapes, locations)  # (B, Q, C), (B, Q, M, L, P)
        return self.output_proj(out), locations, weights
