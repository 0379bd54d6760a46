"""Notebook 06, RT-DETR: a dense detector's NMS before and after and against its thresholds,
speed against accuracy, the hybrid encoder's stages and cost, query selection, and score
against IoU (RT-DETR Fig. 6).

`report` is bench/latency.py's JSON (bench/results/latency.json), `rows` bench/encoder_cost.py's
("rows" of bench/results/encoder_cost.json). AP values there are COCOeval fractions; drawn in %.
Conventions: `tutorial/viz/common.py`.
"""
from __future__ import annotations

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .attention import attention_overlay
from .boxes import draw_boxes, show_image
from .common import add_colourbar, class_colour, class_name, denormalize, stagger_labels


LEVEL_COLOURS = ("tab:green", "tab:orange", "tab:purple", "tab:brown")  # levels at strides 8, 16, 32, 64


def plot_nms_step(image, candidates: dict, kept: dict, size=None, fig: Figure | None = None,
                  titles: tuple[str, str] | None = None) -> Figure:
    """Seed, "Glance at YOLOs": a dense detector's boxes on one image before and after NMS.

    candidates {"boxes" (n, 4) xyxy pixels, "scores" (n,), "labels" (n,)}: the (location, class)
    pairs above the confidence threshold (`DenseDetector.candidates`); kept: the same keys after
    NMS (`DenseDetector.postprocess`). Left: every candidate, thin, its opacity ∝ score (a box
    with score 1 is opaque); right: the kept boxes, the ones scoring ≥ 0.3 captioned. Panel 1's
    patches are the kept boxes in order."""
    fig = fig or Figure(figsize=(8, 4.2), layout="constrained")
    ax_before, ax_after = fig.subplots(1, 2)
    titles = titles or (f"{len(candidates['scores'])} candidates before NMS", f"{len(kept['scores'])} kept after NMS")
    show_image(ax_before, image, size, titles[0])
    for box, score, label in zip(torch.as_tensor(candidates["boxes"]).tolist(), candidates["scores"].tolist(),
                                 candidates["labels"].tolist()):
        x0, y0, x1, y1 = box
        ax_before.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=class_colour(label),
                                      linewidth=0.7, alpha=float(min(max(score, 0.03), 1.0))))
    show_image(ax_after, image, size, titles[1])
    captioned = kept["scores"] >= 0.3
    draw_boxes(ax_after, kept["boxes"], kept["labels"], kept["scores"], linewidth=1.2, text=False)
    for box, label, score in zip(kept["boxes"][captioned].tolist(), kept["labels"][captioned].tolist(),
                                 kept["scores"][captioned].tolist()):
        ax_after.text(box[0], box[1], f"{class_name(label)} {score:.2f}", fontsize=6, color="white", va="bottom",
                      clip_on=True, bbox=dict(facecolor=class_colour(label), edgecolor="none", pad=0.4, alpha=0.8))
    return fig


def plot_nms_sweep(ax: Axes, rows: list[dict], key: str, title: str | None = None) -> None:
    """The seed's NMS table as a plot: AP (left axis, %, bars) and NMS time (right axis, ms per
    image, line) against one threshold, `key` "iou_threshold" or "score_threshold" (log axis),
    from bench/latency.py's `report["nms"]["by_iou"]` or `["by_confidence"]` rows."""
    xs = [r[key] for r in rows]
    positions = np.arange(len(xs))
    bars = ax.bar(positions, [100 * r["AP"] for r in rows], color="tab:blue", alpha=0.6, label="AP (%)")
    for x, r in zip(positions, rows):  # at the foot of each bar, where the NMS line (above) cannot cross it
        ax.annotate(f"{100 * r['AP']:.1f}", (x, 0), xytext=(0, 3), textcoords="offset points", ha="center",
                    va="bottom", fontsize=7)
    ax.set_xticks(positions, [f"{x:g}" for x in xs])
    ax.set_xlabel("IoU threshold" if key == "iou_threshold" else "confidence threshold")
    ax.set_ylabel("AP (%)", color="tab:blue")
    twin = ax.twinx()
    twin.plot(positions, [r["nms_ms"] for r in rows], color="tab:red", marker="o", label="NMS time")
    twin.set_ylabel("NMS (ms per image)", color="tab:red")
    top = max(r["nms_ms"] for r in rows)
    twin.set_ylim(-0.25 * top, top * 1.2)  # the line keeps clear of the AP values at the foot of the bars
    twin.set_yticks([t for t in twin.get_yticks() if 0 <= t <= top * 1.2])  # no negative times on the axis
    twin.spines["right"].set_bounds(0, top * 1.2)  # the time axis visibly starts above the bars' foot
    ax.spines["right"].set_visible(False)  # (the bars' own right spine would hide that)
    ax.set_ylim(0, max(max(100 * r["AP"] for r in rows) * 1.25, 1))
    if title:
        ax.set_title(title, fontsize=9)


