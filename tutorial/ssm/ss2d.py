"""VMamba's 2-D selective scan (SS2D): scanning an image in four directions.

VMamba (Liu et al., 2024), the 2D-Selective-Scan (SS2D); seed, "VMamba". A selective scan is causal along
one sequence, but an image has no single order. SS2D unfolds the feature map into four
sequences, scans each with its own selective SSM, and folds them back and sums:

    cross-scan:  (B, C, H, W) -> (B, 4, C, H·W)   rows left-to-right top-to-bottom (row-major),
                 columns top-to-bottom left-to-right (column-major), and both reversed
    S6 per direction (`tutorial/ssm/selective_scan.py`), each with its own Δ, B, C projections
    cross-merge: (B, 4, C, H·W) -> (B, C, H, W)   undo each unfolding and add the four

so every pixel sees, through one of the directions, every other pixel. Cross-merge is the
adjoint (transpose) of cross-scan, which is why the official code can use each as the other's
backward (`CrossScan` / `CrossMerge` in classification/models/vmamba.py).

The SS2D module follows the official `SS2D` (forward types "v0"/"v2"): in_proj to two branches
x, z; depthwise 3x3 conv + SiLU on x; cross-scan; per direction x_proj to (Δ, B, C) and dt_proj;
one selective scan over the 4·D channels with B, C grouped by direction; cross-merge; LayerNorm;
gate by SiLU(z); out_proj. Defaults are VMamba-T v0's (d_state 16, ssm_ratio 2, d_conv 3);
`ss2d_vmamba_v2_tiny` gives the later v2 setting (d_state 1, no conv bias, no z gate).

Glossary (official names in brackets): B batch, H, W feature map, L = H·W, C model width
[d_model], D = ssm_ratio · C inner width [d_inner], N state size [d_state], R rank of Δ's
projection [dt_rank], K = 4 scan directions [K, k_group].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .mamba import at_least_float32, delta_rank, dt_bias_init, s4d_real_A_log
from .selective_scan import selective_scan

DIRECTIONS = ("row-major", "column-major", "row-major reversed", "column-major reversed")


def cross_scan(x: Tensor) -> Tensor:
    """Unfold a map into its four scan orders: x (B, C, H, W) -> (B, 4, C, H·W), in `DIRECTIONS` order."""
    rows = rearrange(x, "b c h w -> b c (h w)")  # (B, C, L) row-major
    cols = rearrange(x, "b c h w -> b c (w h)")  # (B, C, L) column-major
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)  # (B, 4, C, L)


def cross_unscan(ys: Tensor, height: int, width: int) -> Tensor:
    """Put each direction's sequence back on the map: ys (B, 4, C, H·W) -> (B, 4, C, H, W), entry
    [:, k, :, i, j] being what direction k's scan produced at pixel (i, j)."""
    rows = rearrange(torch.stack([ys[:, 0], ys[:, 2].flip(-1)], 1), "b k c (h w) -> b k c h w", h=height, w=width)
    cols = rearrange(torch.stack([ys[:, 1], ys[:, 3].flip(-1)], 1), "b k c (w h) -> b k c h w", h=height, w=width)
    return torch.stack([rows[:, 0], cols[:, 0], rows[:, 1], cols[:, 1]], 1)  # (B, 4, C, H, W), `DIRECTIONS` order


def cross_merge(ys: Tensor, height: int, width: int) -> Tensor:
    """Fold four sequences back onto the map and sum them: ys (B, 4, C, H·W) -> (B, C, H, W).

    The adjoint of `cross_scan`: <cross_scan(x), y> = <x, cross_merge(y)>, and
    cross_merge(cross_scan(x)) = 4·x.
    """
    return cross_unscan(ys, height, width).sum(1)  # (B, C, H, W)



