"""Images with boxes (every notebook): an image, its boxes captioned with class names and
scores, a padding mask. Conventions: `tutorial/viz/common.py`."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.image import AxesImage
from matplotlib.patches import Rectangle

from .common import class_colour, class_name, denormalize


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


def show_mask(ax: Axes, mask, title: str | None = "padding mask (white = padding)") -> AxesImage:
    """Draw a (H, W) boolean padding mask (True = padding) as a black-and-white image."""
    im = ax.imshow(np.asarray(mask, dtype=float), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    return im
