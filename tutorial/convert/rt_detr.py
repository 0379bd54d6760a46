"""RT-DETR (lyuwenyu/RT-DETR, `rtdetr_pytorch/src/zoo/rtdetr/`, `src/nn/backbone/presnet.py`) and
Hugging Face `RTDetrForObjectDetection` onto `rtdetr_r50` and `rtdetr_r18`.

Official names: our backbone, hybrid encoder and heads were written with the official module
names (`backbone.conv1.conv1_1`, `backbone.res_layers.i.blocks.j.branch2a`, `encoder.input_proj`,
`encoder.lateral_convs`, `encoder.fpn_blocks`, ...), so most keys keep their name. What changes:
AIFI's and the decoder's self-attention are `nn.MultiheadAttention` (`in_proj_weight` 768 × 256
split into our `q_proj`, `k_proj`, `v_proj`), the FFNs' `linear1/2` sit in our `ffn`, and the
decoder's parts move: `decoder.decoder.layers` -> `decoder.layers`, `decoder.input_proj.i.conv/norm`
-> `input_proj.i.0/1`, `decoder.enc_output.0/1` -> `selection.enc_output/enc_output_norm`,
`decoder.enc_score_head` / `enc_bbox_head` -> `selection.class_head` / `box_head`,
`decoder.dec_score_head` / `dec_bbox_head` -> `class_embed` / `bbox_embed`,
`decoder.denoising_class_embed` -> `label_embed`. The official decoder layer builds and runs
`self_attn, norm1, cross_attn, norm2, linear1/2, norm3` in that order, as ours.
Key counts (source -> ours): official 736 -> 764 (R50), 533 -> 549 (R18; 510 without BN counters);
Hugging Face 764 -> 764 (R50), 549 -> 549 (R18 with `freeze_backbone_batch_norms=False`), 526 -> 549
(R18 as on the hub, frozen backbone BN: 23 counters fewer).

BatchNorm counters: the official R50 backbone uses frozen BN (no `num_batches_tracked`), R18 an
ordinary one; files converted from Paddle and Hugging Face's conversion script drop every counter.
`prepare` therefore gives any BN without one a counter of 0 (`batchnorm_counters`), and the R50
map ignores the backbone's (our frozen BN has none). The counter never enters an eval forward.

Where Hugging Face (transformers 5.24) differs from the official model:
- R18: HF's `RTDetrConvEncoder` replaces the backbone's BN by frozen BN when
  `freeze_backbone_batch_norms=True` (the default, and the hub's `PekingU/rtdetr_r18vd`), so its
  backbone BN weights and biases are buffers: 20,174,608 parameters against the official (and
  our) 20,184,464, 9,856 = 2 × 4,928 BN channels fewer. The tensors are the same and an eval
  forward is the same (frozen BN = BN with running statistics): both variants convert and give
  our outputs. R50 has frozen backbone BN in both (42,891,372 parameters).
- no padding mask: HF computes `pixel_mask` per level but uses it nowhere, like the official
  model (fixed 640 × 640 inputs). Ours uses a mask if given: on a batch without padding (an
  all-False mask) its outputs are HF's; on a padded batch they differ by design (rt_detr.py).
- AIFI positions: HF builds the 2-D sin-cos encoding in the row-major order of the tokens (fixed,
  PR #41380); the official `build_2d_sincos_position_embedding` scrambles positions on non-square
  maps (hybrid_encoder.py here, equal on square ones). Ours is HF's. With `eval_size` set, HF
  passes *no* position encoding to AIFI in eval mode (the official code uses one precomputed for
  `eval_spatial_size`): leave `eval_size=None`.
- anchors: generated for the input's own shape unless `anchor_image_size` is set (then the
  precomputed ones, right only for that size; the official `eval_spatial_size` does the same). An
  anchor too near the border (`valid_mask`, 0.01 < a < 0.99) is zeroed in the memory as officially;
  its box logit is `finfo.max` in HF and `inf` officially and here: both give the box 1 after
  the sigmoid, the same outputs.
- eval: the official decoder stops after layer `eval_idx` and returns only its output (no
  auxiliary outputs); HF and ours run every layer, and their last layer equals it. HF's
  `auxiliary_outputs` exist only with `labels` (the loss); the per-layer outputs are
  `intermediate_logits` and `intermediate_reference_points` (each layer's box), and
  `auxiliary_loss` changes nothing in the computation.
- training only: HF's `get_contrastive_denoising_training_group` is the official one (label noise
  ratio 0.5 applied as 0.25, padding slots at box 0); ours puts the padding slots at 0.5 (DINO's).
- Hugging Face files on the hub carry transformers 4's names (`self_attn.out_proj`, `layers.N.fc1`,
  `encoder.encoder.N.layers` for AIFI), renamed first (`HUB_NAMES`, from transformers 5's
  `conversion_mapping.py`); a top-level `class_embed.i` / `bbox_embed.i` (tied copies of
  `model.decoder.*` in some transformers 4 files) is dropped if the decoder's copy is present and
  equal, and renamed to it if absent.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from .deformable_detr import chain, same_tensors
from .keymap import KeyMap, substitutions

L = r"(\d+)"  # an index, kept by \1 in the replacement
DEFORMABLE = r"(sampling_offsets|attention_weights|value_proj|output_proj)"  # MSDeformAttn's four linears
PRESETS = ("rtdetr_r50", "rtdetr_r18")


def batchnorm_counters(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A `prepare` step: a `num_batches_tracked` of 0 for every BatchNorm (a `running_var` key)
    that has none, so that files saved without counters fill our BN's."""
    out = dict(state)
    for key in state:
        if key.endswith(".running_var"):
            counter = key[: -len("running_var")] + "num_batches_tracked"
            out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out


