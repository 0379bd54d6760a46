"""Notebooks 05 and 06, query denoising: DN-DETR's anchor-to-target arrows (DN-DETR Fig. 3), its
attention mask and box noise, the instability score against AP (DN-DETR Fig. 2), and DINO's
contrastive denoising queries. Conventions: `tutorial/viz/common.py`."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.lines import Line2D

from ..ops.box_ops import boxes_to_pixels
from .boxes import draw_boxes, show_image
from .common import PALETTE, denormalize


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


def plot_contrastive_denoising(ax: Axes, image, dn: dict, group: int = 0, size=None, title: str | None = None) -> None:
    """DINO's contrastive denoising queries (DINO Sec. 3.3, Fig. 3) of one image and one group, as
    `plot_anchor_arrows` draws DN-DETR's: an arrow from each noised anchor to the object it was
    noised from; positives green, negatives red (each negative is farther from its object than any
    positive: |noise| in [λ, 2λ) against [0, λ)); a red × marks a flipped label. dn: one image's
    {"anchors" (P·M, 4), "target_boxes" (P·M, 4), "negative" (P·M,), "target_index" (P·M,),
    "labels" (P·M,), "true_labels" (P·M,), "groups" (P, M)} (`tutorial.inspect.denoising_queries`)."""
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
