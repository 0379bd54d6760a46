"""The small multi-layer perceptron DETR uses as its box head (and later models reuse)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class MLP(nn.Module):
    """`num_layers` linear layers with ReLU between them: (..., in_dim) -> (..., out_dim).

    DETR's box head is MLP(C, C, 4, 3) followed by a sigmoid (paper Sec. 3.2, "FFNs").
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else F.relu(layer(x))
        return x
