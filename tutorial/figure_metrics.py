"""The numbers behind the deck's DETR figures, measured on a trained model over a val set.

A picture of one image's attention can show anything; these turn each figure's claim into one
number over the whole val set (`bench/figures.py` writes them, the notebooks quote them):

- `encoder_instance_lift` (DETR Fig. 3, "the encoder separates instances"): for every feature
  cell inside an object, the last encoder layer's attention mass (mean of heads) that falls on
  the same object's cells, divided by the object's share of the valid cells. 1 = attention
  spread uniformly; above 1 = attention stays on the instance.
- `decoder_outline_lift` (DETR Fig. 6, "the decoder attends to object extremities"): for each
  prediction matched to an object (Hungarian, the training criterion's matching), the last
  decoder layer's cross-attention mass on the cells of a band along the object's outline,
  divided by the band's share of the box's cells, both counted inside the box only.
- `positional_priors` (DAB-DETR Fig. 2, "positional attention maps between the learned queries
  and the positional embeddings from a feature map"): for each query's first-layer positional
  map (mean of heads, on a 32 x 32 grid), the number of separate concentration peaks (local
  maxima holding at least half the map's maximum) and its spread (the attention-weighted RMS
  distance from the map's maximum, in image-side units). The deck: several centres for DETR, one
  compact centre for DAB-DETR.
- `anchor_alignment` (the same figure, read for Conditional DETR and DAB-DETR: "one centre, at the
  reference, as wide and tall as the box"): for each query, decoder layer and head (and the mean
  of heads), the distance from its positional map's maximum (32 x 32 grid) to its reference
  point, whether that maximum lies inside the anchor box (DAB-DETR), and the map's mass inside
  the box divided by the box's share of the image (the box's "lift": 1 = the map ignores the
  box). Heads specialise: a few follow the anchor, others look elsewhere, so the mean of heads
  can peak away from the anchor while one head sits on it.
- `slot_specialisation` (DETR Fig. 7): for each of the first 20 query slots, the share of its
  confident predictions that fall in its dominant mode (small / large horizontal / large
  vertical), against the share of the commonest mode among the val boxes (what a slot that
  did not specialise would get).

The objects' masks come from the generator (`tutorial.data.shapes.draw_image`) with the config the
val set's instances.json records, so only the shapes set is supported.
"""
from __future__ import annotations

import json

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from .matching.matcher import hungarian_match, matching_cost
from .data.statistics import box_modes
from .data.shapes import ShapesConfig, draw_image


def generator_config(dataset) -> ShapesConfig:
    """The `ShapesConfig` a shapes split was generated with (from its instances.json)."""
    with open(dataset.ann_file) as f:
        info = json.load(f).get("info", {}).get("generator")
    if info is None:
        raise ValueError(f"{dataset.ann_file}: field 'info.generator' is missing: not a shapes set, "
                         "so the objects' masks cannot be redrawn")
    info = {k: tuple(v) if isinstance(v, list) else v for k, v in info.items()}
    return ShapesConfig(**info)


def object_masks(cfg: ShapesConfig, split: str, index: int) -> list[tuple[np.ndarray, tuple]]:
    """[(visible mask (H, W) bool, box (x0, y0, x1, y1))] of image `index`, in annotation order."""
    _, placed = draw_image(cfg, split, index)
    return [(visible, box) for _, box, _, visible, _ in placed]


def cell_grid(mask: np.ndarray, feature_size: tuple[int, int], image_size: tuple[int, int]) -> np.ndarray:
    """(H, W) pixel mask -> (H_f, W_f) cell mask: a cell is in when its centre pixel is."""
    (hf, wf), (h, w) = feature_size, image_size
    stride_y, stride_x = h / hf, w / wf
    ys = np.minimum(((np.arange(hf) + 0.5) * stride_y).astype(int), mask.shape[0] - 1)
    xs = np.minimum(((np.arange(wf) + 0.5) * stride_x).astype(int), mask.shape[1] - 1)
    return mask[np.ix_(ys, xs)]  # (H_f, W_f)


