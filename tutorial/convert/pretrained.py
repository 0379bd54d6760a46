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

from ..checkpoint import load_model, save_atomic
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
        raise InputError(f"--model {preset!r}: no converter from {source} weights; it has {', '.join(have)}")
    return MAPS[preset][source]


def num_classes_of(preset: str, state: dict[str, Tensor], source: str) -> int:
    """The number of classes the checkpoint's class head was trained for, in our preset's count."""
    keymap, head = keymap_for(preset, source), CLASS_HEADS[preset]
    cfg = build_model(preset).state_dict()[head].shape[0] - model_config(preset).num_classes  # +1 with "no object"
    for key, tensor in state.items():
        mapped = keymap.target_names(key, tensor) or []
        if any(name == head for name, _ in mapped):
            return tensor.shape[0] - cfg
    return model_config(preset).num_classes


def convert_state_dict(preset: str, state: dict[str, Tensor], source: str | None = None,
                       where: str = "checkpoint") -> tuple[nn.Module, dict[str, Tensor]]:
    """(our model, its state dict) from a foreign state dict; every key accounted for."""
    source = source or guess_source(state)
    keymap = keymap_for(preset, source)
    model = build_model(preset, num_classes=num_classes_of(preset, state, source))
    mapped = apply(keymap, state, model.state_dict(), where=f"{where} ({source})")
    model.load_state_dict(mapped, strict=True)
    return model.eval(), mapped


def convert(preset: str, src: str | os.PathLike, out: str | os.PathLike, source: str | None = None) -> dict:
    """Convert the file `src` and save it to `out` in our checkpoint format; returns a summary."""
    state = read_state_dict(src)
    source = source or guess_source(state)
    model, mapped = convert_state_dict(preset, state, source, where=str(src))
    cfg = model_config(preset, num_classes=model.num_classes if hasattr(model, "num_classes") else
                       num_classes_of(preset, state, source))
    save_atomic({"preset": preset, "config": dataclasses.asdict(cfg), "model": mapped,
                 "converted_from": {"source": source, "file": Path(src).name, "keys": len(state)}}, out)
    return {"preset": preset, "source": source, "source_keys": len(state), "model_keys": len(mapped),
            "parameters": sum(p.numel() for p in model.parameters())}


def load_pretrained(preset: str, path: str | os.PathLike, source: str | None = None) -> nn.Module:
    """`preset` with the weights in `path`: a checkpoint of this package (shipped, trained or
    converted) or an official / Hugging Face file, converted on the fly. In eval mode."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True) if Path(path).is_file() \
            and Path(path).suffix in (".pt", ".pth") else None
    except Exception:  # noqa: BLE001 - not ours: fall through to the foreign readers
        obj = None
    if isinstance(obj, dict) and "preset" in obj:
        return load_model(path, preset)
    model, _ = convert_state_dict(preset, read_state_dict(path), source, where=str(path))
    return model


__all__ = ["ConversionError", "convert", "convert_state_dict", "load_pretrained", "keymap_for", "MAPS", "SOURCES"]
