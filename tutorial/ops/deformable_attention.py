"""(Multi-scale) deformable attention: Deformable DETR (Zhu et al., ICLR 2021), Sec. 4.1.

Seed, "Deformable-DETR". Standard attention looks at *all* N_k keys, with A_mqk ≈ 1/N_k at
initialisation. Deformable attention looks at K sampled points around a reference point p_q:

    DeformAttn(z_q, p_q, x) = Σ_m W_m [ Σ_k A_mqk · W'_m x(p_q + Δp_mqk) ]                 (Eq. 2)

and the multi-scale version samples K points on each of L feature levels:

    MSDeformAttn(z_q, p̂_q, {x^l}) = Σ_m W_m [ Σ_l Σ_k A_mlqk · W'_m x^l(φ_l(p̂_q) + Δp_mlqk) ]  (Eq. 3)

The offsets Δp and the weights A are both predicted from the query z_q by linear layers; A is a
softmax over the L·K sampled points of each head. p̂_q is normalised to [0, 1]; φ_l rescales it
to level l; x(p) at a fractional p is bilinear interpolation. The single-scale DeformAttn is
MSDeformAttn with L = 1.

Three implementations of the sampling core, all with the official conventions (pixel centres at
(i + 0.5) / size, i.e. `align_corners=False`, and zero padding outside the map):
- `ms_deform_attn_core`: the official pure-PyTorch reference, one `F.grid_sample` per level;
- `ms_deform_attn_explicit`: the same computed by gathering the four bilinear corners
  (`bilinear_sample`), the oracle the tests compare with;
- the compiled kernels (`tutorial/ops/cuda/`: CUDA, and a CPU twin of the same math), checked
  against both. `MSDeformAttn` uses them by default (`ms_deform_attn_auto`) where they build;
  pass `core=ms_deform_attn_core` to run the reference.

Glossary (official code's names in brackets): B batch [N], Q queries [Len_q], N value tokens
Σ_l H_l·W_l [Len_in], M heads, L levels, P points per level [n_points, the seed's K], d channels
per head [D], C = M·d.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


def bilinear_sample(value: Tensor, locations: Tensor) -> Tensor:
    """Bilinear interpolation of a feature map at fractional locations, zero outside.  [exercise]

    value (B, d, H, W); locations (B, Q, P, 2) as (x, y) normalised so that pixel (i, j) has its
    centre at ((j + 0.5) / W, (i + 0.5) / H) -> (B, d, Q, P). Each sample is the weighted sum of
    its four neighbouring pixels, weights (1 - |Δx|)(1 - |Δy|); a neighbour outside the map
    contributes zero. Equals `F.grid_sample(value, 2 * locations - 1, align_corners=False)`.
    """
    b, d, h, w = value.shape
    x = locations[..., 0] * w - 0.5  # (B, Q, P) in pixel units
    y = locations[..., 1] * h - 0.5
    x0, y0 = x.floor(), y.floor()
    flat = value.flatten(2)  # (B, d, H·W)
    out = 0
    for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):  # the four corners
        xi, yi = x0 + dx, y0 + dy  # (B, Q, P) integer corner coordinates
        weight = (1 - (x - xi).abs()) * (1 - (y - yi).abs())  # (B, Q, P)
        inside = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
        index = (yi.clamp(0, h - 1) * w + xi.clamp(0, w - 1)).long()  # (B, Q, P)
        gathered = flat.gather(2, index.flatten(1)[:, None, :].expand(b, d, -1))  # (B, d, Q·P)
        gathered = gathered.view(b, d, *index.shape[1:])  # (B, d, Q, P)
        out = out + gathered * (weight * inside)[:, None]  # (B, d, Q, P)
    return out


def map_coverage(locations: Tensor, spatial_shapes: list[tuple[int, int]]) -> Tensor:
    """How much of each sample lands on its level's map: locations (..., L, P, 2) normalised (x, y),
    as `MSDeformAttn` returns them -> (..., L, P) in [0, 1], the share of the sample's bilinear
    weights on pixels that exist; the rest read the zero padding of `F.grid_sample` (and
    `bilinear_sample`), i.e. nothing. 1 between the outermost pixel centres, 0 beyond half a pixel
    outside the map, in between on the border strip: per axis, with u = x·W_l - 0.5 in pixel
    units, min(u + 1, W_l - u) clipped to [0, 1]; the product of the two axes."""
    size = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=locations.dtype,
                        device=locations.device)[:, None, :]  # (L, 1, 2) as (W_l, H_l)
    u = locations * size - 0.5  # (..., L, P, 2) in pixel units of each level
    per_axis = torch.minimum(u + 1, size - u).clamp(0, 1)  # (..., L, P, 2)
    return per_axis.prod(-1)  # (..., L, P)


def split_levels(value: Tensor, spatial_shapes: list[tuple[int, int]]) -> list[Tensor]:
    """value (B, N, M, d) -> per level (B·M, d, H_l, W_l), the layout both samplers use."""
    sizes = [h * w for h, w in spatial_shapes]
    levels = value.split(sizes, dim=1)  # each (B, H_l·W_l, M, d)
    return [rearrange(v, "b (h w) m d -> (b m) d h w", h=h, w=w) for v, (h, w) in zip(levels, spatial_shapes)]


def ms_deform_attn_core(value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor,
                        attention_weights: Tensor) -> Tensor:
    """The inner sum of Eq. 3, one `F.grid_sample` per level (official `ms_deform_attn_core_pytorch`).  [exercise]

    value (B, N, M, d) with N = Σ H_l·W_l (levels in order, each row-major); spatial_shapes
    [(H_l, W_l)] * L; sampling_locations (B, Q, M, L, P, 2) as (x, y) in [0, 1] (outside allowed);
    attention_weights (B, Q, M, L, P), normalised over (L, P) -> (B, Q, M·d).
    """
    b, _, m, d = value.shape
    grids = 2 * sampling_locations - 1  # grid_sample wants [-1, 1]
    samples = []
    for lvl, v in enumerate(split_levels(value, spatial_shapes)):  # v (B·M, d, H_l, W_l)
        grid = rearrange(grids[:, :, :, lvl], "b q m p xy -> (b m) q p xy")  # (B·M, Q, P, 2)
        samples.append(F.grid_sample(v, grid, mode="bilinear", padding_mode="zeros", align_corners=False))  # (B·M, d, Q, P)
    samples = torch.stack(samples, dim=-2).flatten(-2)  # (B·M, d, Q, L·P)
    weights = rearrange(attention_weights, "b q m l p -> (b m) 1 q (l p)")  # (B·M, 1, Q, L·P)
    out = (samples * weights).sum(-1)  # (B·M, d, Q)
    return rearrange(out, "(b m) d q -> b q (m d)", b=b, m=m)  # (B, Q, M·d)


def ms_deform_attn_explicit(value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor,
                            attention_weights: Tensor) -> Tensor:
    """`ms_deform_attn_core` computed with `bilinear_sample` (a gather of the four corners).

    Same arguments and result; the tests' oracle for the grid_sample version and the kernels.
    """
    b, _, m, d = value.shape
    out = 0
    for lvl, v in enumerate(split_levels(value, spatial_shapes)):  # v (B·M, d, H_l, W_l)
        loc = rearrange(sampling_locations[:, :, :, lvl], "b q m p xy -> (b m) q p xy")  # (B·M, Q, P, 2)
        sampled = bilinear_sample(v, loc)  # (B·M, d, Q, P)
        w = rearrange(attention_weights[:, :, :, lvl], "b q m p -> (b m) 1 q p")  # (B·M, 1, Q, P)
        out = out + (sampled * w).sum(-1)  # (B·M, d, Q)
    return rearrange(out, "(b m) d q -> b q (m d)", b=b, m=m)  # (B, Q, M·d)


def ms_deform_attn_auto(value: Tensor, spatial_shapes: list[tuple[int, int]], sampling_locations: Tensor,
                        attention_weights: Tensor) -> Tensor:
    """`MSDeformAttn`'s default core: `tutorial.ops.kernels.ms_deform_attn` with backend "auto", the
    compiled kernel for these tensors (CPU or CUDA) when it builds, else `ms_deform_attn_core`.
    Same arguments and result as `ms_deform_attn_core`."""
    from .kernels import ms_deform_attn

    return ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights, backend="auto")


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention (Eq. 3) with the official parameterisation and initialisation.

    forward(query (B, Q, C), reference_points (B, Q, L, 2) in [0, 1] (or (B, Q, L, 4) boxes, then
    offsets are scaled by half the box size), value_input (B, N, C), spatial_shapes [(H_l, W_l)],
    padding_mask (B, N)) -> (out (B, Q, C), sampling_locations (B, Q, M, L, P, 2),
    attention_weights (B, Q, M, L, P)).
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8, n_points: int = 4,
                 core=ms_deform_attn_auto):
        super().__init__()
        assert d_model % n_heads == 0, f"d_model {d_model} is not divisible by n_heads {n_heads}"
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.core = core  # the sampling implementation: the kernels when they build, `ms_deform_attn_core` to teach
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)  # Δp_mlqk from z_q
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)  # A_mlqk from z_q
        self.value_proj = nn.Linear(d_model, d_model)  # W'_m, all heads at once
        self.output_proj = nn.Linear(d_model, d_model)  # W_m, all heads at once
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The official `_reset_parameters`: offsets on a ring (`reset_sampling_offsets`), uniform A
        (zero weights and bias), Xavier projections with zero bias."""
        self.reset_sampling_offsets()
        nn.init.constant_(self.attention_weights.weight, 0.0)  # uniform A over the L·P points
        nn.init.constant_(self.attention_weights.bias, 0.0)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.constant_(proj.bias, 0.0)

    def reset_sampling_offsets(self) -> None:
        """Offsets start at fixed points on a ring, one direction per head (official `_reset_parameters`):
        head m points towards angle 2πm/M, and point k of every level sits k+1 pixels out."""
        nn.init.constant_(self.sampling_offsets.weight, 0.0)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2.0 * math.pi / self.n_heads)  # (M,)
        grid = torch.stack([angles.cos(), angles.sin()], -1)  # (M, 2)
        grid = grid / grid.abs().max(-1, keepdim=True)[0]  # (M, 2) onto the unit square's border
        grid = grid[:, None, None, :].repeat(1, self.n_levels, self.n_points, 1)  # (M, L, P, 2)
        grid = grid * torch.arange(1, self.n_points + 1, dtype=torch.float32)[None, None, :, None]  # k+1 px out
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(grid.flatten())

    def project_values(self, value_input: Tensor, padding_mask: Tensor | None) -> Tensor:
        """value_input (B, N, C) -> W'x per head (B, N, M, d), zero on padded pixels."""
        value = self.value_proj(value_input)  # (B, N, C)
        if padding_mask is not None:
            value = value.masked_fill(padding_mask[..., None], 0.0)  # padded pixels carry nothing
        return rearrange(value, "b n (m d) -> b n m d", m=self.n_heads)  # (B, N, M, d)

    def sampling_locations(self, query: Tensor, reference_points: Tensor,
                           spatial_shapes: list[tuple[int, int]]) -> Tensor:
        """p̂_q + Δp_mlqk: query (B, Q, C), reference_points (B, Q, L, 2 or 4) -> (B, Q, M, L, P, 2)."""
        m, lv, p = self.n_heads, self.n_levels, self.n_points
        offsets = rearrange(self.sampling_offsets(query), "b q (m l p xy) -> b q m l p xy", m=m, l=lv, p=p)  # (B, Q, M, L, P, 2)
        if reference_points.shape[-1] == 2:  # points: offsets are in pixels of each level
            normalizer = torch.tensor([[w, h] for h, w in spatial_shapes], dtype=query.dtype, device=query.device)  # (L, 2)
            return reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        # boxes (cx, cy, w, h): offsets in units of the box, as with iterative refinement
        return (reference_points[:, :, None, :, None, :2]
                + offsets / p * reference_points[:, :, None, :, None, 2:] * 0.5)  # (B, Q, M, L, P, 2)

    def forward(self, query: Tensor, reference_points: Tensor, value_input: Tensor,
                spatial_shapes: list[tuple[int, int]], padding_mask: Tensor | None = None):
        value = self.project_values(value_input, padding_mask)  # (B, N, M, d)
        weights = rearrange(self.attention_weights(query), "b q (m lp) -> b q m lp", m=self.n_heads)  # (B, Q, M, L·P)
        weights = rearrange(weights.softmax(-1), "b q m (l p) -> b q m l p", l=self.n_levels)  # (B, Q, M, L, P): Σ_lp A = 1
        locations = self.sampling_locations(query, reference_points, spatial_shapes)  # (B, Q, M, L, P, 2)
        out = self.core(value, spatial_shapes, locations, weights)  # (B, Q, C)
        return self.output_proj(out), locations, weights
