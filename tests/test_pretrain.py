"""Backbone pretraining (dense labelling) and loading pretrained weights into the tiny presets."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

import tutorial
from tutorial.models.backbone import Backbone, tiny_backbone
from tutorial.training.pretrain import (PRETRAINED_DIR, DenseHead, PretrainConfig, batch, build_backbone, cell_labels,
                               dense_loss, generate, pretrain, resolve_weights)
from tutorial.data.shapes import PRESETS, make_image, make_labelled_image


def test_resolve_weights():
    assert resolve_weights(None) is None
    assert resolve_weights("/some/file.pt") == "/some/file.pt"
    assert resolve_weights("pretrained:resnet_tiny") == str(PRETRAINED_DIR / "resnet_tiny.pt")
    with pytest.raises(FileNotFoundError, match="no_such_backbone"):
        resolve_weights("pretrained:no_such_backbone")


def test_tiny_presets_start_from_the_shipped_pretraining():
    shipped = torch.load(PRETRAINED_DIR / "resnet_tiny.pt", weights_only=True)
    for name in ("detr_tiny", "deformable_detr_tiny", "dab_detr_tiny"):
        body = tutorial.build_model(name).backbone.body.state_dict()
        assert body and all(torch.equal(v, shipped[k]) for k, v in body.items()), name
    presnet = torch.load(PRETRAINED_DIR / "presnet_tiny.pt", weights_only=True)
    for name in ("rtdetr_tiny", "dense_tiny"):
        state = tutorial.build_model(name).backbone.state_dict()
        assert all(torch.equal(v, presnet[k]) for k, v in state.items()), name
    scratch = tutorial.build_model("detr_tiny", backbone={"weights": None}).backbone.body.state_dict()
    assert not torch.equal(scratch["conv1.weight"], shipped["conv1.weight"])


def test_truncated_resnet_weights_load_without_the_unused_stages(tmp_path):
    """A state dict of a truncated ResNet (no layer4, here no layer3) loads: stages after the
    last returned one are not expected; a key that does not fit is named in the error."""
    torch.manual_seed(0)
    cfg = tiny_backbone("layer2")
    src = Backbone(type(cfg)(**{**cfg.__dict__, "weights": None}))
    path = tmp_path / "two_stages.pt"
    torch.save(src.body.state_dict(), path)
    assert not any(k.startswith(("layer3.", "layer4.")) for k in src.body.state_dict())
    loaded = Backbone(type(cfg)(**{**cfg.__dict__, "weights": str(path)}))
    assert all(torch.equal(v, src.body.state_dict()[k]) for k, v in loaded.body.state_dict().items())
    bad = dict(src.body.state_dict())
    bad["layer9.weight"] = torch.zeros(1)
    torch.save(bad, path)
    with pytest.raises(ValueError, match="layer9.weight"):
        Backbone(type(cfg)(**{**cfg.__dict__, "weights": str(path)}))
    with pytest.raises(ValueError, match="layer3"):  # a returned stage that the file lacks
        Backbone(type(cfg)(**{**cfg.__dict__, "return_layers": ("layer3",), "weights": str(path)}))


def test_cell_labels_take_each_cells_centre_pixel():
    labels = torch.arange(64).view(1, 8, 8)
    assert cell_labels(labels, 4).tolist() == [[[18, 22], [50, 54]]]  # pixels (2, 2), (2, 6), (6, 2), (6, 6)


def test_batch_pads_labels_with_ignore():
    data = generate(PRESETS["default"], 2, "val")
    images, mask, labels = batch(data)
    for i, (x, y) in enumerate(data):
        h, w = y.shape
        assert torch.equal(labels[i, :h, :w], y) and (labels[i, h:] == -1).all() and (labels[i, :, w:] == -1).all()
        assert not mask[i, :h, :w].any() and torch.equal(images[i, :, :h, :w], x)


def test_dense_head_fits_one_batch():
    torch.manual_seed(0)
    backbone = build_backbone("resnet")
    head = DenseHead(backbone.num_channels)
    images, mask, labels = batch(generate(PRESETS["default"], 4, "train"))
    opt = torch.optim.Adam(list(backbone.parameters()) + list(head.parameters()), lr=2e-3)
    losses = []
    for _ in range(15):
        loss = dense_loss(head([f for f, _ in backbone(images, mask)]), labels, backbone.strides)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.parametrize("kind", ["resnet", "presnet"])
def test_pretrain_writes_loadable_weights_and_a_manifest(tmp_path, kind):
    out = tmp_path / f"{kind}.pt"
    m = pretrain(PretrainConfig(backbone=kind, out=str(out), images=8, val_images=4, batch_size=4, max_time=1.0),
                 command="test", progress=False)
    assert m["steps"] >= 1 and 0 <= m["held_out"]["pixel_accuracy"] <= 1
    assert json.loads(out.with_suffix(".json").read_text())["command"] == "test"
    name = {"resnet": "detr_tiny", "presnet": "rtdetr_tiny"}[kind]
    model = tutorial.build_model(name, backbone={"weights": str(out)})
    saved = torch.load(out, weights_only=True)
    state = (model.backbone.body if kind == "resnet" else model.backbone).state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in state.items())


def test_pretraining_images_are_not_the_detection_sets():
    """The pretext images come from another generator seed than the detection train/val sets."""
    cfg = dataclasses.replace(PRESETS["default"], seed=PretrainConfig().seed)
    assert cfg.seed != PRESETS["default"].seed
    for split in ("train", "val"):
        for i in range(3):
            a, b = make_labelled_image(cfg, split, i)[0], make_image(PRESETS["default"], split, i)[0]
            assert a.shape != b.shape or not np.array_equal(a, b)
