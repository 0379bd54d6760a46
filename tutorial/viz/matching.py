"""Notebook 01, set prediction: the matching cost matrix with its Hungarian assignment, and the
matched pairs on the image (seed, "Set Prediction")."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from .boxes import draw_boxes, show_image
from .common import PALETTE, add_colourbar


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
