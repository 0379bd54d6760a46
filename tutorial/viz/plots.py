"""Static matplotlib figures for the notebooks: images with boxes, data statistics, matching
costs, positional encodings, attention maps and the seed deck's DETR figures; Deformable DETR's
attention entropy, sampling points, reference points and box refinement; anchor queries
(positional attention maps, learned anchors, anchors through the decoder) and query denoising
(anchor-to-target arrows, the attention mask, the box noise, IS and AP curves); RT-DETR (NMS
before and after and against its thresholds, speed against accuracy, the hybrid encoder's stages
and cost, query selection, score against IoU, DINO's contrastive denoising queries).

Every function either draws into an `ax` it is given or builds and returns a new
`matplotlib.figure.Figure`; none touches pyplot's global state, so a widget
(`tutorial/viz/widgets.py`) can clear and redraw the same Figure, and a test can inspect its artists.

Conventions
- An image is a (3, H, W) tensor normalised with ImageNet statistics, as `tutorial.dataset`
  returns it, or an (H, W, 3) array in [0, 1]. A padded image (from `collate`) is drawn with its
  padding cropped away when `size` = (h, w), the unpadded size, is given.
- Boxes are (n, 4) xyxy in pixels unless a name says otherwise; category id k is
  `CATEGORIES[k - 1]` (`tutorial/data/shapes.py`); other ids (COCO) are printed as numbers.
- An attention map is (H_f, W_f) over the feature grid of the (padded) image; each cell covers
  the same stride x stride square of pixels the backbone's downsampled padding mask assigns it.
- Every map drawn in colour has a colourbar whose label says what the number is (`add_colourbar`):
  one shared bar where panels share a scale, one per panel where they do not. Colourbars are
  added after all panels, so a figure's documented panel indices (`fig.axes[k]`) are unchanged.
- AP is drawn and printed in percent (`format_ap`); the results files keep COCOeval's fractions.

Glossary: H, W image; H_f, W_f feature map; N = H_f·W_f tokens (Σ_l H_l·W_l for several levels);
Q queries; n boxes; M heads; L levels (H_l, W_l each); P sampling points per level; L_dec decoder layers.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import NullLocator
from torch import Tensor
from torchvision.ops import box_convert

from ..data.dataset import IMAGENET_MEAN, IMAGENET_STD
from ..data.shapes import CATEGORIES

# One colour per category id (tab10, id 1 = first colour); the slot figure's three modes.
PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
           "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]
MODE_NAMES = ("small", "large horizontal", "large vertical")
MODE_COLOURS = ("tab:green", "tab:red", "tab:blue")  # as the seed's slot figure
COCO_SMALL, COCO_LARGE = 32**2, 96**2  # COCO's area thresholds (px²): small < 32², large > 96²


# --- images and boxes -------------------------------------------------------------------------


def denormalize(image: Tensor | np.ndarray) -> np.ndarray:
    """Undo `tutorial.dataset`'s ImageNet normalisation for display.

    image (3, H, W) tensor, normalised -> (H, W, 3) float array in [0, 1]. An (H, W, 3) array is
    returned unchanged (it is taken to be displayable already).
    """
    if isinstance(image, np.ndarray):
        return image
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]  # (3, 1, 1)
    std = torch.tensor(IMAGENET_STD)[:, None, None]  # (3, 1, 1)
    img = image.detach().cpu().float() * std + mean  # (3, H, W)
    return img.clamp(0, 1).permute(1, 2, 0).numpy()  # (H, W, 3)


AP_NAMES = {"AP": "AP", "AP50": "AP50", "AP75": "AP75", "APs": "AP_S", "APm": "AP_M", "APl": "AP_L"}


def format_ap(metrics: dict | None, keys=tuple(AP_NAMES)) -> str:
    """COCO metrics {name: fraction} (COCOeval's, as the JSON files and a checkpoint manifest's
    "val_metrics" keep them) as the notebooks and the seed deck print AP: in percent, e.g.
    "AP 29.4%, AP50 52.2%, AP_S 5.1%". Keys it lacks are left out; no metrics at all give "AP ?"."""
    parts = [f"{AP_NAMES.get(k, k)} {100 * metrics[k]:.1f}%" for k in keys
             if metrics and isinstance(metrics.get(k), (int, float))]
    return ", ".join(parts) or "AP ?"


def class_name(label: int, names: list[str] | None = None) -> str:
    """Category id -> name: from `names` (indexed by id, `tutorial.data.class_names.class_names(K)`, e.g.
    COCO's for a real-weight model) when given, else the shapes' CATEGORIES (ids 1..5); anything
    else is printed as a number."""
    label = int(label)
    if names is not None:
        return names[label] if 0 <= label < len(names) and names[label] != "N/A" else f"class {label}"
    return CATEGORIES[label - 1] if 1 <= label <= len(CATEGORIES) else f"class {label}"


def class_colour(label: int) -> str:
    return PALETTE[(int(label) - 1) % len(PALETTE)]


def boxes_to_pixels(boxes: Tensor, size) -> Tensor:
    """(n, 4) cxcywh boxes normalised by the image size (DETR's targets and predictions) and
    size = (h, w) -> (n, 4) xyxy boxes in pixels."""
    h, w = (int(v) for v in size)
    xyxy = box_convert(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4), "cxcywh", "xyxy")  # (n, 4)
    return xyxy * torch.tensor([w, h, w, h], dtype=torch.float32)  # (n, 4) pixels


def show_image(ax: Axes, image, size=None, title: str | None = None) -> AxesImage:
    """Draw `image` (see the module docstring); with size = (h, w) only its unpadded part is shown."""
    img = denormalize(image)  # (H, W, 3)
    height, width = img.shape[:2]
    im = ax.imshow(img, extent=(0, width, height, 0), interpolation="nearest")
    h, w = (height, width) if size is None else (int(size[0]), int(size[1]))
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return im


def draw_boxes(ax: Axes, boxes, labels=None, scores=None, colours=None, linestyle: str = "-",
               linewidth: float = 1.5, text: bool = True, fontsize: float = 7) -> list[Rectangle]:
    """Draw (n, 4) xyxy pixel boxes, captioned "name" or "name 0.93" when scores are given: above
    the box's top-left corner, or just inside it when the box reaches the top of the view (where a
    caption above would be cut off). Returns the Rectangle patches (in box order)."""
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).tolist()
    top = min(ax.get_ylim())  # images are drawn y down: the smallest y is the top of the view
    room = 0.06 * abs(ax.get_ylim()[1] - ax.get_ylim()[0])  # about one caption's height
    patches = []
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        label = None if labels is None else int(labels[i])
        colour = colours[i] if colours is not None else (class_colour(label) if label is not None else "yellow")
        rect = Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=linewidth,
                         linestyle=linestyle)
        ax.add_patch(rect)
        patches.append(rect)
        if text and (label is not None or scores is not None):
            caption = class_name(label) if label is not None else ""
            if scores is not None:
                caption = f"{caption} {float(scores[i]):.2f}".strip()
            ax.text(x0, y0, caption, fontsize=fontsize, color="white", va="top" if y0 - top < room else "bottom",
                    ha="left", clip_on=True, bbox=dict(facecolor=colour, edgecolor="none", pad=0.5, alpha=0.8))
    return patches


def plot_detections(ax: Axes, image, boxes, labels=None, scores=None, size=None, title: str | None = None,
                    **box_kwargs) -> AxesImage:
    """An image with its xyxy pixel boxes and class names (and scores): `show_image` + `draw_boxes`."""
    im = show_image(ax, image, size, title)
    draw_boxes(ax, boxes, labels, scores, **box_kwargs)
    return im


def plot_samples(samples: list[tuple], ncols: int = 4, fig: Figure | None = None) -> Figure:
    """A grid of data set samples (image (3, H, W), target) with their ground-truth boxes.

    Targets are `DetectionDataset`'s: "boxes" (n, 4) cxcywh normalised, "labels" (n,), "size" (h, w).
    """
    nrows = math.ceil(len(samples) / ncols)
    fig = fig or Figure(figsize=(2.6 * ncols, 2.7 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (image, target) in zip(axes, samples):
        boxes = boxes_to_pixels(target["boxes"], target["size"])  # (n, 4) xyxy pixels
        plot_detections(ax, image, boxes, target["labels"],
                        title=f"image {int(target['image_id'])}: {len(boxes)} objects")
    for ax in axes[len(samples):]:
        ax.axis("off")
    return fig


def show_mask(ax: Axes, mask, title: str | None = "padding mask (white = padding)") -> AxesImage:
    """Draw a (H, W) boolean padding mask (True = padding) as a black-and-white image."""
    im = ax.imshow(np.asarray(mask, dtype=float), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return im


# --- data set statistics ----------------------------------------------------------------------


def annotation_statistics(coco: dict) -> dict:
    """From a COCO instances dict: "area" (n,) box areas w·h in px², "aspect" (n,) w / h,
    "objects_per_image" (I,), "class_counts" {name: count}."""
    boxes = np.array([a["bbox"] for a in coco["annotations"]], dtype=float).reshape(-1, 4)  # (n, 4) xywh
    per_image = Counter(a["image_id"] for a in coco["annotations"])
    names = {c["id"]: c["name"] for c in coco["categories"]}
    classes = Counter(names[a["category_id"]] for a in coco["annotations"])
    return {"area": boxes[:, 2] * boxes[:, 3], "aspect": boxes[:, 2] / boxes[:, 3],
            "objects_per_image": np.array([per_image.get(img["id"], 0) for img in coco["images"]]),
            "class_counts": {names[k]: classes.get(names[k], 0) for k in sorted(names)}}


def hist_box_area(ax: Axes, areas) -> None:
    """Histogram of box areas (log scale) with COCO's small / large thresholds (32², 96²) marked."""
    areas = np.asarray(areas, dtype=float)
    bins = np.logspace(np.log10(max(areas.min(), 1.0)), np.log10(areas.max() + 1), 40)
    ax.hist(areas, bins=bins, color="tab:gray")
    ax.set_xscale("log")
    for threshold, name in ((COCO_SMALL, "32²"), (COCO_LARGE, "96²")):
        ax.axvline(threshold, color="tab:red", linestyle="--", linewidth=1)
        ax.text(threshold, ax.get_ylim()[1] * 0.95, f" {name}", color="tab:red", va="top", fontsize=8)
    small, large = (areas < COCO_SMALL).mean(), (areas > COCO_LARGE).mean()
    ax.set_title(f"box area (px²): {small:.0%} small, {1 - small - large:.0%} medium, {large:.0%} large", fontsize=9)
    ax.set_xlabel("w·h (px², log scale)")


def hist_aspect_ratio(ax: Axes, aspects) -> None:
    """Histogram of box aspect ratios w / h (log scale: 1:4 and 4:1 equally far from 1)."""
    aspects = np.asarray(aspects, dtype=float)
    ax.hist(aspects, bins=np.logspace(np.log10(aspects.min()), np.log10(aspects.max()), 30), color="tab:gray")
    ax.set_xscale("log")
    ax.set_xticks([0.25, 0.5, 1, 2, 4], labels=["1:4", "1:2", "1:1", "2:1", "4:1"])
    ax.xaxis.set_minor_locator(NullLocator())
    ax.axvline(1.0, color="k", linewidth=0.8)
    ax.set_title(f"aspect ratio w / h: {(aspects > 1).mean():.0%} wider than tall", fontsize=9)
    ax.set_xlabel("w / h (log scale)")


def hist_objects_per_image(ax: Axes, counts) -> None:
    """Bar chart of the number of objects per image."""
    counts = np.asarray(counts, dtype=int)
    values = np.bincount(counts)  # (max + 1,)
    ax.bar(np.arange(len(values)), values, color="tab:gray")
    ax.set_title(f"objects per image: mean {counts.mean():.1f}, {(counts == 0).mean():.0%} empty", fontsize=9)
    ax.set_xlabel("objects in the image")


def bar_class_counts(ax: Axes, class_counts: dict) -> None:
    """Bar chart of annotations per class."""
    names = list(class_counts)
    ax.bar(names, [class_counts[n] for n in names], color=[class_colour(i + 1) for i in range(len(names))])
    ax.set_title("annotations per class", fontsize=9)
    ax.tick_params(axis="x", labelsize=8)


def plot_dataset_statistics(stats: dict, fig: Figure | None = None) -> Figure:
    """The four panels of `annotation_statistics`: area, aspect ratio, objects per image, classes."""
    fig = fig or Figure(figsize=(12, 2.8), layout="constrained")
    ax_area, ax_aspect, ax_count, ax_class = fig.subplots(1, 4)
    hist_box_area(ax_area, stats["area"])
    hist_aspect_ratio(ax_aspect, stats["aspect"])
    hist_objects_per_image(ax_count, stats["objects_per_image"])
    bar_class_counts(ax_class, stats["class_counts"])
    return fig


# --- set prediction: costs and matches --------------------------------------------------------


def plot_cost_matrix(ax: Axes, cost, pred_idx=None, tgt_idx=None, title: str | None = None,
                     col_labels: list[str] | None = None, cmap: str = "viridis",
                     label: str = "cost (lower: a better match)") -> AxesImage:
    """A (Q, n) cost matrix as a heatmap (rows: predictions, columns: targets); the assignment
    (pred_idx[k], tgt_idx[k]) is outlined in white; a colourbar labelled `label` beside it.
    Seed: the "Set Prediction" formulas."""
    cost = np.asarray(torch.as_tensor(cost).detach().cpu(), dtype=float)  # (Q, n)
    im = ax.imshow(cost, cmap=cmap, aspect="auto", interpolation="nearest")
    if pred_idx is not None:
        for i, j in zip(np.asarray(pred_idx).tolist(), np.asarray(tgt_idx).tolist()):
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="white", linewidth=2))
    ax.set_xlabel("target j")
    ax.set_ylabel("prediction (query) i")
    ax.set_xticks(range(cost.shape[1]))
    if col_labels is not None:
        ax.set_xticklabels(col_labels, rotation=90, fontsize=7)
    if title:
        ax.set_title(title, fontsize=9)
    add_colourbar(im, ax, label)
    return im


