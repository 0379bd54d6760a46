"""Statistics of a data set's boxes (notebooks 00 and 02): area, aspect ratio, objects per image
and classes of a COCO annotation file, and the three modes of the seed deck's query-slot figure
(DETR Fig. 7: small, large horizontal, large vertical).

COCO's area thresholds are its evaluation's (pycocotools `COCOeval`: small < 32², large > 96² px²).
Glossary: n boxes, I images.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from torch import Tensor

COCO_SMALL, COCO_LARGE = 32**2, 96**2  # COCO's area thresholds (px²): small < 32², large > 96²
MODE_NAMES = ("small", "large horizontal", "large vertical")  # `box_modes` 0, 1, 2


def annotation_statistics(coco: dict) -> dict:
    """From a COCO instances dict: "area" (n,) box areas w·h in px², "aspect" (n,) w / h,
    "objects_per_image" (I,), "class_counts" {name: count}."""
    boxes = np.array([a["bbox"] for a in coco["annotations"]], dtype=float).reshape(-1, 4)  # (n, 4) xywh
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    classes = Counter(names[a["category_id"]] for a in coco["annotations"])
    return {"area": boxes[:, 2] * boxes[:, 3], "aspect": boxes[:, 2] / boxes[:, 3],  # (n,) each
            "objects_per_image": np.array([per_image.get(img["id"], 0) for img in coco["images"]]),  # (I,)
            "class_counts": {names[k]: classes.get(names[k], 0) for k in sorted(names)}}


def box_modes(boxes: Tensor, sizes: Tensor, small_area: float = COCO_SMALL) -> np.ndarray:
    """The seed slot figure's three modes (`MODE_NAMES`) for (..., 4) cxcywh boxes normalised by
    image sizes (..., 2) = (h, w) -> (...,) ints: 0 small (pixel area < `small_area`, COCO's 32²),
    else 1 large horizontal (w >= h in pixels) or 2 large vertical. The paper does not state its
    thresholds; these are ours."""
    boxes, sizes = torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(sizes, dtype=torch.float32)
    w_px = boxes[..., 2] * sizes[..., 1]  # (...,)
    h_px = boxes[..., 3] * sizes[..., 0]  # (...,)
    modes = torch.where(w_px >= h_px, 1, 2)  # (...,)
    modes = torch.where(w_px * h_px < small_area, 0, modes)  # (...,)
    return modes.numpy()
