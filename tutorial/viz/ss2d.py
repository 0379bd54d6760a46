"""Notebook 07, VMamba's SS2D: the four scan orders over an image, what one output pixel can
depend on, and one value per pixel for each direction (seed, "VMamba"). The positions come from
`tutorial.ssm.ss2d.scan_positions`; only the directions' names are imported from there.
Conventions: `tutorial/viz/common.py`."""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from ..ssm.ss2d import DIRECTIONS
from .common import add_colourbar, denormalize, matplotlib_colour


def plot_scan_directions(image, positions, fig: Figure | None = None) -> Figure:
    """SS2D's four scan orders on a small image (h, w, 3) in [0, 1] or (3, h, w) normalised, given
    positions (4, h, w), where each pixel comes in each order (`tutorial.ssm.ss2d.scan_positions`):
    top, the path each scan takes over the pixels (colour = position in the sequence, a circle at
    the start); bottom, the sequence it reads, pixel by pixel."""
    img = denormalize(image) if (torch.is_tensor(image) and image.shape[0] == 3) else np.asarray(image, dtype=float)
    h, w = img.shape[:2]
    fig = fig or Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(2, 4, height_ratios=(3, 0.6))
    pos = torch.as_tensor(positions)  # (4, H, W)
    pixels = img.reshape(h * w, -1)  # (L, 3) row-major
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
        strip.imshow(pixels[order.numpy()][None], aspect="auto", interpolation="nearest")  # (1, L, 3) read in order
        strip.set_yticks([])
        strip.set_xlabel("position in the sequence", fontsize=8)
    return fig


def plot_scan_receptive_field(jacobian, pixel: tuple[int, int], positions, fig: Figure | None = None) -> Figure:
    """Which input pixels one output pixel of SS2D can depend on. jacobian (H, W): |∂ out[pixel] /
    ∂ in| summed over channels (from autograd, `tutorial.inspect.ScanJacobian`); pixel (y, x);
    positions (4, H, W) each pixel's place in each scan order (`tutorial.ssm.ss2d.scan_positions`).
    Four panels: the pixels each scan direction has read by the time it reaches `pixel` (its causal
    past, before the 3x3 conv widens it by one pixel); a fifth: the Jacobian of the whole layer,
    log scale: nonzero everywhere."""
    jac = torch.as_tensor(jacobian, dtype=torch.float64)
    h, w = jac.shape
    pos = torch.as_tensor(positions)  # (4, H, W)
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
