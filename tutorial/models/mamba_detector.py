"""The Mamba-based detector: RT-DETR with VMamba's SS2D in place of AIFI's self-attention.

Seed, "Is the Mamba-based detector possible?" (asked twice, before and after the Mamba and VMamba
slides) and "Attention scales quadratically in sequence length N". RT-DETR already keeps its one
attention layer (AIFI) on the smallest map, S5, because attention costs O(N²) in the number of
tokens; a selective scan costs O(N). This file answers the question in the smallest possible
step: *replace RT-DETR-tiny's attention with SS2D blocks and keep everything else*:

    AIFI layer (`tutorial/models/transformer.py`'s EncoderLayer, post-norm):
        x <- LN(x + SelfAttn(q = k = x + pos, v = x));   x <- LN(x + FFN(x))
    SS2D layer (here):
        x <- LN(x + SS2D(x, mask));                       x <- LN(x + FFN(x))

Same width C, same FFN (width, GELU), same norms, dropout and number of layers, all read from
the same `HybridEncoderConfig` fields; the backbone, CCFM, query selection, decoder, denoising
and losses are RT-DETR's, unchanged (`tests/test_mamba_detector.py` compares the parameter names).
Only the token mixer differs:

- Attention mixes all N tokens at once, with weights from query-key products; it is blind to
  order, hence the 2-D sin-cos position encoding added to queries and keys.
- SS2D (`tutorial/ssm/ss2d.py`, VMamba) unfolds the map into four scan orders (rows, columns, both
  reversed), runs a selective scan (Mamba's S6) along each and folds them back. Each scan is
  causal along its order, but the four together let every token read every other one (tested).
  Order is built in (the scan direction and the depthwise 3x3 conv), so no position encoding.
- Padding: our batches are padded, the official RT-DETR's are not (fixed 640 x 640). AIFI stops
  attending to padded keys; SS2D skips padded tokens (the padded pixels' x branch is zeroed before
  its conv, and Δ = 0 there, so Ā = 1 and B̄u = 0, the identity step): valid tokens get exactly
  the output of the unpadded map (tested). Merely zeroing the padded tokens would not do, since
  Δ = softplus(bias) > 0 on a zero token still decays the state across each row's padding, by an
  amount that depends on how much padding the batch needed.

Intermediates, as RT-DETR's (`return_intermediates=True`): "encoder_mixer" = {"delta": [Δ
(B, 4, D, H_5, W_5) per layer]}, each direction's step size at every S5 pixel: Δ is the gate of a
selective SSM (large: reset the state to this token, small: keep the past, skip this token).

Glossary: B batch, C width (hidden_dim), H, W the map (S5), D = ssm_ratio · C the SS2D's inner
width, N its state size [d_state]; 4 scan directions.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from einops import rearrange
from torch import Tensor, nn

from .hybrid_encoder import HybridEncoder, HybridEncoderConfig
from .rt_detr import RTDETR, RTDETRConfig, rtdetr_tiny
from ..ssm.ss2d import SS2D, SS2DConfig
from .transformer import FFN


class SS2DLayer(nn.Module):
    """AIFI's post-norm encoder layer with SS2D as the mixer: x <- LN(x + SS2D(x)); x <- LN(x + FFN(x)).

    forward(x (B, H, W, C) channels last, mask (B, H, W) or None, return_intermediates) ->
    (B, H, W, C) [, {"delta" (B, 4, D, H, W)}]. The FFN, norms and dropouts have AIFI's names.
    """

    def __init__(self, ss2d: SS2DConfig, enc: HybridEncoderConfig):
        super().__init__()
        self.mixer = SS2D(ss2d)
        self.ffn = FFN(enc.hidden_dim, enc.dim_feedforward, enc.dropout, enc.activation)
        self.norm1, self.norm2 = nn.LayerNorm(enc.hidden_dim), nn.LayerNorm(enc.hidden_dim)
        self.dropout1, self.dropout2 = nn.Dropout(enc.dropout), nn.Dropout(enc.dropout)

    def forward(self, x: Tensor, mask: Tensor | None = None, return_intermediates: bool = False):
        out, info = (self.mixer(x, mask, return_intermediates=True) if return_intermediates
                     else (self.mixer(x, mask), None))  # (B, H, W, C)
        x = self.norm1(x + self.dropout1(out))  # (B, H, W, C)
        x = self.norm2(x + self.dropout2(self.ffn(x)))  # (B, H, W, C)
        return (x, info) if return_intermediates else x


class SS2DEncoder(nn.Module):
    """The token mixer for `HybridEncoder`'s AIFI slot: `num_encoder_layers` SS2D layers on one map.

    forward(x (B, C, H, W), mask (B, H, W) True on padding or None, need_weights=False) ->
    (x (B, C, H, W), {"delta": [(B, 4, D, H, W)] per layer} if need_weights else None), the
    interface `HybridEncoder` expects of any mixer (AIFI's, with Δ in place of attention maps).
    """

    def __init__(self, ss2d: SS2DConfig, enc: HybridEncoderConfig):
        super().__init__()
        if ss2d.d_model != enc.hidden_dim:
            raise ValueError(f"SS2DEncoder: ss2d.d_model ({ss2d.d_model}) must equal encoder.hidden_dim "
                             f"({enc.hidden_dim})")
        self.layers = nn.ModuleList(SS2DLayer(ss2d, enc) for _ in range(enc.num_encoder_layers))

    def forward(self, x: Tensor, mask: Tensor | None = None, need_weights: bool = False):
        x = rearrange(x, "b c h w -> b h w c")  # (B, H, W, C): SS2D works channels last
        deltas = []
        for layer in self.layers:
            if need_weights:
                x, info = layer(x, mask, return_intermediates=True)  # (B, H, W, C)
                deltas.append(info["delta"])  # (B, 4, D, H, W)
            else:
                x = layer(x, mask)  # (B, H, W, C)
        return rearrange(x, "b h w c -> b c h w"), ({"delta": deltas} if need_weights else None)


@dataclass
class MambaRTDETRConfig(RTDETRConfig):
    """RT-DETR's config plus the SS2D that replaces AIFI's attention (`ss2d.d_model` = `encoder.hidden_dim`).
    The encoder fields num_heads and pe_temperature configure attention only, and are unused."""

    ss2d: SS2DConfig = field(default_factory=SS2DConfig)

    def __post_init__(self):
        super().__post_init__()
        if self.ss2d.d_model != self.encoder.hidden_dim:
            raise ValueError(f"MambaRTDETRConfig: ss2d.d_model ({self.ss2d.d_model}) must equal "
                             f"encoder.hidden_dim ({self.encoder.hidden_dim})")
        if len(self.encoder.use_encoder_idx) != 1:
            raise ValueError("MambaRTDETRConfig: encoder.use_encoder_idx must name one level (the SS2D mixer "
                             f"replaces AIFI on a single map), got {self.encoder.use_encoder_idx}")


class MambaRTDETR(RTDETR):
    """RT-DETR whose hybrid encoder runs SS2D layers on S5 instead of AIFI; everything else,
    forward's signature and outputs included, is `RTDETR`'s (intermediates: see the module docstring)."""

    def build_encoder(self) -> HybridEncoder:
        return HybridEncoder(self.cfg.encoder, self.backbone.num_channels,
                             token_mixer=SS2DEncoder(self.cfg.ss2d, self.cfg.encoder))


# --- presets ----------------------------------------------------------------------------------


def rtdetr_mamba_tiny() -> MambaRTDETRConfig:
    """`rtdetr_tiny` with one SS2D layer on S5 in AIFI's place: SS2D at C = 128 with VMamba-T v0's
    state size N = 16, 3x3 depthwise conv and z gate, but ssm_ratio 1 (D = 128) so that the mixer
    has about as many parameters as the attention it replaces (84,480 against 66,048; ratio 2
    would give 168,960); FFN 512 and norms as AIFI's. 3,213,432 parameters in all (rtdetr_tiny: 3,195,000)."""
    base = rtdetr_tiny()
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base)}
    return MambaRTDETRConfig(**fields, ss2d=SS2DConfig(d_model=base.encoder.hidden_dim, d_state=16, ssm_ratio=1.0))
