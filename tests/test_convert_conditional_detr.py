"""Conditional DETR onto `conditional_detr_r50`: Hugging Face's `ConditionalDetrForObjectDetection`
as the oracle (random, perturbed weights; a padded batch of two sizes), the hub's transformers-4
names, and the official format of Atten4Vis/ConditionalDETR."""
from __future__ import annotations

import re

import pytest
import torch

from tests.hf_oracle import padded_batch, perturb, transformers
from tutorial.convert import KeyMap, apply, convert_state_dict
from tutorial.convert.conditional_detr import OFFICIAL, TRANSFORMERS
from tutorial.convert.files import guess_source

TOLERANCE = 1e-4
PRESET = "conditional_detr_r50"


@pytest.fixture(scope="module")
def hf_model():
    # auxiliary_loss=False: with True, transformers 5 feeds each decoder layer a normalised input
    # (see tutorial/convert/conditional_detr.py), which the official model does not
    cfg = transformers.ConditionalDetrConfig(num_labels=91, use_pretrained_backbone=False, auxiliary_loss=False,
                                             num_queries=300)
    return perturb(transformers.ConditionalDetrForObjectDetection(cfg))


@pytest.fixture(scope="module")
def hf_outputs(hf_model):
    """HF's final logits and boxes, and per decoder layer 0..4 the heads on its normalised hidden
    state, relative to the one reference point (as HF's own auxiliary outputs, without the
    normalised inputs that auxiliary_loss=True would feed the next layer)."""
    from transformers.models.conditional_detr.modeling_conditional_detr import inverse_sigmoid
    images, mask, pixel_mask = padded_batch()
    m = hf_model
    with torch.no_grad():
        out = m(pixel_values=images, pixel_mask=pixel_mask, output_hidden_states=True)
        reference = m.model.decoder.ref_point_head(m.model.query_position_embeddings.weight).sigmoid()  # (Q, 2)

        def heads(h):  # (B, Q, C) -> logits (B, Q, K), boxes (B, Q, 4)
            delta = m.bbox_predictor(h)
            delta[..., :2] += inverse_sigmoid(reference)
            return m.class_labels_classifier(h), delta.sigmoid()

        final = heads(out.last_hidden_state)
        assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(final, (out.logits, out.pred_boxes)))  # HF's heads
        hidden = out.decoder_hidden_states  # (input, layers 0..4, normalised last)
        assert len(hidden) == 7
        aux = [heads(m.model.decoder.layernorm(h)) for h in hidden[1:-1]]
    return out.logits, out.pred_boxes, aux


def differences(model, hf_outputs) -> dict[str, float]:
    """Max |ours - HF| over the final and every auxiliary output."""
    images, mask, _ = padded_batch()
    with torch.no_grad():
        ours = model(images, mask)
    logits, boxes, aux = hf_outputs
    diffs = {"logits": (ours["pred_logits"] - logits).abs().max().item(),
             "boxes": (ours["pred_boxes"] - boxes).abs().max().item()}
    assert len(ours["aux_outputs"]) == len(aux) == 5
    for i, (a, (lg, bx)) in enumerate(zip(ours["aux_outputs"], aux)):
        diffs[f"aux{i}_logits"] = (a["pred_logits"] - lg).abs().max().item()
        diffs[f"aux{i}_boxes"] = (a["pred_boxes"] - bx).abs().max().item()
    return diffs


# Atten4Vis/ConditionalDETR's names, from its models/transformer.py and conditional_detr.py
OFFICIAL_MODULES = {"self_attn.q_content_proj": "sa_qcontent_proj", "self_attn.q_pos_proj": "sa_qpos_proj",
                    "self_attn.k_content_proj": "sa_kcontent_proj", "self_attn.k_pos_proj": "sa_kpos_proj",
                    "self_attn.v_proj": "sa_v_proj", "self_attn.o_proj": "self_attn.out_proj",
                    "encoder_attn.q_content_proj": "ca_qcontent_proj", "encoder_attn.q_pos_proj": "ca_qpos_proj",
                    "encoder_attn.k_content_proj": "ca_kcontent_proj", "encoder_attn.k_pos_proj": "ca_kpos_proj",
                    "encoder_attn.v_proj": "ca_v_proj", "encoder_attn.q_pos_sine_proj": "ca_qpos_sine_proj",
                    "encoder_attn.o_proj": "cross_attn.out_proj", "self_attn_layer_norm": "norm1",
                    "encoder_attn_layer_norm": "norm2", "mlp.fc1": "linear1", "mlp.fc2": "linear2"}
OFFICIAL_TOP = {"model.decoder.layernorm": "transformer.decoder.norm",
                "model.decoder.query_scale": "transformer.decoder.query_scale",
                "model.decoder.ref_point_head": "transformer.decoder.ref_point_head",
                "model.input_projection": "input_proj", "model.query_position_embeddings": "query_embed",
                "class_labels_classifier": "class_embed", "bbox_predictor": "bbox_embed"}


