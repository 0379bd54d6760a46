"""Loading COCO-format detection data: the shapes set or real COCO 2017 from a local folder.

One code path for both: torchvision's `CocoDetection`, wrapped for `transforms.v2` so boxes are
`tv_tensors.BoundingBoxes` that every transform moves along with the image. A target is

    {"boxes": (n, 4) cxcywh normalised to [0, 1] by the (unpadded) image size,
     "labels": (n,) category ids, "image_id": int, "orig_size": (2,) (h, w), "size": (2,) (h, w)}

which is DETR's convention (`datasets/coco.py` in the official code): labels are COCO category
ids, so a model needs `num_classes > max category id` (91 for COCO, 6 for shapes).

Images of different sizes are batched by `collate`, which pads them to a common size and
returns the padding mask (True = padding), the `NestedTensor` of the official code made plain.
"""
from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.datasets import CocoDetection, wrap_dataset_for_transforms_v2
from torchvision.ops import box_convert
from torchvision.transforms import v2

from ..errors import InputError, json_object

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DatasetError(InputError, ValueError):
    """A problem in the data on disk; the message names the file and the field."""


# --- where the files are ----------------------------------------------------------------------


def coco_paths(root: str | Path, split: str) -> tuple[Path, Path]:
    """(image folder, instances JSON) for `split` of the data set at `root`.

    Two layouts are understood: the shapes set's `root/{split}/images` + `root/{split}/instances.json`
    and COCO 2017's `root/{split}2017` + `root/annotations/instances_{split}2017.json`.
    """
    root = Path(root)
    shapes = (root / split / "images", root / split / "instances.json")
    coco = (root / f"{split}2017", root / "annotations" / f"instances_{split}2017.json")
    for image_dir, ann_file in (shapes, coco):
        if ann_file.exists():
            return image_dir, ann_file
    raise DatasetError(f"{root}: no annotations for split '{split}': expected {shapes[1]} "
                       f"(shapes layout) or {coco[1]} (COCO 2017 layout). "
                       f"Generate the shapes set with `python -m tutorial data`.")


# --- checking the annotations before training on them -----------------------------------------


def _is_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def validate_coco(ann_file: str | Path, image_dir: str | Path, num_classes: int | None = None,
                  check_files: bool = True) -> dict:
    """Read a COCO instances JSON and check what training relies on; return the parsed JSON.

    Raises `DatasetError` naming the file and the field for: malformed JSON, missing keys,
    non-numeric or degenerate boxes (w or h <= 0), a category id >= `num_classes`, an annotation
    pointing at an unknown image, and (if `check_files`) a missing image file.
    """
    ann_file, image_dir = Path(ann_file), Path(image_dir)
    coco = json_object(ann_file.read_text(), str(ann_file), "a JSON object with 'images', 'annotations', 'categories'",
                       "fix the file, or for a shapes set regenerate it (`python -m tutorial data --force`)", DatasetError)
    for key in ("images", "annotations", "categories"):
        if not isinstance(coco.get(key), list):
            raise DatasetError(f"{ann_file}: field '{key}' is missing or not a list")

    image_ids = set()
    for i, img in enumerate(coco["images"]):
        for key in ("id", "file_name", "width", "height"):
            if key not in img:
                raise DatasetError(f"{ann_file}: images[{i}] has no field '{key}'")
        image_ids.add(img["id"])
        if check_files and not (image_dir / img["file_name"]).is_file():
            raise DatasetError(f"{ann_file}: images[{i}].file_name: image file {image_dir / img['file_name']} "
                               f"does not exist")

    for i, ann in enumerate(coco["annotations"]):
        where = f"{ann_file}: annotations[{i}] (id {ann.get('id')})"
        for key in ("image_id", "bbox", "category_id"):
            if key not in ann:
                raise DatasetError(f"{where} has no field '{key}'")
        if ann["image_id"] not in image_ids:
            raise DatasetError(f"{where}.image_id: {ann['image_id']} is not the id of any image")
        box = ann["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise DatasetError(f"{where}.bbox: expected [x, y, w, h] of 4 finite numbers, got {box!r}")
        if box[2] <= 0 or box[3] <= 0:
            raise DatasetError(f"{where}.bbox: degenerate box {box}: width and height must be > 0")
        cat = ann["category_id"]
        if not isinstance(cat, int) or cat < 0:
            raise DatasetError(f"{where}.category_id: expected a non-negative integer, got {cat!r}")
        if num_classes is not None and cat >= num_classes:
            raise DatasetError(f"{where}.category_id: {cat} but the model has classes 0..{num_classes - 1} "
                               f"(num_classes={num_classes}); build the model with num_classes > {cat}")
    return coco


# --- transforms -------------------------------------------------------------------------------


def make_transforms(train: bool, resize: tuple[int, int] | None = None) -> v2.Compose:
    """The image + box transforms. `resize=(shorter side, max longer side)` as in DETR for COCO
    (training draws the shorter side from 480..800 in steps of 32); None keeps the size (shapes)."""
    steps: list = [v2.ToImage()]
    if train:
        steps.append(v2.RandomHorizontalFlip())
    if resize is not None:
        short, longest = resize
        if train:
            steps.append(v2.RandomShortestSize(list(range(max(short - 320, 32), short + 1, 32)), max_size=longest))
        else:
            steps.append(v2.Resize(short, max_size=longest))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
              v2.SanitizeBoundingBoxes(min_size=1)]
    return v2.Compose(steps)


