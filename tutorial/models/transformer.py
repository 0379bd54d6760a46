"""DETR's encoder-decoder transformer (DETR Sec. 3.2, Fig. 10; official `models/transformer.py`).

Encoder: every pixel of the C-channel feature map is a token; each layer is self-attention and a
feed-forward network (FFN), each followed by dropout, a residual add and LayerNorm ("post-norm").
Decoder: Q object queries attend to each other (self-attention), then to the encoder's memory
(cross-attention), then an FFN. Every decoder layer's output is normalised and returned, so
the auxiliary losses can supervise them all.

Where positions enter is configurable, one option per column of the seed's ablation table
(DETR Table 3): spatial encodings in the encoder and in the decoder's cross-attention keys are
added "at attn." (to queries and keys of every attention layer; the default), "at input" (once,
to the tokens before the first layer) or "none"; the output encodings (the object queries) are
learned and added at every attention layer ("attn") or given once as the decoder's input ("input").

Glossary: B batch, N = H·W memory tokens, Q queries, C width, M heads.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ..ops.attention import MultiHeadAttention

POSITION_PLACES = ("attn", "input", "none")
# PReLU learns one slope (1 parameter per FFN); the official DAB-DETR and DN-DETR use it.
ACTIVATIONS = {"relu": nn.ReLU, "prelu": nn.PReLU, "gelu": nn.GELU}


@dataclass
class TransformerConfig:
    d_model: int = 256  # C
    num_heads: int = 8  # M
    num_encoder_layers: int = 6
    num_decoder_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    encoder_pos: str = "attn"  # spatial encoding in the encoder: "attn" | "input" | "none"
    decoder_pos: str = "attn"  # spatial encoding on the decoder's memory keys: "attn" | "input" | "none"
    query_pos: str = "attn"  # learned object queries: "attn" (every layer) | "input" (decoder input)

    def __post_init__(self):
        for name in ("encoder_pos", "decoder_pos"):
            if getattr(self, name) not in POSITION_PLACES:
                raise ValueError(f"TransformerConfig.{name}: expected one of {POSITION_PLACES}, got {getattr(self, name)!r}")
        if self.query_pos not in ("attn", "input"):
            raise ValueError(f"TransformerConfig.query_pos: expected 'attn' or 'input', got {self.query_pos!r}")


def tiny_transformer(config: type = TransformerConfig, **changes):
    """The tiny presets' transformer sizes: C=128, 8 heads, 3+3 layers, FFN 512, no dropout.
    `config` is the class to build (TransformerConfig, or DeformableTransformerConfig, which has
    the same size fields); `changes` override fields (e.g. RT-DETR's `num_levels=3`)."""
    sizes = dict(d_model=128, num_heads=8, num_encoder_layers=3, num_decoder_layers=3, dim_feedforward=512,
                 dropout=0.0)
    return config(**{**sizes, **changes})


def with_pos(x: Tensor, pos: Tensor | None) -> Tensor:
    return x if pos is None else x + pos


class FFN(nn.Module):
    """Linear -> activation (ReLU by default) -> dropout -> Linear: the position-wise feed-forward
    network, (..., C) -> (..., C)."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, activation: str = "relu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"FFN activation: expected one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = ACTIVATIONS[activation]()

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.dropout(self.activation(self.linear1(x))))


class EncoderLayer(nn.Module):
    """x <- LN(x + SelfAttn(q=k=x+pos, v=x)); x <- LN(x + FFN(x))."""

    def __init__(self, cfg: TransformerConfig, activation: str = "relu"):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.ffn = FFN(cfg.d_model, cfg.dim_feedforward, cfg.dropout, activation)
        self.norm1, self.norm2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.dropout1, self.dropout2 = nn.Dropout(cfg.dropout), nn.Dropout(cfg.dropout)

    def forward(self, src: Tensor, pos: Tensor | None, padding_mask: Tensor,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """src (B, N, C), pos (B, N, C) or None, padding_mask (B, N) -> (src (B, N, C), attn (B, M, N, N))."""
        q = k = with_pos(src, pos)
        out, attn = self.self_attn(q, k, src, key_padding_mask=padding_mask,
                                   need_weights=need_weights)  # (B, N, C), (B, M, N, N)
        src = self.norm1(src + self.dropout1(out))
        src = self.norm2(src + self.dropout2(self.ffn(src)))
        return src, attn


class DecoderLayer(nn.Module):
    """tgt <- LN(tgt + SelfAttn); tgt <- LN(tgt + CrossAttn(tgt, memory)); tgt <- LN(tgt + FFN)."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.num_heads, cfg.dropout)
        self.ffn = FFN(cfg.d_model, cfg.dim_feedforward, cfg.dropout)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(cfg.d_model) for _ in range(3))
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(cfg.dropout) for _ in range(3))

    def forward(self, tgt: Tensor, memory: Tensor, query_pos: Tensor | None, memory_pos: Tensor | None,
                memory_padding_mask: Tensor, self_attn_mask: Tensor | None = None,
                need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
        """tgt (B, Q, C), memory (B, N, C) -> (tgt (B, Q, C), cross-attention (B, M, Q, N))."""
        q = k = with_pos(tgt, query_pos)
        out, _ = self.self_attn(q, k, tgt, attn_mask=self_attn_mask, need_weights=False)  # (B, Q, C)
        tgt = self.norm1(tgt + self.dropout1(out))
        out, attn = self.cross_attn(with_pos(tgt, query_pos), with_pos(memory, memory_pos), memory,
                                    key_padding_mask=memory_padding_mask,
                                    need_weights=need_weights)  # (B, Q, C), (B, M, Q, N)
        tgt = self.norm2(tgt + self.dropout2(out))
        tgt = self.norm3(tgt + self.dropout3(self.ffn(tgt)))
        return tgt, attn


class Transformer(nn.Module):
    """Encoder + decoder; returns every decoder layer's output and, on request, attention maps."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder_layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.num_encoder_layers))
        self.decoder_layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_decoder_layers))
        self.decoder_norm = nn.LayerNorm(cfg.d_model)
        for p in self.parameters():  # as the official Transformer._reset_parameters
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def encode(self, src: Tensor, pos: Tensor, padding_mask: Tensor,
               need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """src, pos (B, N, C), padding_mask (B, N) -> (memory (B, N, C), [attn (B, M, N, N)] per layer
        if `need_weights`, else [])."""
        place = self.cfg.encoder_pos
        if place == "input":
            src = src + pos
        layer_pos = pos if place == "attn" else None
        attns = []
        for layer in self.encoder_layers:
            src, attn = layer(src, layer_pos, padding_mask, need_weights)
            if need_weights:
                attns.append(attn)
        return src, attns

    def decode(self, memory: Tensor, pos: Tensor, padding_mask: Tensor, query_embed: Tensor,
               tgt: Tensor | None = None, self_attn_mask: Tensor | None = None,
               need_weights: bool = False) -> tuple[Tensor, list[Tensor]]:
        """memory, pos (B, N, C), query_embed (B, Q, C) -> (hs (L_dec, B, Q, C), [attn (B, M, Q, N)]
        per layer if `need_weights`, else [])."""
        if self.cfg.decoder_pos == "input":
            memory = memory + pos
        memory_pos = pos if self.cfg.decoder_pos == "attn" else None
        if self.cfg.query_pos == "input":  # the queries are the decoder's input, not re-added
            tgt, query_pos = query_embed if tgt is None else tgt + query_embed, None
        else:  # DETR: the decoder starts from zeros; queries are added at every attention
            tgt, query_pos = torch.zeros_like(query_embed) if tgt is None else tgt, query_embed
        hs, attns = [], []
        for layer in self.decoder_layers:
            tgt, attn = layer(tgt, memory, query_pos, memory_pos, padding_mask, self_attn_mask, need_weights)
            hs.append(self.decoder_norm(tgt))
            if need_weights:
                attns.append(attn)
        return torch.stack(hs), attns  # (L_dec, B, Q, C)
