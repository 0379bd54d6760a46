"""Pretraining the tiny backbones with a localisation signal: the tiny analogue of ImageNet.

Every paper in the deck starts its detector from an ImageNet-pretrained ResNet; DETR trained from
scratch is known not to converge (facebookresearch/detr issues #125, #169, #294). An image-level
task is too weak here: a tiny ResNet pretrained to say *which* classes are present (multi-label,
presence mAP 0.81) did not change detr_tiny's first epoch (AP50 1.0% against 0.6%). So the
pretext task carries location: **dense labelling**. For every cell of the stride-8 and stride-16
maps, a 1×1 convolution predicts the category of the object visible at the cell's centre, or
background (a 6-way cross-entropy). Its images are generated with the shapes generator under
another seed (`PretrainConfig.seed`), never the detection train or val sets.

    python -m tutorial pretrain --backbone resnet --out data/pretrained/resnet_tiny.pt
    python -m tutorial pretrain --backbone presnet --out data/pretrained/presnet_tiny.pt

writes the backbone's state dict (the format `BackboneConfig.weights` / `PResNetConfig.weights`
load) and a JSON manifest beside it: command, steps, time, held-out pixel accuracy and mean IoU.
The `*_tiny` presets load these files by default (`weights="pretrained:<name>"`);
`backbone={"weights": None}` trains from scratch.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..data.dataset import IMAGENET_MEAN, IMAGENET_STD
from ..data.shapes import CATEGORIES, PRESETS, ShapesConfig, make_labelled_image

PRETRAINED_DIR = Path(__file__).resolve().parents[2] / "data" / "pretrained"
IGNORE = -1  # label of padded pixels


def resolve_weights(weights: str | None) -> str | None:
    """`"pretrained:<name>"` -> the shipped file `data/pretrained/<name>.pt`; other values unchanged."""
    if weights is None or not weights.startswith("pretrained:"):
        return weights
    path = PRETRAINED_DIR / f"{weights.split(':', 1)[1]}.pt"
    if not path.is_file():
        raise FileNotFoundError(f"backbone weights {weights!r}: {path} does not exist; create it with "
                                f"`python -m tutorial pretrain` or build the model with backbone={{'weights': None}}")
    return str(path)


@dataclass
class PretrainConfig:
    backbone: str = "resnet"  # "resnet": the tiny ResNet of detr_tiny & co; "presnet": rtdetr_tiny's
    out: str = "data/pretrained/resnet_tiny.pt"
    images: int = 4000  # generated training images, held in memory
    val_images: int = 200
    seed: int = 1  # shapes generator seed; the detection sets use seed 0
    batch_size: int = 32
    lr: float = 2e-3
    weight_decay: float = 1e-4
    max_time: float = 600.0  # seconds of training
    threads: int | None = None


def build_backbone(kind: str) -> nn.Module:
    """The tiny preset's backbone with random weights, returning the strides 8 and 16 (and 32)."""
    from ..models.backbone import Backbone
    from ..models.detr import detr_tiny
    from ..models.presnet import PResNet
    from ..models.rt_detr import rtdetr_tiny

    if kind == "resnet":
        cfg = dataclasses.replace(detr_tiny().backbone, return_layers=("layer2", "layer3"), weights=None)
        return Backbone(cfg)
    if kind == "presnet":
        return PResNet(dataclasses.replace(rtdetr_tiny().backbone, weights=None))
    raise ValueError(f"--backbone: expected 'resnet' or 'presnet', got {kind!r}")


def backbone_state(kind: str, backbone: nn.Module) -> dict[str, Tensor]:
    """The state dict in the format the presets' `weights` field loads."""
    return (backbone.body if kind == "resnet" else backbone).state_dict()


class DenseHead(nn.Module):
    """One 1×1 convolution per returned stage: features -> per-cell class logits (background = 0)."""

    def __init__(self, channels: list[int], num_classes: int = len(CATEGORIES) + 1):
        super().__init__()
        self.heads = nn.ModuleList(nn.Conv2d(c, num_classes, 1) for c in channels)

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        return [h(f) for h, f in zip(self.heads, features)]  # [(B, K, H_l, W_l)]


def generate(cfg: ShapesConfig, n: int, split: str) -> list[tuple[Tensor, Tensor]]:
    """n (normalised image (3, H, W), labels (H, W)) pairs drawn by the shapes generator."""
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    out = []
    for i in range(n):
        img, labels = make_labelled_image(cfg, split, i)
        x = torch.from_numpy(img).permute(2, 0, 1).float() / 255  # (3, H, W)
        out.append(((x - mean) / std, torch.from_numpy(labels)))
    return out


