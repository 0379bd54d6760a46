"""Looking inside the models for the notebooks' figures and views: run a model on one image and keep
what it returns when asked (attention weights, sampling locations, reference points, anchors,
denoising queries, selected tokens), without forward hooks and without drawing anything.

Model outputs come from `model(images, mask, return_attention=True)` (Deformable DETR, the anchor
models and RT-DETR: `return_intermediates=True`). `ModelRunner` and its subclasses
(`DeformableRunner`, `QueryRunner`, `DenoisingRunner`, `RTDETRRunner`, `DenseRunner`) run the
model once per image (batch of one, so no padding) and cache the result, so a view
(`tutorial/viz/views*.py`) that moves a slider only redraws. The helpers below them pick what a
figure shows: one head or the mean (`select_head`), the confident queries (`confident_queries`),
the matching cost's terms (`matching_cost_terms`), DN-DETR's and DINO's denoising queries
(`denoising_mode`, `denoising_queries`), and the Jacobian of an SS2D layer (`ScanJacobian`).

Glossary: Q queries, n ground-truth boxes, M heads, H_f, W_f feature map, N = H_f·W_f (Σ_l H_l·W_l
over L levels), P sampling points per level, L_dec decoder layers, P·M denoising queries
(P groups of M objects), K classes.
"""
from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .matching.matcher import MatcherWeights, matching_cost
from .models.conditional_detr import ConditionalDETR, positional_attention
from .ops.box_ops import boxes_to_pixels
from .ssm.ss2d import scan_positions


class ModelRunner:
    """Runs `model` on image `index` of `dataset` (alone, so unpadded) and caches the result.

    `runner(index)` returns {"image" (3, H, W), "target" (the data set's), "size" (h, w),
    "pred_logits" (Q, K+1), "pred_boxes" (Q, 4) cxcywh, "scores", "labels" (Q,), "boxes" (Q, 4)
    xyxy pixels (`model.postprocess`), "encoder_attention" [(M, N, N)] and "decoder_attention"
    [(M, Q, N)] per layer, "feature_size" (H_f, W_f), "feature_mask" (H_f, W_f)}.
    Share one runner between views to compute each image once.
    """

    def __init__(self, model: nn.Module, dataset, cache_size: int = 64):
        self.model, self.dataset, self.cache_size = model.eval(), dataset, cache_size
        self._cache: OrderedDict[int, dict] = OrderedDict()

    @torch.no_grad()
    def __call__(self, index: int) -> dict:
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        image, target = self.dataset[index]
        mask = torch.zeros(1, *image.shape[-2:], dtype=torch.bool)  # (1, H, W): one image, no padding
        result = {"image": image, "target": target, "size": tuple(target["size"].tolist()),
                  **self.compute(image, mask, target)}
        self._cache[index] = result
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return result

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        """What the views draw for one image (3, H, W) with mask (1, H, W); subclasses change this."""
        out = self.model(image[None], mask, return_attention=True)
        det = self.model.postprocess(out, target["size"][None])[0]
        return {"pred_logits": out["pred_logits"][0], "pred_boxes": out["pred_boxes"][0],  # (Q, K+1), (Q, 4)
                "scores": det["scores"], "labels": det["labels"], "boxes": det["boxes"],  # (Q,), (Q,), (Q, 4)
                "encoder_attention": [a[0] for a in out["encoder_attention"]],  # per layer (M, N, N)
                "decoder_attention": [a[0] for a in out["decoder_attention"]],  # per layer (M, Q, N)
                "feature_size": tuple(out["feature_size"]), "feature_mask": out["feature_mask"][0]}  # (H_f, W_f)


