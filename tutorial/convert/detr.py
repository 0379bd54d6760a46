"""DETR (facebookresearch/detr, `models/detr.py`, `models/transformer.py`) and Hugging Face
`DetrForObjectDetection` onto `detr_r50`.

Both hold the same 530 tensors as ours. The official transformer uses `nn.MultiheadAttention`, whose
`in_proj_weight` stacks q, k and v (768 × 256): it is split into our `q_proj`, `k_proj`, `v_proj`.
Hugging Face already keeps them apart and calls the output projection `o_proj`.

Hugging Face files on the hub (`facebook/detr-resnet-50`) still carry the key names of
transformers 4 (`backbone.conv_encoder.model`, `out_proj`, `layers.N.fc1`); transformers 5 renames
them when it loads (`conversion_mapping.py` there), and so do we (`HUB_NAMES`).

Where Hugging Face differs from the official model: with `auxiliary_loss=True`, transformers 5's
`DetrDecoder` feeds each layer the *normalised* output of the previous one (the official decoder
normalises only the copies it returns). With `auxiliary_loss=False` its outputs equal the
official model's, and ours, bitwise.
"""
from __future__ import annotations

from .keymap import KeyMap, substitutions

L = r"(\d+)"  # a layer index, kept by \1 in the replacement

RESNET_OFFICIAL = (r"backbone\.0\.body\.(.*)", r"backbone.body.\1")
RESNET_TRANSFORMERS = (r"model\.backbone\.model\.(.*)", r"backbone.body.\1")  # a timm ResNet-50
BATCHNORM_COUNTER = (r".*num_batches_tracked", "a BatchNorm counter; frozen BatchNorm has none")

OFFICIAL = KeyMap(
    splits=(
        (rf"transformer\.encoder\.layers\.{L}\.self_attn\.in_proj_(weight|bias)",
         tuple(rf"transformer.encoder_layers.\1.self_attn.{p}_proj.\2" for p in "qkv")),
        (rf"transformer\.decoder\.layers\.{L}\.self_attn\.in_proj_(weight|bias)",
         tuple(rf"transformer.decoder_layers.\1.self_attn.{p}_proj.\2" for p in "qkv")),
        (rf"transformer\.decoder\.layers\.{L}\.multihead_attn\.in_proj_(weight|bias)",
         tuple(rf"transformer.decoder_layers.\1.cross_attn.{p}_proj.\2" for p in "qkv")),
    ),
    renames=(
        RESNET_OFFICIAL,
        (rf"transformer\.(encoder|decoder)\.layers\.{L}\.self_attn\.out_proj\.(.*)",
         r"transformer.\1_layers.\2.self_attn.out_proj.\3"),
        (rf"transformer\.decoder\.layers\.{L}\.multihead_attn\.out_proj\.(.*)",
         r"transformer.decoder_layers.\1.cross_attn.out_proj.\2"),
        (rf"transformer\.(encoder|decoder)\.layers\.{L}\.(linear[12])\.(.*)", r"transformer.\1_layers.\2.ffn.\3.\4"),
        (rf"transformer\.(encoder|decoder)\.layers\.{L}\.(norm[123])\.(.*)", r"transformer.\1_layers.\2.\3.\4"),
        (r"transformer\.decoder\.norm\.(.*)", r"transformer.decoder_norm.\1"),
        (r"(input_proj|query_embed|class_embed|bbox_embed)\.(.*)", r"\1.\2"),
    ),
    ignore=(BATCHNORM_COUNTER,),
)

HUB_NAMES = ((r"backbone\.conv_encoder\.", "backbone."), (r"\.out_proj\.", ".o_proj."),
             (r"layers\.(\d+)\.fc([12])\.", r"layers.\1.mlp.fc\2."))  # transformers 4 -> 5



def transformers_norms_and_ffn(layers: str) -> tuple[tuple[str, str], ...]:
    """Renames for the norms and FFN of every layer of HF's DETR family (DETR, Deformable and
    Conditional DETR name them alike); `layers` says where our layer `{i}` of `{side}`
    ("encoder" or "decoder") lives: "transformer.{side}_layers.{i}" in DETR, "{side}.layers.{i}"
    in its descendants."""
    both = layers.format(side=r"\1", i=r"\2")  # (encoder|decoder) is group 1, the index group 2
    encoder, decoder = layers.format(side="encoder", i=r"\1"), layers.format(side="decoder", i=r"\1")
    return (
        (rf"model\.(encoder|decoder)\.layers\.{L}\.mlp\.fc([12])\.(.*)", both + r".ffn.linear\3.\4"),
        (rf"model\.(encoder|decoder)\.layers\.{L}\.self_attn_layer_norm\.(.*)", both + r".norm1.\3"),
        (rf"model\.decoder\.layers\.{L}\.encoder_attn_layer_norm\.(.*)", decoder + r".norm2.\2"),
        (rf"model\.encoder\.layers\.{L}\.final_layer_norm\.(.*)", encoder + r".norm2.\2"),
        (rf"model\.decoder\.layers\.{L}\.final_layer_norm\.(.*)", decoder + r".norm3.\2"),
    )


TRANSFORMERS_HEADS = (  # the projection, queries and heads of HF's DETR family (Conditional DETR too)
    (r"model\.input_projection\.(.*)", r"input_proj.\1"),
    (r"model\.query_position_embeddings\.(.*)", r"query_embed.\1"),
    (r"class_labels_classifier\.(.*)", r"class_embed.\1"),
    (r"bbox_predictor\.(.*)", r"bbox_embed.\1"),
)

TRANSFORMERS = KeyMap(
    prepare=substitutions(HUB_NAMES),
    renames=(
        RESNET_TRANSFORMERS,
        (rf"model\.(encoder|decoder)\.layers\.{L}\.self_attn\.o_proj\.(.*)", r"transformer.\1_layers.\2.self_attn.out_proj.\3"),
        (rf"model\.(encoder|decoder)\.layers\.{L}\.self_attn\.(.*)", r"transformer.\1_layers.\2.self_attn.\3"),
        (rf"model\.decoder\.layers\.{L}\.encoder_attn\.o_proj\.(.*)", r"transformer.decoder_layers.\1.cross_attn.out_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.encoder_attn\.(.*)", r"transformer.decoder_layers.\1.cross_attn.\2"),
    ) + transformers_norms_and_ffn("transformer.{side}_layers.{i}") + (
        (r"model\.decoder\.layernorm\.(.*)", r"transformer.decoder_norm.\1"),
    ) + TRANSFORMERS_HEADS,
    ignore=(BATCHNORM_COUNTER,),
)

MAPS = {"detr_r50": {"official": OFFICIAL, "transformers": TRANSFORMERS}}
CLASS_HEADS = {"detr_r50": "class_embed.weight"}
