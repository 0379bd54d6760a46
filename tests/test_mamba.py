"""The Mamba block: the official parameter count, the official initialisation, equality with a
token-by-token recurrent computation (the official `step`), agreement of the three scans, causality."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tutorial.ssm.mamba import MambaBlock, MambaConfig, mamba_block_130m, mamba_block_tiny

F64 = torch.float64


def official_mamba_parameter_count(d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> int:
    """Layer by layer, the shapes of the official `Mamba` (mamba_ssm/modules/mamba_simple.py)."""
    d_inner, dt_rank = expand * d_model, math.ceil(d_model / 16)
    return (d_model * 2 * d_inner  # in_proj, Linear(d_model, 2·d_inner, bias=False)
            + d_inner * 1 * d_conv + d_inner  # conv1d, depthwise, bias=True
            + d_inner * (dt_rank + 2 * d_state)  # x_proj, bias=False
            + dt_rank * d_inner + d_inner  # dt_proj, bias=True
            + d_inner * d_state  # A_log
            + d_inner  # D
            + d_inner * d_model)  # out_proj, bias=False


def test_parameter_count_equals_official_for_d_model_768():
    block = MambaBlock(mamba_block_130m())
    count = sum(p.numel() for p in block.parameters())
    assert count == official_mamba_parameter_count(768) == 3_770_880
    shapes = {name: tuple(p.shape) for name, p in block.named_parameters()}
    assert shapes == {"in_proj.weight": (3072, 768), "conv1d.weight": (1536, 1, 4), "conv1d.bias": (1536,),
                      "x_proj.weight": (80, 1536), "dt_proj.weight": (1536, 48), "dt_proj.bias": (1536,),
                      "A_log": (1536, 16), "D": (1536,), "out_proj.weight": (768, 1536)}


def test_initialisation_as_official():
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=64)
    block = MambaBlock(cfg)
    dt = F.softplus(block.dt_proj.bias)
    assert dt.min() >= cfg.dt_min * 0.999 and dt.max() <= cfg.dt_max * 1.001  # Δ_0 in [dt_min, dt_max]
    assert torch.log(dt).std() > 0.5  # spread over the log range, not constant
    assert torch.allclose(-torch.exp(block.A_log), -torch.arange(1, 17, dtype=torch.float32).expand(128, 16))
    assert torch.equal(block.D.data, torch.ones(128))
    assert block.dt_proj.weight.abs().max() <= cfg.rank ** -0.5
    assert block.A_log.dtype == block.D.dtype == torch.float32


def recurrent_mamba(block: MambaBlock, x: torch.Tensor) -> torch.Tensor:
    """The block one token at a time, as the official `Mamba.step` does at inference: a rolling
    conv state of the last d_conv inputs and the SSM state h (B, D, N)."""
    cfg = block.cfg
    b, length, _ = x.shape
    d, n, r = cfg.d_inner, cfg.d_state, cfg.rank
    conv_state = x.new_zeros(b, d, cfg.d_conv)
    h = x.new_zeros(b, d, n)
    A = -torch.exp(block.A_log)  # (D, N)
    outs = []
    for t in range(length):
        xi, z = block.in_proj(x[:, t]).chunk(2, dim=-1)  # (B, D) each
        conv_state = torch.cat([conv_state[:, :, 1:], xi[:, :, None]], dim=-1)  # oldest ... newest
        xc = F.silu((conv_state * block.conv1d.weight[:, 0]).sum(-1) + block.conv1d.bias)  # (B, D)
        dt, B, C = block.x_proj(xc).split([r, n, n], dim=-1)
        dt = F.softplus(dt @ block.dt_proj.weight.T + block.dt_proj.bias)  # (B, D)
        h = torch.exp(dt[..., None] * A) * h + (dt * xc)[..., None] * B[:, None, :]  # (B, D, N)
        y = (h * C[:, None, :]).sum(-1) + block.D * xc  # (B, D)
        outs.append(block.out_proj(y * F.silu(z)))  # (B, d_model)
    return torch.stack(outs, dim=1)


@pytest.mark.parametrize("scan", ["sequential", "parallel", "chunked"])
def test_block_equals_token_by_token_recurrence(scan):
    torch.manual_seed(1)
    block = MambaBlock(MambaConfig(d_model=8, d_state=4, scan=scan, chunk=5)).double()
    x = torch.randn(2, 13, 8, dtype=F64)
    assert (block(x) - recurrent_mamba(block, x)).abs().max() < 1e-12


def test_forward_backward_and_intermediates():
    torch.manual_seed(2)
    block = MambaBlock(mamba_block_tiny())
    x = torch.randn(2, 21, 32, requires_grad=True)
    out, inter = block(x, return_intermediates=True)
    assert out.shape == (2, 21, 32)
    assert inter["delta"].shape == (2, 64, 21) and inter["B"].shape == inter["C"].shape == (2, 8, 21)
    assert (inter["delta"] > 0).all()
    out.square().mean().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    for name, p in block.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("scan", ["sequential", "parallel", "chunked"])
def test_block_is_causal(scan):
    torch.manual_seed(3)
    block = MambaBlock(MambaConfig(d_model=8, d_state=4, scan=scan, chunk=4)).double()
    x = torch.randn(2, 17, 8, dtype=F64)
    t = 9
    x2 = x.clone()
    x2[:, t] += 1.0
    y, y2 = block(x), block(x2)
    assert torch.equal(y[:, :t], y2[:, :t])
    assert (y[:, t:] - y2[:, t:]).abs().amax(dim=(0, 2)).min() > 0  # and every later output changes


def test_bad_dt_init_is_named():
    with pytest.raises(ValueError, match="dt_init"):
        MambaBlock(MambaConfig(d_model=8, dt_init="normal"))