# --- official (lyuwenyu/RT-DETR, rtdetr_pytorch) ------------------------------------------------

OFFICIAL_SPLITS = (
    (rf"encoder\.encoder\.{L}\.layers\.{L}\.self_attn\.in_proj_(weight|bias)",
     tuple(rf"encoder.encoder.\1.layers.\2.self_attn.{p}_proj.\3" for p in "qkv")),
    (rf"decoder\.decoder\.layers\.{L}\.self_attn\.in_proj_(weight|bias)",
     tuple(rf"decoder.layers.\1.self_attn.{p}_proj.\2" for p in "qkv")),
)

OFFICIAL_RENAMES = (
    (r"backbone\.(.*)", r"backbone.\1"),  # PResNet: the official names (presnet.py)
    (r"encoder\.input_proj\.(.*)", r"encoder.input_proj.\1"),
    (rf"encoder\.encoder\.{L}\.layers\.{L}\.self_attn\.out_proj\.(.*)", r"encoder.encoder.\1.layers.\2.self_attn.out_proj.\3"),
    (rf"encoder\.encoder\.{L}\.layers\.{L}\.(linear[12])\.(.*)", r"encoder.encoder.\1.layers.\2.ffn.\3.\4"),
    (rf"encoder\.encoder\.{L}\.layers\.{L}\.(norm[12])\.(.*)", r"encoder.encoder.\1.layers.\2.\3.\4"),
    (r"encoder\.(lateral_convs|fpn_blocks|downsample_convs|pan_blocks)\.(.*)", r"encoder.\1.\2"),
    (rf"decoder\.input_proj\.{L}\.conv\.(.*)", r"input_proj.\1.0.\2"),
    (rf"decoder\.input_proj\.{L}\.norm\.(.*)", r"input_proj.\1.1.\2"),
    (rf"decoder\.decoder\.layers\.{L}\.self_attn\.out_proj\.(.*)", r"decoder.layers.\1.self_attn.out_proj.\2"),
    (rf"decoder\.decoder\.layers\.{L}\.cross_attn\.{DEFORMABLE}\.(.*)", r"decoder.layers.\1.cross_attn.\2.\3"),
    (rf"decoder\.decoder\.layers\.{L}\.(norm[123])\.(.*)", r"decoder.layers.\1.\2.\3"),
    (rf"decoder\.decoder\.layers\.{L}\.(linear[12])\.(.*)", r"decoder.layers.\1.ffn.\2.\3"),
    (r"decoder\.query_pos_head\.(.*)", r"decoder.query_pos_head.\1"),
    (r"decoder\.denoising_class_embed\.(.*)", r"label_embed.\1"),
    (r"decoder\.enc_output\.0\.(.*)", r"selection.enc_output.\1"),
    (r"decoder\.enc_output\.1\.(.*)", r"selection.enc_output_norm.\1"),
    (r"decoder\.enc_score_head\.(.*)", r"selection.class_head.\1"),
    (r"decoder\.enc_bbox_head\.(.*)", r"selection.box_head.\1"),
    (rf"decoder\.dec_score_head\.{L}\.(.*)", r"class_embed.\1.\2"),
    (rf"decoder\.dec_bbox_head\.{L}\.(.*)", r"bbox_embed.\1.\2"),
)

