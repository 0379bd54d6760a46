"""Notebook 05's view: DN-DETR's denoising queries on one image, from noised box to object and
to prediction (seed, "DN-DETR"; DN-DETR Fig. 3). See `tutorial/viz/views.py`."""
from __future__ import annotations

import ipywidgets as widgets
import torch
from torch import nn

from ..inspect import DenoisingRunner
from ..ops.box_ops import boxes_to_pixels
from .boxes import draw_boxes
from .common import PALETTE
from .denoising import plot_anchor_arrows
from .views import View, image_slider


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
        c = self.values()
        r = self.runner(c["index"])
        chosen = (r["dn_target_index"] >= 0) & ((r["groups"] == c["group"]) if c["group"] != "all" else True)
        self.queries = torch.nonzero(chosen).flatten().tolist()
        self.anchors, self.targets = r["dn_anchors"][self.queries], r["dn_target_boxes"][self.queries]  # (n, 4)
        self.predictions = (r["dn_layer_boxes"][c["layer"]][self.queries] if len(self.queries)
                            else torch.zeros(0, 4))  # (n, 4)
        colours = [PALETTE[g % len(PALETTE)] for g in r["groups"][self.queries].tolist()]
        ax_noise, ax_pred = self.figure.subplots(1, 2)
        p, m = r["dn_groups"]
        which = "all groups" if c["group"] == "all" else f"group {c['group']}"
        plot_anchor_arrows(ax_noise, r["image"], self.anchors, self.targets, colours, r["flipped"][self.queries],
                                 title=f"{len(self.queries)} denoising queries ({which}; P={p}, M={m}):\n"
                                       f"noised box -> object, × = label changed")
        plot_anchor_arrows(ax_pred, r["image"], self.anchors, self.predictions, colours, anchor_boxes=False,
                                 target_boxes=False,
                                 title=f"their predictions after layer {c['layer'] + 1} (arrow: anchor -> prediction)")
        t = r["target"]
        draw_boxes(ax_pred, boxes_to_pixels(t["boxes"], r["size"]), colours=["white"] * len(t["boxes"]),
                         linewidth=1.5, text=False)
        draw_boxes(ax_pred, boxes_to_pixels(self.predictions, r["image"].shape[-2:]), colours=colours,
                         linewidth=1.2, text=False)
