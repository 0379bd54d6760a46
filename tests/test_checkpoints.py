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


@pytest.mark.slow
@pytest.mark.parametrize("name", ["detr_tiny", "rtdetr_tiny"])
def test_bf16_inference_keeps_the_detections_and_ap(name):
    """`eval --amp bf16` (issue: bf16 for inference): the shipped model's confident detections
    (score > 0.5) under bfloat16 autocast stay close to float32's on a val batch, and val AP on 160 images
    stays within 1.5 points (measured on the full 500: rtdetr_tiny 51.04 fp32, 51.05 bf16)."""
    from tutorial.data.dataset import collate
    from tutorial.training.evaluate import detect

    torch.set_num_threads(1)
    m = json.loads((ROOT / "data" / "checkpoints" / f"{name}.json").read_text())
    model = load_model(ROOT / "data" / "checkpoints" / f"{name}.pt").eval()
    val = DetectionDataset(ROOT / m["data"], "val", num_classes=model.cfg.num_classes)
    images, mask, targets = collate([val[i] for i in range(8)])
    sizes = torch.stack([t["orig_size"] for t in targets])  # (8, 2)
    fp32, bf16 = (detect(model, images, mask, sizes, amp=amp) for amp in ("fp32", "bf16"))
    checked = 0
    for a, b in zip(fp32, bf16):
        assert b["scores"].dtype == torch.float32
        for i in (a["scores"] > 0.5).nonzero().flatten().tolist():  # the confident fp32 detections
            checked += 1
            # its bf16 twin: the same label, the nearest box (top-k post-processing orders by score,
            # so two near-equal scores may swap rows)
            same = (b["labels"] == a["labels"][i]).nonzero().flatten()  # (D',)
            dist = (b["boxes"][same] - a["boxes"][i]).abs().amax(-1)  # (D',) pixels of a 160-px image
            j = same[dist.argmin()]
            assert dist.min() < 3.0 and (a["scores"][i] - b["scores"][j]).abs() < 0.05
    assert checked >= 8  # a few confident detections per image were compared
    subset = torch.utils.data.Subset(val, range(160))
    ap = {amp: evaluate(model, subset, progress=False, amp=amp)["AP"] for amp in ("fp32", "bf16")}
    assert abs(ap["fp32"] - ap["bf16"]) < 0.015, ap
    with pytest.raises(ValueError, match="amp must be one of"):
        detect(model, images, mask, sizes, amp="fp16")
