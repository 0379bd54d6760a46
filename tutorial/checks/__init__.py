"""Checkers for the exercises: each runs a candidate function against an independent oracle,
prints the largest difference and raises `AssertionError` with a readable message if wrong.

The oracles are not the package's own functions: `torchvision.ops` for boxes, brute force over
all permutations for matching, explicit per-element loops for the encodings and the loss.
pytest (`tests/test_exercises.py`) and the notebooks call the same checkers.

One module per concept, after the package's: boxes, matching, criterion, position_encoding,
deformable_attention, ssm, denoising, query_selection, varifocal; `report` in common. Every
checker and oracle is importable from here (`from tutorial.checks import check_box_iou`).
"""
from __future__ import annotations

from .common import report, random_boxes_cxcywh
from .boxes import check_box_cxcywh_to_xyxy, check_box_xyxy_to_cxcywh, check_box_iou, check_generalized_box_iou
from .matching import matching_cost_loop, check_matching_cost, brute_force_assignment, check_hungarian_match
from .criterion import hungarian_loss_loop, check_hungarian_loss, check_hungarian_loss_permutation
from .position_encoding import (
    sine_encoding_loop, check_sine_position_encoding, anchor_encoding_loop, check_anchor_position_encoding)
from .deformable_attention import (
    check_bilinear_sample, bilinear_pixel_loop, ms_deform_attn_loop, check_ms_deform_attn_core)
from .ssm import (
    zoh_block_exp, check_discretize_zoh, check_scan_combine, linear_recurrence_loop, check_parallel_scan)
from .denoising import dn_mask_loop, check_dn_attention_mask, check_dn_attention_mask_properties
from .query_selection import top_k_loop, check_select_top_k
from .varifocal import varifocal_loop, check_varifocal_loss