# --- Hugging Face transformers --------------------------------------------------------------

HUB_NAMES = ((r"\.out_proj\.", ".o_proj."), (r"layers\.(\d+)\.fc([12])\.", r"layers.\1.mlp.fc\2."),
             (r"model\.encoder\.encoder\.(\d+)\.layers", r"model.encoder.aifi.\1.layers"))  # transformers 4 -> 5


def decoder_heads(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A `prepare` step: a top-level `class_embed.i` / `bbox_embed.i` (transformers 4's tied copy)
    becomes `model.decoder.*`, or is dropped when that key is present (and equal)."""
    out = {}
    for key, tensor in state.items():
        if re.match(r"(class_embed|bbox_embed)\.", key):
            twin = "model.decoder." + key
            if twin in state:
                same_tensors(((re.escape(key), twin),))({key: tensor, twin: state[twin]})
                continue
            key = twin
        out[key] = tensor
    return out


def backbone_transformers(conv: str, norm: str) -> tuple[tuple[str, str], ...]:
    """HF's `RTDetrResNetBackbone` names -> PResNet's: `embedder.embedder.k` the stem, stage i
    layer j's `layer.0/1/2` branch2a/b/c, its `shortcut` (pooled: `shortcut.1`) `short` (`short.conv`)."""
    b = r"model\.backbone\.model\."
    return (
        (rf"{b}embedder\.embedder\.0\.{conv}", r"backbone.conv1.conv1_1.conv.\1"),
        (rf"{b}embedder\.embedder\.1\.{conv}", r"backbone.conv1.conv1_2.conv.\1"),
        (rf"{b}embedder\.embedder\.2\.{conv}", r"backbone.conv1.conv1_3.conv.\1"),
        (rf"{b}embedder\.embedder\.0\.{norm}", r"backbone.conv1.conv1_1.norm.\1"),
        (rf"{b}embedder\.embedder\.1\.{norm}", r"backbone.conv1.conv1_2.norm.\1"),
        (rf"{b}embedder\.embedder\.2\.{norm}", r"backbone.conv1.conv1_3.norm.\1"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.layer\.0\.{conv}", r"backbone.res_layers.\1.blocks.\2.branch2a.conv.\3"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.layer\.1\.{conv}", r"backbone.res_layers.\1.blocks.\2.branch2b.conv.\3"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.layer\.2\.{conv}", r"backbone.res_layers.\1.blocks.\2.branch2c.conv.\3"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.layer\.0\.{norm}", r"backbone.res_layers.\1.blocks.\2.branch2a.norm.\3"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.layer\.1\.{norm}", r"backbone.res_layers.\1.blocks.\2.branch2b.norm.\3"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.layer\.2\.{norm}", r"backbone.res_layers.\1.blocks.\2.branch2c.norm.\3"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.shortcut\.1\.{conv}", r"backbone.res_layers.\1.blocks.\2.short.conv.conv.\3"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.shortcut\.1\.{norm}", r"backbone.res_layers.\1.blocks.\2.short.conv.norm.\3"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.shortcut\.{conv}", r"backbone.res_layers.\1.blocks.\2.short.conv.\3"),
        (rf"{b}encoder\.stages\.{L}\.layers\.{L}\.shortcut\.{norm}", r"backbone.res_layers.\1.blocks.\2.short.norm.\3"),
    )


TRANSFORMERS_RENAMES = backbone_transformers(r"convolution\.(weight)", r"normalization\.(.*)") + (
    (r"model\.encoder_input_proj\.(.*)", r"encoder.input_proj.\1"),
    (rf"model\.encoder\.aifi\.{L}\.layers\.{L}\.self_attn\.([qkv])_proj\.(.*)", r"encoder.encoder.\1.layers.\2.self_attn.\3_proj.\4"),
    (rf"model\.encoder\.aifi\.{L}\.layers\.{L}\.self_attn\.o_proj\.(.*)", r"encoder.encoder.\1.layers.\2.self_attn.out_proj.\3"),
    (rf"model\.encoder\.aifi\.{L}\.layers\.{L}\.mlp\.fc([12])\.(.*)", r"encoder.encoder.\1.layers.\2.ffn.linear\3.\4"),
    (rf"model\.encoder\.aifi\.{L}\.layers\.{L}\.self_attn_layer_norm\.(.*)", r"encoder.encoder.\1.layers.\2.norm1.\3"),
    (rf"model\.encoder\.aifi\.{L}\.layers\.{L}\.final_layer_norm\.(.*)", r"encoder.encoder.\1.layers.\2.norm2.\3"),
    (r"model\.encoder\.(lateral_convs|fpn_blocks|downsample_convs|pan_blocks)\.(.*)", r"encoder.\1.\2"),
    (r"model\.decoder_input_proj\.(.*)", r"input_proj.\1"),
    (rf"model\.decoder\.layers\.{L}\.self_attn\.([qkv])_proj\.(.*)", r"decoder.layers.\1.self_attn.\2_proj.\3"),
    (rf"model\.decoder\.layers\.{L}\.self_attn\.o_proj\.(.*)", r"decoder.layers.\1.self_attn.out_proj.\2"),
    (rf"model\.decoder\.layers\.{L}\.self_attn_layer_norm\.(.*)", r"decoder.layers.\1.norm1.\2"),
    (rf"model\.decoder\.layers\.{L}\.encoder_attn\.{DEFORMABLE}\.(.*)", r"decoder.layers.\1.cross_attn.\2.\3"),
    (rf"model\.decoder\.layers\.{L}\.encoder_attn_layer_norm\.(.*)", r"decoder.layers.\1.norm2.\2"),
    (rf"model\.decoder\.layers\.{L}\.mlp\.fc([12])\.(.*)", r"decoder.layers.\1.ffn.linear\2.\3"),
    (rf"model\.decoder\.layers\.{L}\.final_layer_norm\.(.*)", r"decoder.layers.\1.norm3.\2"),
    (r"model\.decoder\.query_pos_head\.(.*)", r"decoder.query_pos_head.\1"),
    (r"model\.denoising_class_embed\.(.*)", r"label_embed.\1"),
    (r"model\.enc_output\.0\.(.*)", r"selection.enc_output.\1"),
    (r"model\.enc_output\.1\.(.*)", r"selection.enc_output_norm.\1"),
    (r"model\.enc_score_head\.(.*)", r"selection.class_head.\1"),
    (r"model\.enc_bbox_head\.(.*)", r"selection.box_head.\1"),
    (rf"model\.decoder\.class_embed\.{L}\.(.*)", r"class_embed.\1.\2"),
    (rf"model\.decoder\.bbox_embed\.{L}\.(.*)", r"bbox_embed.\1.\2"),
)

FROZEN_BACKBONE_COUNTERS = {  # R50: our backbone BN is frozen (no counter); R18: ordinary BN
    "rtdetr_r50": ((r"backbone\..*num_batches_tracked", "frozen backbone BN: no counter"),),
    "rtdetr_r18": (),
}
HF_FROZEN_BACKBONE_COUNTERS = {
    "rtdetr_r50": ((r"model\.backbone\..*num_batches_tracked", "frozen backbone BN: no counter"),),
    "rtdetr_r18": (),
}


def official_map(preset: str) -> KeyMap:
    return KeyMap(splits=OFFICIAL_SPLITS, renames=OFFICIAL_RENAMES, ignore=FROZEN_BACKBONE_COUNTERS[preset],
                  prepare=batchnorm_counters)


def transformers_map(preset: str) -> KeyMap:
    return KeyMap(renames=TRANSFORMERS_RENAMES, ignore=HF_FROZEN_BACKBONE_COUNTERS[preset],
                  prepare=chain(substitutions(HUB_NAMES), decoder_heads, batchnorm_counters))


OFFICIAL = {p: official_map(p) for p in PRESETS}
TRANSFORMERS = {p: transformers_map(p) for p in PRESETS}

MAPS = {p: {"official": OFFICIAL[p], "transformers": TRANSFORMERS[p]} for p in PRESETS}
CLASS_HEADS = {p: "class_embed.0.weight" for p in PRESETS}
