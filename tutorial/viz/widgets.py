"""Interactive views for the notebooks (ipywidgets): the data set, the Hungarian matching,
DETR's encoder and decoder attention, Deformable DETR's sampling points, the positional
attention maps of DETR, Conditional DETR and DAB-DETR's queries, DN-DETR's denoising queries, and
RT-DETR's query selection and decoder depth and the dense detector's NMS.

Each view is a small class that owns
- `figure`: one `matplotlib.figure.Figure`, cleared and redrawn by `render()`;
- `controls`: a dict of ipywidgets; changing any of them (also from code:
  `view.controls["index"].value = 3`) calls `render()`;
- `output`: an `ipywidgets.Output` in which `render()` re-displays the figure as a PNG (so it
  works whatever matplotlib backend the kernel uses);
and shows its controls and output when it is the last expression of a notebook cell
(`_ipython_display_`; `view.widget` is the same box). Right after construction `view.figure`
is the default state, drawn once: the static fallback a notebook shows before the widget.

Model outputs come from `model(images, mask, return_attention=True)` (Deformable DETR and the
anchor models: `return_intermediates=True`), never from forward hooks; `ModelRunner`
(`DeformableRunner`, `QueryRunner`, `DenoisingRunner`) runs
the model once per image (batch of one, so no padding) and caches the result, so moving a slider
only redraws.

Glossary: Q queries, n ground-truth boxes, M heads, H_f, W_f feature map, N = H_f·W_f (Σ_l H_l·W_l
over L levels), P sampling points per level, L_dec decoder layers.
"""
from __future__ import annotations

import io
from collections import OrderedDict
from contextlib import contextmanager

import ipywidgets as widgets
import torch
from IPython.display import Image, clear_output, display
from matplotlib.figure import Figure
from torch import Tensor, nn

from . import plots
from ..data.class_names import class_names
from ..models.conditional_detr import ConditionalDETR, positional_attention
from ..models.dense_detector import time_nms
from ..matching.matcher import MatcherWeights, hungarian_match, matching_cost


# --- computing what the views draw ------------------------------------------------------------


class ModelRunner:
    """Runs `model` on image `index` of `dataset` (alone, so unpadded) and caches the result.

    `runner(index)` returns {"image" (3, H, W), "target" (the data set's), "size" (h, w),
    "pred_logits" (Q, K+1), "pred_boxes" (Q, 4) cxcywh, "scores", "labels" (Q,), "boxes" (Q, 4)
    xyxy pixels (`model.postprocess`), "encoder_attention" [(M, N, N)] and "decoder_attention"
    [(M, Q, N)] per layer, "feature_size" (H_f, W_f), "feature_mask" (H_f, W_f)}.
    Share one runner between views to compute each image once.
    """

    def __init__(self, model: nn.Module, dataset, cache_size: int = 64):
        self.model, self.dataset, self.cache_size = model.eval(), dataset, cache_size
        self._cache: OrderedDict[int, dict] = OrderedDict()

    @torch.no_grad()
    def __call__(self, index: int) -> dict:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        image, target = self.dataset[index]
        mask = torch.zeros(1, *image.shape[-2:], dtype=torch.bool)  # (1, H, W): one image, no padding
        result = {"image": image, "target": target, "size": tuple(target["size"].tolist()),
                  **self.compute(image, mask, target)}
        self._cache[index] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        """What the views draw for one image (3, H, W) with mask (1, H, W); subclasses change this."""
        out = self.model(image[None], mask, return_attention=True)
        det = self.model.postprocess(out, target["size"][None])[0]
        return {"pred_logits": out["pred_logits"][0], "pred_boxes": out["pred_boxes"][0],  # (Q, K+1), (Q, 4)
                "scores": det["scores"], "labels": det["labels"], "boxes": det["boxes"],  # (Q,), (Q,), (Q, 4)
                "encoder_attention": [a[0] for a in out["encoder_attention"]],  # per layer (M, N, N)
                "decoder_attention": [a[0] for a in out["decoder_attention"]],  # per layer (M, Q, N)
                "feature_size": tuple(out["feature_size"]), "feature_mask": out["feature_mask"][0]}  # (H_f, W_f)


class DeformableRunner(ModelRunner):
    """`ModelRunner` for Deformable DETR: `runner(index)` returns {"image", "target", "size",
    "pred_logits" (Q, K), "pred_boxes" (Q, 4) cxcywh, "scores", "labels" (Q,) each query's best
    sigmoid class, "boxes" (Q, 4) xyxy pixels, "layer_boxes" (L_dec, Q, 4) xyxy pixels,
    "reference_points" [(Q, 2|4)] per decoder layer, "spatial_shapes" [(H_l, W_l)], "strides" [s_l],
    "level_masks" [(H_l, W_l)], "encoder_reference_points" (N, L, 2), "encoder_sampling" and
    "decoder_sampling": per layer (locations (N|Q, M, L, P, 2), weights (N|Q, M, L, P))}, all from
    `model(images, mask, return_intermediates=True)` on the image alone (so valid ratios are 1).
    """

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        out = self.model(image[None], mask, return_intermediates=True)
        scores, labels = out["pred_logits"][0].sigmoid().max(-1)  # (Q,), (Q,): one score per query
        size = target["size"]
        return {"pred_logits": out["pred_logits"][0], "pred_boxes": out["pred_boxes"][0],  # (Q, K), (Q, 4)
                "scores": scores, "labels": labels, "boxes": plots.boxes_to_pixels(out["pred_boxes"][0], size),
                "layer_boxes": torch.stack([plots.boxes_to_pixels(b[0], size)
                                            for b in out["layer_boxes"]]),  # (L_dec, Q, 4)
                "reference_points": [r[0] for r in out["reference_points"]],  # per layer (Q, 2|4)
                "spatial_shapes": [tuple(s) for s in out["spatial_shapes"]],
                "strides": level_strides(self.model, len(out["spatial_shapes"])),
                "level_masks": [m[0] for m in out["level_masks"]],  # per level (H_l, W_l)
                "encoder_reference_points": out["encoder_reference_points"][0],  # (N, L, 2)
                # per layer: locations (N, M, L, P, 2) and weights (N, M, L, P); the decoder's with Q for N
                "encoder_sampling": [(loc[0], w[0]) for loc, w in out["encoder_sampling"]],
                "decoder_sampling": [(loc[0], w[0]) for loc, w in out["decoder_sampling"]]}


