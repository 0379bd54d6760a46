"""DAB-DETR onto `dab_detr_r50`: Hugging Face's `DabDetrForObjectDetection` as the oracle (random,
perturbed weights; a padded batch of two sizes) and the official format of IDEA-Research/DAB-DETR;
DN-DETR (IDEA-Research/DN-DETR, no HF model) onto `dn_detr_r50`: a fixture of its official names
and shapes, strict loading, and agreement with DAB-DETR's map on the shared part."""
from __future__ import annotations

import re

import pytest
import torch

from tests.hf_oracle import padded_batch, perturb, transformers
from tutorial.convert import ConversionError, KeyMap, apply, convert_state_dict
from tutorial.convert.dab_detr import DN_OFFICIAL, OFFICIAL, TRANSFORMERS
from tutorial.convert.files import guess_source
from tutorial.models import build_model

TOLERANCE = 1e-4
PRESET = "dab_detr_r50"


@pytest.fixture(scope="module")
def hf_model():
    # DAB-DETR's settings: 300 queries, 4-d anchors, PReLU, sine temperatures 20 (HF's defaults too)
    cfg = transformers.DabDetrConfig(num_labels=91, use_pretrained_backbone=False, num_queries=300, query_dim=4,
                                     activation_function="prelu", temperature_height=20, temperature_width=20,
                                     dropout=0.0, keep_query_pos=False, random_refpoints_xy=False, num_patterns=0)
    return perturb(transformers.DabDetrForObjectDetection(cfg))


@pytest.fixture(scope="module")
def hf_outputs(hf_model):
    """HF's final logits and boxes, and per decoder layer 0..4 its heads on the layer's normalised
    output (`intermediate_hidden_states`) relative to the anchor the layer received
    (`reference_points`), as HF's own auxiliary outputs."""
    from transformers.models.dab_detr.modeling_dab_detr import inverse_sigmoid
    images, mask, pixel_mask = padded_batch()
    m = hf_model
    with torch.no_grad():
        out = m(pixel_values=images, pixel_mask=pixel_mask)
        inner = m.model(images, pixel_mask=pixel_mask)
        hidden, refs = inner.intermediate_hidden_states, inner.reference_points  # (L, B, Q, C), (L, B, Q, 4)
        delta = m.bbox_predictor(hidden)
        delta[..., :4] += inverse_sigmoid(refs)
        logits, boxes = m.class_embed(hidden), delta.sigmoid()
        assert torch.allclose(logits[-1], out.logits, rtol=0, atol=1e-6)  # HF's heads, read alike
        assert torch.allclose(boxes[-1], out.pred_boxes, rtol=0, atol=1e-6)
    return out.logits, out.pred_boxes, list(zip(logits[:-1], boxes[:-1]))


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


# IDEA-Research/DAB-DETR's names (models/DAB_DETR/transformer.py, DABDETR.py) of HF's modules
DECODER = {"self_attn.self_attn_query_content_proj": "sa_qcontent_proj", "self_attn.self_attn_query_pos_proj": "sa_qpos_proj",
           "self_attn.self_attn_key_content_proj": "sa_kcontent_proj", "self_attn.self_attn_key_pos_proj": "sa_kpos_proj",
           "self_attn.self_attn_value_proj": "sa_v_proj", "self_attn.self_attn.output_proj": "self_attn.out_proj",
           "self_attn.self_attn_layer_norm": "norm1",
           "cross_attn.cross_attn_query_content_proj": "ca_qcontent_proj", "cross_attn.cross_attn_query_pos_proj": "ca_qpos_proj",
           "cross_attn.cross_attn_key_content_proj": "ca_kcontent_proj", "cross_attn.cross_attn_key_pos_proj": "ca_kpos_proj",
           "cross_attn.cross_attn_value_proj": "ca_v_proj", "cross_attn.cross_attn_query_pos_sine_proj": "ca_qpos_sine_proj",
           "cross_attn.cross_attn.output_proj": "cross_attn.out_proj", "cross_attn.cross_attn_layer_norm": "norm2",
           "mlp.final_layer_norm": "norm3", "mlp.fc1": "linear1", "mlp.fc2": "linear2", "mlp.activation_fn": "activation"}
