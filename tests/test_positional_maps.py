"""The positional attention maps of notebook 04 (DAB-DETR Fig. 2) on hand-built cases whose answer
is known: with identity projections and the same sine temperature on both sides, a query's map
must peak at its own reference point, so coordinate order, normalisation and the grid are right.
With the official DAB-DETR temperatures (pixels T = 20, anchors T = 10000) it need not: there the
learned projections must reconcile the two encodings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tutorial import figure_metrics as fm
from tutorial.models.heads import inverse_sigmoid
from tutorial.data.dataset import DetectionDataset
from tutorial.inspect import QueryRunner, select_head

from .tiny import small_model

torch.set_num_threads(1)

GRID = (32, 32)
SMALL = {"transformer": {"d_model": 64, "num_encoder_layers": 1, "num_decoder_layers": 2, "dim_feedforward": 64},
         "num_queries": 2}


def identity(linear: nn.Linear) -> None:
    with torch.no_grad():
        linear.weight.copy_(torch.eye(linear.out_features))
        linear.bias.zero_()


def peak(model, dataset) -> list[tuple[float, float]]:
    """(x, y) of the first-layer mean-of-heads map's maximum, per query, as notebook 04 draws it."""
    maps = select_head(QueryRunner(model.eval(), dataset, grid=GRID)(0)["positional_attention"][0], "mean")
    cells = [np.unravel_index(int(m.argmax()), GRID) for m in maps]  # (row, column) per query
    return [((c + 0.5) / GRID[1], (r + 0.5) / GRID[0]) for r, c in cells]


@pytest.fixture
def val(small_shapes):
    return DetectionDataset(small_shapes, "val", num_classes=6)


def dab_with_anchors(temperature: float, anchors: list[list[float]]):
    model = small_model("dab_detr_tiny", SMALL, position_temperature=temperature, modulate_hw_attn=False)
    layer = model.decoder.layers[0]
    identity(layer.ca_qpos_sine_proj)
    identity(layer.ca_kpos_proj)
    with torch.no_grad():
        model.refpoint_embed.weight.copy_(inverse_sigmoid(torch.tensor(anchors)))
    return model


def test_dab_map_peaks_at_its_anchor_with_matched_temperatures(val):
    anchors = [[0.7, 0.3, 0.2, 0.2], [0.2, 0.8, 0.1, 0.3]]  # (x, y, w, h)
    for (x, y), a in zip(peak(dab_with_anchors(10000.0, anchors), val), anchors):
        assert abs(x - a[0]) <= 1.0 / GRID[1] and abs(y - a[1]) <= 1.0 / GRID[0], (x, y, a)


def test_dab_official_temperatures_do_not_align_without_learning(val):
    """Pixels at T = 20 against anchors at T = 10000: identity projections miss the anchor, so the
    first layer's alignment is something training has to find (notebook 04, section 2)."""
    anchors = [[0.7, 0.3, 0.2, 0.2], [0.2, 0.8, 0.1, 0.3]]
    misses = [max(abs(x - a[0]), abs(y - a[1])) for (x, y), a in zip(peak(dab_with_anchors(20.0, anchors), val), anchors)]
    assert max(misses) > 0.1, misses


def test_conditional_map_peaks_at_its_reference_point(val):
    model = small_model("conditional_detr_tiny", SMALL)
    layer = model.decoder.layers[0]
    identity(layer.ca_qpos_sine_proj)
    identity(layer.ca_kpos_proj)
    last = model.decoder.ref_point_head.layers[-1]  # s = σ(MLP(o_q)): make it (0.7, 0.3) for every query
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(inverse_sigmoid(torch.tensor([0.7, 0.3])))
    for x, y in peak(model, val):
        assert abs(x - 0.7) <= 1.0 / GRID[1] and abs(y - 0.3) <= 1.0 / GRID[0], (x, y)


def test_map_alignment_reads_a_hand_built_map():
    m = np.full(GRID, 1e-3)
    m[9, 22] = 1.0  # the cell of (0.7, 0.3)
    inside = fm.map_alignment(m, np.array([0.7, 0.3, 0.2, 0.2]))
    assert inside["peak_in_box"] and inside["distance"] < 1.0 / GRID[0] and inside["lift"] > 10
    outside = fm.map_alignment(m, np.array([0.2, 0.8, 0.1, 0.1]))
    assert not outside["peak_in_box"] and outside["distance"] > 0.6 and outside["lift"] < 1
