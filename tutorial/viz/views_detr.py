"""Notebook 02's views: DETR's encoder self-attention of one reference point and decoder
cross-attention of one predicted object (seed, "Encoder self-attention for a set of reference
points", "Decoder typically attends to object extremities"). See `tutorial/viz/views.py`."""
from __future__ import annotations

import ipywidgets as widgets
from torch import nn

from ..inspect import ModelRunner, confident_queries, select_head
from ..ops.box_ops import boxes_to_pixels
from .attention import attention_label, attention_overlay, cell_centre, valid_cells
from .boxes import draw_boxes, plot_detections
from .views import View, image_slider, layer_and_head_controls


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
        c = self.values()
        r = self.runner(c["index"])
        hf, wf = r["feature_size"]
        attention = select_head(r["encoder_attention"][c["layer"]], c["head"])  # (N, N)
        self.attention_map = attention[c["y"] * wf + c["x"]].reshape(hf, wf)  # (H_f, W_f): where (y, x) looks
        px, py = cell_centre(c["y"], c["x"], (hf, wf), r["image"].shape[-2:])
        ax_image, ax_attention = self.figure.subplots(1, 2)
        t = r["target"]
        plot_detections(ax_image, r["image"], boxes_to_pixels(t["boxes"], r["size"]), t["labels"],
                              title=f"reference point ({c['y']}, {c['x']}) of a {hf}x{wf} grid", text=False)
        head = "mean of heads" if c["head"] == "mean" else f"head {c['head']}"
        self.overlay = attention_overlay(
            ax_attention, r["image"], self.attention_map, r["feature_mask"], vmin=0.0,
            title=f"encoder layer {c['layer'] + 1}, {head}",
            colourbar=attention_label(valid_cells(self.attention_map, r["feature_mask"])))
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
        c = self.values()
        r = self.runner(c["index"])
        hf, wf = r["feature_size"]
        q = c["query"]
        attention = select_head(r["decoder_attention"][c["layer"]], c["head"])  # (Q, N)
        self.attention_map = attention[q].reshape(hf, wf)  # (H_f, W_f): where query q looks
        ax_image, ax_attention = self.figure.subplots(1, 2)
        which = (f"{len(self.queries)} predictions with score ≥ {self.threshold}" if self.confident else
                 f"none ≥ {self.threshold}: the {len(self.queries)} best")
        # uncaptioned (many would overlap; the query list names them all), the chosen one captioned in cyan
        plot_detections(ax_image, r["image"], r["boxes"][self.queries], r["labels"][self.queries],
                              title=f"{which}\n(class colours; query {q} cyan)", linewidth=1, text=False)
        draw_boxes(ax_image, r["boxes"][q:q + 1], r["labels"][q:q + 1], r["scores"][q:q + 1],
                         colours=["cyan"], linewidth=2.5)
        head = "mean of heads" if c["head"] == "mean" else f"head {c['head']}"
        self.overlay = attention_overlay(
            ax_attention, r["image"], self.attention_map, r["feature_mask"], vmin=0.0,
            title=f"query {q} ({self.class_name(r['labels'][q])} {r['scores'][q]:.2f}):\n"
                  f"layer {c['layer'] + 1}, {head}",
            colourbar=attention_label(valid_cells(self.attention_map, r["feature_mask"])))
        draw_boxes(ax_attention, r["boxes"][q:q + 1], colours=["cyan"], text=False)
