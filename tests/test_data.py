"""The shapes set: deterministic, COCO-format, with the properties the tutorial relies on."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

from tutorial.data.dataset import DetectionDataset, collate
from tutorial.data.shapes import CATEGORIES, PRESETS, ShapesConfig, draw_image, generate, make_image, make_labelled_image


def test_generation_is_deterministic_and_independent_of_workers(tmp_path):
    cfg = ShapesConfig(num_train=12, num_val=4, seed=3)
    a = generate(tmp_path / "a", cfg, workers=1, progress=False)
    b = generate(tmp_path / "b", cfg, workers=2, progress=False)
    for split in ("train", "val"):
        ja = json.loads((a / split / "instances.json").read_text())
        jb = json.loads((b / split / "instances.json").read_text())
        assert ja == jb
        for img in ja["images"]:
            pa = np.asarray(Image.open(a / split / "images" / img["file_name"]))
            pb = np.asarray(Image.open(b / split / "images" / img["file_name"]))
            assert (pa == pb).all()
    other = generate(tmp_path / "c", ShapesConfig(num_train=12, num_val=4, seed=4), workers=1, progress=False)
    assert json.loads((other / "val" / "instances.json").read_text()) != json.loads((a / "val" / "instances.json").read_text())


def test_existing_set_is_reused(tmp_path):
    cfg = ShapesConfig(num_train=4, num_val=2)
    generate(tmp_path, cfg, workers=1, progress=False)
    ann = tmp_path / "train" / "instances.json"
    before = ann.stat().st_mtime_ns
    generate(tmp_path, cfg, workers=1, progress=False)
    assert ann.stat().st_mtime_ns == before
    generate(tmp_path, ShapesConfig(num_train=5, num_val=2), workers=1, progress=False)  # other config: redone
    assert ann.stat().st_mtime_ns != before


@pytest.mark.parametrize("preset", ["default", "hard"])
def test_set_has_the_properties_the_tutorial_needs(preset):
    """Measured on 400 images drawn exactly as the preset's set."""
    cfg = PRESETS[preset]
    objects = [make_image(cfg, "train", i)[1] for i in range(400)]
    counts = Counter(len(o) for o in objects)
    boxes = np.array([(x1 - x0, y1 - y0) for objs in objects for _, (x0, y0, x1, y1), _ in objs], dtype=float)
    areas = boxes[:, 0] * boxes[:, 1]
    aspect = boxes[:, 0] / boxes[:, 1]
    classes = Counter(c for objs in objects for c, _, _ in objs)
    assert len(CATEGORIES) >= 4 and set(classes) == set(range(1, len(CATEGORIES) + 1))
    assert counts[0] > 0 and max(counts) >= {"default": 6, "hard": 10}[preset]  # empty images, and crowded ones
    for lo, hi in ((0, 32**2), (32**2, 96**2), (96**2, 1e9)):  # COCO small / medium / large
        assert ((areas >= lo) & (areas < hi)).mean() > 0.1
    large = areas >= 96**2
    assert (large & (aspect > 2)).sum() > 5 and (large & (aspect < 0.5)).sum() > 5  # wide and tall
    small = (areas < 32**2).mean()
    assert (0.25 < small < 0.4) if preset == "default" else (small > 0.5)  # the hard set is mostly small boxes


@pytest.mark.parametrize("preset", ["default", "hard"])
def test_occlusion_is_bounded(preset):
    """Objects overlap, but each keeps at least `min_visible` of its pixels, and the per-pixel
    labels (the pretraining target) are exactly the visible masks."""
    cfg = PRESETS[preset]
    overlaps = 0
    for i in range(30):
        _, placed = draw_image(cfg, "val", i)
        _, labels = make_labelled_image(cfg, "val", i)
        for a, (cat, box, full, visible, _) in enumerate(placed):
            assert visible.sum() >= cfg.min_visible * full.sum()
            assert (labels[visible] == cat).all()
            for b in range(a + 1, len(placed)):
                (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = box, placed[b][1]
                overlaps += min(ax1, bx1) > max(ax0, bx0) and min(ay1, by1) > max(ay0, by0)
        covered = np.zeros(labels.shape, bool)
        for p in placed:
            covered |= p[3]
        assert (labels[~covered] == 0).all()
    assert overlaps > 10


def test_loading_and_padding_mask(small_shapes):
    ds = DetectionDataset(small_shapes, "train", train=False, num_classes=6)
    items = [ds[i] for i in range(4)]
    images, mask, targets = collate(items)
    assert images.shape[0] == 4 and mask.shape == (4, *images.shape[-2:])
    for (img, t), m, padded in zip(items, mask, images):
        h, w = img.shape[-2:]
        assert not m[:h, :w].any() and m[h:].all() and m[:, w:].all()
        assert (padded[:, h:] == 0).all()
        assert t["boxes"].shape[1] == 4 and (t["boxes"] >= 0).all() and (t["boxes"] <= 1).all()
        assert t["labels"].dtype == torch.int64 and t["size"].tolist() == [h, w]


def test_boxes_survive_the_transforms(small_shapes):
    """A horizontal flip moves the boxes with the image (transforms.v2 with tv_tensors boxes)."""
    plain = DetectionDataset(small_shapes, "train", train=False, num_classes=6)
    flipping = DetectionDataset(small_shapes, "train", train=True, num_classes=6)
    torch.manual_seed(0)
    for i in range(6):
        img, t = plain[i]
        img2, t2 = flipping[i]
        if len(t["boxes"]) == 0:
            continue
        if torch.equal(img, img2):
            assert torch.allclose(t["boxes"], t2["boxes"])
        else:
            assert torch.equal(img.flip(-1), img2)
            expected = t["boxes"].clone()
            expected[:, 0] = 1 - expected[:, 0]
            assert torch.allclose(expected, t2["boxes"], atol=1e-6)
