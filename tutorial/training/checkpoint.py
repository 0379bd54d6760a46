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

from ..errors import InputError
from ..models import PRESETS, config_from_dict, model_config


class CheckpointError(InputError, ValueError):
    """A checkpoint that cannot be used; the message names the file and the field."""


EXPECTED = "a file written by `python -m tutorial train` (<out>/checkpoint.pt) or a shipped data/checkpoints/<name>.pt"


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
    """The checkpoint dict at `path`; `CheckpointError` if it is missing, unreadable or lacks a field."""
    path = Path(path)
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise CheckpointError(f"{path}: checkpoint file {what}; expected {EXPECTED}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        first = (str(e).strip().splitlines() or [""])[0]  # torch's messages can run to paragraphs
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(e).__name__}: {first}); "
                              f"expected {EXPECTED}") from e
    for key in ("preset", "config", "model"):
        if not isinstance(ckpt, dict) or key not in ckpt:
            raise CheckpointError(f"{path}: checkpoint has no field '{key}'; expected {EXPECTED}")
    return ckpt


def saved_config(ckpt: dict, cfg) -> dict:
    """The checkpoint's config, as a dict of config `cfg`'s class, with fields added to the class
    since it was saved filled in with their defaults (so adding an option does not orphan older
    checkpoints)."""
    return dataclasses.asdict(config_from_dict(type(cfg), ckpt["config"]))


def check_config(ckpt: dict, cfg, path: str | os.PathLike, limit: int = 5) -> None:
    """Raise `CheckpointError` naming the first `limit` fields where `ckpt`'s config differs from `cfg`."""
    diffs = config_differences(saved_config(ckpt, cfg), dataclasses.asdict(cfg))
    if diffs:
        more = f"; and {len(diffs) - limit} more" if len(diffs) > limit else ""
        raise CheckpointError(f"{path}: checkpoint config does not match the model: " + "; ".join(diffs[:limit])
                              + more + f" (a {ckpt['preset']!r} checkpoint: load it without --model / preset "
                              f"to rebuild it from its own config)")


def load_weights(model: nn.Module, ckpt: dict, path: str | os.PathLike) -> None:
    """Load `ckpt["model"]` into `model` after checking that the configs agree."""
    check_config(ckpt, model.cfg, path)
    state = {k: v.float() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: state dict does not fit the model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def checkpoint_config(ckpt: dict, path: str | os.PathLike, preset: str | None = None) -> tuple[str, object]:
    """(model name, config) to rebuild `ckpt`'s model with, checked before anything is built.

    Without `preset`, the checkpoint's own config. With `preset`, that preset's config, which the
    checkpoint must have been trained with (else a `CheckpointError` naming the differing fields).
    """
    saved_as = PRESETS.get(ckpt["preset"])  # (model class, preset function) or None
    if preset is None:
        if saved_as is None:
            raise CheckpointError(f"{path}: field 'preset' is {ckpt['preset']!r}, not a known model; "
                                  f"expected one of {', '.join(sorted(PRESETS))}")
        return ckpt["preset"], config_from_dict(type(saved_as[1]()), ckpt["config"])
    cfg = model_config(preset)  # UnknownModelError for a name that is not a model
    if saved_as is not None and saved_as[0] is not PRESETS[preset][0]:
        raise CheckpointError(f"{path}: a {ckpt['preset']!r} checkpoint ({saved_as[0].__name__}) cannot be loaded "
                              f"as {preset!r} ({PRESETS[preset][0].__name__}); drop --model or pass "
                              f"--model {ckpt['preset']}")
    check_config(ckpt, cfg, path)
    return preset, cfg


def model_from_checkpoint(ckpt: dict, path: str | os.PathLike, preset: str | None = None) -> nn.Module:
    """The model `ckpt` was saved from, with its weights, in eval mode (see `checkpoint_config`)."""
    name, cfg = checkpoint_config(ckpt, path, preset)
    model_cls, _ = PRESETS[name]
    model = model_cls(cfg)
    model.preset = name
    load_weights(model, ckpt, path)
    return model.eval()


def load_model(path: str | os.PathLike, preset: str | None = None) -> nn.Module:
    """Rebuild the model a checkpoint was saved from and load its weights (in eval mode).

    With `preset`, the checkpoint must have been trained with that preset's config (else a
    `CheckpointError` naming the differing fields).
    """
    return model_from_checkpoint(load_checkpoint(path), path, preset)


def shippable(ckpt: dict) -> dict:
    """Only what inference needs, floating-point weights in float16 (for `data/checkpoints/`)."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in ckpt["model"].items()}
    return {"preset": ckpt["preset"], "config": ckpt["config"], "model": state}