ENCODER = {"self_attn.out_proj": "self_attn.out_proj", "self_attn_layer_norm": "norm1", "final_layer_norm": "norm2",
           "fc1": "linear1", "fc2": "linear2", "activation_fn": "activation"}
TOP = {"model.backbone.conv_encoder.model._backbone": "backbone.0.body",
       "model.encoder.query_scale": "transformer.encoder.query_scale",
       "model.decoder.layernorm": "transformer.decoder.norm",
       "model.decoder.query_scale": "transformer.decoder.query_scale",
       "model.decoder.ref_point_head": "transformer.decoder.ref_point_head",
       "model.decoder.ref_anchor_head": "transformer.decoder.ref_anchor_head",
       "model.decoder.bbox_embed": "transformer.decoder.bbox_embed",  # officially the same module as bbox_embed
       "model.query_refpoint_embeddings": "refpoint_embed", "model.input_projection": "input_proj",
       "class_embed": "class_embed", "bbox_predictor": "bbox_embed"}


def official_names(hf_state: dict) -> dict:
    """The HF state dict under IDEA-Research/DAB-DETR's key names, the encoder's q, k, v fused
    into `nn.MultiheadAttention`'s `in_proj_weight` / `in_proj_bias`."""
    out, fused = {}, {}
    for key, t in hf_state.items():
        m = re.fullmatch(r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if m:
            part, i, module, kind = m.groups()
            if part == "encoder" and module in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
                fused.setdefault(f"transformer.encoder.layers.{i}.self_attn.in_proj_{kind}", {})[module[-6]] = t
                continue
            name = (ENCODER if part == "encoder" else DECODER)[module]
            out[f"transformer.{part}.layers.{i}.{name}.{kind}"] = t
            continue
        prefix = next(p for p in TOP if key.startswith(p + "."))
        out[TOP[prefix] + key[len(prefix):]] = t
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3·C, ...)
    return out


def test_transformers_outputs_equal(hf_model, hf_outputs):
    state = hf_model.state_dict()
    model, mapped = convert_state_dict(PRESET, state, "transformers")
    assert len(state) == 614 and len(mapped) == 608  # HF lists the tied box head twice (6 keys)
    diffs = differences(model, hf_outputs)
    assert max(diffs.values()) < TOLERANCE, diffs


def test_either_copy_of_the_tied_box_head_converts(hf_model):
    """A saved file may keep `bbox_predictor` or `model.decoder.bbox_embed`: the same tensors."""
    state = hf_model.state_dict()
    _, a = convert_state_dict(PRESET, state, "transformers")
    for drop in ("bbox_predictor.", "model.decoder.bbox_embed."):
        _, b = convert_state_dict(PRESET, {k: v for k, v in state.items() if not k.startswith(drop)}, "transformers")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_two_different_box_heads_are_refused(hf_model):
    state = dict(hf_model.state_dict())
    state["model.decoder.bbox_embed.layers.2.bias"] = state["model.decoder.bbox_embed.layers.2.bias"] + 1
    with pytest.raises(ConversionError, match="bbox_embed.layers.2.bias"):
        convert_state_dict(PRESET, state, "transformers")


def test_official_outputs_equal(hf_model, hf_outputs):
    official = official_names(hf_model.state_dict())
    assert "transformer.decoder.bbox_embed.layers.0.weight" in official and "bbox_embed.layers.0.weight" in official
    assert "transformer.decoder.layers.1.ca_qpos_proj.weight" not in official  # first layer only
    assert guess_source(official) == "official" and guess_source(hf_model.state_dict()) == "transformers"
    model, mapped = convert_state_dict(PRESET, official)
    assert len(official) == 590 and len(mapped) == 608  # 6 encoder attentions: 6 q/k/v keys fused into 2 each
    diffs = differences(model, hf_outputs)
    assert max(diffs.values()) < TOLERANCE, diffs


