"""Detections on your own images: `python -m tutorial predict --checkpoint CKPT --image PATH`.

One image (or every *.jpg, *.jpeg, *.png of a folder) goes through the evaluation path: the
dataset's evaluation transform (`dataset.make_transforms(train=False)`: ImageNet normalisation,
optional DETR resize), `collate`'s padding mask, and `evaluate.detect` (the model's own
`postprocess`), so boxes come back in pixels of the original image. Detections with
score ≥ threshold are drawn with `torchvision.utils.draw_bounding_boxes`, labelled
"<class name> <score>", and all of them are written as one COCO results JSON
[{"image_id", "category_id", "bbox" [x, y, w, h] in pixels, clipped to the image, "score"}],
where image_id is the image's 1-based position in the sorted list of inputs.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torchvision import tv_tensors
from torchvision.ops import clip_boxes_to_image
from torchvision.transforms.functional import pil_to_tensor
from torchvision.utils import draw_bounding_boxes

from .checkpoint import load_checkpoint, model_from_checkpoint
from ..data.class_names import class_name, class_names
from ..data.dataset import collate, make_transforms
from ..errors import InputError
from .evaluate import coco_detections, detect

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45"]


class ImageError(InputError, ValueError):
    """An input image (or folder of images) that cannot be read; the message names it."""


@dataclass
class PredictConfig:
    """What `predict` reads and writes. `out` is a PNG for one image, a folder for a folder;
    `json` defaults to `out` with suffix .json (one image) or `out`/predictions.json (folder)."""
    checkpoint: str
    image: str
    out: str | None = None
    threshold: float = 0.5
    json: str | None = None
    model: str | None = None  # check the checkpoint against this preset, as `eval --model`
    resize: tuple[int, int] | None = None  # (shorter side, max longer side), as `eval --resize`
    amp: Literal["fp32", "bf16"] = "fp32"  # "bf16": the forward under bfloat16 autocast, as `train --amp`


# --- reading the inputs -----------------------------------------------------------------------


def image_paths(path: str | Path) -> list[Path]:
    """[path] for a file; the sorted *.jpg, *.jpeg, *.png of a folder (`ImageError` if none)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ImageError(f"{path}: folder has no images; expected files ending in {', '.join(IMAGE_SUFFIXES)}")
        return found
    if not path.is_file():
        raise ImageError(f"{path}: image file does not exist")
    return [path]


def read_image(path: str | Path) -> Image.Image:
    """The image at `path` as RGB (grayscale, RGBA and palette images converted); `ImageError` if
    it is not an image PIL can read."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise ImageError(f"{path}: not a readable image ({type(e).__name__}); "
                         f"expected a JPEG or PNG file") from e


def to_input(image: Image.Image, resize: tuple[int, int] | None = None) -> Tensor:
    """RGB image -> normalised (3, H, W) tensor, with the dataset's evaluation transform. It is
    given an empty target, as the dataset gives an image without annotations."""
    h, w = image.height, image.width
    target = {"boxes": tv_tensors.BoundingBoxes(torch.zeros(0, 4), format="XYXY", canvas_size=(h, w)),
              "labels": torch.zeros(0, dtype=torch.int64)}
    tensor, _ = make_transforms(train=False, resize=resize)(image, target)
    return tensor.as_subclass(Tensor)  # (3, H, W)


# --- detecting and drawing --------------------------------------------------------------------


def predict_image(model: nn.Module, image: Image.Image, threshold: float = 0.5,
                  resize: tuple[int, int] | None = None, amp: str = "fp32") -> dict:
    """{"boxes" (D, 4) xyxy pixels of `image` (clipped to it), "scores" (D,), "labels" (D,)} with
    score ≥ threshold; `amp` as in `evaluate.detect`."""
    images, mask, _ = collate([(to_input(image, resize), {})])  # (1, 3, H, W), (1, H, W)
    sizes = torch.tensor([[image.height, image.width]])  # (1, 2)
    det = {k: v.cpu() for k, v in detect(model, images, mask, sizes, amp=amp)[0].items()}
    keep = det["scores"] >= threshold  # (Q,)
    det = {k: v[keep] for k, v in det.items()}  # D ≤ Q detections
    # A box may reach past the image (DETR's boxes are not clipped, nor in evaluation): clip it here,
    # where it is drawn and handed to a person.
    det["boxes"] = clip_boxes_to_image(det["boxes"], (image.height, image.width))  # (D, 4)
    return det


def draw(image: Image.Image, det: dict, names: list[str]) -> Tensor:
    """uint8 (3, H, W) image with `det`'s boxes labelled "<class name> <score:.2f>"."""
    labels = [f"{class_name(lb, names)} {s:.2f}" for lb, s in zip(det["labels"].tolist(), det["scores"].tolist())]
    colours = [PALETTE[lb % len(PALETTE)] for lb in det["labels"].tolist()]
    return draw_bounding_boxes(pil_to_tensor(image), det["boxes"].float(), labels=labels, colors=colours, width=2)


def save_png(picture: Tensor, path: Path) -> None:
    """Write a uint8 (3, H, W) tensor as a PNG."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(picture.permute(1, 2, 0).numpy()).save(path, format="PNG")  # (H, W, 3)


# --- the command ------------------------------------------------------------------------------


def output_paths(cfg: PredictConfig, inputs: list[Path]) -> tuple[list[Path], Path]:
    """(one PNG per input, the results JSON); see `PredictConfig`."""
    if Path(cfg.image).is_dir():
        folder = Path(cfg.out or "pred")
        return [folder / f"{p.stem}.png" for p in inputs], Path(cfg.json or folder / "predictions.json")
    png = Path(cfg.out or "pred.png")
    return [png], Path(cfg.json or png.with_suffix(".json"))


def predict(cfg: PredictConfig) -> list[dict]:
    """Detect, draw and write every input of `cfg`; returns the COCO results written to the JSON."""
    inputs = image_paths(cfg.image)  # the inputs and the checkpoint are checked before any work
    ckpt = load_checkpoint(cfg.checkpoint)
    model = model_from_checkpoint(ckpt, cfg.checkpoint, cfg.model)
    names = class_names(model.cfg.num_classes)
    pngs, json_path = output_paths(cfg, inputs)
    results = []
    for image_id, (path, png) in enumerate(zip(inputs, pngs), start=1):
        image = read_image(path)
        det = predict_image(model, image, cfg.threshold, cfg.resize, cfg.amp)
        save_png(draw(image, det, names), png)
        results += coco_detections(image_id, det)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results))
    return results
