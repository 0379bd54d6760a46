"""Training: AdamW, warm-up then step or cosine learning-rate decay, gradient clipping, a checkpoint
written atomically every epoch, `--resume`, metrics appended as JSON lines, COCO metrics.

    python -m tutorial train --model detr_tiny --epochs 50 --out runs/detr_tiny
    torchrun --nproc_per_node 2 -m tutorial train ...      # DistributedDataParallel (gloo on CPU)

Files in `out`: `checkpoint.pt` (the last finished epoch) and `metrics.jsonl`, one line per
epoch: {"epoch", "train_time" (s, cumulative, evaluation excluded), "cpu_time" (the process's CPU
seconds over the same span: one core's time with `--threads 1 --workers 0`, however busy the
machine), "lr", "loss", the loss terms,
"AP", "AP50", ...}. A non-finite loss stops training with a message and leaves the last
checkpoint as it was. The loop is the official `engine.py`'s, without its logging framework.
"""
from __future__ import annotations

import dataclasses
import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from .amp import autocast, bf16_warning, input_layout, to_float
from .checkpoint import CheckpointError, config_differences, load_checkpoint, save_atomic, saved_config
from ..data.dataset import DetectionDataset, collate
from .distributed import all_reduce_mean, barrier, broadcast_buffers, init_distributed, is_main
from .evaluate import evaluate
from .instability import instability, matched_targets
from ..models import build_model, model_config


class NonFiniteLossError(FloatingPointError):
    """Raised when the loss becomes NaN or infinite."""


@dataclass
class TrainConfig:
    """What `train` does. `python -m tutorial train` has one option per field, generated from this
    class (tutorial/__main__.py): `--batch-size` for `batch_size`, the comment as its help, the
    default from here; a bool that defaults to True is switched off with `--no-<name>`."""
    model: str = "detr_tiny"  # a name from tutorial.list_models()
    data: str = "data/shapes"  # shapes folder or a local COCO 2017 folder
    out: str = "runs/detr_tiny"  # run folder: checkpoint.pt and metrics.jsonl
    epochs: int = 50
    batch_size: int = 16  # images per step (per process under torchrun)
    lr: float = 1e-4  # AdamW learning rate of everything but the backbone
    lr_backbone: float = 1e-4  # DETR: 1e-5 for a pretrained backbone; from scratch it must learn too
    weight_decay: float = 1e-4  # AdamW weight decay
    clip_max_norm: float = 0.1  # gradient norm clipping; 0 switches it off
    schedule: Literal["step", "cosine"] = "step"  # "step": x0.1 at `lr_drop` (DETR); "cosine": down to 1% at the end
    lr_drop: int | None = None  # epoch of the step decay; default 2/3 of `epochs`
    warmup_iters: int = 0  # iterations of linear learning-rate warm-up
    seed: int = 42  # seeds random, numpy and torch
    workers: int = 2  # data-loading processes
    eval_every: int = 1  # epochs between COCO evaluations on val (the last epoch always)
    max_train_time: float | None = None  # seconds: stop after the epoch in which this many are spent
    lr_drop_time: float | None = None  # with a time budget: x0.1 from the first epoch starting after this many s
    train_images: int | None = None  # use only the first n training images (tests, quick runs)
    val_images: int | None = None  # evaluate on only the first n val images
    resize: tuple[int, int] | None = None  # (shorter side, max longer side) for real COCO, e.g. (800, 1333)
    instability_images: int = 0  # > 0: track DN-DETR's instability score on this many val images
    resume: bool = False  # continue from out/checkpoint.pt
    progress: bool = True  # a tqdm bar per epoch
    model_overrides: dict = field(default_factory=dict)  # JSON of config fields: build_model(model, **model_overrides)
    amp: Literal["fp32", "bf16"] = "fp32"  # "bf16": the forward under bfloat16 autocast (AMX), losses in float32


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def subset(dataset, n: int | None):
    return dataset if n is None else torch.utils.data.Subset(dataset, range(min(n, len(dataset))))