# --- the data set -----------------------------------------------------------------------------


class DetectionDataset(torch.utils.data.Dataset):
    """A COCO-format split as (image (3, H, W), target) pairs; see the module docstring."""

    def __init__(self, root: str | Path, split: str, train: bool = False, num_classes: int | None = None,
                 resize: tuple[int, int] | None = None, check_files: bool = True):
        self.image_dir, self.ann_file = coco_paths(root, split)
        validate_coco(self.ann_file, self.image_dir, num_classes, check_files)
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress
            base = CocoDetection(str(self.image_dir), str(self.ann_file))
        self.coco = base.coco  # pycocotools COCO object: ground truth for COCOeval
        self.dataset = wrap_dataset_for_transforms_v2(base, target_keys={"image_id", "boxes", "labels", "iscrowd"})
        self.transforms = make_transforms(train, resize)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx: int) -> tuple[Tensor, dict]:
        try:
            image, target = self.dataset[idx]
        except FileNotFoundError as e:
            raise DatasetError(f"{self.ann_file}: image file {e.filename} does not exist") from e
        h, w = image.height, image.width  # PIL image
        if "boxes" not in target:  # an image without annotations: the wrapper returns only its id
            target["boxes"] = tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w))
            target["labels"] = torch.zeros(0, dtype=torch.int64)
            target["iscrowd"] = []
        keep = torch.tensor(target.pop("iscrowd"), dtype=torch.bool).logical_not()  # DETR drops crowd boxes
        target["boxes"] = tv_tensors.wrap(target["boxes"][keep], like=target["boxes"])
        target["labels"] = target["labels"][keep]
        image, target = self.transforms(image, target)
        hh, ww = image.shape[-2:]
        boxes = box_convert(target["boxes"].as_subclass(Tensor), "xyxy", "cxcywh")  # (n, 4) pixels
        boxes = boxes / torch.tensor([ww, hh, ww, hh], dtype=torch.float32)  # (n, 4) in [0, 1]
        return image.as_subclass(Tensor), {
            "boxes": boxes, "labels": target["labels"].long(), "image_id": target["image_id"],
            "orig_size": torch.tensor([h, w]), "size": torch.tensor([hh, ww]),
        }


def collate(batch: list[tuple[Tensor, dict]]) -> tuple[Tensor, Tensor, list[dict]]:
    """Pad a list of (3, H_i, W_i) images to (B, 3, H, W); mask (B, H, W) is True on padding."""
    images, targets = zip(*batch)
    h = max(img.shape[1] for img in images)
    w = max(img.shape[2] for img in images)
    out = images[0].new_zeros(len(images), 3, h, w)  # (B, 3, H, W)
    mask = torch.ones(len(images), h, w, dtype=torch.bool)  # (B, H, W)
    for i, img in enumerate(images):
        out[i, :, : img.shape[1], : img.shape[2]] = img
        mask[i, : img.shape[1], : img.shape[2]] = False
    return out, mask, list(targets)
