"""The NMS baseline: a small dense, anchor-free detector in the YOLO / FCOS spirit.

Seed, "Glance at YOLOs": a YOLO predicts a box and class scores at every location of every
level, so each object is detected many times, and non-maximum suppression (NMS) removes the
duplicates afterwards. NMS has two thresholds, and the seed's table (YOLOv8-L on COCO) shows
that both move accuracy *and* time:
- the confidence threshold: (location, class) pairs scoring below it are dropped before NMS;
  lower keeps more true positives (AP 51.2 -> 52.9 from 0.05 to 0.001) but leaves more boxes
  for NMS (1.06 -> 2.36 ms);
- the IoU threshold: a box is suppressed if it overlaps a higher-scoring box of the same class
  by more than this; too low removes real neighbours, too high keeps duplicates.
DETRs predict a set and need neither. This file makes that comparison runnable on the tutorial's
data: `postprocess(outputs, sizes, iou_threshold=..., score_threshold=...)` and `time_nms`, which
times the NMS step alone.

The detector, kept small and in the families' usual shape:
- backbone: rtdetr_tiny's narrow ResNet18-vd (`tutorial/models/presnet.py`), strides 8, 16, 32;
- neck: RT-DETR's CCFM without AIFI (`tutorial/models/hybrid_encoder.py`, `num_encoder_layers=0`), a
  YOLO-style FPN + PAN with CSP-RepVGG fusion blocks (YOLOv6 / PP-YOLOE's), C channels per level;
- head (FCOS, Tian et al., ICCV 2019), shared by the levels: a class tower and a box tower of
  3x3 conv + GroupNorm + SiLU, then K class logits and 4 distances (l, t, r, b) from the
  location to the box sides, d = softplus(s_l · raw) · stride (s_l a learned scale per level);
- label assignment, centre sampling (FCOS with centre sampling, ATSS paper Sec. 3): a location
  is positive for an object if it lies inside the box *and* within `center_radius` strides of its
  centre; a location claimed by several objects takes the smallest; an object no location
  claims (smaller than a stride) takes the finest level's location nearest its centre;
- losses: the varifocal loss on the class scores, target the IoU of the predicted box at the
  object's class (IoU-aware scores, as PP-YOLOE; `varifocal_loss` from `tutorial/matching/varifocal.py`),
  and the GIoU loss on the positives' boxes, each / the number of positives, weights 1 and 2.

Glossary: B batch, N locations over all levels (Σ_l H_l·W_l), K classes, C width, n objects,
s a level's stride; boxes cxcywh normalised by the unpadded image size, as the targets.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn
from torchvision.ops import batched_nms, box_convert, box_iou, generalized_box_iou_loss

from ..matching.varifocal import varifocal_loss
from .heads import init_focal_head
from .hybrid_encoder import HybridEncoder, HybridEncoderConfig
from .presnet import PResNet, PResNetConfig, presnet_tiny


@dataclass
class DenseDetectorConfig:
    num_classes: int = 6  # K
    backbone: PResNetConfig = field(default_factory=presnet_tiny)  # rtdetr_tiny's
    neck: HybridEncoderConfig = field(default_factory=lambda: HybridEncoderConfig(
        hidden_dim=128, num_encoder_layers=0, expansion=0.5, depth_mult=1 / 3))
    head_convs: int = 2  # 3x3 conv + GN + SiLU layers in each tower
    center_radius: float = 2.5  # centre sampling radius, in strides
    vfl_alpha: float = 0.75
    vfl_gamma: float = 2.0
    loss_cls: float = 1.0
    loss_giou: float = 2.0
    iou_threshold: float = 0.7  # NMS IoU threshold (YOLOv8's default, the seed table's)
    score_threshold: float = 0.001  # confidence threshold before NMS (the seed table's 0.001)
    pre_nms_top_k: int = 1000  # at most this many (location, class) candidates per image enter NMS
    num_detections: int = 100  # kept after NMS (COCO's maxDets)


def tower(c: int, n: int) -> nn.Sequential:
    layers = []
    for _ in range(n):
        layers += [nn.Conv2d(c, c, 3, padding=1), nn.GroupNorm(math.gcd(32, c), c), nn.SiLU()]
    return nn.Sequential(*layers)


class DenseDetector(nn.Module):
    """`forward(images, mask)` -> {"pred_logits" (B, N, K) per location and class, "pred_boxes"
    (B, N, 4) cxcywh normalised, "points" (B, N, 2) the locations (x, y) normalised, "radius"
    (B, N, 2) the centre-sampling radius normalised, "level" (N,) each location's level,
    "valid" (B, N) False on padding, "level_shapes" [(H_l, W_l)]}."""

    def __init__(self, cfg: DenseDetectorConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.neck.hidden_dim
        self.backbone = PResNet(cfg.backbone)
        self.neck = HybridEncoder(cfg.neck, self.backbone.num_channels)  # FPN + PAN, no AIFI
        self.strides = self.backbone.strides
        self.cls_tower, self.box_tower = tower(c, cfg.head_convs), tower(c, cfg.head_convs)
        self.cls_pred = nn.Conv2d(c, cfg.num_classes, 3, padding=1)
        self.box_pred = nn.Conv2d(c, 4, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))  # s_l
        for conv in (self.cls_pred, self.box_pred):
            nn.init.normal_(conv.weight, std=0.01)
        init_focal_head(self.cls_pred)  # p = 0.01 at the start
        nn.init.zeros_(self.box_pred.bias)

    def forward(self, images: Tensor, mask: Tensor) -> dict:
        features = self.backbone(images, mask)  # 3 x ((B, C_l, H_l, W_l), (B, H_l, W_l))
        maps, _ = self.neck([f for f, _ in features], [m for _, m in features])  # 3 x (B, C, H_l, W_l)
        valid_w = (~mask[:, 0, :]).sum(1).float()  # (B,) unpadded width in pixels
        valid_h = (~mask[:, :, 0]).sum(1).float()
        size = torch.stack([valid_w, valid_h], -1)[:, None]  # (B, 1, 2)
        logits, boxes, points, radius, level, valid = [], [], [], [], [], []
        for lvl, (x, (_, m), s) in enumerate(zip(maps, features, self.strides)):
            h, w = x.shape[-2:]
            logits.append(rearrange(self.cls_pred(self.cls_tower(x)), "b k h w -> b (h w) k"))  # (B, H·W, K)
            raw = rearrange(self.box_pred(self.box_tower(x)), "b d h w -> b (h w) d")  # (B, H·W, 4)
            ltrb = F.softplus(raw * self.scales[lvl]) * s  # (B, H·W, 4) distances in pixels
            ys, xs = torch.meshgrid(torch.arange(h, device=x.device), torch.arange(w, device=x.device), indexing="ij")
            p = (torch.stack([xs, ys], -1).flatten(0, 1).float() + 0.5) * s  # (H·W, 2) location centres in pixels
            xyxy = torch.cat([p - ltrb[..., :2], p + ltrb[..., 2:]], -1)  # (B, H·W, 4) pixels
            boxes.append(box_convert(xyxy / size.repeat(1, 1, 2), "xyxy", "cxcywh"))  # (B, H·W, 4) normalised
            points.append(p / size)  # (B, H·W, 2)
            radius.append((self.cfg.center_radius * s / size).expand(-1, h * w, -1))  # (B, H·W, 2)
            level.append(torch.full((h * w,), lvl, device=x.device))
            valid.append(~m.flatten(1))  # (B, H·W)
        return {"pred_logits": torch.cat(logits, 1), "pred_boxes": torch.cat(boxes, 1), "points": torch.cat(points, 1),
                "radius": torch.cat(radius, 1), "level": torch.cat(level), "valid": torch.cat(valid, 1),
                "level_shapes": [tuple(x.shape[-2:]) for x in maps]}

    def build_criterion(self) -> DenseCriterion:
        return DenseCriterion(self.cfg)

    @torch.no_grad()
    def postprocess(self, outputs: dict, target_sizes: Tensor, iou_threshold: float | None = None,
                    score_threshold: float | None = None) -> list[dict]:
        """Per image: (location, class) pairs scoring above `score_threshold` (at most
        `pre_nms_top_k`), NMS per class at `iou_threshold` (torchvision `batched_nms`), the best
        `num_detections` kept. Thresholds default to the config's. target_sizes (B, 2) = (h, w) ->
        [{"scores", "labels", "boxes" xyxy in pixels, "locations"}]."""
        iou_threshold = self.cfg.iou_threshold if iou_threshold is None else iou_threshold
        candidates = self.candidates(outputs, target_sizes, score_threshold)
        results = []
        for c in candidates:
            keep = batched_nms(c["boxes"], c["scores"], c["labels"], iou_threshold)[: self.cfg.num_detections]
            results.append({k: v[keep] for k, v in c.items()})
        return results

    def candidates(self, outputs: dict, target_sizes: Tensor, score_threshold: float | None = None) -> list[dict]:
        """The confidence-threshold step: per image the (location, class) pairs with σ(logit) >
        `score_threshold`, the best `pre_nms_top_k` of them, boxes xyxy in pixels."""
        score_threshold = self.cfg.score_threshold if score_threshold is None else score_threshold
        scores = outputs["pred_logits"].sigmoid() * outputs["valid"][..., None]  # (B, N, K): padding scores 0
        k = scores.shape[-1]
        h, w = target_sizes.unbind(1)
        scale = torch.stack([w, h, w, h], dim=1).to(scores)  # (B, 4)
        boxes = box_convert(outputs["pred_boxes"], "cxcywh", "xyxy") * scale[:, None]  # (B, N, 4) pixels
        out = []
        for sc, bx in zip(scores, boxes):
            flat = sc.flatten()  # (N·K,)
            idx = torch.nonzero(flat > score_threshold).flatten()
            idx = idx[flat[idx].topk(min(self.cfg.pre_nms_top_k, len(idx))).indices]  # the best, by score
            out.append({"scores": flat[idx], "labels": idx % k, "boxes": bx[idx // k], "locations": idx // k})
        return out


def time_nms(model: DenseDetector, outputs: dict, target_sizes: Tensor, iou_threshold: float | None = None,
             score_threshold: float | None = None, repeats: int = 10) -> float:
    """Seconds per image of post-processing alone (the seed's "NMS (ms)" column): the confidence
    threshold, the pre-NMS top-k and `batched_nms`, on already computed `outputs`; the median of
    `repeats` runs over the batch, divided by the batch size."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model.postprocess(outputs, target_sizes, iou_threshold, score_threshold)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2] / len(target_sizes)


# --- label assignment and loss ------------------------------------------------------------------


def assign_targets(points: Tensor, radius: Tensor, valid: Tensor, level: Tensor, boxes: Tensor) -> Tensor:
    """Centre sampling for one image. points (N, 2), radius (N, 2) normalised; valid (N,) bool;
    level (N,); boxes (n, 4) cxcywh -> (N,) the object each location must detect, -1 for none.

    Candidates: inside the box and within `radius` of its centre on both axes; plus, for each
    object, the finest level's valid location nearest its centre. A location with several
    candidate objects takes the one of smallest area (FCOS)."""
    if len(boxes) == 0:
        return torch.full((len(points),), -1, dtype=torch.int64, device=points.device)
    offset = (points[:, None, :] - boxes[None, :, :2]).abs()  # (N, n, 2)
    candidate = (offset < boxes[None, :, 2:] / 2).all(-1) & (offset < radius[:, None, :]).all(-1)  # (N, n)
    finest = (level == level.min()) & valid  # (N,)
    dist = offset.pow(2).sum(-1).masked_fill(~finest[:, None], float("inf"))  # (N, n)
    candidate[dist.argmin(0), torch.arange(len(boxes), device=points.device)] = True  # every object gets one
    candidate &= valid[:, None]
    area = (boxes[:, 2] * boxes[:, 3])[None].expand_as(candidate).masked_fill(~candidate, float("inf"))  # (N, n)
    best_area, best = area.min(1)  # (N,)
    return torch.where(torch.isfinite(best_area), best, -1)


class DenseCriterion(nn.Module):
    """Centre-sampling assignment, then {"loss_cls": varifocal loss over every valid (location,
    class) pair, the positives' target the IoU at their object's class; "loss_giou": Σ (1 - GIoU)
    over the positives; each / the number of positives; "loss": the weighted sum}."""

    def __init__(self, cfg: DenseDetectorConfig):
        super().__init__()
        self.cfg = cfg

    def forward(self, outputs: dict, targets: list[dict]) -> dict[str, Tensor]:
        logits, boxes, valid = outputs["pred_logits"], outputs["pred_boxes"], outputs["valid"]  # (B, N, K|4), (B, N)
        quality = torch.zeros_like(logits)  # (B, N, K)
        positive = torch.zeros_like(logits, dtype=torch.bool)
        pred, true = [], []
        for b, t in enumerate(targets):
            obj = assign_targets(outputs["points"][b], outputs["radius"][b], valid[b], outputs["level"], t["boxes"])
            pos = torch.nonzero(obj >= 0).flatten()  # (n_pos,)
            src = box_convert(boxes[b, pos], "cxcywh", "xyxy")  # (n_pos, 4)
            tgt = box_convert(t["boxes"][obj[pos]], "cxcywh", "xyxy")  # (n_pos, 4)
            iou = box_iou(src, tgt).diagonal().detach() if len(pos) else src.new_zeros(0)  # (n_pos,)
            quality[b, pos, t["labels"][obj[pos]]] = iou
            positive[b, pos, t["labels"][obj[pos]]] = True
            pred.append(src)
            true.append(tgt)
        num_pos = max(int(positive.sum()), 1)
        loss_cls = varifocal_loss(logits[valid], quality[valid], positive[valid], self.cfg.vfl_alpha,
                                  self.cfg.vfl_gamma) / num_pos
        loss_giou = generalized_box_iou_loss(torch.cat(pred), torch.cat(true), reduction="sum") / num_pos
        return {"loss_cls": loss_cls, "loss_giou": loss_giou,
                "loss": self.cfg.loss_cls * loss_cls + self.cfg.loss_giou * loss_giou}


# --- presets ----------------------------------------------------------------------------------


def dense_tiny() -> DenseDetectorConfig:
    """rtdetr_tiny's backbone, a PAN neck of C=128 (one RepVGG block per fusion block), two conv
    layers per tower; NMS at IoU 0.7, confidence 0.001 (YOLOv8's defaults, the seed table's)."""
    return DenseDetectorConfig()
