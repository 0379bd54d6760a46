"""Notebook 00: the data set, sample images with their boxes and the statistics of its
annotations (box area against COCO's small / large thresholds, aspect ratio, objects per image,
classes); the statistics are `tutorial.data.statistics.annotation_statistics`'s."""
from __future__ import annotations

import math

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import NullLocator

from ..data.statistics import COCO_LARGE, COCO_SMALL
from ..ops.box_ops import boxes_to_pixels
from .boxes import plot_detections
from .common import class_colour


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
