"""COCO evaluation with pycocotools' COCOeval: AP, AP50, AP75, APs, APm, APl.

Every query's prediction is scored (DETR has no NMS and at most Q ≤ 100 detections per image,
COCOeval's maxDets), boxes in pixels of the original image.
"""
from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.cocoeval import COCOeval
from torch import nn
from tqdm import tqdm

from ..data.dataset import DetectionDataset, collate
from .amp import autocast, input_layout, to_float

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


@torch.no_grad()
def predict(model: nn.Module, dataset: DetectionDataset, batch_size: int = 16, workers: int = 0,
            device: torch.device | str = "cpu", progress: bool = True,
            postprocess_kwargs: dict | None = None, amp: str = "fp32") -> tuple[list[dict], list[int]]:
    """COCO-format detections [{"image_id", "category_id", "bbox" [x, y, w, h], "score"}] for the
    set (a `DetectionDataset` or a `Subset` of one), and the ids of the images they cover.
    `postprocess_kwargs` go to `model.postprocess` (e.g. the dense detector's NMS thresholds);
    `amp="bf16"` runs the forward under bfloat16 autocast (`tutorial.training.amp`)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate)
    results, image_ids = [], []
    for images, mask, targets in tqdm(loader, desc="eval", disable=not progress, leave=False):
        sizes = torch.stack([t["orig_size"] for t in targets])  # (B, 2)
        for t, det in zip(targets, detect(model, images, mask, sizes, device, postprocess_kwargs, amp)):
            image_ids.append(int(t["image_id"]))
            results += coco_detections(int(t["image_id"]), det)
    return results, image_ids


@torch.no_grad()
def detect(model: nn.Module, images: torch.Tensor, mask: torch.Tensor, sizes: torch.Tensor,
           device: torch.device | str = "cpu", postprocess_kwargs: dict | None = None,
           amp: str = "fp32") -> list[dict]:
    """Run `model` on a padded batch, images (B, 3, H, W) and mask (B, H, W) from `collate`, and
    post-process with its own `postprocess`: per image {"boxes" (D, 4) xyxy in pixels of `sizes`
    (B, 2) = (h, w), "scores" (D,), "labels" (D,)}. Shared by evaluation and `tutorial.predict`.
    `amp="bf16"`: the forward under bfloat16 autocast; post-processing sees float32."""
    with autocast(device, amp):
        outputs = model(input_layout(images.to(device), amp), mask.to(device))
    return model.postprocess(to_float(outputs), sizes.to(device), **(postprocess_kwargs or {}))


def coco_detections(image_id: int, det: dict) -> list[dict]:
    """One image's post-processed detections {"boxes" (D, 4) xyxy pixels, "scores" (D,), "labels"
    (D,)} -> COCO results [{"image_id", "category_id", "bbox" [x, y, w, h], "score"}]."""
    boxes = det["boxes"].detach().cpu().clone()  # (D, 4) xyxy
    boxes[:, 2:] -= boxes[:, :2]  # (D, 4) xywh
    return [{"image_id": image_id, "category_id": int(label), "bbox": [round(v, 3) for v in box],
             "score": round(score, 5)}
            for box, score, label in zip(boxes.tolist(), det["scores"].tolist(), det["labels"].tolist())]


def coco_metrics(coco_gt, results: list[dict], image_ids: list[int] | None = None) -> dict[str, float]:
    """Run COCOeval (bbox) on `results` against ground truth `coco_gt` (a pycocotools COCO),
    over `image_ids` (default: every image of `coco_gt`)."""
    if not results:
        return {k: 0.0 for k in METRICS}
    with contextlib.redirect_stdout(io.StringIO()):  # COCOeval prints its progress and table
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        if image_ids is not None:
            ev.params.imgIds = sorted(image_ids)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return {k: float(np.round(v, 4)) for k, v in zip(METRICS, ev.stats[:6])}


def evaluate(model: nn.Module, dataset: DetectionDataset, batch_size: int = 16, workers: int = 0,
             device: torch.device | str = "cpu", progress: bool = True,
             postprocess_kwargs: dict | None = None, amp: str = "fp32") -> dict[str, float]:
    """COCO box metrics of `model` on `dataset` (a `DetectionDataset` or a `Subset` of one);
    `postprocess_kwargs` and `amp` as in `predict`."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    results, image_ids = predict(model, dataset, batch_size, workers, device, progress, postprocess_kwargs, amp)
    return coco_metrics(base.coco, results, image_ids)
