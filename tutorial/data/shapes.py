"""The synthetic "shapes" detection set: the default data, generated here, in COCO format.

Why synthetic: nothing may be downloaded at run time, and a learner on a CPU laptop needs a
set on which a DETR trains in an hour of one core, not GPU-weeks. Two presets (`PRESETS`):

- **default**, the set every shipped checkpoint is trained on: 5 classes (rectangle, ellipse,
  triangle, cross, ring) whose colours are random, so only the shape tells the class apart;
  128-160 px images on a plain background (a colour gradient and light pixel noise); 1 to 6
  objects per image (5% of images empty), box areas from 12² px up, drawn from COCO's small
  (< 32²), medium and large (> 96²) ranges with odds 30/40/30% and log-uniformly inside the
  range; aspect ratios from 1:3 to 3:1, so "small", "large horizontal" and "large vertical"
  boxes exist (the DETR slot figure's three modes); objects overlap, but each keeps at least
  70% of its pixels visible.
- **hard**, the first set this project shipped, kept as a harder variant: 112-160 px, 0 to 12
  objects (8% empty), areas from 8² px with COCO's odds 41/34/25% (56% of the boxes end up
  small), aspect ratios to 4:1, occlusion down to half of an object, textured backgrounds
  (gradient, stripes, blobs and pixel noise). `python -m tutorial data --preset hard` writes
  it to `data/shapes_hard`.

Why the default is easier (measured; see the README): on the hard set, detr_tiny trained from
scratch stayed at AP50 2% after an hour of one core, its class loss near that of a constant
predictor. Small objects (56% of the hard set's boxes are under 32²: 2 cells or fewer of a
stride-16 map), up to 12 overlapping objects and textured backgrounds were the main obstacles.

Boxes are the whole shape's extent (amodal). `area` is the box's area w·h: COCO stores the mask
area there, but here the small/medium/large split (which COCOeval reads from `area`) is meant
to be about box size, the quantity the seed's slot figure and our histograms use. Every image is
generated from `(seed, split, index)` alone, so the set is identical whatever the number of
worker processes.

Run with `python -m tutorial data` (see `tutorial/__main__.py`).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CATEGORIES = ["rectangle", "ellipse", "triangle", "cross", "ring"]  # category ids 1..5
GENERATOR_VERSION = 1  # bump when the drawing code changes, so old sets are regenerated


@dataclass(frozen=True)
class ShapesConfig:
    """What `generate` draws. The defaults are the tutorial's default data set."""

    seed: int = 0
    num_train: int = 5000
    num_val: int = 500
    min_size: int = 128  # image width and height are drawn from [min_size, max_size]
    max_size: int = 160
    max_objects: int = 6
    empty_fraction: float = 0.05
    min_side: int = 8  # px: the smallest box side
    min_area: float = 16**2  # box areas (px²) are drawn from [min_area, max_area], see sample_box
    max_area: float = 150**2
    size_odds: tuple[float, float, float] = (0.2, 0.45, 0.35)  # small/medium/large odds (COCO: .41/.34/.25)
    max_aspect: float = 3.0  # w/h is log-uniform in [1/max_aspect, max_aspect]
    min_visible: float = 0.7  # every object keeps at least this fraction of its pixels
    texture: bool = False  # background: gradient + noise (False), or also stripes and blobs (True)
    version: int = GENERATOR_VERSION


PRESETS = {
    "default": ShapesConfig(),
    "hard": ShapesConfig(min_size=112, max_objects=12, empty_fraction=0.08, min_side=6, min_area=8**2,
                         size_odds=(0.41, 0.34, 0.25), max_aspect=4.0, min_visible=0.5, texture=True),
}
DEFAULT_ROOTS = {"default": "data/shapes", "hard": "data/shapes_hard"}  # where `python -m tutorial data` writes


# --- one object -------------------------------------------------------------------------------


def shape_mask(category: int, box: tuple[float, float, float, float], size: tuple[int, int],
               rng: np.random.Generator) -> np.ndarray:
    """Rasterise one shape filling `box` = (x0, y0, x1, y1) into a boolean (H, W) mask."""
    w_img, h_img = size
    canvas = Image.new("L", (w_img, h_img), 0)
    draw = ImageDraw.Draw(canvas)
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    name = CATEGORIES[category - 1]
    if name == "rectangle":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=255)
    elif name == "ellipse":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
    elif name == "triangle":
        if rng.random() < 0.5:  # apex up or down; both fill the box exactly
            pts = [(x0 + w / 2, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)]
        else:
            pts = [(x0, y0), (x1 - 1, y0), (x0 + w / 2, y1 - 1)]
        draw.polygon(pts, fill=255)
    elif name == "cross":
        tw, th = max(w / 3, 2), max(h / 3, 2)  # arm thickness
        cx, cy = x0 + w / 2, y0 + h / 2
        draw.rectangle([x0, cy - th / 2, x1 - 1, cy + th / 2 - 1], fill=255)
        draw.rectangle([cx - tw / 2, y0, cx + tw / 2 - 1, y1 - 1], fill=255)
    elif name == "ring":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=255)
        t = max(min(w, h) * 0.22, 2)  # ring thickness
        if w - 2 * t > 1 and h - 2 * t > 1:
            draw.ellipse([x0 + t, y0 + t, x1 - 1 - t, y1 - 1 - t], fill=0)
    return np.asarray(canvas) > 0