def lr_factor(cfg: TrainConfig, it: int, iters_per_epoch: int, time_dropped: bool = False) -> float:
    """Multiplier of the base learning rate at iteration `it`: linear warm-up, then step or cosine
    (or, for time-budgeted runs, a step once `lr_drop_time` seconds of training have passed)."""
    if it < cfg.warmup_iters:
        return (it + 1) / cfg.warmup_iters
    if cfg.lr_drop_time is not None:
        return 0.1 if time_dropped else 1.0
    total = cfg.epochs * iters_per_epoch
    if cfg.schedule == "cosine":
        return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(it / total, 1.0)))
    drop = cfg.lr_drop if cfg.lr_drop is not None else max(1, (2 * cfg.epochs) // 3)
    return 0.1 if it >= drop * iters_per_epoch else 1.0


def param_groups(model: nn.Module, cfg: TrainConfig) -> list[dict]:
    """Backbone parameters get `lr_backbone`, the rest `lr` (as in DETR)."""
    backbone = [p for n, p in model.named_parameters() if n.startswith("backbone.") and p.requires_grad]
    rest = [p for n, p in model.named_parameters() if not n.startswith("backbone.") and p.requires_grad]
    return [{"params": rest, "lr": cfg.lr}, {"params": backbone, "lr": cfg.lr_backbone}]


def train_one_epoch(model, criterion, loader, optimizer, scheduler, cfg: TrainConfig, epoch: int,
                    device) -> dict[str, float]:
    """One pass over `loader`; returns the epoch's mean loss terms."""
    model.train()
    # DN-DETR builds its denoising queries from the targets: models that need them say so
    uses_targets = getattr(getattr(model, "module", model), "uses_targets", False)  # `module`: under DDP
    sums: dict[str, float] = {}
    bar = tqdm(loader, desc=f"epoch {epoch}", disable=not (cfg.progress and is_main()), leave=False)
    for it, (images, mask, targets) in enumerate(bar):
        images, mask = input_layout(images.to(device), cfg.amp), mask.to(device)
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        with autocast(device, cfg.amp):
            outputs = model(images, mask, targets=targets) if uses_targets else model(images, mask)
        losses = criterion(to_float(outputs), targets)
        loss = losses["loss"]
        if not torch.isfinite(loss):
            raise NonFiniteLossError(f"loss is {loss.item()} at epoch {epoch}, iteration {it}; stopping. "
                                     f"The last good checkpoint in {cfg.out} was left as it was.")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.clip_max_norm > 0:
            nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_max_norm)
        optimizer.step()
        scheduler.step()
        for k, v in losses.items():
            sums[k] = sums.get(k, 0.0) + v.item()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    n = max(len(loader), 1)
    return {k: all_reduce_mean(v / n, device) for k, v in sums.items()}


def resume_checkpoint(path: Path, model_cfg) -> dict | None:
    """The training checkpoint at `path` if there is one, checked against the config to train."""
    if not path.exists():
        return None
    ckpt = load_checkpoint(path)
    diffs = config_differences(saved_config(ckpt, model_cfg), dataclasses.asdict(model_cfg))
    if diffs:
        raise CheckpointError(f"{path}: cannot resume, the model config differs: {'; '.join(diffs)}; "
                              f"train into another --out, or drop --resume to start again")
    return ckpt


