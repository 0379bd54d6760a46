"""RT-DETR onto `rtdetr_r50` / `rtdetr_r18`: Hugging Face's `RTDetrForObjectDetection` as the oracle
(random, perturbed weights, its own `RTDetrResNet` backbone, nothing downloaded; eval mode; a batch
of two unpadded 128 x 160 images), and the official format of lyuwenyu/RT-DETR (rtdetr_pytorch)."""
from __future__ import annotations

import re

import pytest
import torch

from tests.hf_oracle import padded_batch, perturb, transformers
from tutorial.convert import KeyMap, apply, convert_state_dict
from tutorial.convert.rt_detr import TRANSFORMERS
from tutorial.models import build_model

# Max |ours - HF| allowed: float32 rounding (the same nn.Linear on the same values, laid out
# differently in memory, differs by ~5e-7), amplified through the encoder and the 6 (R50) or 3 (R18)
# refining decoder layers; measured 1.7e-4 (R50). A wrong mapping moves outputs by far more.
TOLERANCE = 1e-3
R18_BN_GAP = 9_856  # HF's frozen backbone BN: 4,928 channels' weight and bias are buffers


def hf_config(preset: str, frozen_backbone_bn: bool = True):
    """The paper presets as `RTDetrConfig`s (80 classes, 300 queries, C=256, 1 AIFI layer, ...)."""
    if preset == "rtdetr_r50":
        backbone = transformers.RTDetrResNetConfig(out_indices=[2, 3, 4])  # ResNet50-vd
        extra = {}
    else:
        backbone = transformers.RTDetrResNetConfig(depths=[2, 2, 2, 2], layer_type="basic",
                                                   hidden_sizes=[64, 128, 256, 512], out_indices=[2, 3, 4])
        extra = dict(encoder_in_channels=[128, 256, 512], hidden_expansion=0.5, decoder_layers=3)
    return transformers.RTDetrConfig(backbone_config=backbone, use_pretrained_backbone=False, num_labels=80,
                                     num_queries=300, freeze_backbone_batch_norms=frozen_backbone_bn,
                                     eval_size=None, anchor_image_size=None, **extra)


def batch(seed: int = 0, size=(128, 160)):
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(2, 3, *size, generator=g)  # (B, 3, H, W)
    return images, torch.zeros(2, *size, dtype=torch.bool)  # no padding


def hf_forward(model, images) -> dict:
    """HF's final and per-layer outputs (its `auxiliary_outputs` need labels; the intermediates
    are the same tensors: `intermediate_logits`, `intermediate_reference_points` = each layer's box)."""
    with torch.no_grad():
        out = model(pixel_values=images)
    n, q = out.intermediate_logits.shape[1], out.logits.shape[1]
    tokens = out.enc_outputs_class.max(-1).values.topk(q, dim=1).indices  # (B, Q): the queries' tokens
    return {"logits": out.logits, "boxes": out.pred_boxes, "tokens": tokens,
            "aux": [(out.intermediate_logits[:, i], out.intermediate_reference_points[:, i]) for i in range(n - 1)]}


def by_token(x, tokens):
    """x (B, Q, D) with its queries sorted by the encoder token each was selected from: the top-300
    order of near-equal scores (ties within float32 rounding) must not decide the comparison."""
    order = tokens.argsort(1)  # (B, Q)
    return torch.gather(x, 1, order[..., None].expand(-1, -1, x.shape[-1]))


