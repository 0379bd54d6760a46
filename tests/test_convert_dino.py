"""DINO-4scale onto `dino_4scale_r50`. Hugging Face has no DINO, so the fixture is an official-format
state dict written here from the key names and shapes of IDEA-Research/DINO (`DINO_4scale.py`:
C=256, 8 heads, 4 levels, 4 points, 6 + 6 layers, FFN 2048, 900 queries, 91 classes,
`dn_labelbook_size` 91, shared decoder heads), filled with distinct random tensors: it must load
strictly, and chosen tensors must land where the documented rules put them."""
from __future__ import annotations

import re

import pytest
import torch

from tutorial.convert import ConversionError, KeyMap, apply, convert_state_dict
from tutorial.convert.dino import OFFICIAL
from tutorial.models import build_model

C, FFN, LAYERS, LEVELS, HEADS, POINTS, QUERIES, CLASSES = 256, 2048, 6, 4, 8, 4, 900, 91


def linear(prefix: str, n_in: int, n_out: int) -> dict:
    return {f"{prefix}.weight": (n_out, n_in), f"{prefix}.bias": (n_out,)}


def mlp(prefix: str, n_in: int, hidden: int, n_out: int, n: int) -> dict:
    dims = [n_in] + [hidden] * (n - 1) + [n_out]
    return {k: v for i in range(n) for k, v in linear(f"{prefix}.layers.{i}", dims[i], dims[i + 1]).items()}


def deformable(prefix: str) -> dict:
    return {**linear(f"{prefix}.sampling_offsets", C, HEADS * LEVELS * POINTS * 2),
            **linear(f"{prefix}.attention_weights", C, HEADS * LEVELS * POINTS),
            **linear(f"{prefix}.value_proj", C, C), **linear(f"{prefix}.output_proj", C, C)}


def norm(prefix: str) -> dict:
    return {f"{prefix}.weight": (C,), f"{prefix}.bias": (C,)}


def official_shapes() -> dict:
    """Official key -> shape, from DINO's modules (the backbone: torchvision's ResNet-50 names under
    `backbone.0.body`, frozen BN without counters)."""
    ours = build_model("dino_4scale_r50").state_dict()
    shapes = {"backbone.0.body." + k[len("backbone.body."):]: tuple(v.shape) for k, v in ours.items()
              if k.startswith("backbone.body.")}
    for i, ch in enumerate((512, 1024, 2048)):
        shapes.update({f"input_proj.{i}.0.weight": (C, ch, 1, 1), f"input_proj.{i}.0.bias": (C,), **norm(f"input_proj.{i}.1")})
    shapes.update({"input_proj.3.0.weight": (C, 2048, 3, 3), "input_proj.3.0.bias": (C,), **norm("input_proj.3.1")})
    shapes["transformer.level_embed"] = (LEVELS, C)
    for i in range(LAYERS):
        e = f"transformer.encoder.layers.{i}"
        shapes.update({**deformable(f"{e}.self_attn"), **norm(f"{e}.norm1"), **linear(f"{e}.linear1", C, FFN),
                       **linear(f"{e}.linear2", FFN, C), **norm(f"{e}.norm2")})
        d = f"transformer.decoder.layers.{i}"
        shapes.update({**deformable(f"{d}.cross_attn"), **norm(f"{d}.norm1"),
                       f"{d}.self_attn.in_proj_weight": (3 * C, C), f"{d}.self_attn.in_proj_bias": (3 * C,),
                       **linear(f"{d}.self_attn.out_proj", C, C), **norm(f"{d}.norm2"),
                       **linear(f"{d}.linear1", C, FFN), **linear(f"{d}.linear2", FFN, C), **norm(f"{d}.norm3")})
    shapes.update({**norm("transformer.decoder.norm"), **mlp("transformer.decoder.ref_point_head", 2 * C, C, C, 2),
                   "transformer.tgt_embed.weight": (QUERIES, C), **linear("transformer.enc_output", C, C),
                   **norm("transformer.enc_output_norm"), **linear("transformer.enc_out_class_embed", C, CLASSES),
                   **mlp("transformer.enc_out_bbox_embed", C, C, 4, 3), "label_enc.weight": (CLASSES + 1, C)})
    for i in range(LAYERS):  # the shared heads, under four names each
        for p in ("", "transformer.decoder."):
            shapes.update({**linear(f"{p}class_embed.{i}", C, CLASSES), **mlp(f"{p}bbox_embed.{i}", C, C, 4, 3)})
    return shapes


