"""Interactive views for the notebooks (ipywidgets): the base `View` and the controls every view
shares, and the views of notebooks 00 and 01 (the data set, the Hungarian matching). The other
notebooks' views are in `tutorial/viz/views_<notebook concept>.py`.

Each view is a small class that owns
- `figure`: one `matplotlib.figure.Figure`, cleared and redrawn by `render()`;
- `controls`: a dict of ipywidgets; changing any of them (also from code:
  `view.controls["index"].value = 3`) calls `render()`;
- `output`: an `ipywidgets.Output` in which `render()` re-displays the figure as a PNG (so it
  works whatever matplotlib backend the kernel uses);
and shows its controls and output when it is the last expression of a notebook cell
(`_ipython_display_`; `view.widget` is the same box). Right after construction `view.figure`
is the default state, drawn once: the static fallback a notebook shows before the widget.

What a view draws is computed by a runner of `tutorial/inspect.py` (model outputs, cached per
image) and drawn by the figures of `tutorial/viz/`; a view only wires controls to them.
Glossary: `tutorial/inspect.py`.
"""
from __future__ import annotations

import io
from contextlib import contextmanager

import ipywidgets as widgets
import torch
from IPython.display import Image, clear_output, display
from matplotlib.figure import Figure
from torch import nn

from ..data.class_names import class_names
from ..inspect import ModelRunner, matching_cost_terms
from ..matching.matcher import hungarian_match
from ..ops.box_ops import boxes_to_pixels
from .boxes import plot_detections
from .common import class_name
from .matching import draw_matching, plot_cost_matrix


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
        return class_name(label, class_names(runner.model.cfg.num_classes))

    def values(self) -> dict:
        """The controls' current values, by control name."""
        return {name: control.value for name, control in self.controls.items()}

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
        boxes = boxes_to_pixels(self.target["boxes"], self.target["size"])  # (n, 4) xyxy pixels
        h, w = self.target["size"].tolist()
        plot_detections(self.figure.add_subplot(), self.image, boxes, self.target["labels"],
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
            plot_cost_matrix(ax_cost, self.costs[term], *self.assignment,
                                   title=f"{term} cost, assignment from the total (white)", col_labels=names)
        self.total = self.costs["total"][self.assignment].sum().item()
        draw_matching(ax_image, r["image"], r["boxes"], boxes_to_pixels(t["boxes"], r["size"]),
                            *self.assignment, t["labels"],
                            title=f"matched pairs (solid: target, dashed: prediction)\n"
                                  f"total L_match {self.total:.2f} (the image run alone, unpadded)")