def plot_speed_accuracy(ax: Axes, report: dict, title: str | None = None) -> None:
    """The seed's speed/accuracy tables in one plot: AP (%) against end-to-end latency at batch 1
    (median, bars from the 25th to the 75th percentile) for RT-DETR with k decoder layers (Dec^k,
    joined, labelled above), the dense detector + NMS at each confidence threshold (IoU 0.7, joined,
    labelled below) and DINO. Labels of nearby points are staggered (`stagger_labels`)."""
    def point(row, colour, label, marker):
        lat = row["latency"]
        ax.errorbar(lat["median_ms"], 100 * row["AP"], xerr=[[lat["median_ms"] - lat["p25_ms"]],
                                                              [lat["p75_ms"] - lat["median_ms"]]],
                    color=colour, marker=marker, capsize=2, linestyle="", label=label)

    def xy(rows):
        return [(r["latency"]["median_ms"], 100 * r["AP"]) for r in rows]

    depth = report.get("rtdetr_depth") or []
    by_conf = (report.get("nms") or {}).get("by_confidence") or []
    for rows, colour, name, marker in ((depth, "tab:green", "RT-DETR-tiny, Dec^k", "o"),
                                       (by_conf, "tab:red", "dense + NMS (IoU 0.7), conf", "s")):
        if rows:
            ax.plot(*zip(*xy(rows)), color=colour, linewidth=0.8)
            for i, r in enumerate(rows):
                point(r, colour, name if i == 0 else None, marker)
    if report.get("dino"):
        point(report["dino"], "tab:purple", "DINO-tiny", "D")
    aps = [ap for _, ap in xy(depth + by_conf + ([report["dino"]] if report.get("dino") else []))]
    ax.set_ylim(0, max(max(aps, default=0) * 1.25, 1.0))
    ax.set_xlabel("end-to-end latency, batch 1 (ms)")
    ax.set_ylabel("AP (%)")
    ax.grid(alpha=0.3)
    if depth:
        stagger_labels(ax, xy(depth), [f"Dec{r['decoder_layers']}" for r in depth], "tab:green")
    if by_conf:
        stagger_labels(ax, xy(by_conf), [f"{r['score_threshold']:g}" for r in by_conf], "tab:red", below=True)
    if ax.lines:
        ax.legend(fontsize=7, loc="best")
    if title:
        ax.set_title(title, fontsize=9)


def plot_latency_report(report: dict, fig: Figure | None = None) -> Figure:
    """bench/latency.py's results in three panels: the NMS sweeps against the IoU threshold and the
    confidence threshold (`plot_nms_sweep`), and AP against latency (`plot_speed_accuracy`)."""
    fig = fig or Figure(figsize=(14, 3.8), layout="constrained")
    ax_iou, ax_conf, ax_speed = fig.subplots(1, 3)
    nms = report.get("nms")
    for ax, key, sweep, fixed in ((ax_iou, "iou_threshold", "by_iou", "confidence 0.001"),
                                  (ax_conf, "score_threshold", "by_confidence", "IoU 0.7")):
        if nms and nms.get(sweep):
            plot_nms_sweep(ax, nms[sweep], key, title=f"dense detector: AP and NMS time ({fixed})")
        else:
            ax.axis("off")
            ax.text(0.5, 0.5, "no dense-detector results", ha="center", va="center")
    plot_speed_accuracy(ax_speed, report, title="AP against end-to-end latency")
    c = report.get("conditions", {})
    fig.suptitle(f"batch 1, {c.get('image_size', ['?'])[0]}x{c.get('image_size', ['?', '?'])[1]} input, "
                 f"{c.get('threads', '?')} thread(s); latency median of {c.get('repeats', '?')} runs; AP on "
                 f"{c.get('val_images_used', '?')} val images", fontsize=9)
    return fig