class DeformableRunner(ModelRunner):
    """`ModelRunner` for Deformable DETR: `runner(index)` returns {"image", "target", "size",
    "pred_logits" (Q, K), "pred_boxes" (Q, 4) cxcywh, "scores", "labels" (Q,) each query's best
    sigmoid class, "boxes" (Q, 4) xyxy pixels, "layer_boxes" (L_dec, Q, 4) xyxy pixels,
    "reference_points" [(Q, 2|4)] per decoder layer, "spatial_shapes" [(H_l, W_l)], "strides" [s_l],
    "level_masks" [(H_l, W_l)], "encoder_reference_points" (N, L, 2), "encoder_sampling" and
    "decoder_sampling": per layer (locations (N|Q, M, L, P, 2), weights (N|Q, M, L, P))}, all from
    `model(images, mask, return_intermediates=True)` on the image alone (so valid ratios are 1).
    """

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        out = self.model(image[None], mask, return_intermediates=True)
        scores, labels = out["pred_logits"][0].sigmoid().max(-1)  # (Q,), (Q,): one score per query
        size = target["size"]
        return {"pred_logits": out["pred_logits"][0], "pred_boxes": out["pred_boxes"][0],  # (Q, K), (Q, 4)
                "scores": scores, "labels": labels, "boxes": boxes_to_pixels(out["pred_boxes"][0], size),
                "layer_boxes": torch.stack([boxes_to_pixels(b[0], size)
                                            for b in out["layer_boxes"]]),  # (L_dec, Q, 4)
                "reference_points": [r[0] for r in out["reference_points"]],  # per layer (Q, 2|4)
                "spatial_shapes": [tuple(s) for s in out["spatial_shapes"]],
                "strides": level_strides(self.model, len(out["spatial_shapes"])),
                "level_masks": [m[0] for m in out["level_masks"]],  # per level (H_l, W_l)
                "encoder_reference_points": out["encoder_reference_points"][0],  # (N, L, 2)
                # per layer: locations (N, M, L, P, 2) and weights (N, M, L, P); the decoder's with Q for N
                "encoder_sampling": [(loc[0], w[0]) for loc, w in out["encoder_sampling"]],
                "decoder_sampling": [(loc[0], w[0]) for loc, w in out["decoder_sampling"]]}


class QueryRunner(ModelRunner):
    """`ModelRunner` for the positional attention maps of DETR, Conditional DETR and DAB-DETR (also
    DN-DETR, which is DAB-DETR at inference). `runner(index)` returns {"image", "target", "size",
    "pred_boxes" (Q, 4) cxcywh, "scores", "labels" (Q,) each query's best class (softmax without ∅
    for DETR, sigmoid for the others), "boxes" (Q, 4) xyxy pixels, "decoder_attention" [(M, Q, N)]
    per decoder layer, "feature_size" (H_f, W_f), "feature_mask" (H_f, W_f), "positional_attention"
    [(M, Q, h·w)] per decoder layer on a grid of "grid_size" (h, w), "references" [(Q, 2|4)] per
    layer (Conditional DETR's reference point s, DAB-DETR's anchor A_q, normalised; None for DETR)}.

    The positional map of a query is the positional part of its cross-attention alone (seed,
    "DAB-DETR": "positional attention maps between the learned queries and the positional
    embeddings from a feature map", DAB-DETR Fig. 2): DETR: `DETR.positional_attention`;
    the others: `positional_attention(spatial query, spatial keys)` (`tutorial/models/conditional_detr.py`).
    `grid` None evaluates it on the image's own feature grid (then it is exactly what the model
    computes inside its cross-attention), or on an (h, w) grid over the image: the keys are sine
    encodings of normalised positions, so a finer grid draws the same maps more smoothly.
    """

    def __init__(self, model: nn.Module, dataset, grid: tuple[int, int] | None = None, cache_size: int = 64):
        super().__init__(model, dataset, cache_size)
        self.grid = grid

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        model = self.model
        conditional = isinstance(model, ConditionalDETR)
        if conditional:
            out = model(image[None], mask, return_intermediates=True)
            scores, labels = out["pred_logits"][0].sigmoid().max(-1)  # (Q,), (Q,)
        else:
            out = model(image[None], mask, return_attention=True)
            scores, labels = out["pred_logits"][0].softmax(-1)[:, :-1].max(-1)  # (Q,), (Q,): without ∅
        fmask = out["feature_mask"]  # (1, H_f, W_f)
        grid_mask = fmask if self.grid is None else torch.zeros(1, *self.grid, dtype=torch.bool)  # (1, h, w)
        num_layers = len(out["decoder_attention"])
        if conditional:
            heads = model.cfg.transformer.num_heads
            positional = [positional_attention(out["spatial_queries"][l], model.spatial_keys(grid_mask, l), heads,
                                               grid_mask.flatten(1))[0] for l in range(num_layers)]  # (M, Q, h·w)
            references = [r[0] for r in out["reference_points"]]  # per layer (Q, 2|4)
        else:
            positional = [model.positional_attention(grid_mask, l)[0] for l in range(num_layers)]  # (M, Q, h·w)
            references = None
        return {"pred_boxes": out["pred_boxes"][0], "scores": scores, "labels": labels,  # (Q, 4), (Q,), (Q,)
                "boxes": boxes_to_pixels(out["pred_boxes"][0], target["size"]),  # (Q, 4) xyxy pixels
                "decoder_attention": [a[0] for a in out["decoder_attention"]],  # per layer (M, Q, N)
                "feature_size": tuple(out["feature_size"]), "feature_mask": fmask[0],  # (H_f, W_f)
                "positional_attention": positional, "grid_size": tuple(grid_mask.shape[-2:]),
                "references": references}


