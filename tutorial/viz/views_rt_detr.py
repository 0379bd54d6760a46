"""Notebook 06's views: RT-DETR's query selection and decoder depth (RT-DETR Sec. 4.3-4.4), and
the dense detector's NMS against its thresholds (seed, "Glance at YOLOs"). See `tutorial/viz/views.py`."""
from __future__ import annotations

import ipywidgets as widgets
from torch import nn

from ..inspect import DenseRunner, RTDETRRunner, confident_queries
from ..models.dense_detector import time_nms
from .boxes import draw_boxes, plot_detections, show_image
from .rt_detr import LEVEL_COLOURS, draw_selected_tokens, plot_nms_step
from .views import View, image_slider


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
        c = self.values()
        r = self.runner(c["index"])
        n, k = c["tokens"], c["layers"]
        ax_tokens, ax_pred = self.figure.subplots(1, 2)
        levels = r["selected_levels"][:n]
        counts = ", ".join(f"{int((levels == lvl).sum())} on S{lvl + 3}" for lvl in range(len(r["spatial_shapes"])))
        show_image(ax_tokens, r["image"], r["size"], f"the {n} best selected tokens: {counts}")
        draw_selected_tokens(ax_tokens, levels, r["selected_cells"][:n], r["spatial_shapes"],
                                   r["image"].shape[-2:], linewidth=2)
        colours = [LEVEL_COLOURS[lvl] for lvl in levels.tolist()]
        draw_boxes(ax_tokens, r["selected_boxes"][:n], colours=colours, linestyle="--", linewidth=0.8,
                         text=False)
        scores = r["layer_scores"][k - 1]  # (Q,)
        self.shown, confident = confident_queries(scores, self.threshold, self.fallback)
        self.shown_boxes, self.shown_scores = r["layer_boxes"][k - 1][self.shown], scores[self.shown]
        which = (f"{len(self.shown)} with score ≥ {self.threshold}" if confident
                 else f"none ≥ {self.threshold}: the {len(self.shown)} best")
        plot_detections(ax_pred, r["image"], self.shown_boxes, r["layer_labels"][k - 1][self.shown],
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
        c = self.values()
        r = self.runner(c["index"])
        model, out, sizes = self.runner.model, r["outputs"], r["sizes"]
        self.candidates = model.candidates(out, sizes, c["score"])[0]
        self.kept = model.postprocess(out, sizes, c["iou"], c["score"])[0]
        self.nms_ms = 1e3 * time_nms(model, out, sizes, c["iou"], c["score"], repeats=self.repeats)
        plot_nms_step(r["image"], self.candidates, self.kept, r["size"], fig=self.figure,
                            titles=(f"{len(self.candidates['scores'])} candidates with score > {c['score']:g}",
                                    f"{len(self.kept['scores'])} kept by NMS at IoU {c['iou']:.2f} "
                                    f"({self.nms_ms:.2f} ms)"))