def outline_band(mask: np.ndarray, box: tuple, width: float) -> np.ndarray:
    """Pixels of `box` within `width` px of the object's outline (either side of it)."""
    x0, y0, x1, y1 = box
    inside = np.pad(mask[y0:y1, x0:x1], 1)  # (h+2, w+2): outside the box counts as outside the object
    dist = np.where(inside, ndimage.distance_transform_edt(inside),
                    ndimage.distance_transform_edt(~inside))[1:-1, 1:-1]  # (h, w): px to the outline
    band = np.zeros_like(mask)
    band[y0:y1, x0:x1] = dist <= width
    return band


@torch.no_grad()
def run(model, dataset, index: int) -> dict:
    """One unpadded image through `model` with attention: the outputs and its (h, w)."""
    image, target = dataset[index]
    mask = torch.zeros(1, *image.shape[-2:], dtype=torch.bool)  # (1, H, W)
    out = model(image[None], mask, return_attention=True)
    return {"out": out, "target": target, "size": tuple(image.shape[-2:])}


def encoder_instance_lift(model, dataset, images: int = 200, min_cells: int = 2) -> dict:
    """See the module docstring. Returns {"median", "mean", "objects", "per_object"}."""
    cfg, lifts = generator_config(dataset), []
    for i in range(min(images, len(dataset))):
        r = run(model.eval(), dataset, i)
        attn = r["out"]["encoder_attention"][-1][0].mean(0)  # (N, N) mean of heads
        hf, wf = r["out"]["feature_size"]
        for visible, _ in object_masks(cfg, "val", i):
            cells = torch.from_numpy(cell_grid(visible, (hf, wf), r["size"]).reshape(-1))  # (N,)
            if cells.sum() < min_cells:
                continue
            mass = attn[cells][:, cells].sum(-1)  # (n_in,) mass each inside cell puts inside
            lifts.append((mass.mean() / (cells.float().mean())).item())
    return summary(lifts)


def decoder_outline_lift(model, dataset, images: int = 200, band_px: float | None = None) -> dict:
    """See the module docstring. The band is `band_px` wide (default: half a feature stride)."""
    cfg, lifts = generator_config(dataset), []
    for i in range(min(images, len(dataset))):
        r = run(model.eval(), dataset, i)
        out, target = r["out"], r["target"]
        if len(target["labels"]) == 0:
            continue
        hf, wf = out["feature_size"]
        width = band_px if band_px is not None else 0.5 * r["size"][0] / hf
        cost = matching_cost(out["pred_logits"][0], out["pred_boxes"][0], target["labels"], target["boxes"],
                             **model.cfg.matcher.__dict__)  # (Q, n)
        rows, cols = hungarian_match(cost)
        attn = out["decoder_attention"][-1][0].mean(0)  # (Q, N) mean of heads
        objects = object_masks(cfg, "val", i)
        for q, t in zip(rows.tolist(), cols.tolist()):
            visible, box = objects[t]
            in_box = np.zeros_like(visible)
            in_box[box[1]:box[3], box[0]:box[2]] = True
            box_cells = torch.from_numpy(cell_grid(in_box, (hf, wf), r["size"]).reshape(-1))
            band_cells = torch.from_numpy(cell_grid(outline_band(visible, box, width), (hf, wf),
                                                    r["size"]).reshape(-1)) & box_cells
            if band_cells.sum() == 0 or band_cells.sum() == box_cells.sum():
                continue  # no band, or a box whose every cell is band: no contrast to measure
            a = attn[q]
            share = a[band_cells].sum() / a[box_cells].sum().clamp(min=1e-12)
            lifts.append((share / (band_cells.sum() / box_cells.sum())).item())
    return summary(lifts)