def plot_encoder_stages(image, stages: dict[str, list], size=None, strides=None, fig: Figure | None = None) -> Figure:
    """RT-DETR's hybrid encoder piece by piece (Sec. 4.2, the seed's "Fusion block" figure): one
    row per stage in `stages` {name: [(C, H_l, W_l) map or None] per level}, one column per level;
    each panel the per-token L2 norm of the features over the image (how strongly each cell
    responds), None drawn blank (e.g. levels AIFI does not touch). Panel (r, l) is
    `fig.axes[r * L + l]`; its overlay's array is the norm map drawn. Norms differ between stages
    and levels, so each panel has its own scale and colourbar (added after all panels)."""
    names = list(stages)
    num_levels = max(len(v) for v in stages.values())
    fig = fig or Figure(figsize=(3.1 * num_levels, 2.6 * len(names)), layout="constrained")
    axes = fig.subplots(len(names), num_levels, squeeze=False)
    drawn = []
    for r, name in enumerate(names):
        for lvl, ax in enumerate(axes[r]):
            x = stages[name][lvl] if lvl < len(stages[name]) else None
            if x is None:
                ax.axis("off")
                ax.text(0.5, 0.5, "unchanged", ha="center", va="center", fontsize=8, color="0.5",
                        transform=ax.transAxes)
                continue
            norm = torch.as_tensor(x).detach().float().norm(dim=0)  # (H_l, W_l)
            stride = f", stride {strides[lvl]}" if strides is not None else ""
            drawn.append((ax, attention_overlay(ax, image, norm, size=size, alpha=0.7, cmap="viridis",
                                                title=f"{name}: S{lvl + 3} {tuple(norm.shape)}{stride}")))
    for ax, im in drawn:
        add_colourbar(im, ax, "token norm ‖x‖₂")
    return fig


def plot_encoder_cost(ax: Axes, rows: list[dict], config: str, title: str | None = None) -> None:
    """bench/encoder_cost.py's FLOPs at one config ("paper" or "tiny") as stacked bars per encoder:
    input projection, then AIFI + CCFM (hybrid) or attention layers + FFN + the analytic grid_sample
    FLOPs (deformable), each bar captioned with its total GFLOPs and median time."""
    rows = [r for r in rows if r["config"] == config]
    parts = [("input_proj", "input projection", "0.6"), ("aifi", "AIFI (S5 only)", "tab:blue"),
             ("ccfm", "CCFM (FPN + PAN convs)", "tab:cyan"), ("attention", "deformable attention (linear)", "tab:red"),
             ("sampling_flops_analytic", "grid_sample (analytic)", "tab:pink"), ("ffn", "FFN", "tab:orange")]
    names = [r["encoder"] for r in rows]
    bottom = np.zeros(len(rows))
    for key, label, colour in parts:
        values = np.array([r["gflops"].get(key, 0.0) for r in rows])
        if values.any():
            ax.bar(names, values, bottom=bottom, color=colour, label=label)
            bottom += values
    for i, r in enumerate(rows):
        ax.text(i, bottom[i], f"{r['gflops']['total']:.2f} GFLOPs\n{r['time']['total']['median_ms']:.1f} ms",
                ha="center", va="bottom", fontsize=7)
    ax.set_ylim(0, bottom.max() * 1.3 if len(rows) else 1)
    ax.set_ylabel("GFLOPs (batch 1)")
    ax.legend(fontsize=6, loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)


