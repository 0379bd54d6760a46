"""Every shipped checkpoint in data/checkpoints/ reproduces the val metrics its manifest states.

The manifest's metrics were measured by `python -m tutorial ship` on the shipped (float16) file;
re-evaluating it here on the regenerated shapes val set it names (`data`: data/shapes, or
data/shapes_hard for checkpoints trained on the hard preset) must give the same numbers. COCOeval's
metrics are rounded to 4 decimals; the tolerance (2e-3) allows for float differences between
CPUs in the last bits of the network's outputs, which can reorder near-equal scores.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tutorial.training.checkpoint import load_model
from tutorial.data.dataset import DetectionDataset
from tutorial.training.evaluate import evaluate

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "data" / "checkpoints").glob("*.json"))


def test_there_are_shipped_checkpoints():
    assert any(p.stem == "detr_tiny" for p in MANIFESTS)


@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_manifest_is_complete(manifest):
    m = json.loads(manifest.read_text())
    for key in ("command", "data", "seed", "train_wall_time_s", "val_metrics", "ap_curve", "preset"):
        assert key in m, key
    path = manifest.with_suffix(".pt")
    assert path.stat().st_size == m["file_bytes"] <= 10 * 2**20


@pytest.mark.slow
@pytest.mark.parametrize("manifest", MANIFESTS, ids=lambda p: p.stem)
def test_shipped_checkpoint_reproduces_its_metrics(manifest):
    m = json.loads(manifest.read_text())
    torch.set_num_threads(1)
    model = load_model(manifest.with_suffix(".pt"))
    val = DetectionDataset(ROOT / m["data"], "val", num_classes=model.cfg.num_classes)
    metrics = evaluate(model, val, progress=False)
    for key, expected in m["val_metrics"].items():
        assert metrics[key] == pytest.approx(expected, abs=2e-3), key
