"""DINO-4scale (IDEA-Research/DINO, `models/dino/dino.py`, `deformable_transformer.py`, config
`config/DINO/DINO_4scale.py`) onto `dino_4scale_r50`. Hugging Face transformers has no DINO model:
only the official format is mapped.

Key counts (source -> ours): 626 -> 592. The official decoder's self-attention is an
`nn.MultiheadAttention` (`in_proj_weight` 768 × 256 split into our `q_proj`, `k_proj`, `v_proj`:
4 keys more per layer here, 24 in all); 58 official keys are aliases of others and ignored (after
`same_tensors` checks that each holds the same tensor as the key it aliases):
- `dec_pred_class_embed_share`: one class head under `class_embed.0..5` -> our single `class_embed`
  (from `class_embed.0`; `class_embed.1..5` ignored);
- `dec_pred_bbox_embed_share`: one box head under `bbox_embed.0..5`, kept as is (ours is also one
  module listed six times);
- `transformer.decoder.class_embed.i` / `transformer.decoder.bbox_embed.i`: the same modules again
  (DINO hands the heads to its decoder), ignored.
Names to watch: as in Deformable DETR, the decoder layer's `norm1` follows the cross-attention and
`norm2` the self-attention (ours: the other way round); the positional-query MLP is
`transformer.decoder.ref_point_head` (ours `decoder.query_pos_head`), the denoising label
embedding `label_enc` (92 = `dn_labelbook_size` + 1 rows; ours `label_embed`), the learned content
queries `transformer.tgt_embed` (900 × 256), the proposal heads `transformer.enc_out_class_embed`
/ `enc_out_bbox_embed` (`two_stage_*_share` False: their own tensors).
"""
from __future__ import annotations

from .deformable_detr import OFFICIAL_LAYERS, OFFICIAL_SPLITS, same_tensors
from .detr import BATCHNORM_COUNTER
from .keymap import KeyMap

L = r"(\d+)"  # an index, kept by \1 in the replacement
ALIASES = (  # (alias, the key it must equal)
    (r"class_embed\.([1-9]\d*)\.(.*)", r"class_embed.0.\2"),
    (r"bbox_embed\.([1-9]\d*)\.(.*)", r"bbox_embed.0.\2"),
    (r"transformer\.decoder\.class_embed\.(\d+)\.(.*)", r"class_embed.\1.\2"),
    (r"transformer\.decoder\.bbox_embed\.(\d+)\.(.*)", r"bbox_embed.\1.\2"),
)

OFFICIAL = KeyMap(
    prepare=same_tensors(ALIASES),
    splits=OFFICIAL_SPLITS,
    renames=OFFICIAL_LAYERS + (
        (r"transformer\.decoder\.norm\.(.*)", r"decoder.norm.\1"),
        (r"transformer\.decoder\.ref_point_head\.(.*)", r"decoder.query_pos_head.\1"),
        (r"transformer\.tgt_embed\.(.*)", r"tgt_embed.\1"),
        (r"transformer\.enc_output\.(.*)", r"selection.enc_output.\1"),
        (r"transformer\.enc_output_norm\.(.*)", r"selection.enc_output_norm.\1"),
        (r"transformer\.enc_out_class_embed\.(.*)", r"selection.class_head.\1"),
        (r"transformer\.enc_out_bbox_embed\.(.*)", r"selection.box_head.\1"),
        (r"label_enc\.(.*)", r"label_embed.\1"),
        (r"class_embed\.0\.(.*)", r"class_embed.\1"),
        (rf"bbox_embed\.{L}\.(.*)", r"bbox_embed.\1.\2"),
    ),
    ignore=(
        BATCHNORM_COUNTER,
        (r"class_embed\.[1-9]\d*\..*", "the shared class head again (dec_pred_class_embed_share)"),
        (r"transformer\.decoder\.(class_embed|bbox_embed)\..*", "the heads again, handed to the decoder"),
    ),
)

MAPS = {"dino_4scale_r50": {"official": OFFICIAL}}
CLASS_HEADS = {"dino_4scale_r50": "class_embed.weight"}