def scan_positions(height: int, width: int) -> Tensor:
    """Where each pixel comes in each of the four scan orders -> (4, H, W) integer positions in
    `DIRECTIONS` order, read off `cross_scan` of an index map (so it is whatever `cross_scan` does).
    For the figures of notebook 07 (`tutorial/viz/ss2d.py`)."""
    index = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)  # (1, 1, H, W) pixel ids
    order = cross_scan(index)[0, :, 0].long()  # (4, L): the pixel id visited at each position
    pos = torch.empty_like(order)  # (4, L)
    pos.scatter_(1, order, torch.arange(height * width).expand(4, -1))  # (4, L): position of each pixel id
    return pos.view(4, height, width)  # (4, H, W)


@dataclass
class SS2DConfig:
    d_model: int = 96  # C
    d_state: int = 16  # N
    ssm_ratio: float = 2.0  # D = ssm_ratio · C
    dt_rank: int | str = "auto"  # R; "auto" = ceil(C / 16)
    d_conv: int = 3  # depthwise conv kernel; < 2 means no conv
    conv_bias: bool = True
    bias: bool = False  # in_proj and out_proj
    gate: bool = True  # multiply by SiLU(z) (False: the official "noz" forward types)
    dropout: float = 0.0
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_scale: float = 1.0
    dt_init_floor: float = 1e-4
    scan: str = "parallel"  # "sequential" | "parallel" | "chunked", see selective_scan
    chunk: int = 2048

    @property
    def d_inner(self) -> int:
        return int(self.ssm_ratio * self.d_model)

    @property
    def rank(self) -> int:
        return delta_rank(self.d_model, self.dt_rank)


