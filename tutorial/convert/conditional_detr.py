"""Conditional DETR (Atten4Vis/ConditionalDETR, `models/conditional_detr.py`, `models/transformer.py`)
and Hugging Face `ConditionalDetrForObjectDetection` onto `conditional_detr_r50`.

All three hold the same 588 tensors. The official encoder layers use `nn.MultiheadAttention`, whose
`in_proj_weight` stacks q, k and v (768 × 256): it is split into our `q_proj`, `k_proj`, `v_proj`.
The official decoder layers already project content and position apart (`sa_qcontent_proj`, ...,
`ca_qpos_sine_proj`, under our names too) and its attentions keep only `out_proj`; `ca_qpos_proj`
exists in the first decoder layer only (the official decoder sets it to None in the others, and so
do Hugging Face and we). The official code therefore has 564 keys: each of the 6 encoder
attentions holds 2 fused keys instead of 6.

Hugging Face, transformers 5, moves the decoder's projections into its attention modules
(`self_attn.q_content_proj`, `encoder_attn.q_pos_sine_proj`, ...). Files on the hub
(`microsoft/conditional-detr-resnet-50`) still carry transformers 4's names (`backbone.conv_encoder`,
`out_proj`, `layers.N.fc1`, the official `sa_*` / `ca_*` at layer level); they are rewritten first
(`HUB_NAMES`, after the "ConditionalDetrModel" entry of transformers' `conversion_mapping.py`).

Where Hugging Face differs from the official model:
- with `auxiliary_loss=True`, `ConditionalDetrDecoder` replaces each layer's output by its
  LayerNorm before the next layer reads it (the official decoder normalises only the copies it
  returns), and the last output is then normalised twice. With `auxiliary_loss=False` its final
  outputs equal the official model's; the auxiliary outputs are then the decoder norm of its
  `decoder_hidden_states` 1..5 through the shared heads, relative to the one reference point;
- no parameter differs; the config defaults (`ConditionalDetrConfig`: 300 queries, C = 256, 6 + 6
  layers, FFN 2048, ReLU, dropout 0.1, sine temperature 10000, focal α 0.25, class cost and loss
  weight 2, box 5, GIoU 2) are the paper's and our preset's; only `num_labels` (default 2) must be
  set to 91.
"""
from __future__ import annotations

from .detr import (BATCHNORM_COUNTER, RESNET_OFFICIAL, RESNET_TRANSFORMERS, TRANSFORMERS_HEADS,
                   transformers_norms_and_ffn)
from .detr import HUB_NAMES as DETR_HUB_NAMES
from .keymap import KeyMap, substitutions

L = r"(\d+)"  # a layer index, kept by \1 in the replacement

ENCODER_SPLITS = (
    (rf"transformer\.encoder\.layers\.{L}\.self_attn\.in_proj_(weight|bias)",
     tuple(rf"encoder.layers.\1.self_attn.{p}_proj.\2" for p in "qkv")),
)


def official_keymap(ffn: str, top_level: str, prepare=None) -> KeyMap:
    """The official map of Conditional DETR and of the models built on its code (DAB-DETR): the
    encoder's fused q/k/v split, the FFN's modules `ffn` (a regex alternation) moved under `ffn.`,
    every other transformer key kept under `encoder.` / `decoder.`, and the modules `top_level`
    (an alternation: input projection, queries, heads) kept as they are."""
    return KeyMap(
        prepare=prepare,
        splits=ENCODER_SPLITS,
        renames=(
            RESNET_OFFICIAL,
            (rf"transformer\.(encoder|decoder)\.layers\.{L}\.({ffn})\.(.*)", r"\1.layers.\2.ffn.\3.\4"),
            # everything else of the transformer keeps its name: encoder self_attn.out_proj, norm1..3,
            # the decoder's sa_* / ca_* projections, self_attn / cross_attn.out_proj, decoder.norm,
            # decoder.query_scale (λ_q), decoder.ref_point_head (s), and what a descendant adds
            (r"transformer\.(encoder|decoder)\.(.*)", r"\1.\2"),
            (rf"({top_level})\.(.*)", r"\1.\2"),
        ),
        ignore=(BATCHNORM_COUNTER,),
    )


OFFICIAL = official_keymap("linear[12]", "input_proj|query_embed|class_embed|bbox_embed")

HUB_NAMES = DETR_HUB_NAMES + (  # transformers 4 -> 5: DETR's, and the decoder's projections
    (r"decoder\.layers\.(\d+)\.sa_([qk])(content|pos)_proj\.", r"decoder.layers.\1.self_attn.\2_\3_proj."),
    (r"decoder\.layers\.(\d+)\.sa_v_proj\.", r"decoder.layers.\1.self_attn.v_proj."),
    (r"decoder\.layers\.(\d+)\.ca_([qk])(content|pos)_proj\.", r"decoder.layers.\1.encoder_attn.\2_\3_proj."),
    (r"decoder\.layers\.(\d+)\.ca_qpos_sine_proj\.", r"decoder.layers.\1.encoder_attn.q_pos_sine_proj."),
    (r"decoder\.layers\.(\d+)\.ca_v_proj\.", r"decoder.layers.\1.encoder_attn.v_proj."),
)

TRANSFORMERS = KeyMap(
    prepare=substitutions(HUB_NAMES),
    renames=(
        RESNET_TRANSFORMERS,
        (rf"model\.encoder\.layers\.{L}\.self_attn\.o_proj\.(.*)", r"encoder.layers.\1.self_attn.out_proj.\2"),
        (rf"model\.encoder\.layers\.{L}\.self_attn\.([qkv]_proj)\.(.*)", r"encoder.layers.\1.self_attn.\2.\3"),
        (rf"model\.decoder\.layers\.{L}\.self_attn\.([qk])_(content|pos)_proj\.(.*)", r"decoder.layers.\1.sa_\2\3_proj.\4"),
        (rf"model\.decoder\.layers\.{L}\.self_attn\.v_proj\.(.*)", r"decoder.layers.\1.sa_v_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.self_attn\.o_proj\.(.*)", r"decoder.layers.\1.self_attn.out_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.encoder_attn\.([qk])_(content|pos)_proj\.(.*)", r"decoder.layers.\1.ca_\2\3_proj.\4"),
        (rf"model\.decoder\.layers\.{L}\.encoder_attn\.q_pos_sine_proj\.(.*)", r"decoder.layers.\1.ca_qpos_sine_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.encoder_attn\.v_proj\.(.*)", r"decoder.layers.\1.ca_v_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.encoder_attn\.o_proj\.(.*)", r"decoder.layers.\1.cross_attn.out_proj.\2"),
    ) + transformers_norms_and_ffn("{side}.layers.{i}") + (
        (r"model\.decoder\.layernorm\.(.*)", r"decoder.norm.\1"),
        (r"model\.decoder\.(query_scale|ref_point_head)\.(.*)", r"decoder.\1.\2"),
    ) + TRANSFORMERS_HEADS,
    ignore=(BATCHNORM_COUNTER,),
)

MAPS = {"conditional_detr_r50": {"official": OFFICIAL, "transformers": TRANSFORMERS}}
CLASS_HEADS = {"conditional_detr_r50": "class_embed.weight"}
