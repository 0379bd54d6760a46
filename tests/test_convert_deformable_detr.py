"""Deformable DETR onto its three presets: Hugging Face's `DeformableDetrForObjectDetection` as the
oracle (random, perturbed weights; a padded batch of two sizes), and the official format of
fundamentalvision/Deformable-DETR (renamed here from the HF state dict, independently of the map)."""
from __future__ import annotations

import re

import pytest
import torch

from tests.hf_oracle import dummy_labels, max_difference, padded_batch, perturb, transformers
from tutorial.convert import ConversionError, KeyMap, apply, convert_state_dict
from tutorial.convert.deformable_detr import MAPS
from tutorial.models import build_model

# Max |ours - HF| allowed. The mapping is exact: the first layer's output projection already
# differs by float32 rounding alone (5e-7: the same nn.Linear on the same values, laid out
# differently in memory), and 6 encoder + 6 decoder layers amplify it, the more with iterative box
# refinement (each layer's σ⁻¹ of the previous boxes) and two-stage proposals. Measured over three
# seeds: plain 4e-5, refine 1e-3, two-stage 9e-3. A wrong mapping moves outputs by > 0.1.
TOLERANCE = {"deformable_detr_r50": 1e-4, "deformable_detr_r50_refine": 3e-3, "deformable_detr_r50_two_stage": 3e-2}
CLASS_HEAD = 256 * 91 + 91  # one Linear(256, 91)

VARIANTS = {  # preset: (HF config, image sizes; two-stage needs >= 300 tokens for its top-300 proposals)
    "deformable_detr_r50": ({}, ((3, 96, 128), (3, 80, 100))),
    "deformable_detr_r50_refine": ({"with_box_refine": True}, ((3, 96, 128), (3, 80, 100))),
    "deformable_detr_r50_two_stage": ({"with_box_refine": True, "two_stage": True}, ((3, 128, 160), (3, 112, 144))),
}
KEYS = {  # preset: (HF keys, official keys, our keys)
    "deformable_detr_r50": (585, 561, 585),
    "deformable_detr_r50_refine": (621, 597, 621),
    "deformable_detr_r50_two_stage": (654, 630, 640),
}


def hf_config(preset: str, **extra):
    kwargs, _ = VARIANTS[preset]
    return transformers.DeformableDetrConfig(num_labels=91, use_pretrained_backbone=False, **kwargs, **extra)


@pytest.fixture(scope="module", params=list(VARIANTS))
def case(request):
    """(preset, perturbed HF model, batch, HF outputs with `auxiliary_outputs`)."""
    preset = request.param
    torch.manual_seed(0)  # HF's random init: the same model whatever ran before in this process
    hf = perturb(transformers.DeformableDetrForObjectDetection(hf_config(preset, auxiliary_loss=True)))
    images, mask, pixel_mask = batch = padded_batch(sizes=VARIANTS[preset][1])
    with torch.no_grad():  # `labels` only to get `auxiliary_outputs` back (the loss is not compared)
        out = hf(pixel_values=images, pixel_mask=pixel_mask, labels=dummy_labels())
    return preset, hf, batch, out


def differences(model, case) -> dict[str, float]:
    """Max |ours - HF| over logits, boxes, every auxiliary output and (two-stage) the encoder's proposals."""
    _, _, (images, mask, _), out = case
    with torch.no_grad():
        ours = model(images, mask)
    diffs = max_difference(ours, out)
    assert len(out.auxiliary_outputs) == 5
    if out.enc_outputs_class is not None:
        diffs["enc_logits"] = (ours["enc_outputs"]["pred_logits"] - out.enc_outputs_class).abs().max().item()
        diffs["enc_boxes"] = (ours["enc_outputs"]["pred_boxes"] - out.enc_outputs_coord_logits.sigmoid()).abs().max().item()
    return diffs


