"""The NMS baseline: NMS against a greedy loop, the thresholds' monotone effect, centre-sampling
assignment, a training step, and the training loop and evaluation unchanged."""
from __future__ import annotations

import json

import torch
from torchvision.ops import box_iou

import tutorial
from tutorial.models.dense_detector import assign_targets, time_nms
from tutorial.training.evaluate import evaluate
from tutorial.data.dataset import DetectionDataset
from tutorial.training.train import TrainConfig, train

torch.set_num_threads(1)


def small():
    torch.manual_seed(0)
    return tutorial.build_model("dense_tiny", neck={"hidden_dim": 32}, head_convs=1)


def synthetic_outputs(n: int = 60, k: int = 3, seed: int = 0) -> dict:
    """Random boxes in clusters of near-duplicates, random scores: what `postprocess` reads."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(6, 2, generator=g) * 0.6 + 0.2
    cxcy = centres[torch.randint(0, 6, (n,), generator=g)] + torch.randn(n, 2, generator=g) * 0.01
    wh = torch.rand(n, 2, generator=g) * 0.05 + 0.15
    return {"pred_logits": torch.randn(1, n, k, generator=g) * 2, "pred_boxes": torch.cat([cxcy, wh], 1)[None],
            "valid": torch.ones(1, n, dtype=torch.bool)}


def greedy_nms_loop(boxes, scores, labels, iou_threshold):
    """Per class: take the best remaining box, drop every box overlapping it by more than the threshold."""
    keep = []
    for c in labels.unique().tolist():
        idx = sorted(torch.nonzero(labels == c).flatten().tolist(), key=lambda i: -scores[i].item())
        while idx:
            best = idx.pop(0)
            keep.append(best)
            idx = [i for i in idx if box_iou(boxes[best][None], boxes[i][None]).item() <= iou_threshold]
    return sorted(keep, key=lambda i: -scores[i].item())


def test_nms_removes_duplicates_as_a_greedy_loop_does():
    model = small()
    model.cfg.num_detections = 1000
    out, sizes = synthetic_outputs(), torch.tensor([[100, 120]])
    cand = model.candidates(out, sizes, 0.05)[0]
    for iou_threshold in (0.3, 0.5, 0.7):
        det = model.postprocess(out, sizes, iou_threshold=iou_threshold, score_threshold=0.05)[0]
        expected = greedy_nms_loop(cand["boxes"], cand["scores"], cand["labels"], iou_threshold)
        assert torch.allclose(det["scores"], cand["scores"][expected])
        for c in det["labels"].unique():  # no two kept boxes of a class overlap beyond the threshold
            same = det["boxes"][det["labels"] == c]
            assert (box_iou(same, same).triu(1) <= iou_threshold).all()


def test_thresholds_act_monotonically():
    """A higher confidence threshold keeps fewer boxes; a higher IoU threshold suppresses fewer."""
    model = small()
    model.cfg.num_detections = 1000
    out, sizes = synthetic_outputs(seed=1), torch.tensor([[100, 120]])
    by_conf = [len(model.postprocess(out, sizes, 0.7, conf)[0]["scores"]) for conf in (0.001, 0.01, 0.05, 0.3, 0.9)]
    by_iou = [len(model.postprocess(out, sizes, iou, 0.001)[0]["scores"]) for iou in (0.3, 0.5, 0.6, 0.8, 0.95)]
    assert by_conf == sorted(by_conf, reverse=True) and by_conf[0] > by_conf[-1]
    assert by_iou == sorted(by_iou) and by_iou[0] < by_iou[-1]
    assert time_nms(model, out, sizes, 0.7, 0.001, repeats=3) > 0


def test_centre_sampling_assignment():
    """Inside the box and within the radius: positive; the smaller object wins a shared location;
    an object smaller than every stride still gets the nearest finest-level location."""
    xs = torch.arange(8) + 0.5
    points = torch.stack(torch.meshgrid(xs, xs, indexing="xy"), -1).reshape(-1, 2) / 8  # 8 x 8 grid, stride 1/8
    radius = torch.full((64, 2), 2 / 8)  # 2 strides
    valid, level = torch.ones(64, dtype=torch.bool), torch.zeros(64, dtype=torch.int64)
    boxes = torch.tensor([[0.5, 0.5, 0.8, 0.8], [0.5, 0.5, 0.3, 0.3], [0.9, 0.1, 0.01, 0.01]])
    obj = assign_targets(points, radius, valid, level, boxes).view(8, 8)
    # big object: inside and within 2 cells of (0.5, 0.5): the 4 x 4 centre block, except the
    # inner 2 x 2 cells, inside the small object (same centre, 0.3 wide), which takes them
    assert (obj[3:5, 3:5] == 1).all() and (obj[2:6, 2:6] == 0).sum() == 12
    assert obj[0, 7] == 2 and (obj == 2).sum() == 1  # the tiny one: its nearest cell
    assert (obj[:2] == -1).sum() == 15 and (obj[6:] == -1).all()
    assert (assign_targets(points, radius, valid, level, boxes[:0]) == -1).all()


def test_tiny_trains_a_step():
    model = small()
    images = torch.randn(2, 3, 96, 112)
    mask = torch.zeros(2, 96, 112, dtype=torch.bool)
    mask[1, 64:, :] = True
    targets = [{"labels": torch.tensor([1, 3]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3], [0.7, 0.6, 0.4, 0.2]])},
               {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4)}]
    out = model(images, mask)
    assert out["pred_logits"].shape == (2, 12 * 14 + 6 * 7 + 3 * 4, 6)
    assert not out["valid"][1].all() and out["valid"][0].all()
    # boxes are normalised by the unpadded size: image 1's points reach (0.x, 1) on its valid part
    assert out["points"][1][out["valid"][1]][:, 1].max() < 1
    losses = model.build_criterion()(out, targets)
    assert losses["loss_cls"] > 0 and losses["loss_giou"] > 0
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        det = model.postprocess(model(images, mask), torch.tensor([[96, 112], [64, 112]]))
    assert all(len(d["scores"]) <= 100 and (d["boxes"][:, 2:] >= d["boxes"][:, :2]).all() for d in det)


def test_training_loop_and_evaluation_with_nms_thresholds(small_shapes, tmp_path):
    cfg = TrainConfig(model="dense_tiny", data=str(small_shapes), out=str(tmp_path / "run"), epochs=1, batch_size=8,
                      workers=0, train_images=16, val_images=8, progress=False,
                      model_overrides={"neck": {"hidden_dim": 32}, "head_convs": 1})
    model = train(cfg)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["loss_cls"] > 0 and "AP" in record
    val = torch.utils.data.Subset(DetectionDataset(small_shapes, "val", num_classes=6), range(4))
    metrics = evaluate(model, val, batch_size=4, progress=False,
                       postprocess_kwargs={"iou_threshold": 0.5, "score_threshold": 0.01})
    assert set(metrics) >= {"AP", "AP50"}


def test_dense_tiny_preset_as_shipped_trains_a_step():
    torch.manual_seed(0)
    model = tutorial.build_model("dense_tiny")
    images, mask = torch.randn(2, 3, 96, 112), torch.zeros(2, 96, 112, dtype=torch.bool)
    targets = [{"labels": torch.tensor([1]), "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.3]])}] * 2
    losses = model.build_criterion()(model(images, mask), targets)
    losses["loss"].backward()
    assert torch.isfinite(losses["loss"]) and losses["loss_giou"] > 0