class RTDETRRunner(ModelRunner):
    """`ModelRunner` for RT-DETR (and DINO): `runner(index)` returns {"image", "target", "size",
    "layer_scores", "layer_labels" (L_dec, Q) each query's best sigmoid class after each decoder
    layer, "layer_boxes" (L_dec, Q, 4) xyxy pixels, "selected_indices" (Q,) the encoder tokens query
    selection picked (best first), "selected_levels" (Q,), "selected_cells" (Q, 2) (y, x),
    "selected_scores" (Q,) their σ(max logit), "selected_boxes" (Q, 4) xyxy pixels (their boxes: the
    decoder's initial anchors), "token_scores" (N,) σ(max logit) of every encoder token,
    "spatial_shapes", "strides"}, from one `model(..., return_intermediates=True)` with every
    decoder layer run. Layer k's row is what the model returns with `num_decoder_layers=k + 1`
    (each layer has its own heads and sees only the layers before it)."""

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        num_layers = len(self.model.decoder.layers)
        out = self.model(image[None], mask, return_intermediates=True, num_decoder_layers=num_layers)
        logits = torch.stack([a["pred_logits"][0] for a in out.get("aux_outputs", [])]
                             + [out["pred_logits"][0]])  # (L_dec, Q, K)
        scores, labels = logits.sigmoid().max(-1)  # (L_dec, Q) each
        size = target["size"]
        interm = out["interm_outputs"]
        return {"layer_scores": scores, "layer_labels": labels,
                "layer_boxes": torch.stack([boxes_to_pixels(b[0], size) for b in out["layer_boxes"]]),
                "selected_indices": out["selected_indices"][0], "selected_levels": out["selected_levels"][0],
                "selected_cells": out["selected_cells"][0],  # (Q,), (Q,), (Q, 2)
                "selected_scores": interm["pred_logits"][0].sigmoid().max(-1).values,  # (Q,)
                "selected_boxes": boxes_to_pixels(interm["pred_boxes"][0], size),  # (Q, 4)
                "token_scores": out["encoder_logits"][0].sigmoid().max(-1).values,  # (N,)
                "spatial_shapes": [tuple(s) for s in out["spatial_shapes"]],
                "strides": level_strides(self.model, len(out["spatial_shapes"]))}


class DenseRunner(ModelRunner):
    """`ModelRunner` for the dense NMS baseline: `runner(index)` returns {"image", "target", "size",
    "outputs" (the model's output dict at batch 1, for `postprocess` / `candidates` / `time_nms`),
    "sizes" (1, 2)}."""

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        return {"outputs": self.model(image[None], mask), "sizes": target["size"][None]}


@contextmanager
def denoising_mode(model: nn.Module):
    """DN-DETR builds its denoising queries in training mode only: inside this block the model is in
    training mode except for its batch-norm layers, which keep using (and do not update) their
    running statistics, so looking at the queries changes nothing. Run it under `torch.no_grad()`."""
    was_training = model.training
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    try:
        yield model
    finally:
        model.train(was_training)


