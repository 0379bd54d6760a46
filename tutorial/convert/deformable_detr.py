"""Deformable DETR (fundamentalvision/Deformable-DETR, `models/deformable_detr.py`,
`models/deformable_transformer.py`, `models/ops/modules/ms_deform_attn.py`) and Hugging Face
`DeformableDetrForObjectDetection` onto `deformable_detr_r50`, `deformable_detr_r50_refine` and
`deformable_detr_r50_two_stage`.

Key counts (source keys -> our keys): Hugging Face 585 -> 585 (plain), 621 -> 621 (refine),
654 -> 640 (two-stage); official 561 -> 585, 597 -> 621, 630 -> 640. The official decoder's
self-attention is an `nn.MultiheadAttention`: its `in_proj_weight` (768 × 256) and `in_proj_bias`
are split into our `q_proj`, `k_proj`, `v_proj` (4 keys fewer per decoder layer).

Names to watch:
- the official decoder layer builds `cross_attn, norm1` *before* `self_attn, norm2`, but runs
  self-attention first: its `norm2` follows the self-attention (our `norm1`, HF's
  `self_attn_layer_norm`) and its `norm1` the cross-attention (our `norm2`, HF's
  `encoder_attn_layer_norm`). Both norms have the same shape: only the outputs tell a swap.
- shared heads appear under several keys. Plain: one class head and one box head serve all six
  layers, stored as `class_embed.0..5` / `bbox_embed.0..5` (the same tensors). Refine and
  two-stage: the decoder holds the box heads again (`transformer.decoder.bbox_embed`, HF
  `model.decoder.bbox_embed`), and two-stage also the class heads (`transformer.decoder.class_embed`,
  HF `model.decoder.class_embed`; we keep no such alias, so those 14 keys are ignored). `prepare`
  checks that every alias holds the same tensor as the key it aliases, and refuses the file if not
  (loading would otherwise keep whichever copy came last).
- Hugging Face files on the hub carry transformers 4's names (`backbone.conv_encoder.model`,
  `self_attn.out_proj`, `layers.N.fc1`); they are renamed first (`HUB_NAMES`, from transformers
  5's `conversion_mapping.py`).

Where Hugging Face (transformers 5.24) differs from the official model:
- refine: `DeformableDetrForObjectDetection` keeps its class-level tie
  `class_embed.(?![0])\\d+ -> class_embed.0` when `with_box_refine=True`, so its six class heads
  are one (40,732,725 parameters against the official 40,849,660: five heads of 256·91 + 91).
  It cannot hold an official refine checkpoint's six distinct heads; converted the other way,
  an HF refine model is ours with six equal class heads, and its outputs equal ours.
  (Its box heads are untied from each other, as in the official model.)
- two-stage: the same parameters as the official model (41,181,529; the decoder's class and box
  heads tied to the model's), and the same outputs.
- plain: the same parameters (40,069,665) and outputs.
- `auxiliary_loss` only decides whether the loss returns `auxiliary_outputs`; it changes nothing
  in the computation (unlike DETR in transformers 5, see detr.py).
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch
from torch import Tensor

from .detr import BATCHNORM_COUNTER, RESNET_OFFICIAL, transformers_norms_and_ffn
from .keymap import ConversionError, KeyMap, substitutions

L = r"(\d+)"  # a layer index, kept by \1 in the replacement
PRESETS = ("deformable_detr_r50", "deformable_detr_r50_refine", "deformable_detr_r50_two_stage")
DEFORMABLE = r"(sampling_offsets|attention_weights|value_proj|output_proj)"  # MSDeformAttn's four linears


def same_tensors(rules: tuple[tuple[str, str], ...]) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A `prepare` step: every key matching a rule's pattern is an alias of the key its replacement
    names (a module shared under two names); when both are present they must hold equal tensors."""
    def check(state: dict[str, Tensor]) -> dict[str, Tensor]:
        for key, tensor in state.items():
            for pattern, canonical in rules:
                if re.fullmatch(pattern, key):
                    other = re.sub(pattern, canonical, key)
                    if other in state and not torch.equal(state[other], tensor):
                        raise ConversionError(f"key {key!r} should hold the same tensor as {other!r} "
                                              "(one shared module), but they differ")
        return state
    return check


def chain(*steps):
    """`prepare` steps applied in order."""
    def run(state: dict[str, Tensor]) -> dict[str, Tensor]:
        for step in steps:
            state = step(state)
        return state
    return run