def official_names(hf_state: dict) -> dict:
    """The HF state dict under fundamentalvision/Deformable-DETR's key names, q, k, v fused into
    `nn.MultiheadAttention`'s `in_proj_weight` / `in_proj_bias`. The official decoder layer calls
    the norm after its self-attention `norm2` and the one after its cross-attention `norm1`."""
    rules = [(r"^model\.backbone\.model\.", "backbone.0.body."), (r"^model\.input_proj\.", "input_proj."),
             (r"^model\.query_position_embeddings\.", "query_embed."),
             (r"^model\.(level_embed|reference_points|enc_output|enc_output_norm|pos_trans|pos_trans_norm)", r"transformer.\1"),
             (r"^model\.(encoder|decoder)\.", r"transformer.\1."), (r"\.encoder_attn\.", ".cross_attn."),
             (r"\.o_proj\.", ".out_proj."), (r"\.mlp\.fc([12])\.", r".linear\1.")]
    norms = {"encoder": {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"},
             "decoder": {"self_attn_layer_norm": "norm2", "encoder_attn_layer_norm": "norm1", "final_layer_norm": "norm3"}}
    out, fused = {}, {}
    for key, t in hf_state.items():
        m = re.match(r"model\.(encoder|decoder)\.layers\.\d+\.(\w+_layer_norm)\.", key)
        if m:
            key = key.replace(m.group(2), norms[m.group(1)][m.group(2)])
        for a, b in rules:
            key = re.sub(a, b, key)
        m = re.match(r"(.*self_attn)\.([qkv])_proj\.(weight|bias)", key)
        if m:
            fused.setdefault(f"{m.group(1)}.in_proj_{m.group(3)}", {})[m.group(2)] = t
            continue
        out[key] = t
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3·C, ...)
    return out


def test_transformers_outputs_equal(case):
    preset, hf, _, _ = case
    model, mapped = convert_state_dict(preset, hf.state_dict(), "transformers")
    hf_keys, _, our_keys = KEYS[preset]
    assert len(hf.state_dict()) == hf_keys and len(mapped) == our_keys == len(model.state_dict())
    diffs = differences(model, case)
    assert max(diffs.values()) < TOLERANCE[preset], diffs


def test_auxiliary_loss_changes_nothing(case):
    """Unlike DETR's, HF's Deformable DETR computes the same thing with or without
    `auxiliary_loss` and `labels`: the flag only decides what the loss returns."""
    _, hf, (images, _, pixel_mask), out = case
    hf.config.auxiliary_loss = False
    try:
        with torch.no_grad():
            plain = hf(pixel_values=images, pixel_mask=pixel_mask)
    finally:
        hf.config.auxiliary_loss = True
    assert torch.equal(plain.logits, out.logits) and torch.equal(plain.pred_boxes, out.pred_boxes)
    assert torch.equal(plain.intermediate_hidden_states, out.intermediate_hidden_states)


def test_hub_key_names_convert_alike(case):
    """A file from the hub holds transformers 4's names; it converts to the same tensors."""
    preset, hf, _, _ = case
    state = hf.state_dict()
    legacy = {re.sub(r"layers\.(\d+)\.mlp\.fc", r"layers.\1.fc", k.replace("self_attn.o_proj", "self_attn.out_proj")
                     .replace("model.backbone.", "model.backbone.conv_encoder.")): v for k, v in state.items()}
    assert legacy.keys() != state.keys()
    _, a = convert_state_dict(preset, state, "transformers")
    _, b = convert_state_dict(preset, legacy, "transformers")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_outputs_equal(case):
    preset, hf, _, _ = case
    official = official_names(hf.state_dict())
    assert any(k.endswith("self_attn.in_proj_weight") for k in official)
    model, mapped = convert_state_dict(preset, official, "official")
    _, official_keys, our_keys = KEYS[preset]
    assert len(official) == official_keys and len(mapped) == our_keys  # 6 x (6 q/k/v keys fused into 2)
    diffs = differences(model, case)
    assert max(diffs.values()) < TOLERANCE[preset], diffs


