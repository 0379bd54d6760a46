"""Every level's padding mask is the full-resolution image mask resized to that level (official
Deformable DETR): for Deformable DETR's and DINO's extra stride-64 level too, over a sweep of
padded sizes. Resizing the stride-32 mask again (the old code) disagrees for some of them, and
that changed the extra level's positional encoding, valid ratios and value masking."""
from __future__ import annotations

import pytest
import torch

from tutorial.models.backbone import feature_mask

from .tiny import small_model

torch.set_num_threads(1)

PADDED = (224, 288)
VALID = [(168, 200), (192, 256), (150, 210), (200, 130), (97, 283), (224, 161), (131, 131)]
SMALL = {"transformer": {"d_model": 32, "num_encoder_layers": 1, "num_decoder_layers": 1, "dim_feedforward": 32},
         "num_queries": 4}


def padded_pair(valid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.randn(2, 3, *PADDED)
    mask = torch.zeros(2, *PADDED, dtype=torch.bool)
    mask[1, valid[0]:, :] = True
    mask[1, :, valid[1]:] = True
    return images, mask


@pytest.mark.parametrize("name", ["deformable_detr_tiny", "dino_tiny"])
def test_every_level_mask_is_the_image_mask_resized(name):
    model = small_model(name, SMALL).eval()
    assert len(model.input_proj.layers) > len(model.backbone.cfg.return_layers), "no extra level to check"
    chained_differs = False
    for valid in VALID:
        images, mask = padded_pair(valid)
        with torch.no_grad():
            levels = model.input_proj(model.backbone(images, mask), mask)  # L x (feature, mask)
        for level, (x, m) in enumerate(levels):
            assert torch.equal(m, feature_mask(mask, x.shape[-2:])), (name, valid, level)
        last_stage = levels[len(model.backbone.cfg.return_layers) - 1][1]  # (B, H/32, W/32)
        extra = levels[-1][0].shape[-2:]
        chained_differs |= not torch.equal(feature_mask(last_stage, extra), levels[-1][1])
    assert chained_differs, "the sweep never hits a size where the old, chained resize disagrees"
