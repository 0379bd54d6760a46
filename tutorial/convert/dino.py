"""(to be written) key maps onto the dino presets; see detr.py for the pattern."""
from __future__ import annotations

MAPS: dict = {}
CLASS_HEADS: dict = {}