SWAPS = {  # (negative controls) two keys of equal shape exchanged; every key still loads with strict=True
    "decoder norm2 <-> norm3": ((r"model\.decoder\.layers\.(\d+)\.cross_attn\.cross_attn_layer_norm\.(.*)", r"decoder.layers.\1.norm3.\2"),
                                (r"model\.decoder\.layers\.(\d+)\.mlp\.final_layer_norm\.(.*)", r"decoder.layers.\1.norm2.\2")),
    "cross-attention k content <-> k pos": (
        (r"model\.decoder\.layers\.(\d+)\.cross_attn\.cross_attn_key_content_proj\.(.*)", r"decoder.layers.\1.ca_kpos_proj.\2"),
        (r"model\.decoder\.layers\.(\d+)\.cross_attn\.cross_attn_key_pos_proj\.(.*)", r"decoder.layers.\1.ca_kcontent_proj.\2")),
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
                   ignore=OFFICIAL.ignore, prepare=OFFICIAL.prepare)
    official = official_names(hf_model.state_dict())
    model, _ = convert_state_dict(PRESET, official, "official")
    model.load_state_dict(apply(wrong, official, model.state_dict()), strict=True)
    assert max(differences(model, hf_outputs).values()) > 10 * TOLERANCE


# --- DN-DETR -------------------------------------------------------------------------------------

C, FFN, Q, K, LAYERS = 256, 2048, 300, 91, 6


def linear(name: str, out_dim: int, in_dim: int) -> dict:
    return {f"{name}.weight": (out_dim, in_dim), f"{name}.bias": (out_dim,)}


def mlp(name: str, dims: list[int]) -> dict:
    return {k: v for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])) for k, v in linear(f"{name}.layers.{i}", b, a).items()}


def dn_official_shapes() -> dict[str, tuple]:
    """IDEA-Research/DN-DETR's `models/DN_DAB_DETR` state dict for the R50 model, name -> shape,
    from its code: a torchvision ResNet-50 under `backbone.0.body` (frozen BatchNorm: weight, bias,
    running_mean, running_var); encoder layers of `nn.MultiheadAttention` (fused `in_proj`),
    `linear1/2`, `norm1/2`, PReLU `activation`, and the encoder's `query_scale` MLP; decoder layers
    with the `sa_*` / `ca_*` projections (`ca_qpos_proj` in layer 0 only), attentions with only
    `out_proj`, `linear1/2`, `norm1..3`, `activation`; the decoder's `norm`, `query_scale`,
    `ref_point_head` (2C -> C -> C), `ref_anchor_head` (C -> C -> 2) and `bbox_embed` (the model's
    box head, listed twice); `refpoint_embed` (Q, 4), `input_proj`, `class_embed`, `bbox_embed`
    and DN's `label_enc` (K + 1, C - 1)."""
    shapes = {"backbone.0.body." + k[len("backbone.body."):]: tuple(v.shape)
              for k, v in build_model(PRESET).state_dict().items() if k.startswith("backbone.body.")}
    for i in range(LAYERS):
        e = f"transformer.encoder.layers.{i}"
        shapes.update({f"{e}.self_attn.in_proj_weight": (3 * C, C), f"{e}.self_attn.in_proj_bias": (3 * C,),
                       **linear(f"{e}.self_attn.out_proj", C, C), **linear(f"{e}.linear1", FFN, C),
                       **linear(f"{e}.linear2", C, FFN), f"{e}.activation.weight": (1,)})
        shapes.update({f"{e}.norm{n}.{p}": (C,) for n in (1, 2) for p in ("weight", "bias")})
        d = f"transformer.decoder.layers.{i}"
        projections = ["sa_qcontent_proj", "sa_qpos_proj", "sa_kcontent_proj", "sa_kpos_proj", "sa_v_proj",
                       "ca_qcontent_proj", "ca_kcontent_proj", "ca_kpos_proj", "ca_v_proj", "ca_qpos_sine_proj",
                       "self_attn.out_proj", "cross_attn.out_proj"] + (["ca_qpos_proj"] if i == 0 else [])
        for p in projections:
            shapes.update(linear(f"{d}.{p}", C, C))
        shapes.update({**linear(f"{d}.linear1", FFN, C), **linear(f"{d}.linear2", C, FFN), f"{d}.activation.weight": (1,)})
        shapes.update({f"{d}.norm{n}.{p}": (C,) for n in (1, 2, 3) for p in ("weight", "bias")})
    shapes.update({**mlp("transformer.encoder.query_scale", [C, C, C]), **mlp("transformer.decoder.query_scale", [C, C, C]),
                   **mlp("transformer.decoder.ref_point_head", [2 * C, C, C]),
                   **mlp("transformer.decoder.ref_anchor_head", [C, C, 2]),
                   **mlp("transformer.decoder.bbox_embed", [C, C, C, 4]), **mlp("bbox_embed", [C, C, C, 4]),
                   "transformer.decoder.norm.weight": (C,), "transformer.decoder.norm.bias": (C,),
                   "refpoint_embed.weight": (Q, 4), "input_proj.weight": (C, 2048, 1, 1), "input_proj.bias": (C,),
                   **linear("class_embed", K, C), "label_enc.weight": (K + 1, C - 1)})
    return shapes