def batch(items: list[tuple[Tensor, Tensor]], flip: torch.Generator | None = None):
    """Pad to (B, 3, H, W) images, (B, H, W) mask (True = padding) and (B, H, W) labels (IGNORE on padding)."""
    h, w = max(x.shape[1] for x, _ in items), max(x.shape[2] for x, _ in items)
    images = torch.zeros(len(items), 3, h, w)
    labels = torch.full((len(items), h, w), IGNORE, dtype=torch.long)
    mask = torch.ones(len(items), h, w, dtype=torch.bool)
    for i, (x, y) in enumerate(items):
        if flip is not None and torch.rand(1, generator=flip).item() < 0.5:
            x, y = x.flip(-1), y.flip(-1)
        images[i, :, : x.shape[1], : x.shape[2]] = x
        labels[i, : y.shape[0], : y.shape[1]] = y
        mask[i, : x.shape[1], : x.shape[2]] = False
    return images, mask, labels


def cell_labels(labels: Tensor, stride: int) -> Tensor:
    """(B, H, W) -> (B, ceil(H/s), ceil(W/s)): the label at each cell's centre pixel."""
    off = stride // 2
    return labels[:, off::stride, off::stride]


def dense_loss(logits: list[Tensor], labels: Tensor, strides: list[int]) -> Tensor:
    loss = 0.0
    for lg, s in zip(logits, strides):
        y = cell_labels(labels, s)[:, : lg.shape[2], : lg.shape[3]]  # (B, H_l, W_l)
        lg = lg[:, :, : y.shape[1], : y.shape[2]]
        loss = loss + F.cross_entropy(lg, y, ignore_index=IGNORE)
    return loss / len(logits)


@torch.no_grad()
def evaluate_dense(backbone, head, data, strides, batch_size: int = 32) -> dict[str, float]:
    """Pixel accuracy and mean IoU over the 6 labels at the stride-16 cells of held-out images."""
    backbone.eval(), head.eval()
    k = len(CATEGORIES) + 1
    conf = torch.zeros(k, k, dtype=torch.long)
    s = strides.index(16) if 16 in strides else 0
    for i in range(0, len(data), batch_size):
        images, mask, labels = batch(data[i: i + batch_size])
        lg = head([f for f, _ in backbone(images, mask)])[s]  # (B, K, H_l, W_l)
        y = cell_labels(labels, strides[s])[:, : lg.shape[2], : lg.shape[3]]
        pred = lg[:, :, : y.shape[1], : y.shape[2]].argmax(1)
        keep = y != IGNORE
        conf += torch.bincount(y[keep] * k + pred[keep], minlength=k * k).view(k, k)
    iou = conf.diag() / (conf.sum(0) + conf.sum(1) - conf.diag()).clamp(min=1)
    backbone.train(), head.train()
    return {"pixel_accuracy": round((conf.diag().sum() / conf.sum()).item(), 4),
            "mean_iou": round(iou.mean().item(), 4), "iou_per_label": [round(v, 4) for v in iou.tolist()]}


def pretrain(cfg: PretrainConfig, command: str = "", progress: bool = True) -> dict:
    """Train the backbone on dense labelling for `cfg.max_time` seconds; write weights + manifest."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    shapes = dataclasses.replace(PRESETS["default"], seed=cfg.seed)
    t0 = time.perf_counter()
    train_set, val_set = generate(shapes, cfg.images, "train"), generate(shapes, cfg.val_images, "val")
    gen_time = time.perf_counter() - t0
    backbone = build_backbone(cfg.backbone)
    head = DenseHead(backbone.num_channels)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    flip, order = torch.Generator().manual_seed(cfg.seed), torch.Generator().manual_seed(cfg.seed + 1)
    steps, spent, losses, curve = 0, 0.0, [], []
    while spent < cfg.max_time:
        perm = torch.randperm(len(train_set), generator=order).tolist()
        for i in range(0, len(perm) - cfg.batch_size + 1, cfg.batch_size):
            t = time.perf_counter()
            for g in opt.param_groups:  # cosine over the time budget, down to 1%
                g["lr"] = cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(spent / cfg.max_time, 1))))
            images, mask, labels = batch([train_set[j] for j in perm[i: i + cfg.batch_size]], flip)
            loss = dense_loss(head([f for f, _ in backbone(images, mask)]), labels, backbone.strides)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            spent += time.perf_counter() - t
            losses.append(loss.item())
            if steps % 50 == 0:
                curve.append({"step": steps, "time_s": round(spent, 1), "loss": round(float(np.mean(losses[-50:])), 4)})
                if progress:
                    print(json.dumps(curve[-1]), flush=True)
            if spent >= cfg.max_time:
                break
    metrics = evaluate_dense(backbone, head, val_set, backbone.strides)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(backbone_state(cfg.backbone, backbone), out)
    manifest = {"command": command, "config": dataclasses.asdict(cfg), "steps": steps,
                "train_time_s": round(spent, 1), "generate_time_s": round(gen_time, 1),
                "threads": torch.get_num_threads(), "held_out": metrics, "loss_curve": curve,
                "file_bytes": out.stat().st_size}
    out.with_suffix(".json").write_text(json.dumps(manifest, indent=1) + "\n")
    if progress:
        print(json.dumps({"steps": steps, "train_time_s": round(spent, 1), **metrics}))
    return manifest
