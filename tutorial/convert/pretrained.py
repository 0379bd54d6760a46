"""Weights of another codebase, as a model of this package: `convert_state_dict`, `load_pretrained`,
and the file `python -m tutorial convert` writes (our checkpoint format, so that `eval`, `predict`
and the notebooks take it as they take a shipped one).

Each family's key maps live in a file of this folder named after the model; `MAPS` gathers them,
preset by preset. The number of classes is read from the checkpoint's class head (91 for the COCO
ids of DETR, 80 for RT-DETR's remapped ones, or a fine-tuned model's own).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from ..training.checkpoint import load_model, save_atomic
from ..errors import InputError
from ..models import build_model, model_config
from . import conditional_detr, dab_detr, deformable_detr, detr, dino, rt_detr
from .files import guess_source, read_state_dict
from .keymap import ConversionError, apply

FAMILIES = (detr, deformable_detr, conditional_detr, dab_detr, dino, rt_detr)  # lineage order
MAPS = {preset: maps for family in FAMILIES for preset, maps in family.MAPS.items()}
CLASS_HEADS = {preset: key for family in FAMILIES for preset, key in family.CLASS_HEADS.items()}
SOURCES = ("official", "transformers")


def keymap_for(preset: str, source: str):
    """The `KeyMap` from `source` onto `preset`, or an error naming what is supported."""
    if source not in SOURCES:
        raise InputError(f"--from {source!r}: expected one of {', '.join(SOURCES)}")
    if preset not in MAPS or source not in MAPS[preset]:
        have = sorted(p for p, m in MAPS.items() if source in m)
        raise InputError(f"--model {preset!r}: no converter from {source} weights; there is one for "
                         f"{', '.join(have)}")
    return MAPS[preset][source]


def class_count(preset: str, model: nn.Module, state: dict[str, Tensor], source: str) -> int:
    """The number of classes of the checkpoint's class head, counted as `preset`'s config counts
    them (our head has K + 1 rows where a "no object" class is used, K with a focal loss)."""
    keymap, head, cfg = keymap_for(preset, source), CLASS_HEADS[preset], model_config(preset)
    extra = model.state_dict()[head].shape[0] - cfg.num_classes
    prepared = keymap.prepare(dict(state)) if keymap.prepare else state
    for key, tensor in prepared.items():
        if any(name == head for name, _ in keymap.target_names(key, tensor) or []):
            return tensor.shape[0] - extra
    return cfg.num_classes


def convert_state_dict(preset: str, state: dict[str, Tensor], source: str | None = None,
                       where: str = "checkpoint") -> tuple[nn.Module, dict[str, Tensor]]:
    """(our model in eval mode, its state dict) from a foreign state dict; every key accounted for."""
    source = source or guess_source(state)
    keymap_for(preset, source)  # fail early on an unsupported pair
    model = build_model(preset)
    k = class_count(preset, model, state, source)
    if k != model_config(preset).num_classes:
        model = build_model(preset, num_classes=k)
    mapped = apply(keymap_for(preset, source), state, model.state_dict(), where=f"{where} ({source} format)")
    model.load_state_dict(mapped, strict=True)
    return model.eval(), mapped


def convert(preset: str, src: str | os.PathLike, out: str | os.PathLike, source: str | None = None) -> dict:
    """Convert the file `src` and save it to `out` in our checkpoint format; returns a summary."""
    state = read_state_dict(src)
    source = source or guess_source(state)
    model, mapped = convert_state_dict(preset, state, source, where=str(src))
    k = class_count(preset, model, state, source)
    cfg = model_config(preset, num_classes=k)
    save_atomic({"preset": preset, "config": dataclasses.asdict(cfg), "model": mapped,
                 "converted_from": {"source": source, "file": Path(src).name, "keys": len(state)}}, out)
    return {"preset": preset, "source": source, "source_keys": len(state), "model_keys": len(mapped),
            "num_classes": k, "parameters": sum(p.numel() for p in model.parameters())}


def is_ours(path: str | os.PathLike) -> bool:
    """A checkpoint this package wrote (shipped, trained or converted): a dict with a "preset"."""
    path = Path(path)
    if not (path.is_file() and path.suffix in (".pt", ".pth")):
        return False
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not ours (the official files keep an argparse.Namespace)
        return False
    return isinstance(obj, dict) and "preset" in obj and "config" in obj


def load_pretrained(preset: str, path: str | os.PathLike, source: str | None = None) -> nn.Module:
    """`preset` with the weights in `path`, in eval mode: a checkpoint of this package (shipped,
    trained, or written by `convert`), or an official / Hugging Face file converted on the fly."""
    if is_ours(path):
        return load_model(path, preset)
    model, _ = convert_state_dict(preset, read_state_dict(path), source, where=str(path))
    return model


__all__ = ["ConversionError", "convert", "convert_state_dict", "load_pretrained", "keymap_for", "MAPS", "SOURCES"]