class DenoisingRunner(ModelRunner):
    """`ModelRunner` for DN-DETR's denoising queries (notebook 05): `runner(index)` runs the model
    in `denoising_mode` on image `index` with its ground truth, the noise drawn from a generator
    seeded with `seed + index` (so an image always gets the same noise), and returns {"image",
    "target", "size", "dn_anchors" (P·M, 4) the noised boxes, "dn_target_boxes" (P·M, 4),
    "dn_target_index" (P·M,) (-1 on padding), "dn_labels" (P·M,) noised labels, "flipped" (P·M,)
    True where the noised label differs from the object's, "groups" (P·M,) each query's group,
    "dn_layer_boxes" (L_dec, P·M, 4) what the denoising queries predict after each decoder layer
    (all cxcywh normalised), "dn_attention_mask" (T, T), "dn_groups" (P, M)}. An image without
    objects gets no denoising queries (M = 0)."""

    def __init__(self, model: nn.Module, dataset, seed: int = 0, cache_size: int = 64):
        super().__init__(model, dataset, cache_size)
        self.seed = seed

    def compute(self, image: Tensor, mask: Tensor, target: dict) -> dict:
        with torch.random.fork_rng(), denoising_mode(self.model):
            torch.manual_seed(self.seed + int(target["image_id"]))
            out = self.model(image[None], mask, targets=[target], return_intermediates=True)
        if "dn_anchors" not in out:  # no object: no denoising queries
            p, empty = self.model.cfg.dn_number, torch.zeros(0, 4)
            return {"dn_anchors": empty, "dn_target_boxes": empty, "dn_target_index": torch.zeros(0, dtype=torch.int64),
                    "dn_labels": torch.zeros(0, dtype=torch.int64), "flipped": torch.zeros(0, dtype=torch.bool),
                    "groups": torch.zeros(0, dtype=torch.int64), "dn_layer_boxes": torch.zeros(0, 0, 4),
                    "dn_attention_mask": torch.zeros(self.model.cfg.num_queries, self.model.cfg.num_queries,
                                                     dtype=torch.bool), "dn_groups": (p, 0)}
        index = out["dn_target_index"][0]  # (P·M,)
        true_labels = target["labels"][index.clamp_min(0)]  # (P·M,): the object's class (any on padding)
        p, m = out["dn_groups"]
        return {"dn_anchors": out["dn_anchors"][0], "dn_target_boxes": out["dn_target_boxes"][0],  # (P·M, 4) each
                "dn_target_index": index, "dn_labels": out["dn_labels"][0],  # (P·M,) each
                "flipped": (out["dn_labels"][0] != true_labels) & (index >= 0),  # (P·M,)
                "groups": torch.arange(p).repeat_interleave(m),  # (P·M,)
                "dn_layer_boxes": out["dn_outputs"]["pred_boxes"][:, 0],  # (L_dec, P·M, 4)
                "dn_attention_mask": out["dn_attention_mask"], "dn_groups": (p, m)}


@torch.no_grad()
def denoising_queries(model: nn.Module, image: Tensor, target: dict, seed: int = 0) -> dict:
    """The contrastive denoising queries DINO (or RT-DETR) builds for one image, and what its decoder
    makes of them. Runs `model` in `denoising_mode` (only in training mode does it build denoising
    groups from the targets) with the noise from `torch.manual_seed(seed)` (the global generator is
    left as it was). Returns {"anchors" (P·M, 4) the noised boxes cxcywh,
    "labels" (P·M,) the noised classes, "true_labels" (P·M,) the objects' classes (K on padding),
    "negative" (P·M,) bool, "target_index" (P·M,) (-1 on padding), "target_boxes" (P·M, 4),
    "groups" (P, M), "pred_scores" (P·M,) the last layer's σ(logit) for the object's true class,
    "pred_boxes" (P·M, 4) cxcywh the last layer's boxes, "box_noise_scale" λ}."""
    with torch.random.fork_rng(), denoising_mode(model):
        torch.manual_seed(seed)
        mask = torch.zeros(1, *image.shape[-2:], dtype=torch.bool)
        out = model(image[None], mask, targets=[target], return_intermediates=True)
    if "dn_anchors" not in out:
        raise ValueError("denoising_queries: the model built no denoising queries (an image without objects, "
                         "or cfg.dn_number = 0)")
    index = out["dn_target_index"][0]  # (P·M,)
    num_classes = out["pred_logits"].shape[-1]
    true = torch.where(index >= 0, target["labels"][index.clamp(min=0)], num_classes)  # (P·M,)
    logits = out["dn_outputs"]["pred_logits"][-1, 0]  # (P·M, K) the last layer
    pred_scores = logits.sigmoid().gather(1, true.clamp(max=num_classes - 1)[:, None])[:, 0]  # (P·M,)
    return {"anchors": out["dn_anchors"][0], "labels": out["dn_labels"][0], "true_labels": true,
            "negative": out["dn_negative"][0], "target_index": index, "target_boxes": out["dn_target_boxes"][0],
            "groups": out["dn_groups"], "pred_scores": pred_scores,
            "pred_boxes": out["dn_outputs"]["pred_boxes"][-1, 0], "box_noise_scale": model.cfg.dn_box_noise_scale}


