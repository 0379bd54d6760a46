"""Notebook 07's view: which input pixels one output pixel of an SS2D layer depends on (VMamba's
cross-scan, seed "VMamba"). See `tutorial/viz/views.py`."""
from __future__ import annotations

import ipywidgets as widgets
from torch import Tensor, nn

from ..inspect import ScanJacobian
from .ss2d import plot_scan_receptive_field
from .views import View


class ScanDirectionsView(View):
    """(Notebook 07) Which input pixels one output pixel of an SS2D layer depends on (VMamba's
    cross-scan, seed "VMamba"): for each of the four scan orders, the pixels the scan has read when
    it reaches pixel (y, x), its causal past; and the Jacobian |∂ out[y, x] / ∂ in| of the whole
    layer (autograd, summed over input channels, through a fixed random read-out of the output
    channels): nonzero everywhere, since the four directions together reach every pixel.

    `mixer` maps (1, H, W, C) -> (1, H, W, C) (e.g. an `SS2D`); x (H, W, C) its input; the Jacobian
    is `tutorial.inspect.ScanJacobian`'s (`runner`, its read-out `readout`). Controls: the pixel's
    "y" and "x". After `render()`, `jacobian` (H, W) holds what is drawn.
    """

    def __init__(self, mixer: nn.Module, x: Tensor, pixel: tuple[int, int] = (0, 0)):
        super().__init__(figsize=(13, 3))
        h, w, _ = x.shape
        self.runner = ScanJacobian(mixer, x)
        self.readout = self.runner.readout  # (C,)
        self.controls = {"y": widgets.IntSlider(value=pixel[0], min=0, max=h - 1, description="pixel y",
                                                continuous_update=False),
                         "x": widgets.IntSlider(value=pixel[1], min=0, max=w - 1, description="pixel x",
                                                continuous_update=False)}
        self._watch()
        self.render()

    def draw(self) -> None:
        y, x = self.controls["y"].value, self.controls["x"].value
        self.jacobian = self.runner.jacobian(y, x)  # (H, W)
        plot_scan_receptive_field(self.jacobian, (y, x), self.runner.positions, fig=self.figure)
        self.figure.suptitle(f"output pixel ({y}, {x}): what each scan has read, and what the layer depends on",
                             fontsize=9)