def condition(model):
    """Unit gains, the random patterns kept: every convolution's weights rescaled to std 1/sqrt(fan_in),
    every BatchNorm's scale to 1 ± 0.1 (HF initialises the encoder's at N(0, 0.01)). Without it the
    perturbed ResNet's activations reach ~1e8, the memory shrinks to ~0.05, the encoder's class scores
    of many tokens tie within float32 rounding, and the top-300 order, not the mapping, decides."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.mul_(1.0 / (m.weight.std() * (m.weight[0].numel() ** 0.5)))
            elif "BatchNorm" in type(m).__name__:
                w = m.weight
                w.copy_(1.0 + 0.1 * (w - w.mean()) / w.std())
    return model


def hf_model(preset: str, seed: int, frozen_backbone_bn: bool = True):
    torch.manual_seed(seed)
    return condition(perturb(transformers.RTDetrForObjectDetection(hf_config(preset, frozen_backbone_bn)), seed=seed))


@pytest.fixture(scope="module")
def hf_models():
    return {"rtdetr_r50": hf_model("rtdetr_r50", seed=0), "rtdetr_r18": hf_model("rtdetr_r18", seed=1)}


@pytest.fixture(scope="module")
def hf_outputs(hf_models):
    images, _ = batch()
    return {p: hf_forward(m, images) for p, m in hf_models.items()}


def differences(model, theirs, images=None, mask=None) -> dict[str, float]:
    """Max |ours - HF| over logits, boxes and every auxiliary output."""
    if images is None:
        images, mask = batch()
    with torch.no_grad():
        ours = model.eval()(images, mask, return_intermediates=True)
    a_tok, b_tok = ours["selected_indices"], theirs["tokens"]
    if not torch.equal(a_tok.sort(1).values, b_tok.sort(1).values):
        return {"selected tokens differ": float("inf")}

    def diff(x, y):
        return (by_token(x, a_tok) - by_token(y, b_tok)).abs().max().item()

    diffs = {"logits": diff(ours["pred_logits"], theirs["logits"]), "boxes": diff(ours["pred_boxes"], theirs["boxes"])}
    assert len(ours["aux_outputs"]) == len(theirs["aux"])
    for i, (a, (lg, bx)) in enumerate(zip(ours["aux_outputs"], theirs["aux"])):
        diffs[f"aux{i}_logits"] = diff(a["pred_logits"], lg)
        diffs[f"aux{i}_boxes"] = diff(a["pred_boxes"], bx)
    return diffs


KEYS = {"rtdetr_r50": (764, 764, 736), "rtdetr_r18": (526, 549, 510)}  # HF keys, ours, official (from HF)


@pytest.mark.parametrize("preset", ["rtdetr_r50", "rtdetr_r18"])
def test_transformers_outputs_equal(hf_models, hf_outputs, preset):
    state = hf_models[preset].state_dict()
    model, mapped = convert_state_dict(preset, state, "transformers")
    assert (len(state), len(mapped)) == KEYS[preset][:2]
    diffs = differences(model, hf_outputs[preset])
    assert len(diffs) == 2 + 2 * (5 if preset == "rtdetr_r50" else 2)
    assert max(diffs.values()) < TOLERANCE, diffs


def test_parameter_counts(hf_models):
    """R50: the same parameters as ours (and the official model). R18: HF's default frozen backbone BN
    holds 9,856 parameters as buffers; with `freeze_backbone_batch_norms=False` the counts agree."""
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(hf_models["rtdetr_r50"]) == count(build_model("rtdetr_r50")) == 42_891_372
    ours_r18 = count(build_model("rtdetr_r18"))
    assert ours_r18 == 20_184_464 and count(hf_models["rtdetr_r18"]) == ours_r18 - R18_BN_GAP


def test_r18_trainable_backbone_bn_converts_alike():
    """HF R18 with ordinary backbone BN (549 keys, the official parameter set) gives our outputs too."""
    hf = hf_model("rtdetr_r18", seed=2, frozen_backbone_bn=False)
    model, mapped = convert_state_dict("rtdetr_r18", hf.state_dict(), "transformers")
    assert len(hf.state_dict()) == len(mapped) == 549
    assert max(differences(model, hf_forward(hf, batch()[0])).values()) < TOLERANCE


def test_border_anchors_are_masked_alike(hf_models):
    """A wide image (stride-8 map 8 x 56): the anchors of the border columns fall outside
    (0.01, 0.99) and are masked (HF: finfo.max, ours: inf); outputs still equal."""
    images, mask = batch(seed=3, size=(64, 448))
    hf = hf_models["rtdetr_r18"]
    model, _ = convert_state_dict("rtdetr_r18", hf.state_dict(), "transformers")
    assert 0.5 / 56 < 0.01  # the first column's centre: invalid
    assert max(differences(model, hf_forward(hf, images), images, mask).values()) < TOLERANCE


def test_padding_mask(hf_models):
    """HF, like the official model, ignores `pixel_mask`; ours uses the mask (a documented
    difference): with the padding masked its outputs change, without a mask they are HF's."""
    images, mask, pixel_mask = padded_batch(sizes=((3, 128, 160), (3, 96, 128)))
    hf = hf_models["rtdetr_r18"]
    with torch.no_grad():
        a, b = hf(pixel_values=images), hf(pixel_values=images, pixel_mask=pixel_mask)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.pred_boxes, b.pred_boxes)
    model, _ = convert_state_dict("rtdetr_r18", hf.state_dict(), "transformers")
    theirs = hf_forward(hf, images)
    assert max(differences(model, theirs, images, torch.zeros_like(mask)).values()) < TOLERANCE
    assert max(differences(model, theirs, images, mask).values()) > 10 * TOLERANCE


