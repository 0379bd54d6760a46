"""The figure measures on hand-built attention whose answer is known."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from tutorial import figure_metrics as fm
from tutorial.data.dataset import DetectionDataset
from tutorial.matching.matcher import MatcherWeights


class StubDETR(nn.Module):
    """Returns attention built by `attend(cells of each object) -> attention` for each image, and
    perfect predictions (the targets themselves) so that matching is the identity."""

    def __init__(self, dataset, mode: str):
        super().__init__()
        self.dataset, self.mode, self.index = dataset, mode, 0
        self.cfg = type("Cfg", (), {"matcher": MatcherWeights(), "num_classes": 6})()

    def forward(self, images, mask, return_attention=False):
        h, w = images.shape[-2:]
        hf, wf = h // 16, w // 16
        n = hf * wf
        gen = fm.generator_config(self.dataset)
        objects = fm.object_masks(gen, "val", self.index)
        target = self.dataset[self.index][1]
        enc = torch.full((n, n), 1.0 / n)  # uniform
        if self.mode == "on_object":
            for visible, _ in objects:
                cells = torch.from_numpy(fm.cell_grid(visible, (hf, wf), (h, w)).reshape(-1))
                if cells.any():
                    enc[cells] = cells.float() / cells.sum()  # inside cells attend only to their object
        q = max(len(target["labels"]), 1)
        logits = torch.full((q, 7), -10.0)
        boxes = torch.full((q, 4), 0.5)
        if len(target["labels"]):
            logits[torch.arange(q), target["labels"]] = 10.0
            boxes = target["boxes"].clone()
        dec = torch.full((q, n), 1.0 / n)
        self.index += 1
        return {"pred_logits": logits[None], "pred_boxes": boxes[None], "feature_size": (hf, wf),
                "encoder_attention": [enc[None, None]], "decoder_attention": [dec[None, None]]}


@pytest.fixture
def val(small_shapes):
    return DetectionDataset(small_shapes, "val", num_classes=6)


def test_uniform_encoder_attention_has_lift_one(val):
    r = fm.encoder_instance_lift(StubDETR(val, "uniform"), val, images=8)
    assert r["count"] > 0 and r["median"] == pytest.approx(1.0, abs=1e-4)


def test_attention_kept_on_the_object_has_lift_of_inverse_share(val):
    r = fm.encoder_instance_lift(StubDETR(val, "on_object"), val, images=8)
    assert r["count"] > 0 and r["median"] > 2 and r["share_above_1"] == 1.0


def test_uniform_decoder_attention_has_outline_lift_one(val):
    r = fm.decoder_outline_lift(StubDETR(val, "uniform"), val, images=8)
    assert r["count"] > 0 and r["median"] == pytest.approx(1.0, abs=1e-4)


def test_outline_band_is_the_outline():
    mask = np.zeros((20, 20), bool)
    mask[5:15, 5:15] = True
    band = fm.outline_band(mask, (5, 5, 15, 15), width=1.0)
    assert band[5, 5:15].all() and band[5:15, 5].all() and not band[7:13, 7:13].any()


def test_cell_grid_takes_cell_centres():
    mask = np.zeros((32, 48), bool)
    mask[:16, 16:32] = True  # the cell (0, 1) of a 2 x 3 grid of 16-px cells
    assert fm.cell_grid(mask, (2, 3), (32, 48)).tolist() == [[False, True, False], [False, False, False]]


def test_generator_config_round_trips(val):
    from tutorial.data.shapes import ShapesConfig

    assert fm.generator_config(val) == ShapesConfig(num_train=64, num_val=16)


def test_peaks_and_spread_of_known_maps():
    h = w = 16
    ys, xs = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    bump = lambda y, x, s: np.exp(-((ys - y) ** 2 + (xs - x) ** 2) / (2 * s**2))  # noqa: E731
    one = bump(0.3, 0.7, 0.05)
    two = bump(0.25, 0.25, 0.05) + bump(0.75, 0.75, 0.05)
    flat = np.ones((h, w))
    maps = torch.tensor(np.stack([one, two, flat]).reshape(3, -1))
    maps = maps / maps.sum(-1, keepdim=True)
    peaks, spreads = fm.map_peaks_and_spread(maps, (h, w))
    assert peaks == [1, 2, 1]  # a flat map is one plateau
    assert spreads[0] < 0.1 < spreads[1] and spreads[2] > 0.3
