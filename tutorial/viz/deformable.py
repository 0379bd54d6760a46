"""Notebook 03, Deformable DETR: attention entropy, deformable convolution's sampling, the
offsets' initialisation, multi-scale sampling points, the encoder's reference points and
iterative box refinement.

Sampling locations and reference points are normalised (x, y) in [0, 1] over a level's
(padded) feature map, as `MSDeformAttn` returns them; they are drawn at (x·W, y·H) on the
(padded) image of size (H, W), the same cell-to-pixel convention as `attention_overlay`.
Conventions: `tutorial/viz/common.py`.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from torch import Tensor

from ..ops.box_ops import boxes_to_pixels
from .boxes import draw_boxes, show_image
from .common import PALETTE, add_colourbar, class_colour, denormalize


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
