"""RT-DETR's efficient hybrid encoder (Zhao et al., CVPR 2024, Sec. 4.2).

Deformable DETR's encoder (`tutorial/models/deformable_transformer.py`) runs 6 layers of deformable
self-attention over the tokens of all levels, S3, S4 and S5 together (plus a stride-64 level):
about 49% of Deformable DETR's GFLOPs for 11% of its AP contribution, the paper measures, since
most tokens are the many low-level ones. RT-DETR splits the work in two ("decouples intra-scale
interaction and cross-scale fusion", the seed's RT-DETR architecture and "Fusion block" figures):

- AIFI (attention-based intra-scale feature interaction): one ordinary transformer encoder
  layer, on the stride-32 map S5 only (400 tokens at 640 x 640 instead of ~8,400 on S3..S5). High-
  level features are where the relations between conceptual entities are, the paper argues, and
  its ablation of encoder variants finds attention on S5 alone both faster and slightly more
  accurate than attention over all levels. Its positional encoding is the fixed
  2-D sin-cos one (`sincos_position_encoding_2d`) with temperature 10000, added to queries and
  keys; GELU in the FFN (official `enc_act: gelu`), post-norm, dropout 0.
- CCFM (CNN-based cross-scale feature fusion): a YOLO-style neck, top-down (FPN) then bottom-up
  (PAN). At every junction two maps are concatenated and fused by a *fusion block*
  (`CSPRepLayer`, the seed's "Fusion block": two 1x1 convolutions, N RepVGG blocks on one branch,
  element-wise add, an optional 1x1 convolution).
- Before either, each backbone level is projected to C channels (1x1 conv without bias + BN).
The three fused maps (strides 8, 16, 32) are the decoder's memory.

The AIFI slot is a constructor argument (`token_mixer`): any module with
`forward(x (B, C, H, W), mask (B, H, W) | None, need_weights=False) -> (x (B, C, H, W), info)`
replaces it, e.g. a state-space (Mamba/SS2D) block; `num_encoder_layers=0` removes it, which
leaves a plain PAN neck (the dense baseline, `tutorial/models/dense_detector.py`, uses it that way).

Design note, AIFI vs the full deformable encoder (what this file trades): Deformable DETR and
DINO let every token of every level attend (sparsely) to all levels, in 6 layers; RT-DETR gives
full (dense) attention to the coarsest level only, in 1 layer, and lets convolutions carry that
context to the finer levels through the FPN/PAN paths. Attention over S5 is quadratic but S5 is
small; the convolutional fusion is linear in the number of pixels and runs well on GPUs
(and TensorRT). The cost: fine levels see global context only through S5's upsampling.

Official code: lyuwenyu/RT-DETR, `rtdetr_pytorch/src/zoo/rtdetr/hybrid_encoder.py`
(`HybridEncoder`, `CSPRepLayer`, `RepVggBlock`, `TransformerEncoderLayer`); defaults from
`configs/rtdetr/include/rtdetr_r50vd.yml` (hidden_dim 256, 8 heads, FFN 1024, 1 AIFI layer on
level index 2, expansion 1.0, depth_mult 1, SiLU in the CCFM).

Glossary: B batch, C width (hidden_dim), H, W a level's map, N = H·W tokens of S5, M heads,
L levels (3: strides 8, 16, 32).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from .presnet import ACTIVATIONS, ConvNormLayer
from .transformer import EncoderLayer, TransformerConfig


@dataclass
class HybridEncoderConfig:
    hidden_dim: int = 256  # C
    num_heads: int = 8  # M in AIFI
    dim_feedforward: int = 1024  # AIFI's FFN
    dropout: float = 0.0
    activation: str = "gelu"  # AIFI's FFN nonlinearity (official enc_act)
    num_encoder_layers: int = 1  # AIFI layers per level in use_encoder_idx (0: no AIFI)
    use_encoder_idx: tuple[int, ...] = (2,)  # the levels AIFI runs on: S5 only
    pe_temperature: float = 10000.0  # T of the 2-D sin-cos encoding
    expansion: float = 1.0  # width of a fusion block's hidden branch, relative to C (R18: 0.5)
    depth_mult: float = 1.0  # RepVGG blocks per fusion block: round(3 · depth_mult)
    act: str = "silu"  # the CCFM's nonlinearity


def sincos_position_encoding_2d(h: int, w: int, dim: int, temperature: float = 10000.0) -> Tensor:
    """RT-DETR's fixed 2-D position encoding of an h x w map -> (h·w, dim), rows in row-major
    token order (token y·w + x).

    Integer positions, no normalisation and no padding awareness; with ω_k = 1 / T^(k / (dim/4)),
    k = 0 .. dim/4 - 1, the channels are [sin(y·ω), cos(y·ω), sin(x·ω), cos(x·ω)] (dim/4 each).
    The official `build_2d_sincos_position_embedding` builds its grid with
    `meshgrid(arange(w), arange(h), indexing='ij')` and flattens it w-major, so its row i encodes
    (⌊i/h⌋, i mod h) while token i is (⌊i/w⌋, i mod w): the same encoding as this one on square
    maps (every official training and evaluation size is square, 640 x 640), scrambled positions
    on non-square ones (fixed the same way in HF transformers, PR #41380). Here the channels that
    the official code calls "w" encode the row y, so the two agree wherever the official is right.
    """
    if dim % 4:
        raise ValueError(f"sincos_position_encoding_2d: dim must be divisible by 4, got {dim}")
    k = torch.arange(dim // 4, dtype=torch.float32) / (dim // 4)  # (dim/4,)
    omega = 1.0 / temperature**k  # (dim/4,)
    ys, xs = torch.meshgrid(torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32),
                            indexing="ij")  # (h, w) each
    y = ys.flatten()[:, None] * omega  # (h·w, dim/4)
    x = xs.flatten()[:, None] * omega  # (h·w, dim/4)
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)  # (h·w, dim)


class AIFI(nn.Module):
    """Attention-based intra-scale feature interaction: `num_layers` post-norm transformer encoder
    layers (`tutorial/models/transformer.py`'s `EncoderLayer`) over one map's tokens, sin-cos positions
    added to queries and keys. forward(x (B, C, H, W), mask (B, H, W) or None, need_weights) ->
    (x (B, C, H, W), {"attention": [(B, M, N, N)] per layer} or None). Padded tokens are not
    attended to (the official code has no padding: it trains on fixed 640 x 640 inputs)."""

    def __init__(self, cfg: HybridEncoderConfig):
        super().__init__()
        self.temperature = cfg.pe_temperature
        tc = TransformerConfig(d_model=cfg.hidden_dim, num_heads=cfg.num_heads, dim_feedforward=cfg.dim_feedforward,
                               dropout=cfg.dropout)
        self.layers = nn.ModuleList(EncoderLayer(tc, cfg.activation) for _ in range(cfg.num_encoder_layers))

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False):
        b, c, h, w = x.shape
        src = rearrange(x, "b c h w -> b (h w) c")  # (B, N, C)
        pos = sincos_position_encoding_2d(h, w, c, self.temperature).to(x)[None]  # (1, N, C)
        padding = None if mask is None else mask.flatten(1)  # (B, N)
        attention = []
        for layer in self.layers:
            src, attn = layer(src, pos, padding, need_weights)  # (B, N, C)
            attention.append(attn)
        return rearrange(src, "b (h w) c -> b c h w", h=h, w=w), ({"attention": attention} if need_weights else None)


class RepVggBlock(nn.Module):
    """act(BN(conv3x3(x)) + BN(conv1x1(x))) (RepVGG, Ding et al., CVPR 2021): two branches in
    training that fold into a single 3x3 convolution at deployment (not done here)."""

    def __init__(self, ch_in: int, ch_out: int, act: str = "relu"):
        super().__init__()
        self.conv1 = ConvNormLayer(ch_in, ch_out, 3, 1)
        self.conv2 = ConvNormLayer(ch_in, ch_out, 1, 1)
        self.act = ACTIVATIONS[act]()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Module):
    """The fusion block (seed, "Fusion block"; official `CSPRepLayer`), (B, C_in, H, W) -> (B, C_out, H, W):
    conv3(RepVGG^N(conv1(x)) + conv2(x)), conv1 and conv2 1x1 to C_out·expansion channels, conv3 a
    1x1 back to C_out (the identity when expansion is 1)."""

    def __init__(self, ch_in: int, ch_out: int, num_blocks: int = 3, expansion: float = 1.0, act: str = "silu"):
        super().__init__()
        hidden = int(ch_out * expansion)
        self.conv1 = ConvNormLayer(ch_in, hidden, 1, 1, act)
        self.conv2 = ConvNormLayer(ch_in, hidden, 1, 1, act)
        self.bottlenecks = nn.Sequential(*[RepVggBlock(hidden, hidden, act) for _ in range(num_blocks)])
        self.conv3 = ConvNormLayer(hidden, ch_out, 1, 1, act) if hidden != ch_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class HybridEncoder(nn.Module):
    """Input projection, AIFI (or `token_mixer`) on the levels in `use_encoder_idx`, then CCFM.

    forward(features [(B, C_l, H_l, W_l)] * L (strides 8, 16, 32), masks [(B, H_l, W_l)] or None,
    need_weights) -> ([(B, C, H_l, W_l)] * L fused maps, info): info {"aifi": the mixer's info
    per level in use_encoder_idx, "projected": the projected maps, "mixed": the mixer's output}."""

    def __init__(self, cfg: HybridEncoderConfig, in_channels: list[int], token_mixer: nn.Module | None = None):
        super().__init__()
        self.cfg = cfg
        c = cfg.hidden_dim
        self.input_proj = nn.ModuleList(nn.Sequential(nn.Conv2d(ch, c, 1, bias=False), nn.BatchNorm2d(c))
                                        for ch in in_channels)
        if token_mixer is not None and len(cfg.use_encoder_idx) != 1:
            raise ValueError("HybridEncoder: a custom token_mixer replaces AIFI on a single level; "
                             f"use_encoder_idx has {len(cfg.use_encoder_idx)}")
        mixers = [token_mixer] if token_mixer is not None else [AIFI(cfg) for _ in cfg.use_encoder_idx]
        self.encoder = nn.ModuleList(mixers if cfg.num_encoder_layers > 0 or token_mixer is not None else [])
        n_blocks = round(3 * cfg.depth_mult)
        # top-down FPN: a 1x1 lateral conv on the coarser map, upsample, concatenate, fuse
        self.lateral_convs = nn.ModuleList(ConvNormLayer(c, c, 1, 1, cfg.act) for _ in in_channels[1:])
        self.fpn_blocks = nn.ModuleList(CSPRepLayer(2 * c, c, n_blocks, cfg.expansion, cfg.act)
                                        for _ in in_channels[1:])
        # bottom-up PAN: a 3x3 stride-2 conv on the finer map, concatenate, fuse
        self.downsample_convs = nn.ModuleList(ConvNormLayer(c, c, 3, 2, cfg.act) for _ in in_channels[1:])
        self.pan_blocks = nn.ModuleList(CSPRepLayer(2 * c, c, n_blocks, cfg.expansion, cfg.act)
                                        for _ in in_channels[1:])

    def forward(self, features: list[Tensor], masks: list[Tensor] | None = None,
                need_weights: bool = False) -> tuple[list[Tensor], dict]:
        proj = [p(f) for p, f in zip(self.input_proj, features)]  # L x (B, C, H_l, W_l)
        info: dict = {"projected": list(proj), "aifi": []}
        for mixer, lvl in zip(self.encoder, self.cfg.use_encoder_idx):  # intra-scale interaction (S5)
            proj[lvl], mixer_info = mixer(proj[lvl], None if masks is None else masks[lvl], need_weights)
            info["aifi"].append(mixer_info)
        info["mixed"] = list(proj)
        # 1) top-down: inner[0] is always the coarsest map processed so far
        inner = [proj[-1]]
        for i, lvl in enumerate(range(len(proj) - 1, 0, -1)):
            high = self.lateral_convs[i](inner[0])  # (B, C, H_lvl, W_lvl)
            inner[0] = high
            up = F.interpolate(high, size=proj[lvl - 1].shape[-2:], mode="nearest")  # (B, C, H_lvl-1, W_lvl-1): x2
            inner.insert(0, self.fpn_blocks[i](torch.cat([up, proj[lvl - 1]], 1)))  # (B, C, H_lvl-1, W_lvl-1)
        # 2) bottom-up: from the finest fused map back to the coarsest
        outs = [inner[0]]
        for i in range(len(proj) - 1):
            down = self.downsample_convs[i](outs[-1])  # (B, C, H_i+1, W_i+1): /2
            outs.append(self.pan_blocks[i](torch.cat([down, inner[i + 1]], 1)))  # (B, C, H_i+1, W_i+1)
        return outs, info