def legacy_names(state: dict) -> dict:
    """The HF state dict under transformers 4's names, with the top-level tied head copies some
    transformers 4 files carry, and no BatchNorm counters (HF's conversion script drops them)."""
    out = {}
    for k, v in state.items():
        if k.endswith("num_batches_tracked"):
            continue
        k = re.sub(r"layers\.(\d+)\.mlp\.fc", r"layers.\1.fc", k.replace(".o_proj.", ".out_proj."))
        out[k.replace("model.encoder.aifi.", "model.encoder.encoder.")] = v
    for k, v in state.items():
        if k.startswith(("model.decoder.class_embed.", "model.decoder.bbox_embed.")):
            out[k[len("model.decoder."):]] = v
    return out


@pytest.mark.parametrize("preset", ["rtdetr_r50", "rtdetr_r18"])
def test_hub_key_names_convert_alike(hf_models, preset):
    state = hf_models[preset].state_dict()
    _, a = convert_state_dict(preset, state, "transformers")
    _, b = convert_state_dict(preset, legacy_names(state), "transformers")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a if not k.endswith("num_batches_tracked"))


def official_names(hf_state: dict) -> dict:
    """The HF state dict under rtdetr_pytorch's key names (the names HF's conversion script renamed
    from), q, k, v fused into `nn.MultiheadAttention`'s `in_proj_weight` / `in_proj_bias`."""
    rules = [
        (r"model\.backbone\.model\.embedder\.embedder\.(\d)\.", lambda m: f"backbone.conv1.conv1_{int(m[1]) + 1}."),
        (r"model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.layer\.(\d)\.",
         lambda m: f"backbone.res_layers.{m[1]}.blocks.{m[2]}.branch2{'abc'[int(m[3])]}."),
        (r"model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.1\.",
         lambda m: f"backbone.res_layers.{m[1]}.blocks.{m[2]}.short.conv."),
        (r"model\.backbone\.model\.encoder\.stages\.(\d+)\.layers\.(\d+)\.shortcut\.",
         lambda m: f"backbone.res_layers.{m[1]}.blocks.{m[2]}.short."),
        (r"\.convolution\.", ".conv."), (r"\.normalization\.", ".norm."),
        (r"model\.encoder_input_proj\.", "encoder.input_proj."), (r"model\.encoder\.aifi\.", "encoder.encoder."),
        (r"model\.encoder\.", "encoder."),
        (r"model\.decoder_input_proj\.(\d+)\.0\.", r"decoder.input_proj.\1.conv."),
        (r"model\.decoder_input_proj\.(\d+)\.1\.", r"decoder.input_proj.\1.norm."),
        (r"model\.decoder\.layers\.", "decoder.decoder.layers."), (r"\.encoder_attn\.", ".cross_attn."),
        (r"\.self_attn_layer_norm\.", ".norm1."), (r"\.encoder_attn_layer_norm\.", ".norm2."),
        (r"\.o_proj\.", ".out_proj."), (r"\.mlp\.fc([12])\.", r".linear\1."),
        (r"model\.decoder\.class_embed\.", "decoder.dec_score_head."),
        (r"model\.decoder\.bbox_embed\.", "decoder.dec_bbox_head."),
        (r"model\.decoder\.query_pos_head\.", "decoder.query_pos_head."),
        (r"model\.(denoising_class_embed|enc_output|enc_score_head|enc_bbox_head)\.", r"decoder.\1."),
    ]
    out, fused = {}, {}
    for key, t in hf_state.items():
        for a, b in rules:
            key = re.sub(a, b, key)
        # the encoder's final norm is norm2 (HF final_layer_norm), the decoder's norm3
        key = re.sub(r"^(encoder\.encoder\.\d+\.layers\.\d+)\.final_layer_norm\.", r"\1.norm2.", key)
        key = re.sub(r"^(decoder\.decoder\.layers\.\d+)\.final_layer_norm\.", r"\1.norm3.", key)
        m = re.match(r"(.*)\.([qkv])_proj\.(weight|bias)$", key)
        if m:
            fused.setdefault(f"{m[1]}.in_proj_{m[3]}", {})[m[2]] = t
            continue
        out[key] = t
    for key, parts in fused.items():
        out[key] = torch.cat([parts["q"], parts["k"], parts["v"]])  # (3·C, ...)
    return out


