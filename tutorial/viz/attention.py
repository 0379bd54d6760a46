"""Attention maps over the image (notebooks 02, 04, 06): a map on the feature grid overlaid on
the image it was computed from, and its colourbar's label.

An attention map is (H_f, W_f) over the feature grid of the (padded) image; each cell covers
the same stride x stride square of pixels the backbone's downsampled padding mask assigns it.
Conventions: `tutorial/viz/common.py`.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.image import AxesImage

from .boxes import show_image
from .common import add_colourbar, denormalize


def cell_centre(y: int, x: int, feature_size, image_shape) -> tuple[float, float]:
    """Pixel (x, y) of the centre of feature cell (y, x) on an image of image_shape (H, W)."""
    (hf, wf), (h, w) = feature_size, image_shape
    return (x + 0.5) * w / wf, (y + 0.5) * h / hf


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
