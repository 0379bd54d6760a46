"""Checkpoints: written atomically, loaded with a clear error when they do not fit the model.

A checkpoint is a dict saved with `torch.save`:
    {"preset": model name, "config": dataclasses.asdict(model config), "model": state dict,
     plus, for training checkpoints, "optimizer", "scheduler", "epoch", "train_time", ...}
Shipped checkpoints keep only "preset", "config" and "model", in float16 to halve their size.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch
from torch import nn

from .models import PRESETS, build_model, config_from_dict


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and the field."""


def save_atomic(obj, path: str | os.PathLike) -> None:
    """`torch.save` to a temporary file in the same folder, then rename: a crash mid-write
    leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


INIT_ONLY = {"weights"}  # fields that say how a model was initialised, not what it is


def config_differences(a, b, prefix: str = "") -> list[str]:
    """Field paths where two config dicts differ, e.g. ["transformer.d_model: 256 != 128"].
    Fields in `INIT_ONLY` (a backbone's initial weights) are not compared: a checkpoint's weights
    replace them."""
    out = []
    for key in sorted((set(a) | set(b)) - INIT_ONLY):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            out += config_differences(va, vb, f"{prefix}{key}.")
        elif (list(va) if isinstance(va, tuple) else va) != (list(vb) if isinstance(vb, tuple) else vb):
            out.append(f"{prefix}{key}: {va!r} (checkpoint) != {vb!r} (model)")
    return out


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {e})") from e
    for key in ("preset", "config", "model"):
        if key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no field '{key}'")
    return ckpt


def saved_config(ckpt: dict, model: nn.Module) -> dict:
    """The checkpoint's config with fields added to the config class since it was saved filled
    in with their defaults (so adding an option does not orphan older checkpoints)."""
    return dataclasses.asdict(config_from_dict(type(model.cfg), ckpt["config"]))


def load_weights(model: nn.Module, ckpt: dict, path: str | os.PathLike) -> None:
    """Load `ckpt["model"]` into `model` after checking that the configs agree."""
    diffs = config_differences(saved_config(ckpt, model), dataclasses.asdict(model.cfg))
    if diffs:
        raise CheckpointError(f"{path}: checkpoint config does not match the model: " + "; ".join(diffs))
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def load_model(path: str | os.PathLike, preset: str | None = None) -> nn.Module:
    """Rebuild the model a checkpoint was saved from and load its weights (in eval mode).

    With `preset`, the checkpoint must have been trained with that preset's config (else a
    `CheckpointError` naming the differing fields).
    """
    ckpt = load_checkpoint(path)
    name = preset or ckpt["preset"]
    if name not in PRESETS:
        raise CheckpointError(f"{path}: field 'preset' is {name!r}, not a known model")
    if preset is None:
        model_cls, preset_fn = PRESETS[name]
        model = model_cls(config_from_dict(type(preset_fn()), ckpt["config"]))
        model.preset = name
    else:
        model = build_model(name)
    load_weights(model, ckpt, path)
    return model.eval()


def shippable(ckpt: dict) -> dict:
    """Only what inference needs, floating-point weights in float16 (for `data/checkpoints/`)."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    return {"preset": ckpt["preset"], "config": ckpt["config"], "model": state}