def official_names(hf_state: dict) -> dict:
    """The HF state dict under Atten4Vis/ConditionalDETR's key names, the encoder's q, k, v fused
    into `nn.MultiheadAttention`'s `in_proj_weight` / `in_proj_bias`."""
    out, fused = {}, {}
    for key, t in hf_state.items():
        if key.startswith("model.backbone.model."):
            out["backbone.0.body." + key[len("model.backbone.model."):]] = t
            continue
        m = re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m:
            part, i, module, kind = m.groups()
            if part == "encoder":
                if module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                    fused.setdefault(f"transformer.encoder.layers.{i}.self_attn.in_proj_{kind}", {})[module[-6]] = t
                    continue
                name = {"self_attn.o_proj": "self_attn.out_proj", "final_layer_norm": "norm2"}.get(module)
            else:
                name = {"final_layer_norm": "norm3"}.get(module)
            name = name or OFFICIAL_MODULES[module]
            out[f"transformer.{part}.layers.{i}.{name}.{kind}"] = t
            continue
        prefix = next(p for p in OFFICIAL_TOP if key.startswith(p + "."))
        out[OFFICIAL_TOP[prefix] + key[len(prefix):]] = t
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3·C, ...)
    return out


def hub_names(hf_state: dict) -> dict:
    """The HF state dict under transformers 4's names (those of the hub's files): the decoder's
    projections at layer level with the official names, `out_proj`, `fc1`, `conv_encoder`."""
    out = {}
    for key, t in hf_state.items():
        key = key.replace("model.backbone.", "model.backbone.conv_encoder.").replace(".o_proj.", ".out_proj.")
        key = re.sub(r"\.mlp\.fc([12])\.", r".fc\1.", key)
        m = re.fullmatch(r"(model\.decoder\.layers\.\d+)\.(self_attn|encoder_attn)\.(\w+_proj)\.(weight|bias)", key)
        if m and m.group(3) != "out_proj":
            short = OFFICIAL_MODULES[f"{m.group(2)}.{m.group(3)}"]
            key = f"{m.group(1)}.{short}.{m.group(4)}"
        out[key] = t
    return out


def test_transformers_outputs_equal(hf_model, hf_outputs):
    state = hf_model.state_dict()
    model, mapped = convert_state_dict(PRESET, state, "transformers")
    assert len(state) == len(mapped) == 588
    diffs = differences(model, hf_outputs)
    assert max(diffs.values()) < TOLERANCE, diffs


def test_hub_key_names_convert_alike(hf_model):
    """A file from the hub holds transformers 4's names; it converts to the same tensors."""
    state = hf_model.state_dict()
    legacy = hub_names(state)
    assert "model.decoder.layers.0.ca_qpos_sine_proj.weight" in legacy and len(legacy) == 588
    _, a = convert_state_dict(PRESET, state, "transformers")
    _, b = convert_state_dict(PRESET, legacy, "transformers")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_outputs_equal(hf_model, hf_outputs):
    official = official_names(hf_model.state_dict())
    assert "transformer.decoder.layers.0.ca_qpos_proj.weight" in official
    assert "transformer.decoder.layers.1.ca_qpos_proj.weight" not in official  # first layer only
    assert guess_source(official) == "official" and guess_source(hf_model.state_dict()) == "transformers"
    model, mapped = convert_state_dict(PRESET, official)
    assert len(official) == 564 and len(mapped) == 588  # 6 encoder attentions: 6 q/k/v keys fused into 2 each
    diffs = differences(model, hf_outputs)
    assert max(diffs.values()) < TOLERANCE, diffs


SWAPS = {  # (negative controls) two keys of equal shape exchanged; every key still loads with strict=True
    "decoder norm1 <-> norm2": ((r"model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(.*)", r"decoder.layers.\1.norm2.\2"),
                                (r"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(.*)", r"decoder.layers.\1.norm1.\2")),
    "cross-attention content q <-> spatial q": (
        (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.q_content_proj\.(.*)", r"decoder.layers.\1.ca_qpos_sine_proj.\2"),
        (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.q_pos_sine_proj\.(.*)", r"decoder.layers.\1.ca_qcontent_proj.\2")),
}


@pytest.mark.parametrize("swap", SWAPS)
def test_a_wrong_mapping_is_caught(hf_model, hf_outputs, swap):
    """Negative control: only the outputs can tell a swapped pair, and they do."""
    wrong = KeyMap(renames=SWAPS[swap] + TRANSFORMERS.renames, ignore=TRANSFORMERS.ignore, prepare=TRANSFORMERS.prepare)
    model, _ = convert_state_dict(PRESET, hf_model.state_dict(), "transformers")
    model.load_state_dict(apply(wrong, hf_model.state_dict(), model.state_dict()), strict=True)
    assert max(differences(model, hf_outputs).values()) > 10 * TOLERANCE


def test_a_wrong_split_order_is_caught(hf_model, hf_outputs):
    """Negative control on the official map: the fused q, k, v read as k, q, v still loads."""
    wrong = KeyMap(splits=tuple((p, (t[1], t[0], t[2])) for p, t in OFFICIAL.splits), renames=OFFICIAL.renames,
                   ignore=OFFICIAL.ignore)
    official = official_names(hf_model.state_dict())
    model, _ = convert_state_dict(PRESET, official, "official")
    model.load_state_dict(apply(wrong, official, model.state_dict()), strict=True)
    assert max(differences(model, hf_outputs).values()) > 10 * TOLERANCE