def test_parameter_counts():
    """HF's refine model ties its six class heads into one (a class-level tie it keeps when
    `with_box_refine=True`): five heads fewer than the official model and ours. Plain and
    two-stage hold the same parameters."""
    for preset, expected_gap in (("deformable_detr_r50", 0), ("deformable_detr_r50_refine", 5 * CLASS_HEAD),
                                 ("deformable_detr_r50_two_stage", 0)):
        with torch.device("meta"):
            hf = transformers.DeformableDetrForObjectDetection(hf_config(preset))
            ours = build_model(preset)
        gap = sum(p.numel() for p in ours.parameters()) - sum(p.numel() for p in hf.parameters())
        assert gap == expected_gap, (preset, gap)
    assert sum(p.numel() for p in ours.parameters()) == 41_181_529


def test_official_refine_keeps_six_class_heads(case):
    """An official refine checkpoint has six distinct class heads: they survive the conversion
    (which HF's refine model could not hold)."""
    preset, hf, _, _ = case
    if preset != "deformable_detr_r50_refine":
        pytest.skip("refine only")
    official = official_names(hf.state_dict())
    assert all(torch.equal(official[f"class_embed.{i}.weight"], official["class_embed.0.weight"]) for i in range(6))
    for i in range(6):
        official[f"class_embed.{i}.weight"] = official[f"class_embed.{i}.weight"] + 0.01 * i
    model, _ = convert_state_dict(preset, official, "official")
    heads = [model.class_embed[i].weight for i in range(6)]
    assert all(not torch.equal(heads[0], h) for h in heads[1:])
    assert all(torch.equal(h, official[f"class_embed.{i}.weight"]) for i, h in enumerate(heads))


def test_an_alias_that_differs_is_refused(case):
    """A key naming a shared module twice must hold the same tensor both times."""
    preset, hf, _, _ = case
    official = official_names(hf.state_dict())
    alias = {"deformable_detr_r50": "class_embed.3.bias",
             "deformable_detr_r50_refine": "transformer.decoder.bbox_embed.2.layers.0.weight",
             "deformable_detr_r50_two_stage": "transformer.decoder.class_embed.6.weight"}[preset]
    official[alias] = official[alias] + 1.0
    with pytest.raises(ConversionError, match="same tensor"):
        convert_state_dict(preset, official, "official")


SWAPS = {  # (negative controls) two keys of equal shape exchanged; every key still loads with strict=True
    "official decoder norm1 <-> norm2 (taken in build order)": ("official", (
        (r"transformer\.decoder\.layers\.(\d+)\.norm1\.(.*)", r"decoder.layers.\1.norm1.\2"),
        (r"transformer\.decoder\.layers\.(\d+)\.norm2\.(.*)", r"decoder.layers.\1.norm2.\2"))),
    "HF cross-attention value_proj <-> output_proj": ("transformers", (
        (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.value_proj\.(.*)", r"decoder.layers.\1.cross_attn.output_proj.\2"),
        (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.output_proj\.(.*)", r"decoder.layers.\1.cross_attn.value_proj.\2"))),
}


@pytest.mark.parametrize("swap", SWAPS)
def test_a_wrong_mapping_is_caught(case, swap):
    """Negative control: only the outputs can tell a swapped pair, and they do."""
    preset, hf, _, _ = case
    if preset != "deformable_detr_r50":
        pytest.skip("one preset is enough")
    source, rules = SWAPS[swap]
    right = MAPS[preset][source]
    wrong = KeyMap(renames=rules + right.renames, splits=right.splits, ignore=right.ignore, prepare=right.prepare)
    state = official_names(hf.state_dict()) if source == "official" else hf.state_dict()
    model, _ = convert_state_dict(preset, state, source)
    model.load_state_dict(apply(wrong, state, model.state_dict()), strict=True)
    assert max(differences(model, case).values()) > 10 * TOLERANCE[preset]