def sample_box(cfg: ShapesConfig, size: tuple[int, int], rng: np.random.Generator):
    """A box (x0, y0, x1, y1) in integer pixels, log-uniform in area and aspect, inside the image."""
    w_img, h_img = size
    # Pick COCO's small / medium / large range with COCO's odds, then log-uniform inside it.
    edges = [cfg.min_area, 32**2, 96**2, cfg.max_area]
    k = int(rng.choice(3, p=cfg.size_odds))
    area = math.exp(rng.uniform(math.log(edges[k]), math.log(edges[k + 1])))
    aspect = math.exp(rng.uniform(-math.log(cfg.max_aspect), math.log(cfg.max_aspect)))
    w = int(round(min(max(math.sqrt(area * aspect), cfg.min_side), w_img - 2)))
    h = int(round(min(max(math.sqrt(area / aspect), cfg.min_side), h_img - 2)))
    x0 = int(rng.integers(0, w_img - w + 1))
    y0 = int(rng.integers(0, h_img - h + 1))
    return x0, y0, x0 + w, y0 + h


def box_area(box) -> float:
    x0, y0, x1, y1 = box
    return (x1 - x0) * (y1 - y0)


# --- one image --------------------------------------------------------------------------------


def background(size: tuple[int, int], rng: np.random.Generator, texture: bool = True) -> np.ndarray:
    """An (H, W, 3) float background: colour gradient + noise, with stripes and blobs if `texture`."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # (H, W) each
    c0, c1 = rng.uniform(40, 215, size=(2, 3))
    t = (xx * rng.normal() + yy * rng.normal()) / (w + h)
    t = (t - t.min()) / (np.ptp(t) + 1e-6)  # (H, W) in [0, 1]
    img = c0 + (c1 - c0) * t[..., None]  # (H, W, 3)
    if not texture:
        return img + rng.normal(0, rng.uniform(2, 8), size=img.shape)
    theta, period = rng.uniform(0, math.pi), rng.uniform(6, 30)
    stripes = np.sin((xx * math.cos(theta) + yy * math.sin(theta)) * 2 * math.pi / period)
    img += rng.uniform(0, 18) * stripes[..., None]
    blobs = Image.new("L", size, 0)
    draw = ImageDraw.Draw(blobs)
    for _ in range(rng.integers(0, 6)):
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(4, 25)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=int(rng.integers(60, 255)))
    blobs = np.asarray(blobs.filter(ImageFilter.GaussianBlur(4)), dtype=np.float32) / 255
    img += (blobs[..., None] * rng.uniform(-50, 50, size=3))
    img += rng.normal(0, rng.uniform(4, 16), size=img.shape)
    return img


def object_colour(bg_mean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random colour that differs from the local background by at least 60 (L2 in RGB)."""
    for _ in range(20):
        c = rng.uniform(0, 255, size=3)
        if np.linalg.norm(c - bg_mean) > 60:
            return c
    return 255 - bg_mean


def make_image(cfg: ShapesConfig, split: str, index: int):
    """Draw image `index` of `split`; returns (uint8 (H, W, 3) array, list of (category, box, area))."""
    img, placed = draw_image(cfg, split, index)
    return img, [(category, box, box_area(box)) for category, box, _, _, _ in placed]


def make_labelled_image(cfg: ShapesConfig, split: str, index: int):
    """Image `index` of `split` with its per-pixel labels: (uint8 (H, W, 3), int64 (H, W) array
    holding the category of the visible object at each pixel, 0 on the background)."""
    img, placed = draw_image(cfg, split, index)
    labels = np.zeros(img.shape[:2], dtype=np.int64)  # (H, W)
    for category, _, _, visible, _ in placed:
        labels[visible] = category
    return img, labels


