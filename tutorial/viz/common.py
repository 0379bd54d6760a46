"""What every figure of the notebooks shares: the colours, class names, image display, AP text,
colourbars and labels that keep out of each other's way.

Every drawing function of `tutorial/viz/` either draws into an `ax` it is given or builds and
returns a new `matplotlib.figure.Figure`; none touches pyplot's global state, so a view
(`tutorial/viz/views*.py`) can clear and redraw the same Figure, and a test can inspect its artists.

Conventions (all of `tutorial/viz/`)
- An image is a (3, H, W) tensor normalised with ImageNet statistics, as `tutorial.data.dataset`
  returns it, or an (H, W, 3) array in [0, 1]. A padded image (from `collate`) is drawn with its
  padding cropped away when `size` = (h, w), the unpadded size, is given.
- Boxes are (n, 4) xyxy in pixels unless a name says otherwise (`tutorial.ops.box_ops.boxes_to_pixels`
  converts DETR's normalised cxcywh); category id k is `CATEGORIES[k - 1]` (`tutorial/data/shapes.py`);
  other ids (COCO) are printed as numbers, or named from `names`.
- Every map drawn in colour has a colourbar whose label says what the number is (`add_colourbar`):
  one shared bar where panels share a scale, one per panel where they do not. Colourbars are
  added after all panels, so a figure's documented panel indices (`fig.axes[k]`) are unchanged.
- AP is drawn and printed in percent (`format_ap`); the results files keep COCOeval's fractions.

Glossary (all of `tutorial/viz/`): H, W image; H_f, W_f feature map; N = H_f·W_f tokens
(Σ_l H_l·W_l for several levels); Q queries; n boxes; M heads; L levels (H_l, W_l each);
P sampling points per level; L_dec decoder layers.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from torch import Tensor

from ..data.dataset import IMAGENET_MEAN, IMAGENET_STD
from ..data.shapes import CATEGORIES


PALETTE = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple",
           "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan"]


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


def matplotlib_colour(value: float, cmap: str = "viridis"):
    """The colour of `value` in [0, 1] on a matplotlib colour map."""
    from matplotlib import colormaps

    return colormaps[cmap](float(value))


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
