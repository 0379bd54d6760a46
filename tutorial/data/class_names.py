"""Category id -> name for a model's predictions, from its number of classes K.

Models trained on the shapes set (K = 6: ids 1..5, 0 unused) use the shapes' `CATEGORIES`;
the COCO presets (K = 91: COCO's own ids 1..90 with gaps, as DETR's `num_classes = 91`; or
K = 80: the 80 categories remapped to 0..79, as RT-DETR's official code) use `COCO_CLASSES`.
Anything else is printed as "class <id>".
"""
from __future__ import annotations

from .shapes import CATEGORIES

# COCO 2017 category names indexed by category id (0 and the 11 ids COCO skips are "N/A"),
# as `CLASSES` in the official DETR demo notebook.
COCO_CLASSES = [
    "N/A", "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "N/A", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "N/A", "backpack", "umbrella", "N/A",
    "N/A", "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle", "N/A",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant", "bed",
    "N/A", "dining table", "N/A", "N/A", "toilet", "N/A", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "N/A", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
]  # 91 entries, ids 0..90
COCO_80 = [n for n in COCO_CLASSES if n != "N/A"]  # the 80 categories in id order, remapped to 0..79


def class_names(num_classes: int) -> list[str]:
    """Names indexed by category id for a model with `num_classes` classes ("N/A" where unknown)."""
    if num_classes == len(COCO_CLASSES):
        return COCO_CLASSES
    if num_classes == len(COCO_80):
        return COCO_80
    if num_classes <= len(CATEGORIES) + 1:
        return (["N/A"] + CATEGORIES)[:num_classes]
    return []


def class_name(label: int, names: list[str]) -> str:
    """The name of category id `label` in `names` (from `class_names`), else "class <id>"."""
    label = int(label)
    return names[label] if 0 <= label < len(names) and names[label] != "N/A" else f"class {label}"