@torch.no_grad()
def slot_specialisation(model, dataset, slots: int = 20, threshold: float = 0.5, batch_size: int = 16) -> dict:
    """See the module docstring. A prediction counts when its best real-class probability > `threshold`."""
    from .data.dataset import collate

    modes, keep = [], []
    model.eval()
    for s in range(0, len(dataset), batch_size):
        images, mask, targets = collate([dataset[i] for i in range(s, min(s + batch_size, len(dataset)))])
        out = model(images, mask)
        sizes = torch.stack([t["size"] for t in targets])  # (B, 2) unpadded (h, w)
        scale = torch.stack([sizes[:, 1] / images.shape[-1], sizes[:, 0] / images.shape[-2]], -1)  # (B, 2)
        boxes = out["pred_boxes"].clone()  # (B, Q, 4) relative to the padded image
        boxes[..., :2] /= scale[:, None]
        boxes[..., 2:] /= scale[:, None]  # relative to the image itself
        modes.append(torch.from_numpy(box_modes(boxes, sizes[:, None, :].expand(-1, boxes.shape[1], -1))))
        keep.append(out["pred_logits"].softmax(-1)[..., :-1].max(-1).values > threshold)  # (B, Q)
    modes, keep = torch.cat(modes), torch.cat(keep)  # (I, Q) each
    gt_modes = torch.cat([torch.from_numpy(box_modes(t["boxes"], t["size"].expand(len(t["boxes"]), 2)))
                          for t in (dataset[i][1] for i in range(len(dataset)))])
    baseline = torch.bincount(gt_modes, minlength=3).max().item() / max(len(gt_modes), 1)
    per_slot = []
    for q in range(min(slots, modes.shape[1])):
        m = modes[keep[:, q], q]
        counts = torch.bincount(m, minlength=3)
        per_slot.append({"slot": q, "predictions": int(len(m)), "dominant_mode": int(counts.argmax()),
                         "dominant_share": round(counts.max().item() / max(len(m), 1), 4)})
    shares = [p["dominant_share"] for p in per_slot if p["predictions"] > 0]
    return {"mean_dominant_share": round(float(np.mean(shares)), 4) if shares else None,
            "baseline_share": round(baseline, 4), "per_slot": per_slot}