OFFICIAL_LAYERS = (  # backbone to decoder layers; DINO's official code names them so too
    RESNET_OFFICIAL,
    (r"input_proj\.(\d+)\.([01])\.(.*)", r"input_proj.layers.\1.\2.\3"),
    (r"transformer\.level_embed", "level_embed"),
    (rf"transformer\.encoder\.layers\.{L}\.self_attn\.{DEFORMABLE}\.(.*)", r"encoder.layers.\1.self_attn.\2.\3"),
    (rf"transformer\.(encoder|decoder)\.layers\.{L}\.(linear[12])\.(.*)", r"\1.layers.\2.ffn.\3.\4"),
    (rf"transformer\.encoder\.layers\.{L}\.(norm[12])\.(.*)", r"encoder.layers.\1.\2.\3"),
    (rf"transformer\.decoder\.layers\.{L}\.self_attn\.out_proj\.(.*)", r"decoder.layers.\1.self_attn.out_proj.\2"),
    (rf"transformer\.decoder\.layers\.{L}\.cross_attn\.{DEFORMABLE}\.(.*)", r"decoder.layers.\1.cross_attn.\2.\3"),
    (rf"transformer\.decoder\.layers\.{L}\.norm2\.(.*)", r"decoder.layers.\1.norm1.\2"),  # after self-attention
    (rf"transformer\.decoder\.layers\.{L}\.norm1\.(.*)", r"decoder.layers.\1.norm2.\2"),  # after cross-attention
    (rf"transformer\.decoder\.layers\.{L}\.norm3\.(.*)", r"decoder.layers.\1.norm3.\2"),
)
OFFICIAL_RENAMES = OFFICIAL_LAYERS + (
    (r"transformer\.decoder\.bbox_embed\.(.*)", r"decoder.bbox_embed.\1"),
    (r"transformer\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(.*)", r"\1.\2"),
    (r"(query_embed|class_embed|bbox_embed)\.(.*)", r"\1.\2"),
)
OFFICIAL_SPLITS = (
    (rf"transformer\.decoder\.layers\.{L}\.self_attn\.in_proj_(weight|bias)",
     tuple(rf"decoder.layers.\1.self_attn.{p}_proj.\2" for p in "qkv")),
)

HUB_NAMES = ((r"backbone\.conv_encoder\.", "backbone."), (r"self_attn\.out_proj\.", "self_attn.o_proj."),
             (r"layers\.(\d+)\.fc([12])\.", r"layers.\1.mlp.fc\2."))  # transformers 4 -> 5

TRANSFORMERS_RENAMES = (
    (r"model\.backbone\.model\.(.*)", r"backbone.body.\1"),  # a timm ResNet-50
    (r"model\.input_proj\.(\d+)\.([01])\.(.*)", r"input_proj.layers.\1.\2.\3"),
    (r"model\.level_embed", "level_embed"),
    (rf"model\.encoder\.layers\.{L}\.self_attn\.{DEFORMABLE}\.(.*)", r"encoder.layers.\1.self_attn.\2.\3"),
    (rf"model\.decoder\.layers\.{L}\.self_attn\.([qkv])_proj\.(.*)", r"decoder.layers.\1.self_attn.\2_proj.\3"),
    (rf"model\.decoder\.layers\.{L}\.self_attn\.o_proj\.(.*)", r"decoder.layers.\1.self_attn.out_proj.\2"),
    (rf"model\.decoder\.layers\.{L}\.encoder_attn\.{DEFORMABLE}\.(.*)", r"decoder.layers.\1.cross_attn.\2.\3"),
) + transformers_norms_and_ffn("{side}.layers.{i}") + (
    (r"model\.decoder\.bbox_embed\.(.*)", r"decoder.bbox_embed.\1"),
    (r"model\.query_position_embeddings\.(.*)", r"query_embed.\1"),
    (r"model\.(reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)\.(.*)", r"\1.\2"),
    (r"(class_embed|bbox_embed)\.(.*)", r"\1.\2"),
)

SHARED_HEADS = ((r"(class_embed|bbox_embed)\.[1-9]\d*\.(.*)", r"\1.0.\2"),)  # plain: one head, six names


def decoder_aliases(prefix: str, heads: str) -> tuple[tuple[str, str], ...]:
    """The decoder's copies of the model's heads (`prefix` = "transformer" or "model")."""
    return ((rf"{prefix}\.decoder\.({heads})\.(.*)", r"\1.\2"),)


DECODER_CLASS_ALIAS = {
    "official": (r"transformer\.decoder\.class_embed\..*",
                 "the decoder's alias of class_embed.N (the same tensors, checked by `prepare`); ours holds them once"),
    "transformers": (r"model\.decoder\.class_embed\..*",
                     "HF's decoder copy of class_embed.N, tied to it (checked equal by `prepare`); ours holds them once"),
}


def keymaps(preset: str) -> dict[str, KeyMap]:
    """{"official": KeyMap, "transformers": KeyMap} onto `preset`."""
    two_stage = preset.endswith("two_stage")
    maps = {}
    for source, prefix in (("official", "transformer"), ("transformers", "model")):
        if preset == "deformable_detr_r50":
            aliases = SHARED_HEADS
        else:
            aliases = decoder_aliases(prefix, "class_embed|bbox_embed" if two_stage else "bbox_embed")
        check = same_tensors(aliases)
        ignore = (BATCHNORM_COUNTER,) + ((DECODER_CLASS_ALIAS[source],) if two_stage else ())
        if source == "official":
            maps[source] = KeyMap(renames=OFFICIAL_RENAMES, splits=OFFICIAL_SPLITS, ignore=ignore, prepare=check)
        else:
            maps[source] = KeyMap(renames=TRANSFORMERS_RENAMES, ignore=ignore,
                                  prepare=chain(substitutions(HUB_NAMES), check))
    return maps


MAPS = {preset: keymaps(preset) for preset in PRESETS}
CLASS_HEADS = {preset: "class_embed.0.weight" for preset in PRESETS}