@pytest.mark.parametrize("preset", ["rtdetr_r50", "rtdetr_r18"])
def test_official_outputs_equal(hf_models, hf_outputs, preset):
    official = official_names(hf_models[preset].state_dict())
    assert "decoder.decoder.layers.0.self_attn.in_proj_weight" in official
    assert "backbone.res_layers.1.blocks.0.short.conv.conv.weight" in official
    assert not any(k.startswith("model.") for k in official)
    model, mapped = convert_state_dict(preset, official, "official")
    assert (len(official), len(mapped)) == KEYS[preset][2:0:-1]
    diffs = differences(model, hf_outputs[preset])
    assert max(diffs.values()) < TOLERANCE, diffs


SWAPS = {  # (negative controls) two keys of equal shape exchanged; every key still loads with strict=True
    "decoder norm1 <-> norm2": ((r"model\.decoder\.layers\.(\d+)\.self_attn_layer_norm\.(.*)", r"decoder.layers.\1.norm2.\2"),
                                (r"model\.decoder\.layers\.(\d+)\.encoder_attn_layer_norm\.(.*)", r"decoder.layers.\1.norm1.\2")),
    "AIFI q <-> k": ((r"model\.encoder\.aifi\.0\.layers\.0\.self_attn\.q_proj\.(.*)", r"encoder.encoder.0.layers.0.self_attn.k_proj.\1"),
                     (r"model\.encoder\.aifi\.0\.layers\.0\.self_attn\.k_proj\.(.*)", r"encoder.encoder.0.layers.0.self_attn.q_proj.\1")),
}


@pytest.mark.parametrize("swap", SWAPS)
def test_a_wrong_mapping_is_caught(hf_models, hf_outputs, swap):
    """Negative control: only the outputs can tell a swapped pair, and they do."""
    hf, right = hf_models["rtdetr_r18"], TRANSFORMERS["rtdetr_r18"]
    wrong = KeyMap(renames=SWAPS[swap] + right.renames, ignore=right.ignore, prepare=right.prepare)
    model, _ = convert_state_dict("rtdetr_r18", hf.state_dict(), "transformers")
    model.load_state_dict(apply(wrong, hf.state_dict(), model.state_dict()), strict=True)
    assert max(differences(model, hf_outputs["rtdetr_r18"]).values()) > 10 * TOLERANCE
