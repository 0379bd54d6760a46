"""DAB-DETR (IDEA-Research/DAB-DETR, `models/DAB_DETR/DABDETR.py`, `transformer.py`) and Hugging
Face `DabDetrForObjectDetection` onto `dab_detr_r50`; DN-DETR (IDEA-Research/DN-DETR,
`models/DN_DAB_DETR/`) onto `dn_detr_r50`.

Ours holds 608 tensors (DN-DETR: 609, the label embedding added). What the sources hold besides:
- the box head is one module under two names: the official model sets
  `transformer.decoder.bbox_embed = bbox_embed` (the decoder refines the anchors with it), so its
  state dict lists the 6 tensors twice; Hugging Face ties `model.decoder.bbox_embed` to
  `bbox_predictor` (614 keys; a file saved by `save_pretrained` may keep only one of the two).
  `shared_box_head` keeps one copy, after checking that both are equal;
- the official encoder layers' `nn.MultiheadAttention.in_proj_weight` stacks q, k and v and is
  split; the official decoder's projections already carry our names (`sa_*`, `ca_*`,
  `ca_qpos_proj` in the first layer only), the PReLU of every FFN is `activation.weight` (ours
  `ffn.activation.weight`). Official DAB-DETR: 590 keys (608, less 4 per encoder layer for the
  fused q/k/v, plus the 6 box-head keys listed twice); DN-DETR: 591, with `label_enc` (92 × 255,
  ours `label_embed`); DN-DETR's transformer is DAB-DETR's, its names unchanged.

Hugging Face's transformers 5 has no renaming entry for DAB-DETR (`conversion_mapping.py`): the
hub files (`IDEA-Research/dab-detr-resnet-50`) carry these names.

Where Hugging Face differs from the official model: its decoder feeds each layer the
un-normalised output of the previous one and normalises only the copies it returns, as
officially, whatever `auxiliary_loss` is (which only adds the losses); the auxiliary outputs are
the heads on its `intermediate_hidden_states` relative to its `reference_points`. It always
builds the width/height-modulated attention (`ref_anchor_head`) and iterative anchor update with
one shared box head (the official defaults, `modulate_hw_attn`, `iter_update`, and
`bbox_embed_diff_each_layer=False`, are not options). Config defaults (`DabDetrConfig`): 300
queries, 4-d anchors, PReLU, temperatures 20 (height and width), no query patterns,
`keep_query_pos=False`, `random_refpoints_xy=False`, as officially and in our preset; but dropout
0.1 (official and ours: 0.0) and class loss weight 2 (official and ours: 1; the class matching
cost is 2 in all three); `num_labels` (default 2) must be set to 91.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .conditional_detr import official_keymap
from .detr import BATCHNORM_COUNTER
from .keymap import ConversionError, KeyMap

L = r"(\d+)"  # a layer index, kept by \1 in the replacement


def shared_box_head(copy_prefix: str, main_prefix: str) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A `prepare` step for a module listed under two names: the keys under `copy_prefix` are
    dropped if equal to their twins under `main_prefix` (an error otherwise), and renamed to them
    if the twins are missing (a file that kept the other copy of a tied module)."""
    def merge(state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {k: v for k, v in state.items() if not k.startswith(copy_prefix)}
        for key, tensor in state.items():
            if not key.startswith(copy_prefix):
                continue
            twin = main_prefix + key[len(copy_prefix):]
            if twin not in state:
                out[twin] = tensor
            elif state[twin].shape != tensor.shape or not torch.equal(state[twin], tensor):
                raise ConversionError(f"checkpoint: {key!r} differs from {twin!r}; the model shares one box head "
                                      f"for the anchor updates and the outputs, so they must be equal")
        return out
    return merge


OFFICIAL = official_keymap(  # Conditional DETR's, with a PReLU in every FFN and anchors as queries
    "linear[12]|activation", "input_proj|refpoint_embed|class_embed|bbox_embed",
    prepare=shared_box_head("transformer.decoder.bbox_embed.", "bbox_embed."))
# the transformer keys kept as they are include encoder.query_scale and decoder.ref_anchor_head

DN_OFFICIAL = KeyMap(  # DN-DETR: DAB-DETR's names and the label embedding of the denoising queries
    prepare=OFFICIAL.prepare,
    splits=OFFICIAL.splits,
    renames=((r"label_enc\.weight", "label_embed.weight"),) + OFFICIAL.renames,
    ignore=OFFICIAL.ignore,
)

SA, CA = r"self_attn\.self_attn", r"cross_attn\.cross_attn"
TRANSFORMERS = KeyMap(
    prepare=shared_box_head("model.decoder.bbox_embed.", "bbox_predictor."),
    renames=(
        # a timm ResNet-50; transformers 5 keeps it inside its TimmBackbone (`_backbone`), older files may not
        (r"model\.backbone\.conv_encoder\.model\.(?:_backbone\.)?(.*)", r"backbone.body.\1"),
        (rf"model\.encoder\.layers\.{L}\.self_attn\.([qkv]_proj|out_proj)\.(.*)", r"encoder.layers.\1.self_attn.\2.\3"),
        (rf"model\.encoder\.layers\.{L}\.self_attn_layer_norm\.(.*)", r"encoder.layers.\1.norm1.\2"),
        (rf"model\.encoder\.layers\.{L}\.final_layer_norm\.(.*)", r"encoder.layers.\1.norm2.\2"),
        (rf"model\.encoder\.layers\.{L}\.fc([12])\.(.*)", r"encoder.layers.\1.ffn.linear\2.\3"),
        (rf"model\.encoder\.layers\.{L}\.activation_fn\.(.*)", r"encoder.layers.\1.ffn.activation.\2"),
        (r"model\.encoder\.query_scale\.(.*)", r"encoder.query_scale.\1"),
        (rf"model\.decoder\.layers\.{L}\.{SA}_([qk])(?:uery|ey)_(content|pos)_proj\.(.*)", r"decoder.layers.\1.sa_\2\3_proj.\4"),
        (rf"model\.decoder\.layers\.{L}\.{SA}_value_proj\.(.*)", r"decoder.layers.\1.sa_v_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.{SA}\.output_proj\.(.*)", r"decoder.layers.\1.self_attn.out_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.{SA}_layer_norm\.(.*)", r"decoder.layers.\1.norm1.\2"),
        (rf"model\.decoder\.layers\.{L}\.{CA}_([qk])(?:uery|ey)_(content|pos)_proj\.(.*)", r"decoder.layers.\1.ca_\2\3_proj.\4"),
        (rf"model\.decoder\.layers\.{L}\.{CA}_query_pos_sine_proj\.(.*)", r"decoder.layers.\1.ca_qpos_sine_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.{CA}_value_proj\.(.*)", r"decoder.layers.\1.ca_v_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.{CA}\.output_proj\.(.*)", r"decoder.layers.\1.cross_attn.out_proj.\2"),
        (rf"model\.decoder\.layers\.{L}\.{CA}_layer_norm\.(.*)", r"decoder.layers.\1.norm2.\2"),
        (rf"model\.decoder\.layers\.{L}\.mlp\.final_layer_norm\.(.*)", r"decoder.layers.\1.norm3.\2"),
        (rf"model\.decoder\.layers\.{L}\.mlp\.fc([12])\.(.*)", r"decoder.layers.\1.ffn.linear\2.\3"),
        (rf"model\.decoder\.layers\.{L}\.mlp\.activation_fn\.(.*)", r"decoder.layers.\1.ffn.activation.\2"),
        (r"model\.decoder\.layernorm\.(.*)", r"decoder.norm.\1"),
        (r"model\.decoder\.(query_scale|ref_point_head|ref_anchor_head)\.(.*)", r"decoder.\1.\2"),
        (r"model\.query_refpoint_embeddings\.(.*)", r"refpoint_embed.\1"),
        (r"model\.input_projection\.(.*)", r"input_proj.\1"),
        (r"class_embed\.(.*)", r"class_embed.\1"),
        (r"bbox_predictor\.(.*)", r"bbox_embed.\1"),
    ),
    ignore=(BATCHNORM_COUNTER,),
)

MAPS = {"dab_detr_r50": {"official": OFFICIAL, "transformers": TRANSFORMERS},
        "dn_detr_r50": {"official": DN_OFFICIAL}}
CLASS_HEADS = {"dab_detr_r50": "class_embed.weight", "dn_detr_r50": "class_embed.weight"}
