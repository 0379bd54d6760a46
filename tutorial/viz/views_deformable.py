"""Notebook 03's view: where one query of Deformable DETR's multi-scale deformable attention
samples (Deformable DETR Eq. 3 and Fig. 2). See `tutorial/viz/views.py`."""
from __future__ import annotations

import ipywidgets as widgets
from torch import nn

from ..inspect import DeformableRunner
from .deformable import plot_sampling_points
from .views import View, image_slider


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
        c = self.values()
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
        plot_sampling_points(r["image"], locations, weights, shapes, self.reference, box, c["head"],
                                   r["size"], r["strides"], fig=self.figure)
        self.figure.suptitle(f"{what}; {head}, size ∝ weight", fontsize=9)
