"""The Mamba-based detector (RT-DETR with SS2D in AIFI's slot): a training step, the same model as
rtdetr_tiny outside the mixer (parameter names and shapes), a mixer that is not causal (every
output token depends on every input token, through the four directions), padding that changes
nothing on the valid tokens (against the unpadded map), and checkpoints that load."""
from __future__ import annotations

import dataclasses

import pytest
import torch

import tutorial
from tutorial.training.checkpoint import load_model
from tutorial.models.hybrid_encoder import HybridEncoderConfig
from tutorial.models.mamba_detector import MambaRTDETR, MambaRTDETRConfig, SS2DEncoder, rtdetr_mamba_tiny
from tutorial.ssm.ss2d import SS2DConfig

from .tiny import padded_batch, small_model

torch.set_num_threads(1)
F64 = torch.float64


SMALL = {"decoder": {"d_model": 32, "num_decoder_layers": 2, "dim_feedforward": 64},
         "encoder": {"hidden_dim": 32, "dim_feedforward": 64}, "ss2d": {"d_model": 32, "d_state": 4},
            "num_queries": 6, "dn_number": 4}


def small(**overrides):
    return small_model("rtdetr_mamba_tiny", SMALL, **overrides)


def inputs():
    return padded_batch()


def test_tiny_trains_a_step_and_returns_its_deltas():
    model = small().train()
    images, mask, targets = inputs()
    out = model(images, mask, targets=targets, return_intermediates=True)
    assert out["pred_logits"].shape == (2, 6, 6) and len(out["aux_outputs"]) == 1
    assert out["aifi_attention"] is None
    (delta,) = out["encoder_mixer"]["delta"]  # one SS2D layer
    h5, w5 = out["spatial_shapes"][-1]
    assert (h5, w5) == (3, 4) and delta.shape == (2, 4, 32, 3, 4)  # (B, 4 directions, D = 1·32, H_5, W_5)
    s5_padding = out["level_masks"][-1]  # (B, H_5, W_5)
    assert s5_padding[1].any() and (delta.permute(0, 1, 3, 4, 2)[s5_padding[:, None].expand(-1, 4, -1, -1)] == 0).all()
    assert (delta.permute(0, 1, 3, 4, 2)[~s5_padding[:, None].expand(-1, 4, -1, -1)] > 0).all()
    losses = model.build_criterion()(out, targets)
    for name in ("loss_vfl", "loss_vfl_dn", "loss_vfl_interm", "loss_giou_interm"):
        assert losses[name] > 0
    losses["loss"].backward()
    for name, p in model.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert model.encoder.encoder[0].layers[0].mixer.A_logs.grad.abs().sum() > 0


def test_differs_from_rtdetr_tiny_only_in_the_mixer():
    """Every parameter and buffer outside the S5 mixer has rtdetr_tiny's name and shape; in AIFI's
    slot, the FFN and norms too: only self_attn -> mixer (SS2D) changes."""
    def shapes(model, skip):
        state = model.state_dict()
        return {k: tuple(v.shape) for k, v in state.items() if not k.startswith(skip)}, \
               {k for k in state if k.startswith(skip)}

    slot = "encoder.encoder.0.layers.0."
    rt, rt_mixer = shapes(tutorial.build_model("rtdetr_tiny"), slot + "self_attn.")
    mamba, mamba_mixer = shapes(tutorial.build_model("rtdetr_mamba_tiny"), slot + "mixer.")
    assert rt == mamba
    assert rt_mixer and mamba_mixer and not rt_mixer & mamba_mixer
    assert {k for k in rt if k.startswith(slot)} == {slot + n for n in (
        "ffn.linear1.weight", "ffn.linear1.bias", "ffn.linear2.weight", "ffn.linear2.bias",
        "norm1.weight", "norm1.bias", "norm2.weight", "norm2.bias")}
    # the configs agree on everything RT-DETR has
    base, cfg = dataclasses.asdict(tutorial.models.rt_detr.rtdetr_tiny()), dataclasses.asdict(rtdetr_mamba_tiny())
    assert {k: v for k, v in cfg.items() if k != "ss2d"} == base


def mixer(**ss2d):
    torch.manual_seed(0)
    enc = HybridEncoderConfig(hidden_dim=8, dim_feedforward=16)
    return SS2DEncoder(SS2DConfig(d_model=8, d_state=2, **ss2d), enc).double()


def test_every_output_token_depends_on_every_input_token():
    """Not causal: the Jacobian of the mixer's output at each pixel with respect to the input at
    each pixel is nonzero for all pairs, the first pixel included (it reads the last one through
    the reversed scans)."""
    m = mixer()
    h, w = 4, 5
    x = torch.randn(1, 8, h, w, dtype=F64, requires_grad=True)
    out, _ = m(x)
    v = torch.randn(8, dtype=F64)  # a random read-out (the plain sum over channels of a LayerNorm output is constant)
    for i in range(h):
        for j in range(w):
            (grad,) = torch.autograd.grad(out[0, :, i, j] @ v, x, retain_graph=True)
            assert (grad[0].abs().sum(0) > 0).all(), (i, j)


def test_padding_changes_nothing_on_valid_tokens():
    """Valid tokens of a padded map get exactly the outputs of the map cropped to its valid part."""
    m = mixer(scan="sequential")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 8, 5, 7, generator=g, dtype=F64)
    mask = torch.zeros(2, 5, 7, dtype=torch.bool)
    mask[1, 3:] = True  # image 1 is 3 x 4
    mask[1, :, 4:] = True
    out, info = m(x, mask, need_weights=True)
    alone, _ = m(x[1:, :, :3, :4])
    assert (out[1, :, :3, :4] - alone[0]).abs().max() < 1e-12
    full, _ = m(x[:1])
    assert (out[0] - full[0]).abs().max() < 1e-12  # an unpadded image is untouched by the mask
    assert (info["delta"][0][1][..., 3:, :] == 0).all() and (info["delta"][0][1][..., :3, :4] > 0).all()
    # zeroing the padded tokens alone is not enough: the state decays across the padding
    zeroed, _ = m(x.masked_fill(mask[:, None], 0.0))
    assert (zeroed[1, :, :3, :4] - alone[0]).abs().max() > 1e-6


def test_config_errors_name_the_fields():
    with pytest.raises(ValueError, match="ss2d.d_model"):
        tutorial.build_model("rtdetr_mamba_tiny", ss2d={"d_model": 64})
    with pytest.raises(ValueError, match="use_encoder_idx"):
        MambaRTDETRConfig(encoder=HybridEncoderConfig(use_encoder_idx=(1, 2)), ss2d=SS2DConfig(d_model=256))


def test_checkpoint_round_trip(tmp_path):
    model = small().eval()
    path = tmp_path / "mamba.pt"
    torch.save({"preset": "rtdetr_mamba_tiny", "config": dataclasses.asdict(model.cfg), "model": model.state_dict()},
               path)
    loaded = load_model(path)
    assert isinstance(loaded, MambaRTDETR) and loaded.cfg == model.cfg
    images, mask, _ = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(images, mask)["pred_boxes"], model(images, mask)["pred_boxes"])