def draw_matching(ax: Axes, image, pred_boxes, tgt_boxes, pred_idx, tgt_idx, tgt_labels=None,
                  size=None, title: str | None = None, show_unmatched: bool = True) -> None:
    """Ground truth (solid) and the prediction matched to it (dashed, same colour), joined by a
    line between their centres; unmatched predictions (matched to ∅) as faint dotted boxes.

    pred_boxes (Q, 4), tgt_boxes (n, 4) xyxy pixels; pred_idx, tgt_idx (n,) the assignment.
    """
    show_image(ax, image, size, title)
    pred_boxes = torch.as_tensor(pred_boxes, dtype=torch.float32).reshape(-1, 4)  # (Q, 4)
    tgt_boxes = torch.as_tensor(tgt_boxes, dtype=torch.float32).reshape(-1, 4)  # (n, 4)
    matched = set(np.asarray(pred_idx).tolist())
    if show_unmatched:
        rest = [i for i in range(len(pred_boxes)) if i not in matched]
        draw_boxes(ax, pred_boxes[rest], colours=["white"] * len(rest), linestyle=":", linewidth=0.6, text=False)
    for k, (i, j) in enumerate(zip(np.asarray(pred_idx).tolist(), np.asarray(tgt_idx).tolist())):
        colour = PALETTE[k % len(PALETTE)]
        labels = None if tgt_labels is None else [tgt_labels[j]]
        draw_boxes(ax, tgt_boxes[j:j + 1], labels, colours=[colour], linewidth=2)
        draw_boxes(ax, pred_boxes[i:i + 1], colours=[colour], linestyle="--", linewidth=1.5, text=False)
        (gx, gy), (px, py) = tgt_boxes[j].view(2, 2).mean(0).tolist(), pred_boxes[i].view(2, 2).mean(0).tolist()
        ax.add_line(Line2D([gx, px], [gy, py], color=colour, linewidth=1))
        ax.text(px, py, f"q{i}", color=colour, fontsize=7, ha="center", va="center",
                bbox=dict(facecolor="white", edgecolor="none", pad=0.2, alpha=0.7))


# --- positional encoding ----------------------------------------------------------------------


