"""DETR onto `detr_r50`: Hugging Face's `DetrForObjectDetection` as the oracle (random, perturbed
weights; a padded batch of two sizes), and the official format of facebookresearch/detr."""
from __future__ import annotations

import re

import pytest
import torch

from tests.hf_oracle import padded_batch, perturb, transformers
from tutorial.convert import KeyMap, apply, convert_state_dict
from tutorial.convert.detr import TRANSFORMERS

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def hf_model():
    # auxiliary_loss=False: with True, transformers 5 feeds each decoder layer a normalised input
    # (see tutorial/convert/detr.py), which the official model does not
    cfg = transformers.DetrConfig(num_labels=91, use_pretrained_backbone=False, auxiliary_loss=False)
    return perturb(transformers.DetrForObjectDetection(cfg))


@pytest.fixture(scope="module")
def hf_outputs(hf_model):
    images, mask, pixel_mask = padded_batch()
    with torch.no_grad():
        out = hf_model(pixel_values=images, pixel_mask=pixel_mask, output_hidden_states=True)
        hidden = [hf_model.model.decoder.layernorm(h) for h in out.decoder_hidden_states[1:-1]]  # layers 1..5
        aux = [(hf_model.class_labels_classifier(h), hf_model.bbox_predictor(h).sigmoid()) for h in hidden]
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
    for i, (a, (l, b)) in enumerate(zip(ours["aux_outputs"], aux)):
        diffs[f"aux{i}"] = max((a["pred_logits"] - l).abs().max().item(), (a["pred_boxes"] - b).abs().max().item())
    return diffs


def official_names(hf_state: dict) -> dict:
    """The HF state dict under facebookresearch/detr's key names (the names HF's own port renamed
    from), with q, k, v fused into `nn.MultiheadAttention`'s `in_proj_weight` / `in_proj_bias`."""
    out, fused = {}, {}
    rules = [(r"model\.backbone\.model\.", "backbone.0.body."), (r"model\.(encoder|decoder)\.layers", r"transformer.\1.layers"),
             (r"\.encoder_attn\.", ".multihead_attn."), (r"\.o_proj\.", ".out_proj."), (r"\.mlp\.fc([12])\.", r".linear\1."),
             (r"model\.decoder\.layernorm", "transformer.decoder.norm"), (r"model\.input_projection", "input_proj"),
             (r"model\.query_position_embeddings", "query_embed"), (r"class_labels_classifier", "class_embed"),
             (r"bbox_predictor", "bbox_embed")]
    norms = {"encoder": {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2"},
             "decoder": {"self_attn_layer_norm": "norm1", "encoder_attn_layer_norm": "norm2", "final_layer_norm": "norm3"}}
    for key, t in hf_state.items():
        for a, b in rules:
            key = re.sub(a, b, key)
        m = re.match(r"transformer\.(encoder|decoder)\.layers\.\d+\.(\w+_layer_norm)\.", key)
        if m:
            key = key.replace(m.group(2), norms[m.group(1)][m.group(2)])
        m = re.match(r"(.*)\.([qkv])_proj\.(weight|bias)", key)
        if m:
            fused.setdefault(f"{m.group(1)}.in_proj_{m.group(3)}", {})[m.group(2)] = t
            continue
        out[key] = t
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3·C, ...)
    return out


def test_transformers_outputs_equal(hf_model, hf_outputs):
    model, mapped = convert_state_dict("detr_r50", hf_model.state_dict(), "transformers")
    assert len(mapped) == len(hf_model.state_dict()) == 530
    diffs = differences(model, hf_outputs)
    assert max(diffs.values()) < TOLERANCE, diffs


def test_hub_key_names_convert_alike(hf_model):
    """A file from the hub holds transformers 4's names; it converts to the same tensors."""
    state = hf_model.state_dict()
    legacy = {re.sub(r"layers\.(\d+)\.mlp\.fc", r"layers.\1.fc", k.replace("o_proj", "out_proj")
                     .replace("model.backbone.", "model.backbone.conv_encoder.")): v for k, v in state.items()}
    _, a = convert_state_dict("detr_r50", state, "transformers")
    _, b = convert_state_dict("detr_r50", legacy, "transformers")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_official_outputs_equal(hf_model, hf_outputs):
    official = official_names(hf_model.state_dict())
    assert any(k.endswith("multihead_attn.in_proj_weight") for k in official)
    model, mapped = convert_state_dict("detr_r50", official, "official")
    assert len(official) == 458 and len(mapped) == 530  # 18 attentions: 6 q/k/v keys fused into 2 each
    diffs = differences(model, hf_outputs)
    assert max(diffs.values()) < TOLERANCE, diffs


SWAPS = {  # (negative controls) two keys of equal shape exchanged; every key still loads with strict=True
    "decoder norm1 <-> norm2": ((r"model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(.*)", r"transformer.decoder_layers.\1.norm2.\2"),
                                (r"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(.*)", r"transformer.decoder_layers.\1.norm1.\2")),
    "cross-attention q <-> k": ((r"model\.decoder\.layers\.(\d+)\.encoder_attn\.q_proj\.(.*)", r"transformer.decoder_layers.\1.cross_attn.k_proj.\2"),
                                (r"model\.decoder\.layers\.(\d+)\.encoder_attn\.k_proj\.(.*)", r"transformer.decoder_layers.\1.cross_attn.q_proj.\2")),
}


@pytest.mark.parametrize("swap", SWAPS)
def test_a_wrong_mapping_is_caught(hf_model, hf_outputs, swap):
    """Negative control: only the outputs can tell a swapped pair, and they do (the q/k swap by
    ~0.003, 30 times the tolerance: on these small maps the values attended to differ little)."""
    wrong = KeyMap(renames=SWAPS[swap] + TRANSFORMERS.renames, ignore=TRANSFORMERS.ignore, prepare=TRANSFORMERS.prepare)
    model, _ = convert_state_dict("detr_r50", hf_model.state_dict(), "transformers")
    model.load_state_dict(apply(wrong, hf_model.state_dict(), model.state_dict()), strict=True)
    assert max(differences(model, hf_outputs).values()) > 10 * TOLERANCE
