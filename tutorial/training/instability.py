"""The instability score of the Hungarian matching (seed, "DN-DETR", Fig. 2).

DN-DETR measures how often the bipartite matching changes its mind during training. For a fixed
set of images, after training epoch i, let V^i_n be the object that prediction n is matched to:

    V^i_n = m    if prediction O^i_n matches ground-truth object T_m,
    V^i_n = -1   if O^i_n matches nothing,

    IS^i = Σ_n 1(V^i_n ≠ V^{i-1}_n),

summed over every prediction of every image. A high IS means the queries' targets keep changing,
which slows training; denoising lowers it (seed, Fig. 2: DAB-DETR vs DN-DETR over 12 epochs).

`matched_targets(model, batches)` computes the V's with the model's own matcher on its last
decoder layer; `instability(previous, current)` counts the changes.

Glossary: B batch, Q predictions (queries) per image, n objects in an image.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def matched_targets(model: nn.Module, batches: Iterable) -> list[Tensor]:
    """For each batch (images, mask, targets) of a fixed list, the vector V of every image:
    a (B, Q) int64 tensor whose [b, n] entry is the index, in targets[b], of the object prediction
    n is matched to, or -1. The model runs in eval mode (no denoising queries) and is put back in
    the mode it was in; the matching is `model.build_criterion().matcher` on the last layer."""
    matcher = model.build_criterion().matcher
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    vectors = []
    try:
        for images, mask, targets in batches:
            out = model(images.to(device), mask.to(device))
            targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
            indices = matcher(out["pred_logits"], out["pred_boxes"], targets)
            v = torch.full(out["pred_logits"].shape[:2], -1, dtype=torch.int64)  # (B, Q): nothing matched ...
            for b, (pred_idx, tgt_idx) in enumerate(indices):
                v[b, pred_idx.cpu()] = tgt_idx.cpu()  # ... except the matched predictions
            vectors.append(v)
    finally:
        model.train(was_training)
    return vectors


def instability(previous: Tensor | list[Tensor], current: Tensor | list[Tensor]) -> int:
    """IS: the number of predictions whose matched target differs between two sets of V's
    (tensors, or lists of tensors as returned by `matched_targets`, of equal shapes)."""
    if isinstance(previous, Tensor):
        previous, current = [previous], [current]
    if len(previous) != len(current):
        raise ValueError(f"instability: {len(previous)} previous vs {len(current)} current batches")
    total = 0
    for a, b in zip(previous, current):
        if a.shape != b.shape:
            raise ValueError(f"instability: matched-target shapes differ, {tuple(a.shape)} vs {tuple(b.shape)}")
        total += int((a != b).sum())
    return total
