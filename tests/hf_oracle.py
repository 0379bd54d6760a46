"""Hugging Face transformers as an independent oracle for `tutorial.convert`.

A family's test builds the HF model from its paper config with random weights (nothing is
downloaded), moves every parameter and buffer away from its initial value (so that two tensors
initialised alike, swapped by a wrong mapping, cannot hide), converts the state dict, and compares
our outputs with HF's on a padded batch of two images of different sizes.
"""
from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")  # in the `dev` extra


def perturb(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every floating parameter and buffer moved by noise (0.1 for matrices, 0.02 for vectors);
    variances kept positive."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.named_parameters()) + list(model.named_buffers()):
            if not t.is_floating_point():
                continue
            noise = torch.randn(t.shape, generator=g, dtype=t.dtype)
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g, dtype=t.dtype) + 0.5)  # U(0.5, 1.5)
            elif t.dim() >= 2:  # large enough that attention is peaked: a swapped q/k changes it
                t.add_(0.1 * noise)
            else:
                t.add_(0.02 * noise)
    return model.eval()


def padded_batch(seed: int = 0, sizes=((3, 96, 128), (3, 80, 100))):
    """(images (2, 3, H, W), our mask (2, H, W) True on padding, HF's pixel_mask (2, H, W) 1 on pixels)."""
    g = torch.Generator().manual_seed(seed)
    h, w = max(s[1] for s in sizes), max(s[2] for s in sizes)
    images = torch.zeros(len(sizes), 3, h, w)  # (B, 3, H, W)
    mask = torch.ones(len(sizes), h, w, dtype=torch.bool)  # (B, H, W)
    for i, (c, hi, wi) in enumerate(sizes):
        images[i, :, :hi, :wi] = torch.randn(c, hi, wi, generator=g)
        mask[i, :hi, :wi] = False
    return images, mask, (~mask).long()


def dummy_labels(batch: int = 2) -> list[dict]:
    """Targets for HF's forward: only with `labels` does it return its `auxiliary_outputs`."""
    return [{"class_labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}
            for _ in range(batch)]


def max_difference(ours: dict, theirs, logits_key: str = "logits") -> dict[str, float]:
    """Max |ours - HF| over logits, boxes and every auxiliary output (HF's `auxiliary_outputs`)."""
    diffs = {"logits": (ours["pred_logits"] - getattr(theirs, logits_key)).abs().max().item(),
             "boxes": (ours["pred_boxes"] - theirs.pred_boxes).abs().max().item()}
    aux_theirs = getattr(theirs, "auxiliary_outputs", None) or []
    assert len(ours.get("aux_outputs", [])) == len(aux_theirs), "number of auxiliary outputs"
    for i, (a, b) in enumerate(zip(ours.get("aux_outputs", []), aux_theirs)):
        diffs[f"aux{i}_logits"] = (a["pred_logits"] - b["logits"]).abs().max().item()
        diffs[f"aux{i}_boxes"] = (a["pred_boxes"] - b["pred_boxes"]).abs().max().item()
    return diffs