def level_strides(model: nn.Module, num_levels: int) -> list[int]:
    """Deformable DETR's level strides: the backbone stages', then x2 per extra level (8, 16, 32, 64)."""
    strides = list(model.backbone.strides)
    while len(strides) < num_levels:
        strides.append(strides[-1] * 2)
    return strides[:num_levels]


def select_head(attention: Tensor, head: int | str) -> Tensor:
    """attention (M, ..., N) -> (..., N): head `head`, or the mean over heads for "mean"."""
    return attention.mean(0) if head == "mean" else attention[int(head)]


def confident_queries(scores: Tensor, threshold: float, fallback: int = 5) -> tuple[list[int], bool]:
    """Queries with score >= threshold, best first; if there are none, the `fallback` best ones.
    Returns (queries, True if they passed the threshold)."""
    order = scores.argsort(descending=True).tolist()
    passed = [q for q in order if scores[q] >= threshold]
    return (passed, True) if passed else (order[:fallback], False)


def matching_cost_terms(pred_logits: Tensor, pred_boxes: Tensor, tgt_labels: Tensor, tgt_boxes: Tensor,
                        weights: MatcherWeights = MatcherWeights()) -> dict[str, Tensor]:
    """The seed's L_match for one image and its three terms, each (Q, n), all from
    `tutorial.matching.matcher.matching_cost` with one weight at a time: "class" -p̂(c), "L1"
    ||b - b̂||₁, "GIoU" -GIoU (unweighted), and "total" = λ_class·class + λ_L1·L1 + λ_giou·GIoU."""
    args = (pred_logits, pred_boxes, tgt_labels, tgt_boxes)
    return {"total": matching_cost(*args, weights.cost_class, weights.cost_bbox, weights.cost_giou),
            "class": matching_cost(*args, 1.0, 0.0, 0.0),
            "L1": matching_cost(*args, 0.0, 1.0, 0.0),
            "GIoU": matching_cost(*args, 0.0, 0.0, 1.0)}


class ScanJacobian:
    """What one output pixel of an SS2D layer depends on (VMamba's cross-scan, seed "VMamba"):
    `mixer` maps (1, H, W, C) -> (1, H, W, C) (e.g. an `SS2D`), x (H, W, C) its input;
    `jacobian(y, x)` -> (H, W) |∂ (out[y, x] · r) / ∂ in| summed over input channels (autograd),
    r (C,) `readout` a fixed random read-out of the output channels. `positions` (4, H, W) is where
    each pixel comes in each of the four scan orders (`tutorial.ssm.ss2d.scan_positions`): the
    causal past of pixel (y, x) in direction k is `positions[k] <= positions[k, y, x]`."""

    def __init__(self, mixer: nn.Module, x: Tensor, seed: int = 0):
        h, w, c = x.shape
        self.mixer, self.x = mixer.eval(), x
        self.readout = torch.randn(c, generator=torch.Generator().manual_seed(seed), dtype=x.dtype)  # (C,)
        self.positions = scan_positions(h, w)  # (4, H, W)

    def jacobian(self, y: int, x: int) -> Tensor:
        inp = self.x[None].clone().requires_grad_(True)  # (1, H, W, C)
        out = self.mixer(inp)  # (1, H, W, C)
        (grad,) = torch.autograd.grad(out[0, y, x] @ self.readout, inp)  # (1, H, W, C)
        return grad[0].abs().sum(-1)  # (H, W)
