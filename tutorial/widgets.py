"""Interactive views for the notebooks (ipywidgets): the data set, the Hungarian matching,
DETR's encoder and decoder attention, and Deformable DETR's sampling points.

Each view is a small class that owns
- `figure`: one `matplotlib.figure.Figure`, cleared and redrawn by `render()`;
- `controls`: a dict of ipywidgets; changing any of them (also from code:
  `view.controls["index"].value = 3`) calls `render()`;
- `output`: an `ipywidgets.Output` in which `render()` re-displays the figure as a PNG (so it
  works whatever matplotlib backend the kernel uses);
and shows its controls and output when it is the last expression of a notebook cell
(`_ipython_display_`; `view.widget` is the same box). Right after construction `view.figure`
is the default state, drawn once: the static fallback a notebook shows before the widget.

Model outputs come from `model(images, mask, return_attention=True)` (Deformable DETR:
`return_intermediates=True`), never from forward hooks; `ModelRunner` (`DeformableRunner`) runs
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
from .matcher import MatcherWeights, hungarian_match, matching_cost


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
    `tutorial.matcher.matching_cost` with one weight at a time: "class" -p̂(c), "L1"
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

    @property
    def widget(self) -> widgets.VBox:
        return widgets.VBox([widgets.HBox(list(self.controls.values())), self.output])

    def _ipython_display_(self) -> None:
        display(self.widget)


def image_slider(n: int, index: int) -> widgets.IntSlider:
    return widgets.IntSlider(value=index, min=0, max=n - 1, description="image", continuous_update=False)


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
    Hungarian assignment outlined, and the matched pairs drawn on the image. Seed: "Set Prediction"."""

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
            names = [f"{j}: {plots.class_name(c)}" for j, c in enumerate(t["labels"].tolist())]
            plots.plot_cost_matrix(ax_cost, self.costs[term], *self.assignment,
                                   title=f"{term} cost, assignment from the total (white)", col_labels=names)
        total = self.costs["total"][self.assignment].sum().item()
        plots.draw_matching(ax_image, r["image"], r["boxes"], plots.boxes_to_pixels(t["boxes"], r["size"]),
                            *self.assignment, t["labels"],
                            title=f"matched pairs (solid: target, dashed: prediction), total cost {total:.2f}")


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
        self.overlay = plots.attention_overlay(ax_attention, r["image"], self.attention_map, r["feature_mask"],
                                               title=f"encoder layer {c['layer'] + 1}, {head}")
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
            (f"q{q}: {plots.class_name(r['labels'][q])} {r['scores'][q]:.2f}", q) for q in self.queries]
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
        plots.plot_detections(ax_image, r["image"], r["boxes"][self.queries], r["labels"][self.queries],
                              r["scores"][self.queries], title=which, linewidth=1)
        plots.draw_boxes(ax_image, r["boxes"][q:q + 1], colours=["cyan"], linewidth=2.5, text=False)
        head = "mean of heads" if c["head"] == "mean" else f"head {c['head']}"
        self.overlay = plots.attention_overlay(
            ax_attention, r["image"], self.attention_map, r["feature_mask"],
            title=f"query {q} ({plots.class_name(r['labels'][q])} {r['scores'][q]:.2f}): "
                  f"layer {c['layer'] + 1}, {head}")
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
        return widgets.VBox([widgets.HBox([c["index"], c["kind"], c["layer"], c["head"]]),
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
            (f"q{q}: {plots.class_name(r['labels'][q])} {r['scores'][q]:.2f}", q) for q in order]
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
            what = (f"decoder layer {c['layer'] + 1}: query {q} ({plots.class_name(r['labels'][q])} "
                    f"{r['scores'][q]:.2f}), reference {'box (dashed)' if box is not None else 'point'}")
        self.locations, self.weights = locations, weights
        head = "all heads: colour = head" if c["head"] == "all" else f"head {c['head']}: colour ∝ weight"
        plots.plot_sampling_points(r["image"], locations, weights, shapes, self.reference, box, c["head"],
                                   r["size"], r["strides"], fig=self.figure)
        self.figure.suptitle(f"{what}; {head}, size ∝ weight", fontsize=9)