@pytest.fixture(scope="module")
def official():
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in official_shapes().items()}
    for k in list(state):  # one class head and one box head, shared (dec_pred_*_embed_share)
        m = re.fullmatch(r"(?:transformer\.decoder\.)?(class_embed|bbox_embed)\.(\d+)\.(.*)", k)
        if m and k != f"{m[1]}.0.{m[3]}":
            state[k] = state[f"{m[1]}.0.{m[3]}"]
    return state


@pytest.fixture(scope="module")
def converted(official):
    return convert_state_dict("dino_4scale_r50", official, "official")[1]


def test_loads_strictly_with_key_counts(official, converted):
    model = build_model("dino_4scale_r50")
    assert len(official) == 626 and len(converted) == len(model.state_dict()) == 592
    model.load_state_dict(converted, strict=True)


LANDINGS = {  # our key -> (official key, rows of it) : where the documented rules put each tensor
    "decoder.layers.2.norm1.weight": ("transformer.decoder.layers.2.norm2.weight", None),
    "decoder.layers.2.norm2.weight": ("transformer.decoder.layers.2.norm1.weight", None),
    "decoder.layers.5.self_attn.q_proj.weight": ("transformer.decoder.layers.5.self_attn.in_proj_weight", slice(0, C)),
    "decoder.layers.5.self_attn.k_proj.weight": ("transformer.decoder.layers.5.self_attn.in_proj_weight", slice(C, 2 * C)),
    "decoder.layers.5.self_attn.v_proj.bias": ("transformer.decoder.layers.5.self_attn.in_proj_bias", slice(2 * C, 3 * C)),
    "decoder.layers.0.cross_attn.sampling_offsets.weight": ("transformer.decoder.layers.0.cross_attn.sampling_offsets.weight", None),
    "encoder.layers.3.norm2.bias": ("transformer.encoder.layers.3.norm2.bias", None),
    "encoder.layers.1.ffn.linear1.weight": ("transformer.encoder.layers.1.linear1.weight", None),
    "decoder.query_pos_head.layers.0.weight": ("transformer.decoder.ref_point_head.layers.0.weight", None),
    "decoder.norm.weight": ("transformer.decoder.norm.weight", None),
    "tgt_embed.weight": ("transformer.tgt_embed.weight", None),
    "level_embed": ("transformer.level_embed", None),
    "label_embed.weight": ("label_enc.weight", None),
    "class_embed.weight": ("class_embed.0.weight", None),
    "bbox_embed.4.layers.2.bias": ("bbox_embed.0.layers.2.bias", None),
    "selection.class_head.weight": ("transformer.enc_out_class_embed.weight", None),
    "selection.box_head.layers.1.weight": ("transformer.enc_out_bbox_embed.layers.1.weight", None),
    "selection.enc_output_norm.bias": ("transformer.enc_output_norm.bias", None),
    "input_proj.layers.3.0.weight": ("input_proj.3.0.weight", None),
    "input_proj.layers.1.1.bias": ("input_proj.1.1.bias", None),
    "backbone.body.layer3.2.bn2.running_var": ("backbone.0.body.layer3.2.bn2.running_var", None),
}


def misplaced(mapped: dict, official: dict) -> list[str]:
    return [ours for ours, (theirs, rows) in LANDINGS.items()
            if not torch.equal(mapped[ours], official[theirs] if rows is None else official[theirs][rows])]


def test_tensors_land_where_documented(official, converted):
    assert misplaced(converted, official) == []
    assert not torch.equal(official["transformer.enc_out_class_embed.weight"], official["class_embed.0.weight"])


def test_a_wrong_mapping_is_caught(official):
    """Negative control: decoder norm1/norm2 taken as named (no swap) still loads strictly; only
    the landing check tells."""
    swapped = ((r"transformer\.decoder\.layers\.(\d+)\.norm([12])\.(.*)", r"decoder.layers.\1.norm\2.\3"),)
    wrong = KeyMap(renames=swapped + OFFICIAL.renames, splits=OFFICIAL.splits, ignore=OFFICIAL.ignore,
                   prepare=OFFICIAL.prepare)
    model = build_model("dino_4scale_r50")
    mapped = apply(wrong, official, model.state_dict())
    model.load_state_dict(mapped, strict=True)
    assert set(misplaced(mapped, official)) == {"decoder.layers.2.norm1.weight", "decoder.layers.2.norm2.weight"}


def test_unequal_shared_heads_are_refused(official):
    state = dict(official)
    state["transformer.decoder.class_embed.3.bias"] = state["class_embed.3.bias"] + 1
    with pytest.raises(ConversionError, match="same tensor"):
        convert_state_dict("dino_4scale_r50", state, "official")