class QueryRunner(ModelRunner):
    """`ModelRunner` for the positional attention maps of DETR, Conditional DETR and DAB-DETR (also
    DN-DETR, which is DAB-DETR at inference). `runner(index)` returns {"image", "target", "size",
    "pred_boxes" (Q, 4) cxcywh, "scores", "labels" (Q,) each query's best class (softmax without ∅
    for DETR, sigmoid for the others), "boxes" (Q, 4) xyxy pixels, "decoder_attention" [(M, Q, N)]
    per decoder layer, "feature_size" (H_f, W_f), "feature_mask" (H_f, W_f), "positional_attention"
    [(M, Q, h·w)] per decoder layer on a grid of "grid_size" (h, w), "references" [(Q, 2|4)] per
    layer (Conditional DETR's reference point s, DAB-DETR's anchor A_q, normalised; None for DETR)}.

    The positional map of a query is the positional part of its cross-attention alone (seed,
    "DAB-DETR": "positional attention maps between the learned queries and the positional
    embeddings from a feature map", DAB-DETR Fig. 2): DETR: `DETR.positional_attention`;
    the others: `positional_attention(spatial query, spatial keys)` (`tutorial/models/conditional_detr.py`).
    `grid` None evaluates it on the image's own feature grid (then it is exactly what the model
    computes inside its cross-attention), or on an (h, w) grid over the image: the keys are sine
    encodings of normalised positions, so a finer grid draws the same maps more smoothly.
    """

    def __init__(self, model: nn.Module, dataset, grid: tuple[int, int] | None = None, cache_size: int = 64):
        super().__init__(model, dataset, cache_size)
        self.grid = grid

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        model = self.model
        conditional = isinstance(model, ConditionalDETR)
        if conditional:
            out = model(image[None], mask, return_intermediates=True)
            scores, labels = out["pred_logits"][0].sigmoid().max(-1)  # (Q,), (Q,)
        else:
            out = model(image[None], mask, return_attention=True)
            scores, labels = out["pred_logits"][0].softmax(-1)[:, :-1].max(-1)  # (Q,), (Q,): without ∅
        fmask = out["feature_mask"]  # (1, H_f, W_f)
        grid_mask = fmask if self.grid is None else torch.zeros(1, *self.grid, dtype=torch.bool)  # (1, h, w)
        num_layers = len(out["decoder_attention"])
        if conditional:
            heads = model.cfg.transformer.num_heads
            positional = [positional_attention(out["spatial_queries"][l], model.spatial_keys(grid_mask, l), heads,
                                               grid_mask.flatten(1))[0] for l in range(num_layers)]  # (M, Q, h·w)
            references = [r[0] for r in out["reference_points"]]  # per layer (Q, 2|4)
        else:
            positional = [model.positional_attention(grid_mask, l)[0] for l in range(num_layers)]  # (M, Q, h·w)
            references = None
        return {"pred_boxes": out["pred_boxes"][0], "scores": scores, "labels": labels,  # (Q, 4), (Q,), (Q,)
                "boxes": plots.boxes_to_pixels(out["pred_boxes"][0], target["size"]),  # (Q, 4) xyxy pixels
                "decoder_attention": [a[0] for a in out["decoder_attention"]],  # per layer (M, Q, N)
                "feature_size": tuple(out["feature_size"]), "feature_mask": fmask[0],  # (H_f, W_f)
                "positional_attention": positional, "grid_size": tuple(grid_mask.shape[-2:]),
                "references": references}


@contextmanager
def denoising_mode(model: nn.Module):
    """DN-DETR builds its denoising queries in training mode only: inside this block the model is in
    training mode except for its batch-norm layers, which keep using (and do not update) their
    running statistics, so looking at the queries changes nothing. Run it under `torch.no_grad()`."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class DenoisingRunner(ModelRunner):
    """`ModelRunner` for DN-DETR's denoising queries (notebook 05): `runner(index)` runs the model
    in `denoising_mode` on image `index` with its ground truth, the noise drawn from a generator
    seeded with `seed + index` (so an image always gets the same noise), and returns {"image",
    "target", "size", "dn_anchors" (P·M, 4) the noised boxes, "dn_target_boxes" (P·M, 4),
    "dn_target_index" (P·M,) (-1 on padding), "dn_labels" (P·M,) noised labels, "flipped" (P·M,)
    True where the noised label differs from the object's, "groups" (P·M,) each query's group,
    "dn_layer_boxes" (L_dec, P·M, 4) what the denoising queries predict after each decoder layer
    (all cxcywh normalised), "dn_attention_mask" (T, T), "dn_groups" (P, M)}. An image without
    objects gets no denoising queries (M = 0)."""

    def __init__(self, model: nn.Module, dataset, seed: int = 0, cache_size: int = 64):
        super().__init__(model, dataset, cache_size)
        self.seed = seed

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        with torch.random.fork_rng(), denoising_mode(self.model):
            torch.manual_seed(self.seed + int(target["image_id"]))
            out = self.model(image[None], mask, targets=[target], return_intermediates=True)
        if "dn_anchors" not in out:  # no object: no denoising queries
            p, empty = self.model.cfg.dn_number, torch.zeros(0, 4)
            return {"dn_anchors": empty, "dn_target_boxes": empty, "dn_target_index": torch.zeros(0, dtype=torch.int64),
                    "dn_labels": torch.zeros(0, dtype=torch.int64), "flipped": torch.zeros(0, dtype=torch.bool),
                    "groups": torch.zeros(0, dtype=torch.int64), "dn_layer_boxes": torch.zeros(0, 0, 4),
                    "dn_attention_mask": torch.zeros(self.model.cfg.num_queries, self.model.cfg.num_queries,
                                                     dtype=torch.bool), "dn_groups": (p, 0)}
        index = out["dn_target_index"][0]  # (P·M,)
        true_labels = target["labels"][index.clamp_min(0)]  # (P·M,): the object's class (any on padding)
        p, m = out["dn_groups"]
        return {"dn_anchors": out["dn_anchors"][0], "dn_target_boxes": out["dn_target_boxes"][0],  # (P·M, 4) each
                "dn_target_index": index, "dn_labels": out["dn_labels"][0],  # (P·M,) each
                "flipped": (out["dn_labels"][0] != true_labels) & (index >= 0),  # (P·M,)
                "groups": torch.arange(p).repeat_interleave(m),  # (P·M,)
                "dn_layer_boxes": out["dn_outputs"]["pred_boxes"][:, 0],  # (L_dec, P·M, 4)
                "dn_attention_mask": out["dn_attention_mask"], "dn_groups": (p, m)}


def level_strides(model: nn.Module, num_levels: int) -> list[int]:
    """Deformable DETR's level strides: the backbone stages', then x2 per extra level (8, 16, 32, 64)."""
    strides = list(model.backbone.strides)
    while len(strides) < num_levels:
        strides.append(strides[-1] * 2)
    return strides[:num_levels]


def select_head(attention: Tensor, head: int | str) -> Tensor:
    """attention (M, ..., N) -> (..., N): head `head`, or the mean over heads for "mean"."""
    return attention.mean(0) if head == "mean" else attention[int(head)]


def matching_cost_terms(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                        weights: MatcherWeights = MatcherWeights()) -> dict[str, Tensor]:
    """The seed's L_match for one image and its three terms, each (Q, n), all from
    `tutorial.matching.matcher.matching_cost` with one weight at a time: "class" -p̂(c), "L1"
    ||b - b̂||₁, "GIoU" -GIoU (unweighted), and "total" = λ_class·class + λ_L1·L1 + λ_giou·GIoU."""
    args = (pred_logits, pred_boxes, tgt_labels, tgt_boxes)
    return {"total": matching_cost(*args, weights.cost_class, weights.cost_bbox, weights.cost_giou),
            "class": matching_cost(*args, 1.0, 0.0, 0.0),
            "L1": matching_cost(*args, 0.0, 1.0, 0.0),
            "GIoU": matching_cost(*args, 0.0, 0.0, 1.0)}


def confident_queries(scores: Tensor, threshold: float, fallback: int = 5) -> tuple[list[int], bool]:
    """Queries with score >= threshold, best first; if there are none, the `fallback` best ones.
    Returns (queries, True if they passed the threshold)."""
    order = scores.argsort(descending=True).tolist()
    passed = [q for q in order if scores[q] >= threshold]
    return (passed, True) if passed else (order[:fallback], False)


# --- the views --------------------------------------------------------------------------------


class View:
    """Base class: a Figure, a dict of controls, an Output; any control change -> `render()`."""

    def __init__(self, figsize: tuple[float, float]):
        self.figure = Figure(figsize=figsize, layout="constrained")
        self.controls: dict[str, widgets.ValueWidget] = {}
        self.output = widgets.Output()
        self._held = False
        self._picker: widgets.HBox | None = None

    def class_name(self, label: int) -> str:
        """The name of category id `label` for this view's model (shapes, or COCO for the 91- and
        80-class presets with real weights); a view of several models uses the one chosen."""
        runner = self.runners[self.controls["model"].value] if hasattr(self, "runners") else self.runner
        return plots.class_name(label, class_names(runner.model.cfg.num_classes))

    def _watch(self) -> None:
        for control in self.controls.values():
            control.observe(self._changed, names="value")

    def _changed(self, change) -> None:
        if self._held:
            return
        with self.hold():
            self.before_render(change)
        self.render()

    @contextmanager
    def hold(self):
        """Change several controls without a render per change."""
        held, self._held = self._held, True
        try:
            yield
        finally:
            self._held = held

    def before_render(self, change) -> None:
        """Hook: adjust dependent controls (e.g. slider ranges for a new image) before drawing."""

    def draw(self) -> None:
        raise NotImplementedError

    def render(self) -> None:
        """Redraw the figure for the controls' current values and show it in `output`."""
        self.figure.clear()
        self.draw()
        buffer = io.BytesIO()
        self.figure.savefig(buffer, format="png")
        with self.output:
            clear_output(wait=True)
            display(Image(buffer.getvalue()))

    def image_picker(self) -> widgets.HBox:
        """The image control as shown: `controls["index"]` with its buttons and text box (`image_picker`),
        built once per view."""
        if self._picker is None:
            self._picker = image_picker(self.controls["index"])
        return self._picker

    @property
    def widget(self) -> widgets.VBox:
        """The image control on a row of its own (it is wide), then the other controls, then the figure."""
        others = [c for name, c in self.controls.items() if name != "index"]
        rows = [self.image_picker()] if "index" in self.controls else []
        return widgets.VBox(rows + ([widgets.HBox(others)] if others else []) + [self.output])

    def _ipython_display_(self) -> None:
        display(self.widget)


IMAGE_SLIDER_WIDTH = "420px"  # ipywidgets' default track is ~150 px: on 500 images one pixel of drag skipped ~3


def image_slider(n: int, index: int) -> widgets.IntSlider:
    """Every view's image index `controls["index"]`: a slider over the n images, wide enough to drag
    through them (`IMAGE_SLIDER_WIDTH`); the view shows it with buttons and a text box (`image_picker`)."""
    return widgets.IntSlider(value=index, min=0, max=n - 1, description="image", continuous_update=False,
                             layout=widgets.Layout(width=IMAGE_SLIDER_WIDTH))


def image_picker(slider: widgets.IntSlider) -> widgets.HBox:
    """The image slider with ◀ / ▶ buttons (one image back / on, stopping at the ends) and a text
    box to type an index, all linked to `slider`, whose value the view reads -> HBox([slider,
    previous, next, box])."""
    box = widgets.BoundedIntText(value=slider.value, min=slider.min, max=slider.max,
                                 layout=widgets.Layout(width="70px"))
    widgets.link((slider, "max"), (box, "max"))
    widgets.link((slider, "value"), (box, "value"))
    previous = widgets.Button(description="◀", tooltip="previous image", layout=widgets.Layout(width="34px"))
    following = widgets.Button(description="▶", tooltip="next image", layout=widgets.Layout(width="34px"))
    previous.on_click(lambda _: setattr(slider, "value", max(slider.value - 1, slider.min)))
    following.on_click(lambda _: setattr(slider, "value", min(slider.value + 1, slider.max)))
    return widgets.HBox([slider, previous, following, box])


def layer_and_head_controls(num_layers: int, num_heads: int, layer: int, head) -> dict:
    return {"layer": widgets.Dropdown(options=[(f"layer {i + 1}", i) for i in range(num_layers)],
                                      value=layer % num_layers, description="layer"),
            "head": widgets.Dropdown(options=[("mean of heads", "mean")] + [(f"head {m}", m) for m in range(num_heads)],
                                     value=head, description="head")}


class ImageBrowser(View):
    """(Notebook 00) Browse a `DetectionDataset`: image `index` with its ground-truth boxes."""

    def __init__(self, dataset, index: int = 0):
        super().__init__(figsize=(4.5, 4.5))
        self.dataset = dataset
        self.controls = {"index": image_slider(len(dataset), index)}
        self._watch()
        self.render()

    def draw(self) -> None:
        self.image, self.target = self.dataset[self.controls["index"].value]
        boxes = plots.boxes_to_pixels(self.target["boxes"], self.target["size"])  # (n, 4) xyxy pixels
        h, w = self.target["size"].tolist()
        plots.plot_detections(self.figure.add_subplot(), self.image, boxes, self.target["labels"],
                              title=f"image id {int(self.target['image_id'])}: {w}x{h} px, {len(boxes)} objects")