def plot_position_encoding(pos: Tensor, channels: list[int], mask: Tensor | None = None,
                           fig: Figure | None = None) -> Figure:
    """Channels of one image's positional encoding pos (2d, H_f, W_f) (channels 0..d-1 encode y,
    d..2d-1 encode x), with padded cells (mask (H_f, W_f) True) painted grey."""
    pos = pos.detach().cpu()
    d = pos.shape[0] // 2
    fig = fig or Figure(figsize=(2.2 * len(channels) + 0.6, 2.4), layout="constrained")
    axes = fig.subplots(1, len(channels), squeeze=False)[0]
    for ax, c in zip(axes, channels):
        im = ax.imshow(pos[c].numpy(), cmap="RdBu", vmin=-1, vmax=1, interpolation="nearest")
        if mask is not None:  # padding cells painted grey over the encoding
            pad = np.asarray(mask, dtype=bool)
            ax.imshow(np.ma.masked_where(~pad, pad.astype(float)), cmap=ListedColormap(["0.6"]),
                      interpolation="nearest")
        axis, k = ("y", c) if c < d else ("x", c - d)
        ax.set_title(f"channel {c}: {'sin' if k % 2 == 0 else 'cos'} of {axis}, k={k // 2}", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    if channels:
        add_colourbar(im, axes, "PE value (-1 to 1)" + ("\ngrey: padding" if mask is not None else ""))
    return fig


# --- attention --------------------------------------------------------------------------------


def cell_centre(y: int, x: int, feature_size, image_shape) -> tuple[float, float]:
    """Pixel (x, y) of the centre of feature cell (y, x) on an image of image_shape (H, W)."""
    (hf, wf), (h, w) = feature_size, image_shape
    return (x + 0.5) * w / wf, (y + 0.5) * h / hf


def add_colourbar(mappable, axes, label: str):
    """A colourbar for `mappable` beside `axes` (one Axes, or several that share its colour scale),
    labelled with what its colour means. matplotlib appends the colourbar's own Axes to `fig.axes`
    after the panels already there, so the figures below add theirs once every panel exists: panel
    indices such as `fig.axes[l]` stay those of the panels. Returns the Colorbar."""
    many = not isinstance(axes, Axes)
    target = [a for a in np.ravel(np.asarray(axes, dtype=object))] if many else axes
    cbar = (target[0] if many else target).figure.colorbar(mappable, ax=target, shrink=0.8)
    cbar.set_label(label, fontsize=8)
    cbar.ax.tick_params(labelsize=7)
    return cbar


def attention_label(num_keys: int, what: str = "attention weight") -> str:
    """The colourbar label of a softmax map over num_keys cells: what its number is, and uniform's value."""
    return f"{what} (softmax over {num_keys} cells;\nuniform = 1/{num_keys} = {1 / max(num_keys, 1):.3f})"


def valid_cells(attention, feature_mask=None) -> int:
    """How many cells of an (H_f, W_f) map are keys: those not padding (feature_mask True)."""
    if feature_mask is None:
        return int(np.prod(torch.as_tensor(attention).shape[-2:]))
    return int((~torch.as_tensor(feature_mask, dtype=torch.bool)).sum())


def attention_overlay(ax: Axes, image, attention, feature_mask=None, size=None, alpha: float = 0.6,
                      cmap: str = "inferno", title: str | None = None, vmin: float | None = None,
                      vmax: float | None = None, colourbar: str | None = None) -> AxesImage:
    """Overlay an attention map (H_f, W_f) on the (padded) image (3, H, W) it was computed from.

    Each feature cell covers an (H / H_f) x (W / W_f) square, as the backbone's downsampled
    padding mask assigns it; cells with feature_mask (H_f, W_f) True are padding and stay
    transparent (they get no attention anyway). The colours run from vmin to vmax (default: the
    map's own range); with `colourbar` (its label) a colourbar is drawn beside this panel.
    Returns the overlay's AxesImage, whose `get_array()` is the map drawn. Seed: the encoder and
    decoder attention figures.
    """
    img = denormalize(image)  # (H, W, 3)
    height, width = img.shape[:2]
    show_image(ax, img, size, title)
    attn = np.asarray(torch.as_tensor(attention).detach().cpu(), dtype=float)  # (H_f, W_f)
    if feature_mask is not None:
        attn = np.ma.masked_where(np.asarray(feature_mask, dtype=bool), attn)  # (H_f, W_f)
    im = ax.imshow(attn, extent=(0, width, height, 0), alpha=alpha, cmap=cmap, interpolation="nearest",
                   vmin=vmin, vmax=vmax)
    if colourbar:
        add_colourbar(im, ax, colourbar)
    return im


def plot_encoder_attention(image, attention: Tensor, points: list[tuple[int, int]], feature_size,
                           feature_mask=None, size=None, fig: Figure | None = None) -> Figure:
    """Seed figure "Encoder self-attention for a set of reference points" (DETR Fig. 3).

    attention (N, N) one encoder layer's weights (one head or the mean over heads) of one image,
    N = H_f·W_f; points: reference cells (y, x). Left: the image with the points; then, for each
    point, the row of `attention` it owns (where that token looks) over the image. The maps share
    one colour scale, from 0 to the largest weight drawn, and one colourbar (the last Axes).
    """
    hf, wf = feature_size
    img = denormalize(image)  # (H, W, 3)
    fig = fig or Figure(figsize=(2.6 * (len(points) + 1) + 0.6, 2.9), layout="constrained")
    axes = fig.subplots(1, len(points) + 1, squeeze=False)[0]
    show_image(axes[0], img, size, "reference points")
    rows = [torch.as_tensor(attention)[y * wf + x].reshape(hf, wf) for y, x in points]  # each (H_f, W_f)
    vmax = max((float(r.max()) for r in rows), default=1.0)
    for k, ((y, x), row, ax) in enumerate(zip(points, rows, axes[1:])):
        px, py = cell_centre(y, x, feature_size, img.shape[:2])
        colour = PALETTE[k % len(PALETTE)]
        axes[0].plot(px, py, marker="o", markersize=8, color=colour, markeredgecolor="white")
        im = attention_overlay(ax, img, row, feature_mask, size, title=f"point ({y}, {x})", vmin=0.0, vmax=vmax)
        ax.plot(px, py, marker="o", markersize=6, color=colour, markeredgecolor="white")
    if rows:
        add_colourbar(im, axes[1:], attention_label(valid_cells(rows[0], feature_mask)))
    return fig


def plot_decoder_attention(image, attention: Tensor, queries: list[int], boxes, labels, scores, feature_size,
                           feature_mask=None, size=None, ncols: int = 4, fig: Figure | None = None) -> Figure:
    """Seed figure "Visualizing decoder attention for every predicted object" (DETR Fig. 6).

    attention (Q, N) one decoder layer's cross-attention (one head or the mean) of one image;
    boxes (Q, 4) xyxy pixels, labels (Q,), scores (Q,): the predictions. One panel per query in
    `queries`: where that object query looks in the image, with its predicted box. The maps share
    one colour scale, from 0 to the largest weight drawn, and one colourbar (the last Axes).
    """
    hf, wf = feature_size
    img = denormalize(image)  # (H, W, 3)
    nrows = max(math.ceil(len(queries) / ncols), 1)
    ncols = min(ncols, max(len(queries), 1))
    fig = fig or Figure(figsize=(2.8 * ncols + 0.8, 3.0 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    rows = [torch.as_tensor(attention)[q].reshape(hf, wf) for q in queries]  # each (H_f, W_f)
    vmax = max((float(r.max()) for r in rows), default=1.0)
    for q, row, ax in zip(queries, rows, axes):
        im = attention_overlay(ax, img, row, feature_mask, size, vmin=0.0, vmax=vmax,
                               title=f"query {q}: {class_name(labels[q])} {float(scores[q]):.2f}")
        draw_boxes(ax, torch.as_tensor(boxes)[q:q + 1], colours=["cyan"], text=False)
    for ax in axes[len(queries):]:
        ax.axis("off")
    if rows:
        add_colourbar(im, axes, attention_label(valid_cells(rows[0], feature_mask)))
    return fig


# --- the query-slot figure --------------------------------------------------------------------


def box_modes(boxes: Tensor, sizes: Tensor, small_area: float = COCO_SMALL) -> np.ndarray:
    """The seed slot figure's three colours for (..., 4) cxcywh boxes normalised by image sizes
    (..., 2) = (h, w): 0 small (pixel area < `small_area`, COCO's 32²), else 1 large horizontal
    (w >= h in pixels) or 2 large vertical. The paper does not state its thresholds; these are ours."""
    boxes, sizes = torch.as_tensor(boxes, dtype=torch.float32), torch.as_tensor(sizes, dtype=torch.float32)
    w_px = boxes[..., 2] * sizes[..., 1]  # (...,)
    h_px = boxes[..., 3] * sizes[..., 0]  # (...,)
    modes = torch.where(w_px >= h_px, 1, 2)  # (...,)
    modes = torch.where(w_px * h_px < small_area, 0, modes)  # (...,)
    return modes.numpy()


def plot_query_slots(boxes: Tensor, keep: Tensor, sizes: Tensor, slots=range(20), ncols: int = 5,
                     show_rejected: bool = True, fig: Figure | None = None) -> Figure:
    """Seed figure "all box predictions on all images of the val set for 20 of N prediction slots".

    boxes (I, Q, 4) cxcywh normalised predictions on I images, keep (I, Q) which to draw (the
    notebook: argmax class is not ∅), sizes (I, 2) image (h, w). One unit-square panel per slot
    in `slots`; each kept prediction is a dot at its box centre (y down, as in the image),
    coloured green (small), red (large horizontal) or blue (large vertical), see `box_modes`.
    With `show_rejected`, predictions not kept are light grey dots underneath.
    """
    boxes = torch.as_tensor(boxes, dtype=torch.float32)
    keep = torch.as_tensor(keep, dtype=torch.bool)
    sizes = torch.as_tensor(sizes)
    slots = list(slots)
    modes = box_modes(boxes, sizes[:, None, :].expand(-1, boxes.shape[1], -1))  # (I, Q)
    nrows = math.ceil(len(slots) / ncols)
    fig = fig or Figure(figsize=(2.0 * ncols, 2.1 * nrows + 0.4), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for slot, ax in zip(slots, axes):
        centres = boxes[:, slot, :2].numpy()  # (I, 2)
        kept = keep[:, slot].numpy()  # (I,)
        if show_rejected:
            ax.scatter(centres[~kept, 0], centres[~kept, 1], s=2, color="0.85", linewidths=0)
        colours = np.array(MODE_COLOURS)[modes[kept, slot]]
        ax.scatter(centres[kept, 0], centres[kept, 1], s=4, c=colours, linewidths=0)
        ax.set_xlim(0, 1)
        ax.set_ylim(1, 0)
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"slot {slot}: {int(kept.sum())} boxes", fontsize=8)
    for ax in axes[len(slots):]:
        ax.axis("off")
    handles = [Line2D([], [], marker="o", linestyle="", color=c, label=n) for c, n in zip(MODE_COLOURS, MODE_NAMES)]
    if show_rejected:
        handles.append(Line2D([], [], marker="o", linestyle="", color="0.8", label="predicted ∅ (not counted)"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    return fig


# --- Deformable DETR: attention entropy, deformable sampling, reference points, refinement -----
#
# Sampling locations and reference points are normalised (x, y) in [0, 1] over a level's
# (padded) feature map, as `MSDeformAttn` returns them; they are drawn at (x·W, y·H) on the
# (padded) image of size (H, W), the same cell-to-pixel convention as `attention_overlay`.


def plot_attention_entropy(ax: Axes, entropies: dict[str, list[float]], title: str | None = None) -> None:
    """Grouped bars: the normalised entropy of the attention weights per layer, one group of bars per
    layer and one bar per model in `entropies` {name: [value per layer]}. 1 is uniform attention
    (Deformable DETR Sec. 3: A_mqk ≈ 1/N_k at initialisation), 0 is all weight on one key."""
    names = list(entropies)
    layers = max(len(v) for v in entropies.values())
    width = 0.8 / len(names)
    for i, name in enumerate(names):
        xs = np.arange(len(entropies[name])) + (i - (len(names) - 1) / 2) * width
        bars = ax.bar(xs, entropies[name], width, label=name, color=PALETTE[i % len(PALETTE)])
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.axhline(1.0, color="k", linestyle="--", linewidth=0.8)
    ax.set_xticks(range(layers), [f"layer {i + 1}" for i in range(layers)])
    ax.set_ylim(0, 1.15)
    ax.set_ylabel("entropy / log(valid keys)")
    ax.legend(fontsize=7, loc="lower right")
    if title:
        ax.set_title(title, fontsize=9)


def plot_deform_conv_sampling(ax: Axes, offsets, centre: tuple[int, int], grid_size: tuple[int, int],
                              title: str | None = None) -> None:
    """Seed figure "(a) standard convolution (b) deformable convolution": where one output pixel's
    3x3 kernel reads its input. offsets (9, 2) as (Δy, Δx) per kernel position, row-major (the layout
    of `torchvision.ops.deform_conv2d`'s offset channels 2k, 2k+1); centre (y, x) the output pixel;
    grid_size (H, W) of the input. The regular grid is drawn in green, the sampled points in blue,
    an arrow from each kernel position to where it reads."""
    offsets = np.asarray(torch.as_tensor(offsets, dtype=torch.float32).reshape(-1, 2))  # (9, 2) (Δy, Δx)
    h, w = grid_size
    ky, kx = np.meshgrid([-1, 0, 1], [-1, 0, 1], indexing="ij")
    regular = np.stack([centre[0] + ky.ravel(), centre[1] + kx.ravel()], -1).astype(float)  # (9, 2) (y, x)
    sampled = regular + offsets  # (9, 2) (y, x)
    ax.set_xticks(np.arange(w + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(h + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="0.85", linewidth=0.6)
    ax.tick_params(which="both", length=0, labelsize=7)
    ax.scatter(regular[:, 1], regular[:, 0], s=40, color="tab:green", label="regular 3x3 grid", zorder=3)
    ax.scatter(sampled[:, 1], sampled[:, 0], s=40, color="tab:blue", label="sampled (grid + offset)", zorder=4)
    for (y0, x0), (y1, x1) in zip(regular, sampled):
        if abs(y1 - y0) + abs(x1 - x0) > 1e-6:
            ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color="0.4", lw=0.8))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.set_aspect("equal")
    ax.legend(fontsize=7, loc="lower left")
    if title:
        ax.set_title(title, fontsize=9)


def plot_offset_init(ax: Axes, offsets, level: int = 0, title: str | None = None) -> None:
    """A (M, L, P, 2) tensor of sampling offsets (x, y) in pixels of each level, e.g.
    `MSDeformAttn.sampling_offsets.bias.view(M, L, P, 2)`: level `level`'s P points of every head
    around the reference point (the black cross), one colour per head, point k labelled k+1.
    At the paper's initialisation (official `_reset_parameters`) head m points in direction
    2πm/M and point k sits k+1 pixels out: a ring of rays around the query."""
    offsets = torch.as_tensor(offsets, dtype=torch.float32)[:, level].detach()  # (M, P, 2)
    m, p, _ = offsets.shape
    for head in range(m):
        xy = offsets[head].numpy()  # (P, 2)
        ax.plot(np.r_[0.0, xy[:, 0]], np.r_[0.0, xy[:, 1]], color=PALETTE[head % len(PALETTE)], linewidth=0.8,
                marker="o", markersize=4, label=f"head {head}")
        for k in range(p):
            ax.text(xy[k, 0], xy[k, 1], f" {k + 1}", fontsize=6, color=PALETTE[head % len(PALETTE)])
    ax.plot(0, 0, marker="+", color="k", markersize=10, markeredgewidth=2)
    lim = float(offsets.abs().max()) + 0.8
    ax.set_xlim(-lim, lim)
    ax.set_ylim(lim, -lim)  # y down, as in the image
    ax.set_aspect("equal")
    ax.grid(alpha=0.3)
    ax.set_xlabel("Δx (pixels of the level)", fontsize=8)
    ax.set_ylabel("Δy", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, ncols=2, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    if title:
        ax.set_title(title, fontsize=9)


def show_level(ax: Axes, image, level_shape: tuple[int, int], size=None, title: str | None = None) -> AxesImage:
    """The image (3, H, W) with the cell grid of a feature level (H_l, W_l) over it, so one square
    is one cell of that level: Deformable DETR's multi-scale maps (App. A.2), each at its own resolution."""
    img = denormalize(image)  # (H, W, 3)
    height, width = img.shape[:2]
    im = show_image(ax, img, size, title)
    h_l, w_l = level_shape
    for y in np.arange(1, h_l) * height / h_l:
        ax.axhline(y, color="white", linewidth=0.5, alpha=0.6)
    for x in np.arange(1, w_l) * width / w_l:
        ax.axvline(x, color="white", linewidth=0.5, alpha=0.6)
    if title:
        ax.set_title(title, fontsize=8)
    return im


def sampling_point_style(weights: Tensor, head) -> dict:
    """Scatter keywords for the (M, P) weights of one level (or (P,) of one head): size ∝ weight
    (a point with the uniform weight 1/(L·P) of the initialisation is about 30 pt²), colour the
    head's when all heads are drawn, else ∝ weight (viridis, 0 to the head's largest weight)."""
    w = np.asarray(torch.as_tensor(weights).detach().cpu(), dtype=float)
    style = {"s": 30 * 16 * w.ravel(), "edgecolors": "white", "linewidths": 0.4, "zorder": 4}
    if head == "all":
        style["c"] = np.repeat(np.array(PALETTE * 4)[: w.shape[0]], w.shape[1])  # (M·P,) one colour per head
    else:
        style.update(c=w.ravel(), cmap="viridis", vmin=0.0)
    return style


def plot_sampling_points(image, locations: Tensor, weights: Tensor, spatial_shapes: list[tuple[int, int]],
                         reference=None, reference_box=None, head="all", size=None, strides=None,
                         fig: Figure | None = None) -> Figure:
    """Where one query of multi-scale deformable attention reads (Deformable DETR Eq. 3, Fig. 2).

    locations (M, L, P, 2) normalised (x, y), weights (M, L, P) (softmax over L·P per head), one
    query's; spatial_shapes [(H_l, W_l)]; reference (L, 2) the query's reference point on each level
    (normalised), reference_box (4,) cxcywh normalised when the reference is a box (iterative
    refinement, App. A.4); head "all" or an int. One panel per level: the image with that level's
    cell grid (`show_level`), the sampling points (size ∝ weight; colour = head, or ∝ weight for one
    head), the reference point (white cross) and box (dashed). Panel l's scatter is `fig.axes[l].collections[0]`, its points in
    (m, p) order (only head `head`'s P points when one head is drawn); with one head, a colourbar
    for the weights follows the L panels. A point outside [0, 1]² is off its level's map, where
    grid_sample reads zero padding (`deformable_attention.map_coverage` says how much of each point
    lands on the map); the panels, cropped to the image, do not show it, and titles count them.
    """
    loc = torch.as_tensor(locations).detach().cpu()  # (M, L, P, 2)
    w = torch.as_tensor(weights).detach().cpu()  # (M, L, P)
    if head != "all":
        loc, w = loc[int(head)][None], w[int(head)][None]  # (1, L, P, 2), (1, L, P)
    img = denormalize(image)  # (H, W, 3)
    height, width = img.shape[:2]
    num_levels = len(spatial_shapes)
    fig = fig or Figure(figsize=(3.0 * num_levels, 3.4), layout="constrained")
    axes = fig.subplots(1, num_levels, squeeze=False)[0]
    vmax = float(w.max())
    for lvl, ax in enumerate(axes):
        h_l, w_l = spatial_shapes[lvl]
        xy = loc[:, lvl].reshape(-1, 2).numpy()  # (M·P, 2) normalised
        outside = int(((xy < 0) | (xy > 1)).any(-1).sum())
        stride = f", stride {strides[lvl]}" if strides is not None else ""
        title = f"level {lvl}: {h_l}x{w_l}{stride}"
        if outside:
            title += f"\n{outside} of {len(xy)} points off the map"
        show_level(ax, img, (h_l, w_l), size, title)
        style = sampling_point_style(w[:, lvl], "all" if head == "all" else 0)
        if head != "all":
            style["vmax"] = vmax
        points = ax.scatter(xy[:, 0] * width, xy[:, 1] * height, **style)
        if reference_box is not None:
            box = boxes_to_pixels(torch.as_tensor(reference_box).detach().cpu()[None], (height, width))  # (1, 4)
            draw_boxes(ax, box, colours=["white"], linestyle="--", linewidth=1, text=False)
        if reference is not None:
            rx, ry = torch.as_tensor(reference).detach().cpu()[lvl].tolist()
            ax.plot(rx * width, ry * height, marker="+", color="white", markersize=10, markeredgewidth=2.5, zorder=5)
            ax.plot(rx * width, ry * height, marker="+", color="black", markersize=8, markeredgewidth=1, zorder=6)
    if head == "all":
        handles = [Line2D([], [], marker="o", linestyle="", color=PALETTE[m % len(PALETTE)], label=f"head {m}")
                   for m in range(loc.shape[0])]
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7)
    else:
        add_colourbar(points, axes, f"attention weight A of head {head}\n(its {w.shape[1] * w.shape[2]} "
                                    "weights, all levels, sum to 1)")
    return fig


def plot_encoder_reference_points(image, reference: Tensor, spatial_shapes: list[tuple[int, int]], padding: Tensor,
                                  ratios: Tensor, highlight: int | None = None, fig: Figure | None = None) -> Figure:
    """The encoder's reference points of one (padded) image, one panel per level (Deformable DETR
    Sec. 4.1: a pixel's reference point is the pixel itself; normalised by the valid ratio as in the
    official `get_reference_points`).

    reference (N, L, 2) as `DeformableDETR.forward(..., return_intermediates=True)` returns it for one
    image; padding (N,) True on padded tokens; ratios (L, 2) the valid (w, h) fraction of each level.
    Panel l: the padded image with level l's cell grid, the points of level l's tokens on level l
    (valid tokens blue, padded tokens grey crosses) and the valid region (dashed). With `highlight`
    (a token index), that token's reference point seen on every level (φ_l of Eq. 3) is a red star.
    """
    ref = torch.as_tensor(reference).detach().cpu()  # (N, L, 2)
    pad = torch.as_tensor(padding).detach().cpu().bool()  # (N,)
    img = denormalize(image)  # (H, W, 3) the padded canvas
    height, width = img.shape[:2]
    fig = fig or Figure(figsize=(3.0 * len(spatial_shapes), 3.3), layout="constrained")
    axes = fig.subplots(1, len(spatial_shapes), squeeze=False)[0]
    start = 0
    for lvl, ((h_l, w_l), ax) in enumerate(zip(spatial_shapes, axes)):
        rx, ry = (float(v) for v in ratios[lvl])
        show_level(ax, img, (h_l, w_l), title=f"level {lvl}: {h_l}x{w_l}, valid ratio ({rx:.2f}, {ry:.2f})")
        points = ref[start:start + h_l * w_l, lvl]  # (H_l·W_l, 2): level l's tokens, on level l
        valid = ~pad[start:start + h_l * w_l]  # (H_l·W_l,)
        ax.scatter(points[valid, 0] * width, points[valid, 1] * height, s=6, color="tab:blue", zorder=3)
        ax.scatter(points[~valid, 0] * width, points[~valid, 1] * height, s=8, color="0.6", marker="x", zorder=3)
        ax.add_patch(Rectangle((0, 0), rx * width, ry * height, fill=False, edgecolor="tab:orange",
                               linestyle="--", linewidth=1.2))
        if highlight is not None:
            hx, hy = ref[highlight, lvl].tolist()
            ax.plot(hx * width, hy * height, marker="*", markersize=11, color="tab:red", markeredgecolor="white",
                    zorder=5)
        start += h_l * w_l
    handles = [Line2D([], [], marker="o", linestyle="", color="tab:blue", label="valid token"),
               Line2D([], [], marker="x", linestyle="", color="0.6", label="padded token"),
               Line2D([], [], color="tab:orange", linestyle="--", label="valid region (ratio × map)")]
    if highlight is not None:
        handles.append(Line2D([], [], marker="*", linestyle="", color="tab:red",
                              label=f"token {highlight} on every level"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7)
    return fig


def plot_box_refinement(ax: Axes, image, layer_boxes, references, labels=None, size=None,
                        title: str | None = None) -> None:
    """Iterative bounding-box refinement (Deformable DETR App. A.3-A.4: the first layer's box is
    predicted relative to the reference point, each later one relative to the previous box).

    layer_boxes (L_dec, n, 4) xyxy pixels, each decoder layer's box for n queries; references (n, 2)
    the first layer's reference points in pixels (dots). One colour per query (or per class, given
    labels (n,)); the line style goes from dotted (layer 1) to solid (last layer), and a line joins
    the reference point and the centres layer by layer."""
    boxes = torch.as_tensor(layer_boxes, dtype=torch.float32)  # (L_dec, n, 4)
    refs = torch.as_tensor(references, dtype=torch.float32).reshape(-1, 2)  # (n, 2)
    num_layers = boxes.shape[0]
    styles = [":", "--", "-."][: max(num_layers - 1, 0)] + ["-"]
    styles = [":"] * (num_layers - len(styles)) + styles
    show_image(ax, image, size, title)
    for i in range(boxes.shape[1]):
        colour = PALETTE[i % len(PALETTE)] if labels is None else class_colour(labels[i])
        centres = boxes[:, i].view(num_layers, 2, 2).mean(1).numpy()  # (L_dec, 2)
        path = np.concatenate([refs[i][None].numpy(), centres])  # (1 + L_dec, 2)
        ax.plot(path[:, 0], path[:, 1], color=colour, linewidth=0.8, marker=".", markersize=3)
        ax.plot(*refs[i].tolist(), marker="o", markersize=5, color=colour, markeredgecolor="white")
        for layer in range(num_layers):
            draw_boxes(ax, boxes[layer, i:i + 1], colours=[colour], linestyle=styles[layer],
                       linewidth=0.8 + 0.6 * layer, text=False)
    handles = [Line2D([], [], color="k", linestyle=s, label=f"layer {k + 1}") for k, s in enumerate(styles)]
    handles.append(Line2D([], [], marker="o", linestyle="", color="k", label="reference point"))
    ax.legend(handles=handles, fontsize=6, loc="upper right", framealpha=0.7)


# --- Anchor queries: positional attention maps, learned anchors, anchors through the layers ----
#
# Anchors and reference points are normalised (cx, cy[, w, h]) in [0, 1] of the unpadded image
# (DAB-DETR's A_q = σ(learned logits); Conditional DETR's s), drawn at (x·W, y·H) on it.


def draw_reference(ax: Axes, reference, image_size, colour: str = "white", linewidth: float = 1.2) -> None:
    """One query's reference (2,) point (x, y) or (4,) anchor box (cx, cy, w, h), normalised, on an
    image of image_size (H, W): a cross at the centre and, for a box, the box dashed."""
    ref = torch.as_tensor(reference, dtype=torch.float32).detach().cpu().reshape(-1)  # (2|4,)
    h, w = (float(v) for v in image_size)
    if ref.numel() == 4:
        draw_boxes(ax, boxes_to_pixels(ref[None], (h, w)), colours=[colour], linestyle="--", linewidth=linewidth,
                   text=False)
    ax.plot(ref[0].item() * w, ref[1].item() * h, marker="+", color=colour, markersize=9, markeredgewidth=2, zorder=5)


def plot_positional_maps(image, maps: dict, queries, grid_size: tuple[int, int], size=None,
                         references: dict | None = None, fig: Figure | None = None) -> Figure:
    """The seed's "Understanding the queries" figure (DAB-DETR Fig. 2): positional attention maps
    between learned queries and the positional embeddings of a feature map, one row per model.

    maps {model name: (Q, h·w)} one layer's maps (a head, or the mean over heads) on a grid of
    grid_size (h, w) spread over the image (3, H, W); queries: the query indices to draw, a list for
    every row or {name: list}; references {name: (Q, 2|4) normalised, or None} each query's
    reference point or anchor box, drawn white (`draw_reference`). Panel (row r, column c) is
    `fig.axes[r * len(columns) + c]`; its overlay's array is the map drawn. Each panel's colours
    run from 0 to that map's own maximum (its title gives max / uniform = max · h·w), so the one
    colourbar, the last Axes, after every panel, reads as a fraction of the panel's maximum."""
    names = list(maps)
    per_row = {n: list(queries[n] if isinstance(queries, dict) else queries) for n in names}
    ncols = max(len(q) for q in per_row.values())
    img = denormalize(image)  # (H, W, 3)
    fig = fig or Figure(figsize=(1.9 * ncols + 0.6, 2.1 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), ncols, squeeze=False)
    h, w = grid_size
    for r, name in enumerate(names):
        for c, ax in enumerate(axes[r]):
            if c >= len(per_row[name]):
                ax.axis("off")
                continue
            q = per_row[name][c]
            m = torch.as_tensor(maps[name])[q].detach().cpu().reshape(h, w)  # (h, w)
            attention_overlay(ax, img, m, size=size, alpha=0.75, vmin=0.0, vmax=float(m.max()),
                              title=f"q{q}: max {float(m.max()) * h * w:.1f}× uniform")
            ref = None if references is None or references.get(name) is None else references[name][q]
            if ref is not None:
                draw_reference(ax, ref, img.shape[:2])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
    relative = ScalarMappable(Normalize(0.0, 1.0), cmap="inferno")  # what every panel's colours mean
    add_colourbar(relative, axes, "weight / the panel's max\n(title: max in × uniform)")
    return fig


def plot_anchor_boxes(ax: Axes, anchors, title: str | None = None, labels: bool = True) -> None:
    """Learned anchors (Q, 4) boxes (cx, cy, w, h) or (Q, 2) points, normalised, over the unit
    square (y down, as in an image): each query's box and its centre, one colour per query
    (cycling), labelled q0, q1, ... (DAB-DETR: A_q = σ(refpoint_embed); "learn anchor boxes"
    against "learn 2D coordinates only")."""
    a = torch.as_tensor(anchors, dtype=torch.float32).detach().cpu()  # (Q, 2|4)
    for q, anchor in enumerate(a.tolist()):
        colour = PALETTE[q % len(PALETTE)]
        if len(anchor) == 4:
            cx, cy, w, h = anchor
            ax.add_patch(Rectangle((cx - w / 2, cy - h / 2), w, h, fill=False, edgecolor=colour, linewidth=1,
                                   alpha=0.8))
        ax.plot(anchor[0], anchor[1], marker="o", markersize=4, color=colour)
        if labels:
            ax.text(anchor[0], anchor[1], f" q{q}", fontsize=6, color=colour, va="center")
    ax.add_patch(Rectangle((0, 0), 1, 1, fill=False, edgecolor="k", linewidth=0.8))
    ax.set_xlim(-0.05, 1.05)
    ax.set_ylim(1.05, -0.05)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)
    if title:
        ax.set_title(title, fontsize=9)


LAYER_STYLES = (":", "--", "-.")  # anchors given to decoder layers 1, 2, 3, ...; the output is solid


def plot_anchor_layers(ax: Axes, image, anchors, final_boxes, size=None, title: str | None = None) -> None:
    """How anchors move through the decoder (DAB-DETR: A_q^{l+1} = σ(Δ^l + σ⁻¹(A_q^l)), "dynamic"
    anchor boxes). anchors (L_dec, n, 4|2): the anchor each decoder layer received for n queries,
    normalised (the first is the learned one); final_boxes (n, 4) cxcywh normalised, the last
    layer's predicted boxes. One colour per query; layer l's anchor box in line style
    `LAYER_STYLES[l]`, the prediction solid; arrows join the centres, layer to layer."""
    a = torch.as_tensor(anchors, dtype=torch.float32).detach().cpu()  # (L_dec, n, 4|2)
    final = torch.as_tensor(final_boxes, dtype=torch.float32).detach().cpu().reshape(-1, 4)  # (n, 4)
    img = denormalize(image)  # (H, W, 3)
    height, width = img.shape[:2]
    show_image(ax, img, size, title)
    scale = torch.tensor([width, height], dtype=torch.float32)
    num_layers = a.shape[0]
    styles = [LAYER_STYLES[min(i, len(LAYER_STYLES) - 1)] for i in range(num_layers)]
    for i in range(a.shape[1]):
        colour = PALETTE[i % len(PALETTE)]
        centres = torch.cat([a[:, i, :2], final[i:i + 1, :2]]) * scale  # (L_dec + 1, 2) pixels
        for layer in range(num_layers):
            if a.shape[-1] == 4:
                draw_boxes(ax, boxes_to_pixels(a[layer, i][None], (height, width)), colours=[colour],
                           linestyle=styles[layer], linewidth=1, text=False)
        draw_boxes(ax, boxes_to_pixels(final[i][None], (height, width)), colours=[colour], linewidth=2, text=False)
        ax.plot(*centres[0].tolist(), marker="o", markersize=5, color=colour, markeredgecolor="white")
        for (x0, y0), (x1, y1) in zip(centres[:-1].tolist(), centres[1:].tolist()):
            ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color=colour, lw=1.2))
    handles = [Line2D([], [], color="k", linestyle=s, label=f"anchor of layer {k + 1}") for k, s in enumerate(styles)]
    handles += [Line2D([], [], color="k", linewidth=2, label="predicted box"),
                Line2D([], [], marker="o", linestyle="", color="k", label="learned anchor")]
    ax.legend(handles=handles, fontsize=6, loc="upper right", framealpha=0.7)


# --- Query denoising (DN-DETR): anchors to targets, the attention mask, the noise, IS and AP ---


def plot_anchor_arrows(ax: Axes, image, anchors, targets, colours=None, flipped=None, size=None,
                       title: str | None = None, anchor_boxes: bool = True, target_boxes: bool = True) -> None:
    """Seed, "DN-DETR": "Each arrow starts from an anchor and points to a target" (DN-DETR Fig. 3).

    anchors (n, 4|2) and targets (n, 4) normalised cxcywh: arrow k goes from anchor k's centre to
    target k's centre. Targets are drawn as solid white boxes (with `target_boxes`), anchors (with
    `anchor_boxes`) as dashed boxes in colours[k] (default: one per k). flipped (n,) bool marks, with a red ×, the
    anchors whose label noise changed the class. Arrow k is the annotation `ax.texts[k]`, with
    `xyann` the anchor's centre and `xy` the target's, in pixels."""
    a = torch.as_tensor(anchors, dtype=torch.float32).detach().cpu().reshape(len(anchors), -1)  # (n, 4|2)
    t = torch.as_tensor(targets, dtype=torch.float32).detach().cpu().reshape(-1, 4)  # (n, 4)
    img = denormalize(image)  # (H, W, 3)
    height, width = img.shape[:2]
    show_image(ax, img, size, title)
    colours = colours if colours is not None else [PALETTE[k % len(PALETTE)] for k in range(len(a))]
    if target_boxes:
        unique_targets = torch.unique(t, dim=0) if len(t) else t  # (n', 4): each object once
        draw_boxes(ax, boxes_to_pixels(unique_targets, (height, width)), colours=["white"] * len(unique_targets),
                   linewidth=1.5, text=False)
    scale = torch.tensor([width, height], dtype=torch.float32)
    for k in range(len(a)):
        if anchor_boxes and a.shape[1] == 4:
            draw_boxes(ax, boxes_to_pixels(a[k][None], (height, width)), colours=[colours[k]], linestyle="--",
                       linewidth=0.9, text=False)
        (x0, y0), (x1, y1) = (a[k, :2] * scale).tolist(), (t[k, :2] * scale).tolist()
        ax.annotate("", (x1, y1), (x0, y0), arrowprops=dict(arrowstyle="->", color=colours[k], lw=1.3))
        ax.plot(x0, y0, marker="o", markersize=3, color=colours[k])
        if flipped is not None and bool(flipped[k]):
            ax.plot(x0, y0, marker="x", markersize=7, markeredgewidth=2, color="red", zorder=6)


def plot_dn_attention_mask(ax: Axes, mask, num_groups: int, group_size: int, title: str | None = None) -> AxesImage:
    """The denoising self-attention mask as an image (seed, "DN-DETR": a_ij; DN-DETR Sec. 3.4):
    mask (T, T) bool, True (black) where query i (row) may not see query j (column), for
    T = P·M + Q queries ordered [group 0 | ... | group P-1 | matching]. Group boundaries are drawn
    in red and each block of rows and columns is named on the axes. Returns the image (its array
    is the mask as 0/1)."""
    m = np.asarray(torch.as_tensor(mask).detach().cpu(), dtype=float)  # (T, T)
    t = m.shape[0]
    pm = num_groups * group_size
    im = ax.imshow(m, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    bounds = [g * group_size for g in range(num_groups + 1)]
    for b in bounds[1:]:
        ax.axhline(b - 0.5, color="tab:red", linewidth=0.8)
        ax.axvline(b - 0.5, color="tab:red", linewidth=0.8)
    centres = [(g + 0.5) * group_size - 0.5 for g in range(num_groups)] + [(pm + t) / 2 - 0.5]
    names = [f"group {g}" for g in range(num_groups)] + [f"matching ({t - pm})"]
    ax.set_xticks(centres, names, rotation=90, fontsize=7)
    ax.set_yticks(centres, names, fontsize=7)
    ax.set_xlabel("key j (attended to)", fontsize=8)
    ax.set_ylabel("query i", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    return im


def plot_noise_bounds(axes, centre_shift, size_change, scale: float) -> None:
    """DN-DETR's box noise against its bounds λ (`box_noise_scale`): axes (2,); centre_shift (n, 2)
    |Δx|/w, |Δy|/h and size_change (n, 2) |Δw|/w, |Δh|/h of noised boxes relative to their
    objects. Uniform noise fills [0, λ/2) for the centre and [0, λ) for the size (dashed lines);
    clipping to the image can only shorten a shift."""
    ax_c, ax_s = axes
    c = np.asarray(torch.as_tensor(centre_shift).detach().cpu(), dtype=float)  # (n, 2)
    s = np.asarray(torch.as_tensor(size_change).detach().cpu(), dtype=float)  # (n, 2)
    for ax, values, bound, names, what in ((ax_c, c, scale / 2, ("|Δx| / w", "|Δy| / h"), "centre shift"),
                                           (ax_s, s, scale, ("|Δw| / w", "|Δh| / h"), "size change")):
        bins = np.linspace(0, bound * 1.15, 24)
        for k in range(2):
            ax.hist(values[:, k], bins=bins, histtype="step", linewidth=1.5, label=names[k], color=PALETTE[k])
        ax.axvline(bound, color="k", linestyle="--", linewidth=1)
        ax.text(bound, ax.get_ylim()[1] * 0.95, f" {'λ/2' if what == 'centre shift' else 'λ'} = {bound:g}",
                fontsize=8, va="top")
        ax.set_title(f"{what}: max {values.max():.3f} (bound {bound:g})", fontsize=9)
        ax.set_xlabel("relative to the object's size", fontsize=8)
        ax.legend(fontsize=7, loc="lower left")


def load_training_curves(names, convergence: str | Path, checkpoints: str | Path) -> tuple[dict, dict]:
    """Per-epoch validation records of the runs `names` from committed results, for
    `plot_instability_and_ap`. For each name: bench/convergence.py's report (`convergence`, its
    "curves"[name]) if it has that run, else the shipped checkpoint's manifest
    (`checkpoints`/<name>.json, its "ap_curve", which carries no IS). Returns ({name: [record with
    "epoch", "AP", ... and "IS" where recorded]}, {name: the file it came from}); a name found in
    neither is in neither dict."""
    convergence, checkpoints = Path(convergence), Path(checkpoints)
    report = json.loads(convergence.read_text()).get("curves", {}) if convergence.exists() else {}
    curves, sources = {}, {}
    for name in names:
        manifest = checkpoints / f"{name}.json"
        if report.get(name):
            curves[name], sources[name] = report[name], str(convergence)
        elif manifest.exists() and json.loads(manifest.read_text()).get("ap_curve"):
            curves[name], sources[name] = json.loads(manifest.read_text())["ap_curve"], str(manifest)
    return curves, sources


def plot_instability_and_ap(curves: dict, fig: Figure | None = None) -> Figure:
    """Seed, "DN-DETR", Fig. 2: the instability score IS^i (how many predictions change their
    matched object between epochs i-1 and i, `tutorial/training/instability.py`) against the epoch, next to
    val AP against the epoch. curves {run name: [{"epoch", "AP", optionally "IS"}, ...]}; a run
    without IS records is named in the left panel instead of drawn. Panel 0 is IS, panel 1 AP (in %,
    the records hold COCOeval fractions); one line per run in `curves` order (line k of a panel is
    run k's, if it has data there)."""
    fig = fig or Figure(figsize=(10, 3.6), layout="constrained")
    ax_is, ax_ap = fig.subplots(1, 2)
    without_is = []
    for k, (name, curve) in enumerate(curves.items()):
        colour = PALETTE[k % len(PALETTE)]
        with_is = [r for r in curve if r.get("IS") is not None]
        if with_is:
            ax_is.plot([r["epoch"] + 1 for r in with_is], [r["IS"] for r in with_is], marker="o", color=colour,
                       label=name)
        else:
            without_is.append(name)
        with_ap = [r for r in curve if r.get("AP") is not None]
        ax_ap.plot([r["epoch"] + 1 for r in with_ap], [100 * r["AP"] for r in with_ap], marker="o", color=colour,
                   label=name)
    if without_is:
        ax_is.text(0.5, 0.5, "no IS recorded for\n" + "\n".join(without_is), transform=ax_is.transAxes,
                   ha="center", va="center", fontsize=8, color="0.4")
    ax_is.set(xlabel="epoch i", ylabel="IS^i (changed matches)", title="instability of the matching")
    ax_ap.set(xlabel="epoch", ylabel="val AP (%)", title="val AP")
    for ax in (ax_is, ax_ap):
        ax.grid(alpha=0.3)
        ax.title.set_fontsize(9)
        if ax.lines:
            ax.legend(fontsize=7)
    return fig


# --- RT-DETR: NMS against its thresholds, the hybrid encoder, query selection, speed/accuracy ----
#
# `report` is bench/latency.py's JSON (bench/results/latency.json), `rows` bench/encoder_cost.py's
# ("rows" of bench/results/encoder_cost.json). AP values there are COCOeval fractions; drawn in %.

LEVEL_COLOURS = ("tab:green", "tab:orange", "tab:purple", "tab:brown")  # levels at strides 8, 16, 32, 64


def plot_nms_step(image, candidates: dict, kept: dict, size=None, fig: Figure | None = None,
                  titles: tuple[str, str] | None = None) -> Figure:
    """Seed, "Glance at YOLOs": a dense detector's boxes on one image before and after NMS.

    candidates {"boxes" (n, 4) xyxy pixels, "scores" (n,), "labels" (n,)}: the (location, class)
    pairs above the confidence threshold (`DenseDetector.candidates`); kept: the same keys after
    NMS (`DenseDetector.postprocess`). Left: every candidate, thin, its opacity ∝ score (a box
    with score 1 is opaque); right: the kept boxes, the ones scoring ≥ 0.3 captioned. Panel 1's
    patches are the kept boxes in order."""
    fig = fig or Figure(figsize=(8, 4.2), layout="constrained")
    ax_before, ax_after = fig.subplots(1, 2)
    titles = titles or (f"{len(candidates['scores'])} candidates before NMS", f"{len(kept['scores'])} kept after NMS")
    show_image(ax_before, image, size, titles[0])
    for box, score, label in zip(torch.as_tensor(candidates["boxes"]).tolist(), candidates["scores"].tolist(),
                                 candidates["labels"].tolist()):
        x0, y0, x1, y1 = box
        ax_before.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=class_colour(label),
                                      linewidth=0.7, alpha=float(min(max(score, 0.03), 1.0))))
    show_image(ax_after, image, size, titles[1])
    captioned = kept["scores"] >= 0.3
    draw_boxes(ax_after, kept["boxes"], kept["labels"], kept["scores"], linewidth=1.2, text=False)
    for box, label, score in zip(kept["boxes"][captioned].tolist(), kept["labels"][captioned].tolist(),
                                 kept["scores"][captioned].tolist()):
        ax_after.text(box[0], box[1], f"{class_name(label)} {score:.2f}", fontsize=6, color="white", va="bottom",
                      clip_on=True, bbox=dict(facecolor=class_colour(label), edgecolor="none", pad=0.4, alpha=0.8))
    return fig


def plot_nms_sweep(ax: Axes, rows: list[dict], key: str, title: str | None = None) -> None:
    """The seed's NMS table as a plot: AP (left axis, %, bars) and NMS time (right axis, ms per
    image, line) against one threshold, `key` "iou_threshold" or "score_threshold" (log axis),
    from bench/latency.py's `report["nms"]["by_iou"]` or `["by_confidence"]` rows."""
    xs = [r[key] for r in rows]
    positions = np.arange(len(xs))
    bars = ax.bar(positions, [100 * r["AP"] for r in rows], color="tab:blue", alpha=0.6, label="AP (%)")
    for x, r in zip(positions, rows):  # at the foot of each bar, where the NMS line (above) cannot cross it
        ax.annotate(f"{100 * r['AP']:.1f}", (x, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(positions, [f"{x:g}" for x in xs])
    ax.set_xlabel("IoU threshold" if key == "iou_threshold" else "confidence threshold")
    ax.set_ylabel("AP (%)", color="tab:blue")
    twin = ax.twinx()
    twin.plot(positions, [r["nms_ms"] for r in rows], color="tab:red", marker="o", label="NMS time")
    twin.set_ylabel("NMS (ms per image)", color="tab:red")
    top = max(r["nms_ms"] for r in rows)
    twin.set_ylim(-0.25 * top, top * 1.2)  # the line keeps clear of the AP values at the foot of the bars
    twin.set_yticks([t for t in twin.get_yticks() if 0 <= t <= top * 1.2])  # no negative times on the axis
    twin.spines["right"].set_bounds(0, top * 1.2)  # the time axis visibly starts above the bars' foot
    ax.spines["right"].set_visible(False)  # (the bars' own right spine would hide that)
    ax.set_ylim(0, max(max(100 * r["AP"] for r in rows) * 1.25, 1))
    if title:
        ax.set_title(title, fontsize=9)


def stagger_labels(ax: Axes, points, labels, colour: str, below: bool = False, fontsize: float = 7) -> list:
    """Label data points (n, 2) without the labels running into each other: each label goes just
    right of its point, above it (below with `below`), moved further away one line at a time until
    it overlaps no label placed before; a moved label gets a thin leader to its point. Call it once
    the axis limits are final (it freezes them). Returns the annotations."""
    from matplotlib.textpath import TextPath

    ax.autoscale_view()
    ax.set_xlim(ax.get_xlim())  # freeze: the placement below depends on them
    ax.set_ylim(ax.get_ylim())
    xy = np.asarray(points, dtype=float).reshape(-1, 2)  # (n, 2) data
    at = ax.transData.transform(xy) * 72.0 / ax.figure.dpi  # (n, 2) in points
    line_height, placed, annotations = fontsize + 2.0, [], []
    for k in np.argsort(at[:, 0], kind="stable"):
        width = 1.3 * TextPath((0, 0), labels[k], size=fontsize).get_extents().width + 3  # margin: the layout moves
        x0 = at[k, 0] + 3
        for line in range(len(xy) + 1):
            dy = 3 + line_height * line if not below else -(line_height * (line + 1))  # the label's lower edge
            y0 = at[k, 1] + dy
            if not any(x0 < bx1 and bx0 < x0 + width and y0 < by1 and by0 < y0 + line_height
                       for bx0, bx1, by0, by1 in placed):
                break
        placed.append((x0, x0 + width, y0, y0 + line_height))
        leader = dict(arrowstyle="-", color=colour, linewidth=0.4, shrinkA=0, shrinkB=2) if line else None
        annotations.append(ax.annotate(labels[k], tuple(xy[k]), xytext=(3, dy), textcoords="offset points",
                                       va="bottom", fontsize=fontsize, color=colour, arrowprops=leader))
    return annotations


def plot_speed_accuracy(ax: Axes, report: dict, title: str | None = None) -> None:
    """The seed's speed/accuracy tables in one plot: AP (%) against end-to-end latency at batch 1
    (median, bars from the 25th to the 75th percentile) for RT-DETR with k decoder layers (Dec^k,
    joined, labelled above), the dense detector + NMS at each confidence threshold (IoU 0.7, joined,
    labelled below) and DINO. Labels of nearby points are staggered (`stagger_labels`)."""
    def point(row, colour, label, marker):
        lat = row["latency"]
        ax.errorbar(lat["median_ms"], 100 * row["AP"], xerr=[[lat["median_ms"] - lat["p25_ms"]],
                                                              [lat["p75_ms"] - lat["median_ms"]]],
                    color=colour, marker=marker, capsize=2, linestyle="", label=label)

    def xy(rows):
        return [(r["latency"]["median_ms"], 100 * r["AP"]) for r in rows]

    depth = report.get("rtdetr_depth") or []
    by_conf = (report.get("nms") or {}).get("by_confidence") or []
    for rows, colour, name, marker in ((depth, "tab:green", "RT-DETR-tiny, Dec^k", "o"),
                                       (by_conf, "tab:red", "dense + NMS (IoU 0.7), conf", "s")):
        if rows:
            ax.plot(*zip(*xy(rows)), color=colour, linewidth=0.8)
            for i, r in enumerate(rows):
                point(r, colour, name if i == 0 else None, marker)
    if report.get("dino"):
        point(report["dino"], "tab:purple", "DINO-tiny", "D")
    aps = [ap for _, ap in xy(depth + by_conf + ([report["dino"]] if report.get("dino") else []))]
    ax.set_ylim(0, max(max(aps, default=0) * 1.25, 1.0))
    ax.set_xlabel("end-to-end latency, batch 1 (ms)")
    ax.set_ylabel("AP (%)")
    ax.grid(alpha=0.3)
    if depth:
        stagger_labels(ax, xy(depth), [f"Dec{r['decoder_layers']}" for r in depth], "tab:green")
    if by_conf:
        stagger_labels(ax, xy(by_conf), [f"{r['score_threshold']:g}" for r in by_conf], "tab:red", below=True)
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)


def plot_latency_report(report: dict, fig: Figure | None = None) -> Figure:
    """bench/latency.py's results in three panels: the NMS sweeps against the IoU threshold and the
    confidence threshold (`plot_nms_sweep`), and AP against latency (`plot_speed_accuracy`)."""
    fig = fig or Figure(figsize=(14, 3.8), layout="constrained")
    ax_iou, ax_conf, ax_speed = fig.subplots(1, 3)
    nms = report.get("nms")
    for ax, key, sweep, fixed in ((ax_iou, "iou_threshold", "by_iou", "confidence 0.001"),
                                  (ax_conf, "score_threshold", "by_confidence", "IoU 0.7")):
        if nms and nms.get(sweep):
            plot_nms_sweep(ax, nms[sweep], key, title=f"dense detector: AP and NMS time ({fixed})")
        else:
            ax.axis("off")
            ax.text(0.5, 0.5, "no dense-detector results", ha="center", va="center")
    plot_speed_accuracy(ax_speed, report, title="AP against end-to-end latency")
    c = report.get("conditions", {})
    fig.suptitle(f"batch 1, {c.get('image_size', ['?'])[0]}x{c.get('image_size', ['?', '?'])[1]} input, "
                 f"{c.get('threads', '?')} thread(s); latency median of {c.get('repeats', '?')} runs; AP on "
                 f"{c.get('val_images_used', '?')} val images", fontsize=9)
    return fig


def plot_encoder_stages(image, stages: dict[str, list], size=None, strides=None, fig: Figure | None = None) -> Figure:
    """RT-DETR's hybrid encoder piece by piece (Sec. 4.2, the seed's "Fusion block" figure): one
    row per stage in `stages` {name: [(C, H_l, W_l) map or None] per level}, one column per level;
    each panel the per-token L2 norm of the features over the image (how strongly each cell
    responds), None drawn blank (e.g. levels AIFI does not touch). Panel (r, l) is
    `fig.axes[r * L + l]`; its overlay's array is the norm map drawn. Norms differ between stages
    and levels, so each panel has its own scale and colourbar (added after all panels)."""
    names = list(stages)
    num_levels = max(len(v) for v in stages.values())
    fig = fig or Figure(figsize=(3.1 * num_levels, 2.6 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), num_levels, squeeze=False)
    drawn = []
    for r, name in enumerate(names):
        for lvl, ax in enumerate(axes[r]):
            x = stages[name][lvl] if lvl < len(stages[name]) else None
            if x is None:
                ax.axis("off")
                ax.text(0.5, 0.5, "unchanged", ha="center", va="center", fontsize=8, color="0.5",
                        transform=ax.transAxes)
                continue
            norm = torch.as_tensor(x).detach().float().norm(dim=0)  # (H_l, W_l)
            stride = f", stride {strides[lvl]}" if strides is not None else ""
            drawn.append((ax, attention_overlay(ax, image, norm, size=size, alpha=0.7, cmap="viridis",
                                                title=f"{name}: S{lvl + 3} {tuple(norm.shape)}{stride}")))
    for ax, im in drawn:
        add_colourbar(im, ax, "token norm ‖x‖₂")
    return fig


def plot_encoder_cost(ax: Axes, rows: list[dict], config: str, title: str | None = None) -> None:
    """bench/encoder_cost.py's FLOPs at one config ("paper" or "tiny") as stacked bars per encoder:
    input projection, then AIFI + CCFM (hybrid) or attention layers + FFN + the analytic grid_sample
    FLOPs (deformable), each bar captioned with its total GFLOPs and median time."""
    rows = [r for r in rows if r["config"] == config]
    parts = [("input_proj", "input projection", "0.6"), ("aifi", "AIFI (S5 only)", "tab:blue"),
             ("ccfm", "CCFM (FPN + PAN convs)", "tab:cyan"), ("attention", "deformable attention (linear)", "tab:red"),
             ("sampling_flops_analytic", "grid_sample (analytic)", "tab:pink"), ("ffn", "FFN", "tab:orange")]
    names = [r["encoder"] for r in rows]
    bottom = np.zeros(len(rows))
    for key, label, colour in parts:
        values = np.array([r["gflops"].get(key, 0.0) for r in rows])
        if values.any():
            ax.bar(names, values, bottom=bottom, color=colour, label=label)
            bottom += values
    for i, r in enumerate(rows):
        ax.text(i, bottom[i], f"{r['gflops']['total']:.2f} GFLOPs\n{r['time']['total']['median_ms']:.1f} ms",
                ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, bottom.max() * 1.3 if len(rows) else 1)
    ax.set_ylabel("GFLOPs (batch 1)")
    ax.legend(fontsize=6, loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)


def draw_selected_tokens(ax: Axes, levels, cells, spatial_shapes, image_size,
                         linewidth: float = 1.2) -> list[Rectangle]:
    """Outline the feature cells of selected encoder tokens on an image of image_size (H, W):
    levels (k,), cells (k, 2) (y, x) on their level (`query_selection.token_locations`); a cell of
    level l covers (H / H_l) x (W / W_l) pixels; colour `LEVEL_COLOURS[l]`. Returns the patches."""
    height, width = (float(v) for v in image_size)
    patches = []
    for lvl, (y, x) in zip(torch.as_tensor(levels).tolist(), torch.as_tensor(cells).tolist()):
        h_l, w_l = spatial_shapes[lvl]
        ch, cw = height / h_l, width / w_l
        rect = Rectangle((x * cw, y * ch), cw, ch, fill=False, edgecolor=LEVEL_COLOURS[lvl % len(LEVEL_COLOURS)],
                         linewidth=linewidth)
        ax.add_patch(rect)
        patches.append(rect)
    return patches


def plot_query_selection(image, token_scores, selected, spatial_shapes, size=None, strides=None,
                         fig: Figure | None = None) -> Figure:
    """Which encoder tokens become queries (RT-DETR Sec. 4.3, DINO Sec. 3.4): per level, the
    encoder's class score σ(max_K logit) of every token over the image, the selected tokens' cells
    outlined. token_scores (N,) over the flattened levels (N = Σ_l H_l·W_l), selected (k,) token
    indices. Panel l's overlay (`fig.axes[l].images[1]`) holds level l's (H_l, W_l) score map;
    its titles count the selected tokens of the level."""
    from ..models.query_selection import token_locations

    scores = torch.as_tensor(token_scores).detach().float()  # (N,)
    selected = torch.as_tensor(selected)
    levels, cells = token_locations(selected, spatial_shapes)  # (k,), (k, 2)
    img = denormalize(image)  # (H, W, 3)
    fig = fig or Figure(figsize=(3.2 * len(spatial_shapes), 3.3), layout="constrained")
    axes = fig.subplots(1, len(spatial_shapes), squeeze=False)[0]
    vmin, vmax = float(scores.min()), float(scores.max())  # one colour scale for all levels
    start = 0
    for lvl, ((h_l, w_l), ax) in enumerate(zip(spatial_shapes, axes)):
        level_scores = scores[start:start + h_l * w_l].reshape(h_l, w_l)  # (H_l, W_l)
        mine = levels == lvl
        stride = f", stride {strides[lvl]}" if strides is not None else ""
        im = attention_overlay(ax, img, level_scores, size=size, alpha=0.65, cmap="magma",
                               title=f"level {lvl}: {h_l}x{w_l}{stride}; {int(mine.sum())} selected")
        im.set_clim(vmin, vmax)
        draw_selected_tokens(ax, levels[mine], cells[mine], spatial_shapes, img.shape[:2])
        start += h_l * w_l
    add_colourbar(im, list(axes), "token score σ(max logit)")
    return fig


def plot_contrastive_denoising(ax: Axes, image, dn: dict, group: int = 0, size=None, title: str | None = None) -> None:
    """DINO's contrastive denoising queries (DINO Sec. 3.3, Fig. 3) of one image and one group, as
    `plot_anchor_arrows` draws DN-DETR's: an arrow from each noised anchor to the object it was
    noised from; positives green, negatives red (each negative is farther from its object than any
    positive: |noise| in [λ, 2λ) against [0, λ)); a red × marks a flipped label. dn: one image's
    {"anchors" (P·M, 4), "target_boxes" (P·M, 4), "negative" (P·M,), "target_index" (P·M,),
    "labels" (P·M,), "true_labels" (P·M,), "groups" (P, M)} (`widgets.denoising_queries`)."""
    _, m = dn["groups"]
    rows = torch.arange(group * m, (group + 1) * m)
    rows = rows[dn["target_index"][rows] >= 0]  # the group's slots that hold an object (not padding)
    negative = dn["negative"][rows]
    colours = ["tab:red" if neg else "tab:green" for neg in negative.tolist()]
    plot_anchor_arrows(ax, image, dn["anchors"][rows], dn["target_boxes"][rows], colours=colours,
                       flipped=dn["labels"][rows] != dn["true_labels"][rows], size=size, title=title)
    handles = [Line2D([], [], color="tab:green", linestyle="--", label=f"positive ({int((~negative).sum())})"),
               Line2D([], [], color="tab:red", linestyle="--", label=f"negative ({int(negative.sum())})"),
               Line2D([], [], color="white", label="object"),
               Line2D([], [], marker="x", linestyle="", color="red", label="label flipped")]
    ax.legend(handles=handles, fontsize=6, loc="upper right", framealpha=0.6, facecolor="0.3", labelcolor="white")


def plot_score_vs_iou(ax: Axes, ious, scores, label: str, colour: str = "tab:blue", title: str | None = None) -> None:
    """RT-DETR Fig. 6 (IoU-aware against vanilla query selection): one dot per selected encoder
    token, the IoU of its box with the ground-truth box it overlaps most (x) against its
    classification score σ(max logit) (y). IoU-aware training (the varifocal loss) should put the
    dots near the diagonal: a high score only for a well-fitting box. Call once per model."""
    ious = np.asarray(torch.as_tensor(ious, dtype=torch.float32))
    scores = np.asarray(torch.as_tensor(scores, dtype=torch.float32))
    ax.scatter(ious, scores, s=5, alpha=0.35, color=colour, linewidths=0, label=label)
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(1.0, float(scores.max()) if len(scores) else 1.0))
    ax.set_xlabel("IoU with the best-overlapping object")
    ax.set_ylabel("classification score")
    ax.legend(fontsize=7, loc="upper left", markerscale=3)
    if title:
        ax.set_title(title, fontsize=9)


# --- state-space models and Mamba (notebook 07) ----------------------------------------------------

SCALING_STYLES = {  # bench/scaling.py's methods
    "attention (explicit)": "tab:red", "attention (fused)": "tab:orange",
    "scan (sequential)": "tab:gray", "scan (parallel)": "tab:blue", "scan (chunked)": "tab:green",
}


def plot_scaling(results: dict, fig: Figure | None = None) -> Figure:
    """bench/scaling.py's result (bench/results/scaling.json): (a) time and (b) peak memory against
    the sequence length N, log-log, forward solid and forward+backward dashed, with O(N) and O(N²)
    guides; (c) the parallel and chunked scans' speed-up over the sequential scan."""
    fig = fig or Figure(figsize=(13, 4), layout="constrained")
    ax_t, ax_m, ax_s = fig.subplots(1, 3)
    rows = [r for r in results["rows"] if "time_s" in r]
    for method in results["methods"]:
        for pass_, style in (("forward", "-"), ("forward+backward", "--")):
            pts = sorted((r["N"], r["time_s"], r["peak_MiB"]) for r in rows if r["method"] == method and r["pass"] == pass_)
            if not pts:
                continue
            n, t, m = zip(*pts)
            colour = SCALING_STYLES.get(method)
            label = method if pass_ == "forward" else None
            ax_t.plot(n, t, style, marker=".", color=colour, label=label)
            ax_m.plot(n, np.maximum(m, 0.1), style, marker=".", color=colour, label=label)
    lengths = np.array(sorted({r["N"] for r in results["rows"]}), dtype=float)
    for ax, key in ((ax_t, "time_s"), (ax_m, "peak_MiB")):
        values = [r[key] for r in rows if r[key] > 0]
        if values:  # guides through the geometric middle of the data
            mid_y, mid_n = float(np.exp(np.mean(np.log(values)))), float(np.exp(np.mean(np.log(lengths))))
            for power, ls in ((1, ":"), (2, "-.")):
                ax.plot(lengths, mid_y * (lengths / mid_n) ** power, ls, color="0.6", linewidth=0.8,
                        label=f"∝ N{'²' if power == 2 else ''}")
        ax.set(xscale="log", yscale="log", xlabel="sequence length N (tokens)")
        ax.grid(alpha=0.3, which="both")
    ax_t.set(ylabel="time per call (s)", title="time (solid: forward, dashed: forward+backward)")
    ax_m.set(ylabel="peak extra memory (MiB)", title="peak memory (VmHWM − RSS before)")
    ax_t.legend(fontsize=7)
    for pass_, style in (("forward", "-"), ("forward+backward", "--")):
        sp = sorted((s["N"], s["parallel_speedup"], s["chunked_speedup"]) for s in results["speedups"] if s["pass"] == pass_)
        if sp:
            n, par, chk = zip(*sp)
            ax_s.plot(n, par, style, marker=".", color=SCALING_STYLES["scan (parallel)"], label=f"parallel, {pass_}")
            if all(c is not None for c in chk):
                ax_s.plot(n, chk, style, marker=".", color=SCALING_STYLES["scan (chunked)"], label=f"chunked, {pass_}")
    ax_s.axhline(1, color="0.5", linewidth=0.8)
    ax_s.set(xscale="log", xlabel="sequence length N (tokens)", ylabel="sequential time / time",
             title="speed-up over the sequential scan")
    ax_s.grid(alpha=0.3, which="both")
    ax_s.legend(fontsize=7)
    skipped = sum("skipped" in r for r in results["rows"])
    s = results["shapes"]
    fig.suptitle(f"one CPU thread; attention: {s['heads']} heads × {s['head_dim']}; selective scan: D = {s['channels']}, "
                 f"state {s['d_state']}; batch {s['batch']}" + (f"; {skipped} points skipped (caps, see JSON)" if skipped else ""),
                 fontsize=9)
    return fig



def add_slope_guides(ax: Axes, x, anchor_y: float, powers=(1, 2), colour: str = "0.6") -> None:
    """Dotted reference lines y ∝ x^p through (x[0], anchor_y), labelled "∝ Δ^p"-style by the caller's legend."""
    x = np.asarray(x, dtype=float)
    for p, ls in zip(powers, (":", "-.", "--")):
        ax.plot(x, anchor_y * (x / x[0]) ** p, ls, color=colour, linewidth=0.8, label=f"slope {p}")



def plot_discretization_error(ax: Axes, deltas, errors: dict, title: str | None = None,
                              ylabel: str = "relative error") -> None:
    """Errors of discretisations against the step Δ, log-log, with slope-1 and slope-2 guides:
    errors maps a label to an array over `deltas`."""
    deltas = np.asarray(deltas, dtype=float)
    for label, err in errors.items():
        ax.plot(deltas, np.maximum(np.asarray(err, dtype=float), 1e-17), marker=".", label=label)
    first = [float(e[0]) for e in errors.values() if float(e[0]) > 1e-12]
    if first:
        add_slope_guides(ax, deltas, max(first) * 3)
    ax.set(xscale="log", yscale="log", xlabel="step Δ", ylabel=ylabel, title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)



def plot_hippo_memory(t, f, snapshots: list[dict], fig: Figure | None = None) -> Figure:
    """What a HiPPO state remembers (seed, "Mamba (HiPPO)"). t (L,) times, f (L,) the signal;
    snapshots: [{"time": t_k, "past": (M,) times ≤ t_k, "reconstruction": (M,) f̂ at those times,
    "age": (M,) t_k − past, "error": (M,) |f̂ − f|}]. Left: the signal (grey) and, for each
    snapshot, what the state at t_k reconstructs of the past (coloured); right: the error against
    the age of the input, log scale."""
    fig = fig or Figure(figsize=(12, 3.6), layout="constrained")
    ax_f, ax_e = fig.subplots(1, 2, width_ratios=(1.6, 1))
    ax_f.plot(t, f, color="0.6", linewidth=2.5, label="signal f(t)")
    for k, snap in enumerate(snapshots):
        colour = PALETTE[k % len(PALETTE)]
        ax_f.plot(snap["past"], snap["reconstruction"], color=colour, linewidth=1,
                  label=f"state at t = {snap['time']:.1f} remembers")
        ax_f.axvline(snap["time"], color=colour, linestyle=":", linewidth=0.8)
        ax_e.plot(snap["age"], np.maximum(snap["error"], 1e-6), color=colour, linewidth=0.8,
                  label=f"t = {snap['time']:.1f}")
    ax_f.set(xlabel="time t", ylabel="value", title="the signal and what the state remembers of it")
    ax_f.legend(fontsize=7, loc="lower left")
    ax_e.set(yscale="log", xlabel="age of the input (t_k − s)", ylabel="|f̂(s) − f(s)|",
             title="reconstruction error against age")
    ax_e.grid(alpha=0.3)
    ax_e.legend(fontsize=7)
    return fig



def plot_ssm_kernel(ax: Axes, K, title: str | None = "the SSM convolution kernel K̄") -> None:
    """K̄ = (CB̄, CĀB̄, ..., CĀ^{L-1}B̄) (Mamba Eq. 3a) as a stem plot against the lag k."""
    K = np.asarray(K, dtype=float)
    ax.stem(np.arange(len(K)), K, markerfmt=".", basefmt=" ")
    ax.axhline(0, color="0.5", linewidth=0.6)
    ax.set(xlabel="lag k (tokens back)", ylabel="K̄_k = C Ā^k B̄", title=title)



def plot_sequences(ax: Axes, curves: dict, title: str | None = None, xlabel: str = "token t",
                   styles: dict | None = None) -> None:
    """Several sequences over t on one axis: curves maps a label to a (L,) array."""
    for label, y in curves.items():
        ax.plot(np.asarray(y, dtype=float), label=label, **(styles or {}).get(label, {}))
    ax.set(xlabel=xlabel, title=title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)



def plot_selective_gate(x, marked, delta, outputs: dict, fig: Figure | None = None) -> Figure:
    """Δ as a gate (seed, "Mamba (Selective State Spaces)"). x (L,) the input stream, marked (L,)
    bool the tokens to remember, delta (L,) the selective model's step Δ_t, outputs maps a label
    to a (L,) output (e.g. the target, a time-invariant SSM's, the selective SSM's)."""
    fig = fig or Figure(figsize=(12, 5.5), layout="constrained")
    ax_x, ax_d, ax_y = fig.subplots(3, 1, sharex=True, height_ratios=(1, 0.7, 1.3))
    x, marked, delta = (np.asarray(v) for v in (x, marked, delta))
    t = np.arange(len(x))
    ax_x.bar(t, x, color=np.where(marked, "tab:red", "0.75"), width=0.8)
    ax_x.set(ylabel="input x_t", title="input: noise (grey) and marked tokens to remember (red)")
    ax_d.semilogy(t, delta, color="tab:purple", drawstyle="steps-mid")
    ax_d.set(ylabel="Δ_t", title="the selective SSM's step: large = take this token (reset), small = ignore it (keep)")
    for label, y in outputs.items():
        style = {"color": "k", "linewidth": 2.5, "alpha": 0.35} if label.startswith("target") else {"linewidth": 1.2}
        ax_y.plot(t, np.asarray(y, dtype=float), label=label, drawstyle="steps-mid", **style)
    ax_y.set(xlabel="token t", ylabel="output y_t", title="outputs: remember the last marked value")
    ax_y.legend(fontsize=7, loc="upper right")
    for ax in (ax_x, ax_d, ax_y):
        ax.grid(alpha=0.3)
    return fig



def odd_even_scan_steps(length: int) -> list[dict]:
    """The combines the odd/even scan (`tutorial.ssm.parallel_scan.parallel_scan`) performs on a
    sequence of `length`, level by level -> [{"phase": "up" | "down", "depth": k, "pairs":
    [(src, dst), ...]}], positions in the original sequence. A pair means: element dst <- element
    src ∘ element dst (src earlier). Replaying the levels in order with `scan_combine` turns every
    element into its prefix, i.e. h_t; all pairs of a level are independent (one parallel step)."""
    def recurse(positions: list[int], depth: int) -> list[dict]:
        n = len(positions) // 2
        if len(positions) <= 1:
            return []
        up = [(positions[2 * i], positions[2 * i + 1]) for i in range(n)]  # combine neighbours into the odd slot
        inner = recurse([positions[2 * i + 1] for i in range(n)], depth + 1)  # scan the pairs
        down = [(positions[j - 1], positions[j]) for j in range(2, len(positions), 2)]  # fill in the evens
        return ([{"phase": "up", "depth": depth, "pairs": up}] + inner
                + ([{"phase": "down", "depth": depth, "pairs": down}] if down else []))

    return recurse(list(range(length)), 0)



def plot_scan_tree(ax: Axes, length: int, steps: list[dict] | None = None) -> None:
    """The odd/even parallel scan as a circuit: one column per element, one row per parallel
    level (top to bottom), an arrow src -> dst for each combine; the up-sweep (pairs of
    neighbours, pairs of pairs, ...) in blue, the down-sweep (filling in the rest) in orange."""
    steps = steps if steps is not None else odd_even_scan_steps(length)
    for row, level in enumerate(steps):
        y = -(row + 1)
        colour = "tab:blue" if level["phase"] == "up" else "tab:orange"
        for src, dst in level["pairs"]:
            ax.annotate("", xy=(dst, y), xytext=(src, y + 1),
                        arrowprops=dict(arrowstyle="->", color=colour, linewidth=1.2, shrinkA=3, shrinkB=3))
            ax.plot([dst, dst], [y + 1, y], color="0.75", linewidth=0.6, zorder=0)
            ax.plot(dst, y, "o", color=colour, markersize=5)
        touched = {d for _, d in level["pairs"]}
        for i in range(length):
            if i not in touched:
                ax.plot([i, i], [y + 1, y], color="0.85", linewidth=0.6, zorder=0)
        ax.text(length - 0.4, y + 0.5, f"{level['phase']}-sweep, depth {level['depth']}: "
                f"{len(level['pairs'])} combine{'s' if len(level['pairs']) != 1 else ''}", fontsize=7, va="center")
    ax.plot(range(length), [0] * length, "s", color="0.3", markersize=5)
    ax.plot(range(length), [-len(steps)] * length, "s", color="tab:green", markersize=5)
    ax.set_xticks(range(length), [str(i) for i in range(length)])
    ax.set_yticks([0, -len(steps)], ["steps (a_t, b_t)", "prefixes h_t"])
    ax.set_xlim(-0.6, length + 6)
    ax.set(xlabel="position t", title=f"odd/even parallel scan of L = {length}: {len(steps)} parallel levels "
           f"(the loop needs {length - 1} dependent steps)")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)



def scan_positions(height: int, width: int) -> Tensor:
    """Where each pixel comes in each of SS2D's four scan orders -> (4, H, W) integer positions,
    read off `cross_scan` of an index map (so it is whatever `cross_scan` does)."""
    from ..ssm.ss2d import cross_scan

    index = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)  # pixel ids, row-major
    order = cross_scan(index)[0, :, 0].long()  # (4, L): the pixel id visited at each position
    pos = torch.empty_like(order)
    pos.scatter_(1, order, torch.arange(height * width).expand(4, -1))  # (4, L): position of each pixel id
    return pos.view(4, height, width)



def plot_scan_directions(image, fig: Figure | None = None) -> Figure:
    """SS2D's four scan orders on a small image (h, w, 3) in [0, 1] or (3, h, w) normalised: top,
    the path each scan takes over the pixels (colour = position in the sequence, a circle at the
    start); bottom, the sequence it reads, pixel by pixel."""
    from ..ssm.ss2d import DIRECTIONS, cross_scan

    img = denormalize(image) if (torch.is_tensor(image) and image.shape[0] == 3) else np.asarray(image, dtype=float)
    h, w = img.shape[:2]
    fig = fig or Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(2, 4, height_ratios=(3, 0.6))
    pos = scan_positions(h, w)  # (4, H, W)
    seqs = cross_scan(torch.as_tensor(img, dtype=torch.float32).permute(2, 0, 1)[None])[0]  # (4, 3, L)
    for k, name in enumerate(DIRECTIONS):
        ax = axes[0, k]
        ax.imshow(img, interpolation="nearest", alpha=0.45)  # dimmed, so the path stands out
        order = pos[k].flatten().argsort()  # pixel ids in scan order
        ys, xs = (order // w).numpy(), (order % w).numpy()
        ax.scatter(xs, ys, c=np.arange(h * w), cmap="viridis", s=12, zorder=3)
        for i in range(h * w - 1):
            ax.annotate("", xy=(xs[i + 1], ys[i + 1]), xytext=(xs[i], ys[i]),
                        arrowprops=dict(arrowstyle="-|>", color=matplotlib_colour(i / (h * w)), linewidth=0.8,
                                        mutation_scale=6, shrinkA=0, shrinkB=2))
        ax.plot(xs[0], ys[0], "o", markersize=10, markerfacecolor="none", markeredgecolor="white", markeredgewidth=2)
        ax.set_title(f"{k}: {name}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        strip = axes[1, k]
        strip.imshow(seqs[k].permute(1, 0)[None].numpy(), aspect="auto", interpolation="nearest")
        strip.set_yticks([])
        strip.set_xlabel("position in the sequence", fontsize=8)
    return fig



def matplotlib_colour(value: float, cmap: str = "viridis"):
    """The colour of `value` in [0, 1] on a matplotlib colour map."""
    from matplotlib import colormaps

    return colormaps[cmap](float(value))



def plot_scan_receptive_field(jacobian, pixel: tuple[int, int], fig: Figure | None = None) -> Figure:
    """Which input pixels one output pixel of SS2D can depend on. jacobian (H, W): |∂ out[pixel] /
    ∂ in| summed over channels (from autograd); pixel (y, x). Four panels: the pixels each scan
    direction has read by the time it reaches `pixel` (its causal past, before the 3x3 conv widens
    it by one pixel); a fifth: the Jacobian of the whole layer, log scale: nonzero everywhere."""
    from ..ssm.ss2d import DIRECTIONS

    jac = torch.as_tensor(jacobian, dtype=torch.float64)
    h, w = jac.shape
    pos = scan_positions(h, w)  # (4, H, W)
    fig = fig or Figure(figsize=(13, 3), layout="constrained")
    axes = fig.subplots(1, 5)
    y, x = pixel
    for k, name in enumerate(DIRECTIONS):
        seen = (pos[k] <= pos[k, y, x]).float()  # (H, W) 1 where the scan has passed
        axes[k].imshow(seen.numpy(), cmap="Blues", vmin=0, vmax=1.3, interpolation="nearest")
        axes[k].set_title(f"{name}\nhas read {int(seen.sum())} of {h * w}", fontsize=8)
    floor = max(float(jac[jac > 0].min()) if (jac > 0).any() else 1e-12, 1e-12)
    im = axes[4].imshow(np.log10(jac.clamp_min(floor).numpy()), cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=axes[4], shrink=0.8, label="log10 |∂out/∂in|")
    axes[4].set_title(f"SS2D, all four: {int((jac > 0).sum())} of {h * w} pixels", fontsize=8)
    for ax in axes:
        ax.plot(x, y, "*", color="tab:red", markersize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig



def plot_direction_maps(maps, fig: Figure | None = None, title: str | None = None, cmap: str = "viridis",
                        label: str = "value per pixel") -> Figure:
    """One value per pixel for each of SS2D's four scan directions, e.g. the mean step Δ:
    maps (4, H, W), one panel per direction (shared colour scale, one colourbar labelled `label`)."""
    from ..ssm.ss2d import DIRECTIONS

    maps = torch.as_tensor(maps, dtype=torch.float32)
    fig = fig or Figure(figsize=(12, 2.8), layout="constrained")
    axes = fig.subplots(1, 4)
    vmax = float(maps.max()) if maps.numel() else 1.0
    for k, ax in enumerate(axes):
        im = ax.imshow(maps[k].numpy(), cmap=cmap, vmin=0, vmax=vmax, interpolation="nearest")
        ax.set_title(DIRECTIONS[k], fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    add_colourbar(im, list(axes), label)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig
