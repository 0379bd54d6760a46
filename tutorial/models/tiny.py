"""The CPU scale shared by the single-scale `*_tiny` presets (DETR, Conditional DETR, DAB-DETR, DN-DETR).

Every one of them is its paper's code at detr_tiny's sizes on the shapes set, so that the models
differ only in what their papers add: 5 classes (ids 1..5, hence 6 logits), 25 queries, the tiny
ResNet up to layer3 (stride 16, `backbone.tiny_backbone`) and the tiny transformer (C=128, 3+3
layers, FFN 512, no dropout: `transformer.tiny_transformer`). The multi-scale presets take their
own levels and query counts.
"""
from __future__ import annotations

from .backbone import tiny_backbone
from .transformer import tiny_transformer


def detr_tiny_sizes() -> dict:
    """The config fields of the single-scale tiny presets, freshly built (no shared mutable configs)."""
    return dict(num_classes=6, num_queries=25, backbone=tiny_backbone("layer3"), transformer=tiny_transformer())