def draw_selected_tokens(ax: Axes, levels, cells, spatial_shapes, image_size,
                         linewidth: float = 1.2) -> list[Rectangle]:
    """Outline the feature cells of selected encoder tokens on an image of image_size (H, W):
    levels (k,), cells (k, 2) (y, x) on their level (`query_selection.token_locations`); a cell of
    level l covers (H / H_l) x (W / W_l) pixels; colour `LEVEL_COLOURS[l]`. Returns the patches."""
    height, width = (float(v) for v in image_size)
    patches = []
    for lvl, (y, x) in zip(torch.as_tensor(levels).tolist(), torch.as_tensor(cells).tolist()):
        h_l, w_l = spatial_shapes[lvl]
        ch, cw = height / h_l, width / w_l
        rect = Rectangle((x * cw, y * ch), cw, ch, fill=False, edgecolor=LEVEL_COLOURS[lvl % len(LEVEL_COLOURS)],
                         linewidth=linewidth)
        ax.add_patch(rect)
        patches.append(rect)
    return patches


def plot_query_selection(image, token_scores, levels, cells, spatial_shapes, size=None, strides=None,
                         fig: Figure | None = None) -> Figure:
    """Which encoder tokens become queries (RT-DETR Sec. 4.3, DINO Sec. 3.4): per level, the
    encoder's class score σ(max_K logit) of every token over the image, the selected tokens' cells
    outlined. token_scores (N,) over the flattened levels (N = Σ_l H_l·W_l); levels (k,) and cells
    (k, 2) (y, x) the selected tokens' (`query_selection.token_locations`, as `RTDETRRunner` returns
    them in "selected_levels" and "selected_cells"). Panel l's overlay (`fig.axes[l].images[1]`) holds level l's (H_l, W_l) score map;
    its titles count the selected tokens of the level."""
    scores = torch.as_tensor(token_scores).detach().float()  # (N,)
    levels, cells = torch.as_tensor(levels), torch.as_tensor(cells)  # (k,), (k, 2)
    img = denormalize(image)  # (H, W, 3)
    fig = fig or Figure(figsize=(3.2 * len(spatial_shapes), 3.3), layout="constrained")
    axes = fig.subplots(1, len(spatial_shapes), squeeze=False)[0]
    vmin, vmax = float(scores.min()), float(scores.max())  # one colour scale for all levels
    start = 0
    for lvl, ((h_l, w_l), ax) in enumerate(zip(spatial_shapes, axes)):
        level_scores = scores[start:start + h_l * w_l].reshape(h_l, w_l)  # (H_l, W_l)
        mine = levels == lvl
        stride = f", stride {strides[lvl]}" if strides is not None else ""
        im = attention_overlay(ax, img, level_scores, size=size, alpha=0.65, cmap="magma",
                               title=f"level {lvl}: {h_l}x{w_l}{stride}; {int(mine.sum())} selected")
        im.set_clim(vmin, vmax)
        draw_selected_tokens(ax, levels[mine], cells[mine], spatial_shapes, img.shape[:2])
        start += h_l * w_l
    add_colourbar(im, list(axes), "token score σ(max logit)")
    return fig


def plot_score_vs_iou(ax: Axes, ious, scores, label: str, colour: str = "tab:blue", title: str | None = None) -> None:
    """RT-DETR Fig. 6 (IoU-aware against vanilla query selection): one dot per selected encoder
    token, the IoU of its box with the ground-truth box it overlaps most (x) against its
    classification score σ(max logit) (y). IoU-aware training (the varifocal loss) should put the
    dots near the diagonal: a high score only for a well-fitting box. Call once per model."""
    ious = np.asarray(torch.as_tensor(ious, dtype=torch.float32))
    scores = np.asarray(torch.as_tensor(scores, dtype=torch.float32))
    ax.scatter(ious, scores, s=5, alpha=0.35, color=colour, linewidths=0, label=label)
    ax.plot([0, 1], [0, 1], color="0.5", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(1.0, float(scores.max()) if len(scores) else 1.0))
    ax.set_xlabel("IoU with the best-overlapping object")
    ax.set_ylabel("classification score")
    ax.legend(fontsize=7, loc="upper left", markerscale=3)
    if title:
        ax.set_title(title, fontsize=9)
