"""Multi-scale deformable attention: the grid_sample reference against the explicit corner gather,
in float64, on awkward shapes; gradients by gradcheck; the module's initialisation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tutorial.ops.deformable_attention import (MSDeformAttn, bilinear_sample, map_coverage, ms_deform_attn_core,
                                          ms_deform_attn_explicit)

SHAPES = [(6, 9), (3, 5), (2, 2), (1, 3)]  # non-square levels, a 1-row level


def problem(b=2, q=7, m=2, d=3, shapes=SHAPES, p=3, spread=0.3, seed=0, dtype=torch.float64):
    """Random value, locations (some outside [0, 1]) and normalised weights."""
    g = torch.Generator().manual_seed(seed)
    n = sum(h * w for h, w in shapes)
    value = torch.randn(b, n, m, d, generator=g, dtype=dtype)
    loc = torch.rand(b, q, m, len(shapes), p, 2, generator=g, dtype=dtype) * (1 + 2 * spread) - spread
    weights = torch.rand(b, q, m, len(shapes), p, generator=g, dtype=dtype)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, shapes, loc, weights


@pytest.mark.parametrize("b", [1, 2, 3])
def test_grid_sample_reference_equals_explicit_gather(b):
    value, shapes, loc, weights = problem(b=b)
    assert ((loc < 0) | (loc > 1)).any()  # some samples fall outside the maps
    a = ms_deform_attn_core(value, shapes, loc, weights)
    e = ms_deform_attn_explicit(value, shapes, loc, weights)
    assert a.shape == (b, 7, 2 * 3)
    assert (a - e).abs().max() < 1e-10


def test_bilinear_sample_equals_grid_sample_including_borders():
    g = torch.Generator().manual_seed(1)
    value = torch.randn(2, 3, 4, 6, generator=g, dtype=torch.float64)
    loc = torch.rand(2, 5, 8, 2, generator=g, dtype=torch.float64) * 1.6 - 0.3
    loc[0, 0, :4] = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-0.2, 0.5], [1 / 12, 1 / 8]], dtype=torch.float64)
    expected = F.grid_sample(value, 2 * loc - 1, mode="bilinear", padding_mode="zeros", align_corners=False)
    assert (bilinear_sample(value, loc) - expected).abs().max() < 1e-12
    # at a pixel centre the sample is that pixel
    centre = torch.tensor([[[[(2 + 0.5) / 6, (1 + 0.5) / 4]]]], dtype=torch.float64).expand(2, 1, 1, 2)
    assert torch.allclose(bilinear_sample(value, centre)[:, :, 0, 0], value[:, :, 1, 2])


@pytest.mark.parametrize("core", [ms_deform_attn_core, ms_deform_attn_explicit], ids=["grid_sample", "explicit"])
def test_gradcheck(core):
    value, shapes, loc, weights = problem(b=1, q=3, m=2, d=2, shapes=[(3, 4), (2, 3)], p=2, spread=0.2)
    # keep samples away from pixel-grid lines, where bilinear interpolation has a kink
    loc = loc.detach().requires_grad_()
    value.requires_grad_()
    weights.requires_grad_()
    assert torch.autograd.gradcheck(lambda v, l, w: core(v, shapes, l, w), (value, loc, weights), eps=1e-6, atol=1e-5)


def test_module_initialisation_puts_each_heads_points_on_a_ring():
    attn = MSDeformAttn(d_model=32, n_levels=2, n_heads=8, n_points=3)
    offsets = attn.sampling_offsets.bias.view(8, 2, 3, 2)  # (M, L, P, 2)
    for m in range(8):
        angle = 2 * math.pi * m / 8
        direction = offsets[m, 0, 0] / offsets[m, 0, 0].norm()
        assert torch.allclose(direction, torch.tensor([math.cos(angle), math.sin(angle)]), atol=1e-6)
        for k in range(3):  # point k sits (k+1) times further out, on every level
            assert torch.allclose(offsets[m, :, k], (k + 1) * offsets[m, :, 0])
    assert attn.attention_weights.weight.abs().sum() == 0  # uniform weights at the start


def test_module_returns_locations_and_weights():
    torch.manual_seed(0)
    shapes = [(4, 6), (2, 3)]
    n = sum(h * w for h, w in shapes)
    attn = MSDeformAttn(d_model=16, n_levels=2, n_heads=4, n_points=2)
    query, ref = torch.randn(2, 5, 16), torch.rand(2, 5, 2, 2)
    out, loc, w = attn(query, ref, torch.randn(2, n, 16), shapes)
    assert out.shape == (2, 5, 16) and loc.shape == (2, 5, 4, 2, 2, 2) and w.shape == (2, 5, 4, 2, 2)
    assert torch.allclose(w.sum((-1, -2)), torch.ones(2, 5, 4))
    # at initialisation, head m's first point on level l is one pixel of that level from the reference
    pix = (loc[:, :, :, :, 0] - ref[:, :, None, :, :]) * torch.tensor([[6.0, 4.0], [3.0, 2.0]])  # (B, Q, M, L, 2)
    assert torch.allclose(pix.abs().max(-1).values, torch.ones(()), atol=1e-5)


def test_map_coverage_is_what_grid_sample_reads_of_a_map_of_ones():
    """The share of a sample on its map, against `F.grid_sample` of all-ones maps (zero padding):
    1 inside the pixel centres, 0 beyond half a pixel out, partial on the border strip."""
    shapes = [(5, 7), (2, 3), (1, 1)]
    g = torch.Generator().manual_seed(0)
    loc = torch.rand(4, 3, len(shapes), 6, 2, generator=g, dtype=torch.float64) * 2.0 - 0.5  # (Q, M, L, P, 2)
    coverage = map_coverage(loc, shapes)  # (Q, M, L, P)
    for lvl, (h, w) in enumerate(shapes):
        grid = 2 * loc[:, :, lvl].reshape(1, -1, 6, 2) - 1  # (1, Q·M, P, 2)
        ones = F.grid_sample(torch.ones(1, 1, h, w, dtype=torch.float64), grid, align_corners=False)[0, 0]  # (Q·M, P)
        torch.testing.assert_close(coverage[:, :, lvl].reshape(-1, 6), ones)
    assert (coverage == 0).any() and (coverage == 1).any() and ((coverage > 0) & (coverage < 1)).any()
    h, w = shapes[0]
    edge = torch.tensor([[[0.5 / w, 0.5 / h]], [[-0.5 / w, 0.5]], [[1.2, 0.5]]], dtype=torch.float64)  # (3, 1, 2)
    assert map_coverage(edge[:, None], shapes[:1])[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.0])
