"""Notebook 04's view: one query's positional attention map next to its full cross-attention,
for DETR, Conditional DETR and DAB-DETR (seed, "Understanding the queries"; DAB-DETR Fig. 2).
See `tutorial/viz/views.py`."""
from __future__ import annotations

import ipywidgets as widgets
from torch import nn

from ..inspect import QueryRunner, select_head
from .anchors import draw_reference
from .attention import attention_label, attention_overlay, valid_cells
from .boxes import draw_boxes
from .views import View, image_slider


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
        c = self.values()
        r = self.runners[c["model"]](c["index"])
        q, layer = c["query"], c["layer"]
        (h, w), (hf, wf) = r["grid_size"], r["feature_size"]
        self.positional_map = select_head(r["positional_attention"][layer], c["head"])[q].reshape(h, w)  # (h, w)
        self.attention_map = select_head(r["decoder_attention"][layer], c["head"])[q].reshape(hf, wf)  # (H_f, W_f)
        ax_pos, ax_attn = self.figure.subplots(1, 2)
        head = "mean of heads" if c["head"] == "mean" else f"head {c['head']}"
        ref = None if r["references"] is None else r["references"][layer][q]  # (2|4,) or None
        what = {None: "no reference (DETR)", 2: "reference point", 4: "anchor box"}[None if ref is None else len(ref)]
        self.overlay = attention_overlay(
            ax_pos, r["image"], self.positional_map, alpha=0.75, vmin=0.0,
            title=f"{c['model']}: positional map of q{q}, layer {layer + 1}, {head}\n"
                  f"{h}x{w} grid, max {float(self.positional_map.max()) * h * w:.1f}× uniform; {what} white",
            colourbar=attention_label(h * w, "positional weight"))
        if ref is not None:
            draw_reference(ax_pos, ref, r["image"].shape[-2:])
        attention_overlay(ax_attn, r["image"], self.attention_map, r["feature_mask"], vmin=0.0,
                                title=f"full cross-attention (content + position)\npredicted "
                                      f"{self.class_name(r['labels'][q])} {r['scores'][q]:.2f} (cyan)",
                                colourbar=attention_label(valid_cells(self.attention_map,
                                                                                  r["feature_mask"])))
        draw_boxes(ax_attn, r["boxes"][q:q + 1], colours=["cyan"], text=False)