class SS2D(nn.Module):
    """The 2-D selective-scan mixer: forward(x (B, H, W, C), mask=None) -> (B, H, W, C), channels
    last as the official default (`channel_first=False`); padded pixels are skipped when a mask is given.

    Parameter names and shapes are the official ones: x_proj_weight (4, R+2N, D),
    dt_projs_weight (4, D, R), dt_projs_bias (4, D), A_logs (4·D, N), Ds (4·D,).
    """

    def __init__(self, cfg: SS2DConfig | None = None):
        super().__init__()
        cfg = cfg or SS2DConfig()
        self.cfg = cfg
        c, d, n, r, k = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.rank, len(DIRECTIONS)
        self.in_proj = nn.Linear(c, 2 * d if cfg.gate else d, bias=cfg.bias)
        self.conv2d = (nn.Conv2d(d, d, cfg.d_conv, padding=(cfg.d_conv - 1) // 2, groups=d, bias=cfg.conv_bias)
                       if cfg.d_conv > 1 else nn.Identity())
        # one x_proj and one dt_proj per direction, stacked (initialised as nn.Linear / Mamba's dt_proj)
        x_proj = [nn.Linear(d, r + 2 * n, bias=False) for _ in range(k)]
        self.x_proj_weight = nn.Parameter(torch.stack([p.weight.data for p in x_proj]))  # (4, R+2N, D)
        std = r ** -0.5 * cfg.dt_scale
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d, r).uniform_(-std, std))  # (4, D, R)
        self.dt_projs_bias = nn.Parameter(torch.stack([dt_bias_init(d, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor)
                                                       for _ in range(k)]))  # (4, D)
        self.A_logs = nn.Parameter(s4d_real_A_log(d, n).repeat(k, 1))  # (4·D, N)
        self.Ds = nn.Parameter(torch.ones(k * d))  # (4·D,)
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, c, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x: Tensor, mask: Tensor | None = None, return_intermediates: bool = False):
        """x (B, H, W, C), mask (B, H, W) True on padded pixels, or None -> (B, H, W, C); with
        `return_intermediates` also {"delta": Δ (B, 4, D, H, W) after softplus, direction k's step
        at each pixel (0 on padding)}.

        With a mask, padded pixels are skipped, so valid pixels get exactly the output of the
        image alone: (1) the x branch is zeroed there before the depthwise conv, which then reads
        zeros beyond the image's edge, as the unpadded image's zero padding; (2) Δ = 0 there, so
        Ā = exp(0·A) = 1 and B̄u = 0·B·u = 0: the step (1, 0), the identity of the scan's ∘, and the
        state passes over the padding unchanged (zeroing the input alone would not do: Δ would
        still be softplus(bias) > 0 and decay the state across a row's padding).
        """
        cfg = self.cfg
        b, h, w, _ = x.shape
        n, r = cfg.d_state, cfg.rank
        # 1) branches; depthwise conv + SiLU on x
        xz = self.in_proj(x)  # (B, H, W, 2D) or (B, H, W, D)
        x, z = xz.chunk(2, dim=-1) if cfg.gate else (xz, None)  # (B, H, W, D) each
        if mask is not None:
            x = x.masked_fill(mask[..., None], 0.0)  # (B, H, W, D): the conv reads zeros on padding
        x = F.silu(self.conv2d(rearrange(x, "b h w d -> b d h w")))  # (B, D, H, W)
        # 2) four scan orders, each with its own Δ, B, C
        xs = cross_scan(x)  # (B, 4, D, L)
        x_dbl = torch.einsum("bkdl,kcd->bkcl", xs, self.x_proj_weight)  # (B, 4, R+2N, L)
        dts, Bs, Cs = torch.split(x_dbl, [r, n, n], dim=2)  # (B, 4, R, L), (B, 4, N, L), (B, 4, N, L)
        dts = torch.einsum("bkrl,kdr->bkdl", dts, self.dt_projs_weight)  # (B, 4, D, L)
        if mask is not None:  # Δ = softplus(-inf) = 0 on padding: the scan skips those tokens
            dts = dts.masked_fill(cross_scan(mask[:, None].float()) > 0, float("-inf"))  # (B, 4, D, L)
        # 3) one selective scan over the 4·D channels; channel group k uses direction k's B and C
        delta_bias = at_least_float32(self.dt_projs_bias.flatten())  # (4·D,)
        ys = selective_scan(rearrange(xs, "b k d l -> b (k d) l"), rearrange(dts, "b k d l -> b (k d) l"),
                            -torch.exp(at_least_float32(self.A_logs)), Bs, Cs, at_least_float32(self.Ds),
                            delta_bias=delta_bias, delta_softplus=True, scan=cfg.scan, chunk=cfg.chunk)  # (B, 4·D, L)
        # 4) fold back, normalise, gate, project
        y = cross_merge(rearrange(ys, "b (k d) l -> b k d l", k=len(DIRECTIONS)), h, w)  # (B, D, H, W)
        y = self.out_norm(rearrange(y, "b d h w -> b h w d"))  # (B, H, W, D)
        if z is not None:
            y = y * F.silu(z)  # (B, H, W, D)
        out = self.dropout(self.out_proj(y))  # (B, H, W, C)
        if not return_intermediates:
            return out
        steps = F.softplus(dts + rearrange(delta_bias, "(k d) -> 1 k d 1", k=len(DIRECTIONS)))  # (B, 4, D, L)
        return out, {"delta": cross_unscan(steps, h, w)}  # (B, 4, D, H, W)


# --- presets ----------------------------------------------------------------------------------


def ss2d_vmamba_v0_tiny() -> SS2DConfig:
    """SS2D of VMamba-T v0's first stage (official vmambav0_tiny_224.yaml: embed 96, d_state 16,
    ssm_ratio 2, forward "v0"). 105,216 parameters, as the official `SS2D` (tests/test_ss2d.py)."""
    return SS2DConfig(d_model=96)


def ss2d_vmamba_v2_tiny() -> SS2DConfig:
    """SS2D of VMamba-T v2's first stage (vmambav2_tiny_224.yaml: d_state 1, ssm_ratio 2,
    conv 3 without bias, forward "v05_noz": no z branch). v05 computes the per-direction
    projections with grouped 1x1 convolutions instead of einsum and does not force float32 in
    the scan; the arithmetic is the same."""
    return SS2DConfig(d_model=96, d_state=1, conv_bias=False, gate=False)


def ss2d_tiny() -> SS2DConfig:
    """CPU scale for tests and notebooks: C 16, D 32, N 4."""
    return SS2DConfig(d_model=16, d_state=4)