def draw_image(cfg: ShapesConfig, split: str, index: int):
    """Draw image `index` of `split`: (uint8 (H, W, 3) array, [(category, box, full mask,
    visible mask, colour)] back to front)."""
    split_code = {"train": 0, "val": 1}[split]
    rng = np.random.default_rng([cfg.seed, split_code, index])
    size = (int(rng.integers(cfg.min_size, cfg.max_size + 1)),
            int(rng.integers(cfg.min_size, cfg.max_size + 1)))  # (W, H)
    img = background(size, rng, cfg.texture)
    n = 0 if rng.random() < cfg.empty_fraction else int(rng.integers(1, cfg.max_objects + 1))

    # Large shapes first, small ones on top: big objects are partly occluded, rarely hidden.
    candidates = sorted((sample_box(cfg, size, rng) for _ in range(n)), key=box_area, reverse=True)
    placed = []  # (category, box, full mask, visible mask, colour)
    for box in candidates:
        for _attempt in range(10):
            category = int(rng.integers(1, len(CATEGORIES) + 1))
            mask = shape_mask(category, box, size, rng)
            if mask.sum() < 16:
                continue
            # Occlusion is allowed, but no earlier object may drop below min_visible.
            if all(((p[3] & ~mask).sum() >= cfg.min_visible * p[2].sum()) for p in placed):
                break
            box = sample_box(cfg, size, rng)
        else:
            continue
        for p in placed:
            p[3] &= ~mask
        x0, y0, x1, y1 = box
        colour = object_colour(img[y0:y1, x0:x1].reshape(-1, 3).mean(0), rng)
        placed.append([category, box, mask, mask.copy(), colour])

    for category, box, mask, _, colour in placed:  # paint back to front
        shade = colour + rng.normal(0, 8, size=img.shape)  # (H, W, 3) lightly textured fill
        img[mask] = shade[mask]
    return np.clip(img, 0, 255).astype(np.uint8), placed


def _write_one(args):
    cfg, split, index, out_dir = args
    img, objects = make_image(cfg, split, index)
    file_name = f"{index:06d}.jpg"
    Image.fromarray(img).save(out_dir / "images" / file_name, quality=92)
    h, w = img.shape[:2]
    return {"id": index + 1, "file_name": file_name, "width": w, "height": h}, objects


# --- the whole set ----------------------------------------------------------------------------


def split_paths(root: Path, split: str) -> tuple[Path, Path]:
    """(image folder, instances JSON) of a split of the shapes set under `root`."""
    return root / split / "images", root / split / "instances.json"


def is_generated(root: Path, cfg: ShapesConfig) -> bool:
    """True when both splits exist and were generated with exactly `cfg`."""
    for split in ("train", "val"):
        ann = split_paths(root, split)[1]
        if not ann.exists():
            return False
        with open(ann) as f:
            if json.load(f).get("info", {}).get("generator") != json.loads(json.dumps(asdict(cfg))):
                return False
    return True


def generate(root: str | os.PathLike = "data/shapes", cfg: ShapesConfig = ShapesConfig(),
             workers: int | None = None, force: bool = False, progress: bool = True) -> Path:
    """Write `root/{train,val}/images/*.jpg` and `root/{train,val}/instances.json` (COCO format).

    Reuses an existing set generated with the same config unless `force`. The JSON is written
    last and atomically, so an interrupted run is redone rather than half-reused.
    """
    from tqdm import tqdm

    root = Path(root)
    if not force and is_generated(root, cfg):
        if progress:
            print(f"shapes: reusing {root} (generated with the same config)")
        return root
    workers = workers or os.cpu_count() or 1
    categories = [{"id": i + 1, "name": n, "supercategory": "shape"} for i, n in enumerate(CATEGORIES)]
    for split, count in (("train", cfg.num_train), ("val", cfg.num_val)):
        image_dir, ann_file = split_paths(root, split)
        image_dir.mkdir(parents=True, exist_ok=True)
        jobs = [(cfg, split, i, root / split) for i in range(count)]
        images, annotations = [], []
        with Pool(workers) as pool:
            results = pool.imap(_write_one, jobs, chunksize=32)
            for image, objects in tqdm(results, total=count, desc=f"shapes/{split}", disable=not progress):
                images.append(image)
                for category, (x0, y0, x1, y1), area in objects:
                    annotations.append({
                        "id": len(annotations) + 1, "image_id": image["id"], "category_id": category,
                        "bbox": [x0, y0, x1 - x0, y1 - y0], "area": area, "iscrowd": 0,
                    })
        coco = {"info": {"description": "detr-tutorial synthetic shapes", "generator": asdict(cfg)},
                "licenses": [], "images": images, "annotations": annotations, "categories": categories}
        tmp = ann_file.with_suffix(".json.tmp")
        with open(tmp, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, ann_file)
    return root
