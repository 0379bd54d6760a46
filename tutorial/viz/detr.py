"""Notebook 02, DETR: the positional encoding's channels, the seed deck's encoder and decoder
attention figures (DETR Fig. 3 and 6) and the query-slot figure (DETR Fig. 7)."""
from __future__ import annotations

import math

import numpy as np
import torch
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from torch import Tensor

from ..data.statistics import MODE_NAMES, box_modes
from .attention import attention_label, attention_overlay, cell_centre, valid_cells
from .boxes import draw_boxes, show_image
from .common import PALETTE, add_colourbar, class_name, denormalize

MODE_COLOURS = ("tab:green", "tab:red", "tab:blue")  # the slot figure's three modes (`MODE_NAMES`), as the seed's


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