class MatchingView(View):
    """(Notebook 01) One image's matching: the (Q, n) cost L_match (or one of its terms) with the
    Hungarian assignment outlined, and the matched pairs drawn on the image. Seed: "Set Prediction".
    The model runs on the image alone (`ModelRunner`), so the costs can differ a little from those of
    the same image inside a padded batch. After `render()`, `costs`, `assignment` and `total` (the
    assignment's summed L_match) hold what is drawn."""

    TERMS = ("total", "class", "L1", "GIoU")

    def __init__(self, model: nn.Module, dataset, index: int = 0, term: str = "total",
                 runner: ModelRunner | None = None):
        super().__init__(figsize=(11, 4.6))
        self.runner = runner or ModelRunner(model, dataset)
        self.controls = {"index": image_slider(len(self.runner.dataset), index),
                         "term": widgets.Dropdown(options=self.TERMS, value=term, description="cost")}
        self._watch()
        self.render()

    def draw(self) -> None:
        r = self.runner(self.controls["index"].value)
        t = r["target"]
        self.costs = matching_cost_terms(r["pred_logits"], r["pred_boxes"], t["labels"], t["boxes"],
                                         self.runner.model.cfg.matcher)  # each (Q, n)
        ax_cost, ax_image = self.figure.subplots(1, 2, width_ratios=[1, 1.2])
        if len(t["labels"]) == 0:
            self.assignment = (torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
            ax_cost.axis("off")
            ax_cost.text(0.5, 0.5, "no objects in this image:\nevery prediction is matched to ∅",
                         ha="center", va="center")
        else:
            self.assignment = hungarian_match(self.costs["total"])  # (n,), (n,)
            term = self.controls["term"].value
            names = [f"{j}: {self.class_name(c)}" for j, c in enumerate(t["labels"].tolist())]
            plots.plot_cost_matrix(ax_cost, self.costs[term], *self.assignment,
                                   title=f"{term} cost, assignment from the total (white)", col_labels=names)
        self.total = self.costs["total"][self.assignment].sum().item()
        plots.draw_matching(ax_image, r["image"], r["boxes"], plots.boxes_to_pixels(t["boxes"], r["size"]),
                            *self.assignment, t["labels"],
                            title=f"matched pairs (solid: target, dashed: prediction)\n"
                                  f"total L_match {self.total:.2f} (the image run alone, unpadded)")


class EncoderAttentionView(View):
    """(Notebook 02) Encoder self-attention of one reference point (a feature cell (y, x)) over
    the image, per layer and head. Seed: "Encoder self-attention for a set of reference points"."""

    def __init__(self, model: nn.Module, dataset, index: int = 0, layer: int = -1, head="mean",
                 point: tuple[int, int] | None = None, runner: ModelRunner | None = None):
        super().__init__(figsize=(9, 4.4))
        self.runner = runner or ModelRunner(model, dataset)
        tcfg = self.runner.model.cfg.transformer
        self.controls = {"index": image_slider(len(self.runner.dataset), index),
                         **layer_and_head_controls(tcfg.num_encoder_layers, tcfg.num_heads, layer, head),
                         "y": widgets.IntSlider(value=0, min=0, max=0, description="point y"),
                         "x": widgets.IntSlider(value=0, min=0, max=0, description="point x")}
        hf, wf = self._fit_grid()
        y, x = point if point is not None else (hf // 2, wf // 2)
        self.controls["y"].value, self.controls["x"].value = y, x
        self._watch()
        self.render()

    def _fit_grid(self) -> tuple[int, int]:
        """Limit the point sliders to the current image's feature grid."""
        hf, wf = self.runner(self.controls["index"].value)["feature_size"]
        self.controls["y"].max, self.controls["x"].max = hf - 1, wf - 1
        return hf, wf

    def before_render(self, change) -> None:
        if change["owner"] is self.controls["index"]:
            self._fit_grid()

    def draw(self) -> None:
        c = {k: w.value for k, w in self.controls.items()}
        r = self.runner(c["index"])
        hf, wf = r["feature_size"]
        attention = select_head(r["encoder_attention"][c["layer"]], c["head"])  # (N, N)
        self.attention_map = attention[c["y"] * wf + c["x"]].reshape(hf, wf)  # (H_f, W_f): where (y, x) looks
        px, py = plots.cell_centre(c["y"], c["x"], (hf, wf), r["image"].shape[-2:])
        ax_image, ax_attention = self.figure.subplots(1, 2)
        t = r["target"]
        plots.plot_detections(ax_image, r["image"], plots.boxes_to_pixels(t["boxes"], r["size"]), t["labels"],
                              title=f"reference point ({c['y']}, {c['x']}) of a {hf}x{wf} grid", text=False)
        head = "mean of heads" if c["head"] == "mean" else f"head {c['head']}"
        self.overlay = plots.attention_overlay(
            ax_attention, r["image"], self.attention_map, r["feature_mask"], vmin=0.0,
            title=f"encoder layer {c['layer'] + 1}, {head}",
            colourbar=plots.attention_label(plots.valid_cells(self.attention_map, r["feature_mask"])))
        for ax in (ax_image, ax_attention):
            ax.plot(px, py, marker="o", markersize=8, color="cyan", markeredgecolor="black")


class DecoderAttentionView(View):
    """(Notebook 02) Decoder cross-attention of one predicted object's query over the image, per
    layer and head; the query list holds the confident predictions (score >= threshold), or the
    `fallback` best ones when none is confident. Seed: "Decoder typically attends to object extremities"."""

    def __init__(self, model: nn.Module, dataset, index: int = 0, layer: int = -1, head="mean",
                 threshold: float = 0.5, fallback: int = 5, runner: ModelRunner | None = None):
        super().__init__(figsize=(9, 4.4))
        self.runner = runner or ModelRunner(model, dataset)
        self.threshold, self.fallback = threshold, fallback
        tcfg = self.runner.model.cfg.transformer
        self.controls = {"index": image_slider(len(self.runner.dataset), index),
                         **layer_and_head_controls(tcfg.num_decoder_layers, tcfg.num_heads, layer, head),
                         "query": widgets.Dropdown(description="query")}
        self._fit_queries()
        self._watch()
        self.render()

    def _fit_queries(self) -> None:
        """List the current image's confident queries (best first) in the query dropdown."""
        r = self.runner(self.controls["index"].value)
        self.queries, self.confident = confident_queries(r["scores"], self.threshold, self.fallback)
        self.controls["query"].options = [
            (f"q{q}: {self.class_name(r['labels'][q])} {r['scores'][q]:.2f}", q) for q in self.queries]
        self.controls["query"].value = self.queries[0]

    def before_render(self, change) -> None:
        if change["owner"] is self.controls["index"]:
            self._fit_queries()

    def draw(self) -> None:
        c = {k: w.value for k, w in self.controls.items()}
        r = self.runner(c["index"])
        hf, wf = r["feature_size"]
        q = c["query"]
        attention = select_head(r["decoder_attention"][c["layer"]], c["head"])  # (Q, N)
        self.attention_map = attention[q].reshape(hf, wf)  # (H_f, W_f): where query q looks
        ax_image, ax_attention = self.figure.subplots(1, 2)
        which = (f"{len(self.queries)} predictions with score ≥ {self.threshold}" if self.confident else
                 f"none ≥ {self.threshold}: the {len(self.queries)} best")
        # uncaptioned (many would overlap; the query list names them all), the chosen one captioned in cyan
        plots.plot_detections(ax_image, r["image"], r["boxes"][self.queries], r["labels"][self.queries],
                              title=f"{which}\n(class colours; query {q} cyan)", linewidth=1, text=False)
        plots.draw_boxes(ax_image, r["boxes"][q:q + 1], r["labels"][q:q + 1], r["scores"][q:q + 1],
                         colours=["cyan"], linewidth=2.5)
        head = "mean of heads" if c["head"] == "mean" else f"head {c['head']}"
        self.overlay = plots.attention_overlay(
            ax_attention, r["image"], self.attention_map, r["feature_mask"], vmin=0.0,
            title=f"query {q} ({self.class_name(r['labels'][q])} {r['scores'][q]:.2f}):\n"
                  f"layer {c['layer'] + 1}, {head}",
            colourbar=plots.attention_label(plots.valid_cells(self.attention_map, r["feature_mask"])))
        plots.draw_boxes(ax_attention, r["boxes"][q:q + 1], colours=["cyan"], text=False)


class SamplingPointsView(View):
    """(Notebook 03) Where one query of Deformable DETR's multi-scale deformable attention samples,
    on every level of an image (Deformable DETR Eq. 3 and Fig. 2): each point's size (and, for one
    head, colour) is its attention weight A_mlqk, each level drawn at its own resolution.

    kind "encoder": the query is a pixel (y, x) of level `level`, its reference point that pixel's
    centre (self-attention, Sec. 4.1; the levels are App. A.2's). kind "decoder": the query is an object query, listed best
    score first; its reference is a point (first layer) or the previous layer's box (iterative
    refinement, App. A.4), drawn dashed. After `render()`, `locations` (M, L, P, 2), `weights`
    (M, L, P) and `reference` (L, 2) hold what is drawn.
    """

    KINDS = (("encoder pixel", "encoder"), ("decoder query", "decoder"))

    def __init__(self, model: nn.Module, dataset, index: int = 0, kind: str = "decoder", layer: int = -1,
                 head="all", query: int | None = None, level: int = 0, point: tuple[int, int] | None = None,
                 runner: DeformableRunner | None = None):
        super().__init__(figsize=(12, 3.7))
        self.runner = runner or DeformableRunner(model, dataset)
        tc = self.runner.model.cfg.transformer
        self.num_layers = {"encoder": tc.num_encoder_layers, "decoder": tc.num_decoder_layers}
        self.controls = {"index": image_slider(len(self.runner.dataset), index),
                         "kind": widgets.ToggleButtons(options=self.KINDS, value=kind),
                         "layer": widgets.Dropdown(description="layer"),
                         "head": widgets.Dropdown(options=[("all heads", "all")]
                                                  + [(f"head {m}", m) for m in range(tc.num_heads)],
                                                  value=head, description="head"),
                         "query": widgets.Dropdown(description="query"),
                         "level": widgets.Dropdown(options=[(f"level {lvl}", lvl) for lvl in range(tc.num_levels)],
                                                   value=level, description="pixel on"),
                         "y": widgets.IntSlider(value=0, min=0, max=0, description="pixel y", continuous_update=False),
                         "x": widgets.IntSlider(value=0, min=0, max=0, description="pixel x", continuous_update=False)}
        self._fit_layers(layer % self.num_layers[kind])
        self._fit_queries(query)
        h, w = self._fit_grid()
        self.controls["y"].value, self.controls["x"].value = point if point is not None else (h // 2, w // 2)
        self._enable()
        self._watch()
        self.render()

    @property
    def widget(self) -> widgets.VBox:
        c = self.controls
        return widgets.VBox([self.image_picker(), widgets.HBox([c["kind"], c["layer"], c["head"]]),
                             widgets.HBox([c["query"], c["level"], c["y"], c["x"]]), self.output])

    def _fit_layers(self, layer: int) -> None:
        """Offer the current kind's layers, keeping `layer` when it exists."""
        n = self.num_layers[self.controls["kind"].value]
        self.controls["layer"].options = [(f"layer {i + 1}", i) for i in range(n)]
        self.controls["layer"].value = min(layer, n - 1)

    def _fit_queries(self, query: int | None = None) -> None:
        """List the current image's object queries, best score first."""
        r = self.runner(self.controls["index"].value)
        order = r["scores"].argsort(descending=True).tolist()
        self.controls["query"].options = [
            (f"q{q}: {self.class_name(r['labels'][q])} {r['scores'][q]:.2f}", q) for q in order]
        self.controls["query"].value = order[0] if query is None else query

    def _fit_grid(self) -> tuple[int, int]:
        """Limit the pixel sliders to the chosen level of the current image."""
        h, w = self.runner(self.controls["index"].value)["spatial_shapes"][self.controls["level"].value]
        self.controls["y"].max, self.controls["x"].max = h - 1, w - 1
        return h, w

    def _enable(self) -> None:
        encoder = self.controls["kind"].value == "encoder"
        self.controls["query"].disabled = encoder
        for name in ("level", "y", "x"):
            self.controls[name].disabled = not encoder

    def before_render(self, change) -> None:
        owner = change["owner"]
        if owner is self.controls["index"]:
            self._fit_queries()
            self._fit_grid()
        elif owner is self.controls["level"]:
            self._fit_grid()
        elif owner is self.controls["kind"]:
            self._fit_layers(self.controls["layer"].value)
            self._enable()

    def draw(self) -> None:
        c = {k: w.value for k, w in self.controls.items()}
        r = self.runner(c["index"])
        shapes, num_levels = r["spatial_shapes"], len(r["spatial_shapes"])
        box = None
        if c["kind"] == "encoder":
            start = sum(h * w for h, w in shapes[:c["level"]])
            token = start + c["y"] * shapes[c["level"]][1] + c["x"]  # index into the N = Σ H_l·W_l tokens
            locations, weights = (t[token] for t in r["encoder_sampling"][c["layer"]])  # (M, L, P, 2), (M, L, P)
            self.reference = r["encoder_reference_points"][token]  # (L, 2)
            what = f"encoder layer {c['layer'] + 1}: pixel ({c['y']}, {c['x']}) of level {c['level']} (token {token})"
        else:
            q = c["query"]
            locations, weights = (t[q] for t in r["decoder_sampling"][c["layer"]])  # (M, L, P, 2), (M, L, P)
            ref = r["reference_points"][c["layer"]][q]  # (2,) point or (4,) box, normalised
            self.reference = ref[:2].expand(num_levels, 2)  # (L, 2): the same p̂_q on every level
            box = ref if ref.shape[-1] == 4 else None
            what = (f"decoder layer {c['layer'] + 1}: query {q} ({self.class_name(r['labels'][q])} "
                    f"{r['scores'][q]:.2f}), reference {'box (dashed)' if box is not None else 'point'}")
        self.locations, self.weights = locations, weights
        head = "all heads: colour = head" if c["head"] == "all" else f"head {c['head']}: colour ∝ weight"
        plots.plot_sampling_points(r["image"], locations, weights, shapes, self.reference, box, c["head"],
                                   r["size"], r["strides"], fig=self.figure)
        self.figure.suptitle(f"{what}; {head}, size ∝ weight", fontsize=9)


class PositionalAttentionView(View):
    """(Notebook 04) One query's positional attention map (seed, "Understanding the queries";
    DAB-DETR Fig. 2) next to its full cross-attention, for several models: choose the model, the
    image, the query, the decoder layer and the head. Left: the positional map (the query's
    position against the pixels' positions only) with its reference drawn white (Conditional
    DETR's point, DAB-DETR's anchor box of that layer); right: the layer's real cross-attention
    (content and position), with the query's predicted box in cyan. After `render()`,
    `positional_map` (h, w) and `attention_map` (H_f, W_f) hold what is drawn and `overlay` is the
    left panel's image."""

    def __init__(self, models: dict[str, nn.Module], dataset, name: str | None = None, index: int = 0,
                 query: int = 0, layer: int = 0, head="mean", grid: tuple[int, int] | None = None,
                 runners: dict[str, QueryRunner] | None = None):
        super().__init__(figsize=(9, 4.4))
        self.runners = runners or {n: QueryRunner(m, dataset, grid) for n, m in models.items()}
        self.dataset = dataset
        first = name or next(iter(self.runners))
        self.controls = {"model": widgets.Dropdown(options=list(self.runners), value=first, description="model"),
                         "index": image_slider(len(dataset), index),
                         "query": widgets.IntSlider(value=0, min=0, max=0, description="query",
                                                    continuous_update=False),
                         "layer": widgets.Dropdown(description="layer"),
                         "head": widgets.Dropdown(description="head")}
        self._fit_model(query, layer, head)
        self._watch()
        self.render()

    @property
    def widget(self) -> widgets.VBox:
        c = self.controls
        return widgets.VBox([self.image_picker(), widgets.HBox([c["model"], c["query"]]),
                             widgets.HBox([c["layer"], c["head"]]), self.output])

    def _fit_model(self, query: int, layer: int, head) -> None:
        """Fit the query, layer and head controls to the chosen model, keeping values that exist."""
        cfg = self.runners[self.controls["model"].value].model.cfg
        tc = cfg.transformer
        self.controls["query"].max = cfg.num_queries - 1
        self.controls["query"].value = min(query, cfg.num_queries - 1)
        self.controls["layer"].options = [(f"layer {i + 1}", i) for i in range(tc.num_decoder_layers)]
        self.controls["layer"].value = layer % tc.num_decoder_layers
        heads = [("mean of heads", "mean")] + [(f"head {m}", m) for m in range(tc.num_heads)]
        self.controls["head"].options = heads
        self.controls["head"].value = head if head in [v for _, v in heads] else "mean"

    def before_render(self, change) -> None:
        if change["owner"] is self.controls["model"]:
            c = self.controls
            self._fit_model(c["query"].value, c["layer"].value, c["head"].value)

    def draw(self) -> None:
        c = {k: w.value for k, w in self.controls.items()}
        r = self.runners[c["model"]](c["index"])
        q, layer = c["query"], c["layer"]
        (h, w), (hf, wf) = r["grid_size"], r["feature_size"]
        self.positional_map = select_head(r["positional_attention"][layer], c["head"])[q].reshape(h, w)  # (h, w)
        self.attention_map = select_head(r["decoder_attention"][layer], c["head"])[q].reshape(hf, wf)  # (H_f, W_f)
        ax_pos, ax_attn = self.figure.subplots(1, 2)
        head = "mean of heads" if c["head"] == "mean" else f"head {c['head']}"
        ref = None if r["references"] is None else r["references"][layer][q]  # (2|4,) or None
        what = {None: "no reference (DETR)", 2: "reference point", 4: "anchor box"}[None if ref is None else len(ref)]
        self.overlay = plots.attention_overlay(
            ax_pos, r["image"], self.positional_map, alpha=0.75, vmin=0.0,
            title=f"{c['model']}: positional map of q{q}, layer {layer + 1}, {head}\n"
                  f"{h}x{w} grid, max {float(self.positional_map.max()) * h * w:.1f}× uniform; {what} white",
            colourbar=plots.attention_label(h * w, "positional weight"))
        if ref is not None:
            plots.draw_reference(ax_pos, ref, r["image"].shape[-2:])
        plots.attention_overlay(ax_attn, r["image"], self.attention_map, r["feature_mask"], vmin=0.0,
                                title=f"full cross-attention (content + position)\npredicted "
                                      f"{self.class_name(r['labels'][q])} {r['scores'][q]:.2f} (cyan)",
                                colourbar=plots.attention_label(plots.valid_cells(self.attention_map,
                                                                                  r["feature_mask"])))
        plots.draw_boxes(ax_attn, r["boxes"][q:q + 1], colours=["cyan"], text=False)


# --- RT-DETR (notebook 06): query selection, decoder depth, NMS, contrastive denoising ----------


class RTDETRRunner(ModelRunner):
    """`ModelRunner` for RT-DETR (and DINO): `runner(index)` returns {"image", "target", "size",
    "layer_scores", "layer_labels" (L_dec, Q) each query's best sigmoid class after each decoder
    layer, "layer_boxes" (L_dec, Q, 4) xyxy pixels, "selected_indices" (Q,) the encoder tokens query
    selection picked (best first), "selected_levels" (Q,), "selected_cells" (Q, 2) (y, x),
    "selected_scores" (Q,) their σ(max logit), "selected_boxes" (Q, 4) xyxy pixels (their boxes: the
    decoder's initial anchors), "token_scores" (N,) σ(max logit) of every encoder token,
    "spatial_shapes", "strides"}, from one `model(..., return_intermediates=True)` with every
    decoder layer run. Layer k's row is what the model returns with `num_decoder_layers=k + 1`
    (each layer has its own heads and sees only the layers before it)."""

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        num_layers = len(self.model.decoder.layers)
        out = self.model(image[None], mask, return_intermediates=True, num_decoder_layers=num_layers)
        logits = torch.stack([a["pred_logits"][0] for a in out.get("aux_outputs", [])]
                             + [out["pred_logits"][0]])  # (L_dec, Q, K)
        scores, labels = logits.sigmoid().max(-1)  # (L_dec, Q) each
        size = target["size"]
        interm = out["interm_outputs"]
        return {"layer_scores": scores, "layer_labels": labels,
                "layer_boxes": torch.stack([plots.boxes_to_pixels(b[0], size) for b in out["layer_boxes"]]),
                "selected_indices": out["selected_indices"][0], "selected_levels": out["selected_levels"][0],
                "selected_cells": out["selected_cells"][0],  # (Q,), (Q,), (Q, 2)
                "selected_scores": interm["pred_logits"][0].sigmoid().max(-1).values,  # (Q,)
                "selected_boxes": plots.boxes_to_pixels(interm["pred_boxes"][0], size),  # (Q, 4)
                "token_scores": out["encoder_logits"][0].sigmoid().max(-1).values,  # (N,)
                "spatial_shapes": [tuple(s) for s in out["spatial_shapes"]],
                "strides": level_strides(self.model, len(out["spatial_shapes"]))}


class DenseRunner(ModelRunner):
    """`ModelRunner` for the dense NMS baseline: `runner(index)` returns {"image", "target", "size",
    "outputs" (the model's output dict at batch 1, for `postprocess` / `candidates` / `time_nms`),
    "sizes" (1, 2)}."""

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        return {"outputs": self.model(image[None], mask), "sizes": target["size"][None]}


@torch.no_grad()
def denoising_queries(model: nn.Module, image: Tensor, target: dict, seed: int = 0) -> dict:
    """The contrastive denoising queries DINO (or RT-DETR) builds for one image, and what its decoder
    makes of them. Runs `model` in `denoising_mode` (only in training mode does it build denoising
    groups from the targets) with the noise from `torch.manual_seed(seed)` (the global generator is
    left as it was). Returns {"anchors" (P·M, 4) the noised boxes cxcywh,
    "labels" (P·M,) the noised classes, "true_labels" (P·M,) the objects' classes (K on padding),
    "negative" (P·M,) bool, "target_index" (P·M,) (-1 on padding), "target_boxes" (P·M, 4),
    "groups" (P, M), "pred_scores" (P·M,) the last layer's σ(logit) for the object's true class,
    "pred_boxes" (P·M, 4) cxcywh the last layer's boxes, "box_noise_scale" λ}."""
    with torch.random.fork_rng(), denoising_mode(model):
        torch.manual_seed(seed)
        mask = torch.zeros(1, *image.shape[-2:], dtype=torch.bool)
        out = model(image[None], mask, targets=[target], return_intermediates=True)
    if "dn_anchors" not in out:
        raise ValueError("denoising_queries: the model built no denoising queries (an image without objects, "
                         "or cfg.dn_number = 0)")
    index = out["dn_target_index"][0]  # (P·M,)
    num_classes = out["pred_logits"].shape[-1]
    true = torch.where(index >= 0, target["labels"][index.clamp(min=0)], num_classes)  # (P·M,)
    logits = out["dn_outputs"]["pred_logits"][-1, 0]  # (P·M, K) the last layer
    pred_scores = logits.sigmoid().gather(1, true.clamp(max=num_classes - 1)[:, None])[:, 0]  # (P·M,)
    return {"anchors": out["dn_anchors"][0], "labels": out["dn_labels"][0], "true_labels": true,
            "negative": out["dn_negative"][0], "target_index": index, "target_boxes": out["dn_target_boxes"][0],
            "groups": out["dn_groups"], "pred_scores": pred_scores,
            "pred_boxes": out["dn_outputs"]["pred_boxes"][-1, 0], "box_noise_scale": model.cfg.dn_box_noise_scale}


class QuerySelectionView(View):
    """(Notebook 06) RT-DETR on one image: which encoder tokens query selection picks, and what the
    decoder makes of them after its first k layers (RT-DETR Sec. 4.3 and 4.4, the seed's Dec^k rows).
    Left: the `tokens` best selected tokens, each one's cell outlined in its level's colour and its
    box (the decoder's initial anchor) dashed; right: the predictions after `layers` decoder layers,
    those with score >= `threshold`, or the `fallback` best when none is. After `render()`, `shown`
    (the queries drawn on the right, best first), `shown_boxes` (n, 4) xyxy pixels and `shown_scores`
    hold what is drawn."""

    def __init__(self, model: nn.Module, dataset, index: int = 0, layers: int | None = None, tokens: int = 10,
                 threshold: float = 0.5, fallback: int = 5, runner: RTDETRRunner | None = None):
        super().__init__(figsize=(9, 4.6))
        self.runner = runner or RTDETRRunner(model, dataset)
        self.threshold, self.fallback = threshold, fallback
        num_layers = len(self.runner.model.decoder.layers)
        num_queries = self.runner.model.cfg.num_queries
        self.controls = {"index": image_slider(len(self.runner.dataset), index),
                         "layers": widgets.Dropdown(options=[(f"{k} decoder layer{'s' * (k > 1)}", k)
                                                             for k in range(1, num_layers + 1)],
                                                    value=layers or num_layers, description="decoder"),
                         "tokens": widgets.IntSlider(value=min(tokens, num_queries), min=1, max=num_queries,
                                                     description="tokens", continuous_update=False)}
        self._watch()
        self.render()

    def draw(self) -> None:
        c = {k: w.value for k, w in self.controls.items()}
        r = self.runner(c["index"])
        n, k = c["tokens"], c["layers"]
        ax_tokens, ax_pred = self.figure.subplots(1, 2)
        levels = r["selected_levels"][:n]
        counts = ", ".join(f"{int((levels == lvl).sum())} on S{lvl + 3}" for lvl in range(len(r["spatial_shapes"])))
        plots.show_image(ax_tokens, r["image"], r["size"], f"the {n} best selected tokens: {counts}")
        plots.draw_selected_tokens(ax_tokens, levels, r["selected_cells"][:n], r["spatial_shapes"],
                                   r["image"].shape[-2:], linewidth=2)
        colours = [plots.LEVEL_COLOURS[lvl] for lvl in levels.tolist()]
        plots.draw_boxes(ax_tokens, r["selected_boxes"][:n], colours=colours, linestyle="--", linewidth=0.8,
                         text=False)
        scores = r["layer_scores"][k - 1]  # (Q,)
        self.shown, confident = confident_queries(scores, self.threshold, self.fallback)
        self.shown_boxes, self.shown_scores = r["layer_boxes"][k - 1][self.shown], scores[self.shown]
        which = (f"{len(self.shown)} with score ≥ {self.threshold}" if confident
                 else f"none ≥ {self.threshold}: the {len(self.shown)} best")
        plots.plot_detections(ax_pred, r["image"], self.shown_boxes, r["layer_labels"][k - 1][self.shown],
                              self.shown_scores, size=r["size"], title=f"after {k} decoder layer(s): {which}")


NMS_SCORE_THRESHOLDS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5)


class NMSView(View):
    """(Notebook 06) The dense detector's post-processing on one image (seed, "Glance at YOLOs" and
    its NMS table): choose the IoU threshold and the confidence threshold; left, the candidates
    above the confidence threshold; right, what NMS keeps; the title gives their numbers and the
    NMS time measured on this image (`time_nms`, median of `repeats`). After `render()`,
    `candidates` and `kept` hold the drawn detections and `nms_ms` the time."""

    def __init__(self, model: nn.Module, dataset, index: int = 0, iou_threshold: float = 0.7,
                 score_threshold: float = 0.001, repeats: int = 5, runner: DenseRunner | None = None):
        super().__init__(figsize=(9, 4.6))
        self.runner = runner or DenseRunner(model, dataset)
        self.repeats = repeats
        self.controls = {"index": image_slider(len(self.runner.dataset), index),
                         "iou": widgets.FloatSlider(value=iou_threshold, min=0.3, max=0.95, step=0.05,
                                                    description="IoU thr.", continuous_update=False),
                         "score": widgets.SelectionSlider(options=NMS_SCORE_THRESHOLDS, value=score_threshold,
                                                          description="conf thr.", continuous_update=False)}
        self._watch()
        self.render()

    def draw(self) -> None:
        c = {k: w.value for k, w in self.controls.items()}
        r = self.runner(c["index"])
        model, out, sizes = self.runner.model, r["outputs"], r["sizes"]
        self.candidates = model.candidates(out, sizes, c["score"])[0]
        self.kept = model.postprocess(out, sizes, c["iou"], c["score"])[0]
        self.nms_ms = 1e3 * time_nms(model, out, sizes, c["iou"], c["score"], repeats=self.repeats)
        plots.plot_nms_step(r["image"], self.candidates, self.kept, r["size"], fig=self.figure,
                            titles=(f"{len(self.candidates['scores'])} candidates with score > {c['score']:g}",
                                    f"{len(self.kept['scores'])} kept by NMS at IoU {c['iou']:.2f} "
                                    f"({self.nms_ms:.2f} ms)"))


class DenoisingView(View):
    """(Notebook 05) DN-DETR's denoising queries on one image (seed, "DN-DETR": "Each arrow starts from
    an anchor and points to a target"; DN-DETR Fig. 3): left, an arrow from each noised box (the query's
    anchor, dashed, one colour per group, a red × where label noise changed the class) to the object it
    was made from (white); right, what those queries predict after the chosen decoder layer, with an
    arrow from each anchor to its prediction. Controls: the image, the group ("all" or one of the P),
    the layer. After `render()`, `anchors`, `targets` and `predictions` (n, 4) hold the drawn queries'
    boxes (cxcywh normalised) and `queries` their indices among the P·M."""

    def __init__(self, model: nn.Module, dataset, index: int = 0, group="all", layer: int = -1,
                 runner: DenoisingRunner | None = None):
        super().__init__(figsize=(9, 4.6))
        self.runner = runner or DenoisingRunner(model, dataset)
        cfg = self.runner.model.cfg
        layers = cfg.transformer.num_decoder_layers
        self.controls = {"index": image_slider(len(self.runner.dataset), index),
                         "group": widgets.Dropdown(options=[("all groups", "all")]
                                                   + [(f"group {g}", g) for g in range(cfg.dn_number)],
                                                   value=group, description="group"),
                         "layer": widgets.Dropdown(options=[(f"after layer {i + 1}", i) for i in range(layers)],
                                                   value=layer % layers, description="predicted")}
        self._watch()
        self.render()

    def draw(self) -> None:
        c = {k: w.value for k, w in self.controls.items()}
        r = self.runner(c["index"])
        chosen = (r["dn_target_index"] >= 0) & ((r["groups"] == c["group"]) if c["group"] != "all" else True)
        self.queries = torch.nonzero(chosen).flatten().tolist()
        self.anchors, self.targets = r["dn_anchors"][self.queries], r["dn_target_boxes"][self.queries]  # (n, 4)
        self.predictions = (r["dn_layer_boxes"][c["layer"]][self.queries] if len(self.queries)
                            else torch.zeros(0, 4))  # (n, 4)
        colours = [plots.PALETTE[g % len(plots.PALETTE)] for g in r["groups"][self.queries].tolist()]
        ax_noise, ax_pred = self.figure.subplots(1, 2)
        p, m = r["dn_groups"]
        which = "all groups" if c["group"] == "all" else f"group {c['group']}"
        plots.plot_anchor_arrows(ax_noise, r["image"], self.anchors, self.targets, colours, r["flipped"][self.queries],
                                 title=f"{len(self.queries)} denoising queries ({which}; P={p}, M={m}):\n"
                                       f"noised box -> object, × = label changed")
        plots.plot_anchor_arrows(ax_pred, r["image"], self.anchors, self.predictions, colours, anchor_boxes=False,
                                 target_boxes=False,
                                 title=f"their predictions after layer {c['layer'] + 1} (arrow: anchor -> prediction)")
        t = r["target"]
        plots.draw_boxes(ax_pred, plots.boxes_to_pixels(t["boxes"], r["size"]), colours=["white"] * len(t["boxes"]),
                         linewidth=1.5, text=False)
        plots.draw_boxes(ax_pred, plots.boxes_to_pixels(self.predictions, r["image"].shape[-2:]), colours=colours,
                         linewidth=1.2, text=False)


class ScanDirectionsView(View):
    """(Notebook 07) Which input pixels one output pixel of an SS2D layer depends on (VMamba's
    cross-scan, seed "VMamba"): for each of the four scan orders, the pixels the scan has read when
    it reaches pixel (y, x), its causal past; and the Jacobian |∂ out[y, x] / ∂ in| of the whole
    layer (autograd, summed over input channels, through a fixed random read-out of the output
    channels): nonzero everywhere, since the four directions together reach every pixel.

    `mixer` maps (1, H, W, C) -> (1, H, W, C) (e.g. an `SS2D`); x (H, W, C) its input. Controls:
    the pixel's "y" and "x". After `render()`, `jacobian` (H, W) holds what is drawn.
    """

    def __init__(self, mixer: nn.Module, x: Tensor, pixel: tuple[int, int] = (0, 0)):
        super().__init__(figsize=(13, 3))
        h, w, c = x.shape
        self.mixer, self.x = mixer.eval(), x
        self.readout = torch.randn(c, generator=torch.Generator().manual_seed(0), dtype=x.dtype)  # (C,)
        self.controls = {"y": widgets.IntSlider(value=pixel[0], min=0, max=h - 1, description="pixel y",
                                                continuous_update=False),
                         "x": widgets.IntSlider(value=pixel[1], min=0, max=w - 1, description="pixel x",
                                                continuous_update=False)}
        self._watch()
        self.render()

    def jacobian_at(self, y: int, x: int) -> Tensor:
        """|∂ (out[y, x] · r) / ∂ in| summed over input channels -> (H, W), r the fixed read-out."""
        inp = self.x[None].clone().requires_grad_(True)  # (1, H, W, C)
        out = self.mixer(inp)  # (1, H, W, C)
        (grad,) = torch.autograd.grad(out[0, y, x] @ self.readout, inp)  # (1, H, W, C)
        return grad[0].abs().sum(-1)  # (H, W)

    def draw(self) -> None:
        y, x = self.controls["y"].value, self.controls["x"].value
        self.jacobian = self.jacobian_at(y, x)
        plots.plot_scan_receptive_field(self.jacobian, (y, x), fig=self.figure)
        self.figure.suptitle(f"output pixel ({y}, {x}): what each scan has read, and what the layer depends on",
                             fontsize=9)
