"""Bad input gets a clear message naming the file and the field; empty images are fine."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

import tutorial
from tutorial.training.checkpoint import CheckpointError, load_model, save_atomic
from tutorial.data.dataset import DatasetError, DetectionDataset
from tutorial.training.train import NonFiniteLossError, TrainConfig, train

TINY = {"transformer": {"num_encoder_layers": 1, "num_decoder_layers": 1, "d_model": 32, "dim_feedforward": 64},
        "num_queries": 15, "backbone": {"depths": [1, 1], "return_layers": ["layer2"]}}


@pytest.fixture
def shapes_copy(small_shapes, tmp_path):
    dst = tmp_path / "shapes"
    shutil.copytree(small_shapes, dst)
    return dst


def edit_json(root, fn):
    path = root / "train" / "instances.json"
    coco = json.loads(path.read_text())
    fn(coco)
    path.write_text(json.dumps(coco))
    return path


def test_malformed_json(shapes_copy):
    path = shapes_copy / "train" / "instances.json"
    path.write_text(path.read_text()[:-10])
    with pytest.raises(DatasetError, match=r"instances\.json: not valid JSON \(line"):
        DetectionDataset(shapes_copy, "train")


def test_missing_field(shapes_copy):
    edit_json(shapes_copy, lambda c: c["annotations"][3].pop("bbox"))
    with pytest.raises(DatasetError, match=r"annotations\[3\] \(id 4\) has no field 'bbox'"):
        DetectionDataset(shapes_copy, "train")


def test_category_the_model_has_no_class_for(shapes_copy):
    def bad(c):
        c["annotations"][5]["category_id"] = 42
    edit_json(shapes_copy, bad)
    with pytest.raises(DatasetError, match=r"annotations\[5\] \(id 6\)\.category_id: 42 .*num_classes=6"):
        DetectionDataset(shapes_copy, "train", num_classes=6)


def test_degenerate_box(shapes_copy):
    def bad(c):
        c["annotations"][2]["bbox"][2] = 0
    edit_json(shapes_copy, bad)
    with pytest.raises(DatasetError, match=r"annotations\[2\] \(id 3\)\.bbox: degenerate box .*width and height"):
        DetectionDataset(shapes_copy, "train")


def test_missing_image_file(shapes_copy):
    name = json.loads((shapes_copy / "train" / "instances.json").read_text())["images"][7]["file_name"]
    (shapes_copy / "train" / "images" / name).unlink()
    with pytest.raises(DatasetError, match=rf"images\[7\]\.file_name: image file .*{name} does not exist"):
        DetectionDataset(shapes_copy, "train")


def test_missing_split(tmp_path):
    with pytest.raises(DatasetError, match="python -m tutorial data"):
        DetectionDataset(tmp_path, "train")


def test_checkpoint_config_mismatch(tmp_path):
    model = tutorial.build_model("detr_tiny", num_queries=10)
    path = tmp_path / "ckpt.pt"
    import dataclasses
    save_atomic({"preset": "detr_tiny", "config": dataclasses.asdict(model.cfg), "model": model.state_dict()}, path)
    assert load_model(path).cfg.num_queries == 10  # rebuilt from the checkpoint's own config
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: checkpoint config does not match.*num_queries: 10 \(checkpoint\) != 25"):
        load_model(path, preset="detr_tiny")
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"ckpt\.pt: not a readable checkpoint"):
        load_model(path)


def tiny_train_config(data, out, **kw) -> TrainConfig:
    base = dict(model="detr_tiny", data=str(data), out=str(out), epochs=1, batch_size=8, workers=0,
                train_images=16, val_images=8, progress=False, model_overrides=TINY)
    return TrainConfig(**{**base, **kw})


def test_empty_images_train_and_evaluate(tmp_path):
    """A set whose images have no objects at all trains (all predictions -> no object) and evaluates."""
    from tutorial.data.shapes import ShapesConfig, generate

    root = generate(tmp_path / "empty", ShapesConfig(num_train=8, num_val=4, empty_fraction=1.0), workers=1,
                    progress=False)
    model = train(tiny_train_config(root, tmp_path / "run"))
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert torch.isfinite(torch.tensor(record["loss"])) and record["AP"] in (0.0, -1.0)
    assert model is not None


def test_nan_loss_stops_training_and_keeps_the_last_checkpoint(small_shapes, tmp_path, monkeypatch):
    out = tmp_path / "run"
    train(tiny_train_config(small_shapes, out))
    before = (out / "checkpoint.pt").read_bytes()

    from tutorial.matching import criterion

    original = criterion.SetCriterion.forward

    def poisoned(self, outputs, targets):
        losses = original(self, outputs, targets)
        losses["loss"] = losses["loss"] * float("nan")
        return losses

    monkeypatch.setattr(criterion.SetCriterion, "forward", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"loss is nan at epoch 1, iteration 0.*left as it was"):
        train(tiny_train_config(small_shapes, out, epochs=2, resume=True))
    assert (out / "checkpoint.pt").read_bytes() == before
    assert not (out / "checkpoint.pt.tmp").exists()