@pytest.fixture(scope="module")
def dn_official():
    """Random tensors under DN-DETR's official names; the decoder's box head is the model's."""
    g = torch.Generator().manual_seed(0)
    state = {k: torch.randn(s, generator=g) for k, s in dn_official_shapes().items()}
    for k in [k for k in state if k.startswith("transformer.decoder.bbox_embed.")]:
        state[k] = state[k[len("transformer.decoder."):]]
    return state


def test_dn_official_loads_strictly(dn_official):
    model, mapped = convert_state_dict("dn_detr_r50", dn_official, "official")
    assert len(dn_official) == 591 and len(mapped) == 609 == len(model.state_dict())
    assert torch.equal(model.label_embed.weight, dn_official["label_enc.weight"])
    assert torch.equal(model.encoder.layers[3].self_attn.k_proj.weight,
                       dn_official["transformer.encoder.layers.3.self_attn.in_proj_weight"][C:2 * C])


def agreement(dn_map: KeyMap, dn_official: dict) -> list[str]:
    """Our keys on which DN's map and DAB's map put different tensors (DAB's given DN's file less
    `label_enc`); [] if the maps agree on the shared part."""
    dab_state = {k: v for k, v in dn_official.items() if k != "label_enc.weight"}
    dab = apply(OFFICIAL, dab_state, build_model("dab_detr_r50").state_dict())
    dn = apply(dn_map, dn_official, build_model("dn_detr_r50").state_dict())
    assert set(dn) - set(dab) == {"label_embed.weight"} and set(dab) <= set(dn)
    return [k for k in dab if not torch.equal(dab[k], dn[k])]


def test_dn_map_agrees_with_dab_on_the_shared_part(dn_official):
    assert agreement(DN_OFFICIAL, dn_official) == []


def test_dn_disagreement_is_caught(dn_official):
    """Negative control: a DN map with norm1 and norm2 of the decoder swapped loads strictly, and
    the comparison with DAB's map names the 24 keys it moved."""
    swap = ((r"transformer\.decoder\.layers\.(\d+)\.norm1\.(.*)", r"decoder.layers.\1.norm2.\2"),
            (r"transformer\.decoder\.layers\.(\d+)\.norm2\.(.*)", r"decoder.layers.\1.norm1.\2"))
    wrong = KeyMap(renames=swap + DN_OFFICIAL.renames, splits=DN_OFFICIAL.splits, ignore=DN_OFFICIAL.ignore,
                   prepare=DN_OFFICIAL.prepare)
    build_model("dn_detr_r50").load_state_dict(apply(wrong, dn_official, build_model("dn_detr_r50").state_dict()),
                                               strict=True)
    assert len(agreement(wrong, dn_official)) == LAYERS * 4


def test_dn_file_without_label_enc_is_refused(dn_official):
    state = {k: v for k, v in dn_official.items() if k != "label_enc.weight"}
    with pytest.raises(ConversionError, match="label_embed"):
        convert_state_dict("dn_detr_r50", state, "official")
