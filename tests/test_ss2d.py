"""VMamba's cross-scan and cross-merge (orders, adjointness), and the SS2D module: the official
parameter count, equality with a per-direction computation, a global receptive field."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tutorial.ssm.selective_scan import selective_scan
from tutorial.ssm.ss2d import SS2D, SS2DConfig, cross_merge, cross_scan, cross_unscan, ss2d_tiny, ss2d_vmamba_v0_tiny, ss2d_vmamba_v2_tiny

F64 = torch.float64


def test_cross_scan_orders():
    """Direction 0 reads rows left to right, 1 columns top to bottom, 2 and 3 the same backwards."""
    h, w = 3, 4
    x = torch.randn(2, 5, h, w, dtype=F64)
    xs = cross_scan(x)
    assert xs.shape == (2, 4, 5, h * w)
    row_major = [(i, j) for i in range(h) for j in range(w)]
    col_major = [(i, j) for j in range(w) for i in range(h)]
    orders = [row_major, col_major, row_major[::-1], col_major[::-1]]
    for k, order in enumerate(orders):
        for pos, (i, j) in enumerate(order):
            assert torch.equal(xs[:, k, :, pos], x[:, :, i, j])


@pytest.mark.parametrize("h,w", [(1, 1), (3, 4), (5, 2)])
def test_cross_merge_is_the_adjoint_of_cross_scan(h, w):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, h, w, generator=g, dtype=F64)
    y = torch.randn(2, 4, 3, h * w, generator=g, dtype=F64)
    assert abs((cross_scan(x) * y).sum() - (x * cross_merge(y, h, w)).sum()) < 1e-12
    assert (cross_merge(cross_scan(x), h, w) - 4 * x).abs().max() < 1e-15


def test_cross_unscan_puts_every_direction_back_on_the_map():
    x = torch.randn(2, 3, 4, 5, dtype=F64)
    assert torch.equal(cross_unscan(cross_scan(x), 4, 5), x[:, None].expand(2, 4, 3, 4, 5))


def official_ss2d_parameter_count(d_model: int, d_state: int, ssm_ratio: float = 2.0, d_conv: int = 3,
                                  conv_bias: bool = True, gate: bool = True) -> int:
    """Layer by layer, the shapes of the official `SS2D` (classification/models/vmamba.py), K = 4."""
    d_inner, rank, k = int(ssm_ratio * d_model), math.ceil(d_model / 16), 4
    return (d_model * d_inner * (2 if gate else 1)  # in_proj, bias=False
            + d_inner * d_conv * d_conv + (d_inner if conv_bias else 0)  # conv2d, depthwise
            + k * (rank + 2 * d_state) * d_inner  # x_proj_weight
            + k * d_inner * rank + k * d_inner  # dt_projs_weight, dt_projs_bias
            + k * d_inner * d_state + k * d_inner  # A_logs, Ds
            + 2 * d_inner  # out_norm (LayerNorm)
            + d_inner * d_model)  # out_proj, bias=False


def test_parameter_counts_equal_official():
    v0 = sum(p.numel() for p in SS2D(ss2d_vmamba_v0_tiny()).parameters())
    assert v0 == official_ss2d_parameter_count(96, 16) == 105_216
    v2 = sum(p.numel() for p in SS2D(ss2d_vmamba_v2_tiny()).parameters())
    assert v2 == official_ss2d_parameter_count(96, 1, conv_bias=False, gate=False) == 52_032


def per_direction_ss2d(m: SS2D, x: torch.Tensor) -> torch.Tensor:
    """SS2D with one selective scan per direction (the official "v0seq" path), merged by hand."""
    cfg = m.cfg
    b, h, w, _ = x.shape
    d, n, r = cfg.d_inner, cfg.d_state, cfg.rank
    xi, z = m.in_proj(x).chunk(2, dim=-1)
    xi = F.silu(m.conv2d(xi.permute(0, 3, 1, 2)))  # (B, D, H, W)
    rows, cols = xi.flatten(2), xi.transpose(2, 3).flatten(2)  # (B, D, L) each
    seqs = [rows, cols, rows.flip(-1), cols.flip(-1)]
    y = torch.zeros_like(xi)
    for k, u in enumerate(seqs):
        dbl = torch.einsum("bdl,cd->bcl", u, m.x_proj_weight[k])
        dt, B, C = dbl.split([r, n, n], dim=1)
        delta = torch.einsum("brl,dr->bdl", dt, m.dt_projs_weight[k])
        out = selective_scan(u, delta, -torch.exp(m.A_logs[k * d:(k + 1) * d]), B, C, m.Ds[k * d:(k + 1) * d],
                             delta_bias=m.dt_projs_bias[k], delta_softplus=True, scan="sequential")
        if k >= 2:
            out = out.flip(-1)
        y += out.view(b, d, h, w) if k % 2 == 0 else out.view(b, d, w, h).transpose(2, 3)
    y = m.out_norm(y.permute(0, 2, 3, 1)) * F.silu(z)
    return m.out_proj(y)


def test_ss2d_equals_four_separate_scans():
    torch.manual_seed(0)
    m = SS2D(ss2d_tiny()).double()
    x = torch.randn(2, 3, 5, 16, dtype=F64)
    out = m(x)
    assert out.shape == (2, 3, 5, 16)
    assert (out - per_direction_ss2d(m, x)).abs().max() < 1e-12


def test_ss2d_backward_and_global_receptive_field():
    """Every output pixel depends on every input pixel (through one of the four scans)."""
    torch.manual_seed(1)
    m = SS2D(SS2DConfig(d_model=8, d_state=2, scan="chunked", chunk=7))
    x = torch.randn(1, 4, 5, 8, requires_grad=True)
    out = m(x)
    for i, j in [(0, 0), (3, 4), (2, 1)]:
        (grad,) = torch.autograd.grad(out[0, i, j].sum(), x, retain_graph=True)
        assert (grad[0].abs().sum(-1) > 0).all()
    out.square().mean().backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_no_gate_variant_runs():
    m = SS2D(SS2DConfig(d_model=8, d_state=1, conv_bias=False, gate=False))
    assert m(torch.randn(2, 3, 3, 8)).shape == (2, 3, 3, 8)