def train(cfg: TrainConfig) -> nn.Module:
    """Train `cfg.model` on `cfg.data`; returns the trained (unwrapped) model."""
    rank, world_size, device = init_distributed()
    seed_everything(cfg.seed + rank)
    out = Path(cfg.out)
    # Bad input (model name, override, data, checkpoint to resume) fails here, before anything is built.
    model_cfg = model_config(cfg.model, **cfg.model_overrides)
    num_classes = model_cfg.num_classes
    train_set = subset(DetectionDataset(cfg.data, "train", train=True, num_classes=num_classes, resize=cfg.resize),
                       cfg.train_images)
    val_set = subset(DetectionDataset(cfg.data, "val", train=False, num_classes=num_classes, resize=cfg.resize),
                     cfg.val_images)
    ckpt = resume_checkpoint(out / "checkpoint.pt", model_cfg) if cfg.resume else None
    model = build_model(cfg.model, **cfg.model_overrides).to(device)
    if cfg.amp == "bf16" and is_main() and (warning := bf16_warning(device.type)):
        print(warning, file=sys.stderr)
    sampler = (torch.utils.data.DistributedSampler(train_set, world_size, rank, seed=cfg.seed)
               if world_size > 1 else torch.utils.data.RandomSampler(
                   train_set, generator=torch.Generator().manual_seed(cfg.seed)))
    loader = torch.utils.data.DataLoader(train_set, batch_size=cfg.batch_size, sampler=sampler,
                                         num_workers=cfg.workers, collate_fn=collate, drop_last=False,
                                         persistent_workers=cfg.workers > 0)
    criterion = model.build_criterion()
    optimizer = torch.optim.AdamW(param_groups(model, cfg), weight_decay=cfg.weight_decay)
    time_dropped = [False]  # set once train_time passes cfg.lr_drop_time
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it, len(loader), time_dropped[0]))

    # Instability score (seed, DN-DETR Fig. 2): the matching of a fixed set, compared epoch to epoch.
    fixed_batches = [collate([val_set[i] for i in range(s, min(s + cfg.batch_size, cfg.instability_images))])
                     for s in range(0, min(cfg.instability_images, len(val_set)), cfg.batch_size)]
    previous_matching = None

    start_epoch, train_time, cpu_time = 0, 0.0, 0.0
    if ckpt is not None:
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        start_epoch, train_time, cpu_time = ckpt["epoch"] + 1, ckpt["train_time"], ckpt.get("cpu_time", 0.0)
        previous_matching = ckpt.get("matched_targets")
        torch.set_rng_state(ckpt["rng"])
        if is_main() and cfg.progress:
            print(f"resuming {out / 'checkpoint.pt'} after epoch {ckpt['epoch']}")
    unwrapped = model
    if world_size > 1:
        model = DistributedDataParallel(model)

    for epoch in range(start_epoch, cfg.epochs):
        if world_size > 1:
            sampler.set_epoch(epoch)
        time_dropped[0] = cfg.lr_drop_time is not None and train_time >= cfg.lr_drop_time
        t0, c0 = time.perf_counter(), time.process_time()
        stats = train_one_epoch(model, criterion, loader, optimizer, scheduler, cfg, epoch, device)
        train_time += all_reduce_mean(time.perf_counter() - t0, device)
        cpu_time += time.process_time() - c0
        broadcast_buffers(unwrapped)
        last = epoch == cfg.epochs - 1 or (cfg.max_train_time is not None and train_time >= cfg.max_train_time)
        record = {"epoch": epoch, "train_time": round(train_time, 2), "cpu_time": round(cpu_time, 2), "lr": optimizer.param_groups[0]["lr"],
                  **{k: round(v, 5) for k, v in stats.items()}}
        if is_main():
            if (epoch + 1) % cfg.eval_every == 0 or last:
                record.update(evaluate(unwrapped, val_set, cfg.batch_size, 0, device, cfg.progress))
            if fixed_batches:
                matching = matched_targets(unwrapped, fixed_batches)
                if previous_matching is not None:
                    record["IS"] = instability(previous_matching, matching)
                previous_matching = matching
            save_atomic({"preset": cfg.model, "config": dataclasses.asdict(unwrapped.cfg),
                         "model": unwrapped.state_dict(), "optimizer": optimizer.state_dict(),
                         "scheduler": scheduler.state_dict(), "epoch": epoch, "train_time": train_time, "cpu_time": cpu_time,
                         "rng": torch.get_rng_state(), "train_config": dataclasses.asdict(cfg),
                         "matched_targets": previous_matching},
                        out / "checkpoint.pt")
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")
            if cfg.progress:
                print(json.dumps(record))
        barrier()
        if last:
            break
    return unwrapped