def cell_centres(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) of every cell centre of an (h, w) grid over the unit square -> two (h, w) arrays."""
    h, w = grid
    return np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")  # (h, w) each


def map_peaks_and_spread(maps: Tensor, grid: tuple[int, int], floor: float = 0.5) -> tuple[list[int], list[float]]:
    """maps (Q, h·w) distributions on an (h, w) grid -> per query: the number of 3x3 local maxima at
    least `floor` x its maximum, and the RMS distance (in units of the grid's side) from its maximum."""
    h, w = grid
    ys, xs = cell_centres(grid)  # (h, w) each
    peaks, spreads = [], []
    for m in maps.reshape(-1, h, w).double().numpy():
        local = (m == ndimage.maximum_filter(m, size=3, mode="constant", cval=-1.0)) & (m >= floor * m.max())
        labels, count = ndimage.label(local)  # a plateau of equal maxima is one peak
        peaks.append(int(count))
        y0, x0 = np.unravel_index(m.argmax(), m.shape)
        d2 = (ys - ys[y0, x0]) ** 2 + (xs - xs[y0, x0]) ** 2
        spreads.append(float(np.sqrt((m * d2).sum() / m.sum())))
    return peaks, spreads


@torch.no_grad()
def positional_priors(model, dataset, index: int = 0, layer: int = 0, grid: tuple[int, int] = (32, 32)) -> dict:
    """See the module docstring: the first-layer positional maps of `model` on image `index`."""
    from .inspect import QueryRunner, select_head

    r = QueryRunner(model.eval(), dataset, grid=grid)(index)
    maps = select_head(r["positional_attention"][layer], "mean")  # (Q, h·w)
    peaks, spreads = map_peaks_and_spread(maps, grid)
    return {"queries": len(peaks), "mean_peaks": round(float(np.mean(peaks)), 3),
            "share_single_peak": round(float(np.mean(np.array(peaks) == 1)), 4),
            "median_spread": round(float(np.median(spreads)), 4), "peaks": peaks,
            "spreads": [round(v, 4) for v in spreads]}


def box_cells(box: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """box (cx, cy, w, h) normalised -> (h, w) bool: the grid cells whose centre lies in it."""
    ys, xs = cell_centres(grid)  # (h, w) each
    return (np.abs(xs - box[0]) <= box[2] / 2) & (np.abs(ys - box[1]) <= box[3] / 2)


def map_alignment(m: np.ndarray, reference: np.ndarray) -> dict:
    """One positional map m (h, w) against its reference (x, y) or box (x, y, w, h), normalised ->
    {"distance": maximum to reference centre (image sides), and for a box "peak_in_box", "lift"}."""
    ys, xs = cell_centres(m.shape)  # (h, w) each
    y0, x0 = np.unravel_index(m.argmax(), m.shape)
    r = {"distance": float(np.hypot(xs[y0, x0] - reference[0], ys[y0, x0] - reference[1]))}
    if len(reference) == 4:
        inside = box_cells(reference, m.shape)
        r["peak_in_box"] = bool(inside[y0, x0])
        r["lift"] = float(m[inside].sum() / m.sum() / inside.mean()) if inside.any() else float("nan")
    return r


@torch.no_grad()
def anchor_alignment(model, dataset, images: int = 50, grid: tuple[int, int] = (32, 32)) -> list[dict]:
    """See the module docstring. Per decoder layer: {"layer" (1-based), "mean_of_heads": stats,
    "heads": [stats] per head, "best_head"}, where stats = {"maps", "median_distance", and for anchor
    boxes "share_peak_in_box", "median_lift"} over the first `images` val images. The best head is
    the one whose maxima fall in the box most often (for points: nearest the reference)."""
    from .inspect import QueryRunner

    runner, rows = QueryRunner(model.eval(), dataset, grid=grid), {}
    for i in range(min(images, len(dataset))):
        r = runner(i)
        for layer, attention in enumerate(r["positional_attention"]):  # (M, Q, h·w)
            refs = r["references"][layer].double().numpy()  # (Q, 2 | 4)
            heads = torch.cat([attention, attention.mean(0, keepdim=True)])  # (M + 1, Q, h·w): the mean last
            for h, maps in enumerate(heads.reshape(len(heads), -1, *grid).double().numpy()):  # (Q, h, w)
                rows.setdefault((layer, h), []).extend(map_alignment(m, ref) for m, ref in zip(maps, refs))
    layers = sorted({layer for layer, _ in rows})
    num_heads = max(h for _, h in rows)  # the mean sits at index M
    return [layer_alignment(layer, [alignment_stats(rows[(layer, h)]) for h in range(num_heads + 1)])
            for layer in layers]


def alignment_stats(rows: list[dict]) -> dict:
    out = {"maps": len(rows), "median_distance": round(float(np.median([r["distance"] for r in rows])), 4)}
    if rows and "lift" in rows[0]:
        out["share_peak_in_box"] = round(float(np.mean([r["peak_in_box"] for r in rows])), 4)
        out["median_lift"] = round(float(np.nanmedian([r["lift"] for r in rows])), 4)
    return out


def following(stats: dict) -> float:
    """How well a head follows its references: the share of maxima in the box, or for points minus
    the median distance (higher is better)."""
    return stats["share_peak_in_box"] if "share_peak_in_box" in stats else -stats["median_distance"]


def layer_alignment(layer: int, stats: list[dict]) -> dict:
    heads, mean = stats[:-1], stats[-1]
    return {"layer": layer + 1, "mean_of_heads": mean, "heads": heads,
            "best_head": max(range(len(heads)), key=lambda h: following(heads[h]))}


def best_layer_and_head(layers: list[dict]) -> tuple[int, int]:
    """`anchor_alignment`'s result -> (0-based layer, head) of the head that follows best overall."""
    best = max(layers, key=lambda a: following(a["heads"][a["best_head"]]))
    return best["layer"] - 1, best["best_head"]


def summary(values: list[float]) -> dict:
    v = np.asarray(values, dtype=float)
    if len(v) == 0:
        return {"median": None, "mean": None, "count": 0}
    return {"median": round(float(np.median(v)), 4), "mean": round(float(v.mean()), 4), "count": int(len(v)),
            "share_above_1": round(float((v > 1).mean()), 4)}
