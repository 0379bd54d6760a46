"""Notebook 04, anchor queries: positional attention maps of DETR, Conditional DETR and DAB-DETR's
queries (DAB-DETR Fig. 2), learned anchors, and anchors moving through the decoder.

Anchors and reference points are normalised (cx, cy[, w, h]) in [0, 1] of the unpadded image
(DAB-DETR's A_q = σ(learned logits); Conditional DETR's s), drawn at (x·W, y·H) on it.
Conventions: `tutorial/viz/common.py`.
"""
from __future__ import annotations

import torch
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from ..ops.box_ops import boxes_to_pixels
from .attention import attention_overlay
from .boxes import draw_boxes, show_image
from .common import PALETTE, add_colourbar, denormalize


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
