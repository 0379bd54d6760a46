"""One entry point for every model: `build_model(name, **overrides)` and `list_models()`.

A preset is a plain function returning the model's dataclass config; `PRESETS` maps each name
to (model class, preset function). Overrides replace config fields; a dict value overrides the
fields of a nested config, e.g.
`build_model("detr_r50", backbone={"weights": "resnet50.pth"}, num_classes=6)`.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from torch import nn

from . import conditional_detr, dab_detr, deformable_detr, dense_detector, detr, dino, dn_detr, rt_detr
from . import anchor_detr, efficient_detr, lite_detr, mamba_detector, sparse_detr
from ..errors import ConfigError, UnknownModelError

PRESETS: dict[str, tuple[type[nn.Module], Any]] = {
    "detr_r50": (detr.DETR, detr.detr_r50),
    "detr_tiny": (detr.DETR, detr.detr_tiny),
    "deformable_detr_r50": (deformable_detr.DeformableDETR, deformable_detr.deformable_detr_r50),
    "deformable_detr_r50_refine": (deformable_detr.DeformableDETR, deformable_detr.deformable_detr_r50_refine),
    "deformable_detr_r50_two_stage": (deformable_detr.DeformableDETR, deformable_detr.deformable_detr_r50_two_stage),
    "deformable_detr_tiny": (deformable_detr.DeformableDETR, deformable_detr.deformable_detr_tiny),
    "efficient_detr_r50": (efficient_detr.EfficientDETR, efficient_detr.efficient_detr_r50),
    "efficient_detr_tiny": (efficient_detr.EfficientDETR, efficient_detr.efficient_detr_tiny),
    "conditional_detr_r50": (conditional_detr.ConditionalDETR, conditional_detr.conditional_detr_r50),
    "conditional_detr_tiny": (conditional_detr.ConditionalDETR, conditional_detr.conditional_detr_tiny),
    "dab_detr_r50": (dab_detr.DABDETR, dab_detr.dab_detr_r50),
    "dab_detr_tiny": (dab_detr.DABDETR, dab_detr.dab_detr_tiny),
    "anchor_detr_r50": (anchor_detr.AnchorDETR, anchor_detr.anchor_detr_r50),
    "anchor_detr_tiny": (anchor_detr.AnchorDETR, anchor_detr.anchor_detr_tiny),
    "dn_detr_r50": (dn_detr.DNDETR, dn_detr.dn_detr_r50),
    "dn_detr_tiny": (dn_detr.DNDETR, dn_detr.dn_detr_tiny),
    "sparse_detr_r50": (sparse_detr.SparseDETR, sparse_detr.sparse_detr_r50),
    "sparse_detr_tiny": (sparse_detr.SparseDETR, sparse_detr.sparse_detr_tiny),
    "dino_4scale_r50": (dino.DINO, dino.dino_4scale_r50),
    "dino_tiny": (dino.DINO, dino.dino_tiny),
    "lite_dino_4scale_r50": (lite_detr.LiteDINO, lite_detr.lite_dino_4scale_r50),
    "lite_dino_tiny": (lite_detr.LiteDINO, lite_detr.lite_dino_tiny),
    "rtdetr_r50": (rt_detr.RTDETR, rt_detr.rtdetr_r50),
    "rtdetr_r18": (rt_detr.RTDETR, rt_detr.rtdetr_r18),
    "rtdetr_tiny": (rt_detr.RTDETR, rt_detr.rtdetr_tiny),
    "rtdetr_mamba_tiny": (mamba_detector.MambaRTDETR, mamba_detector.rtdetr_mamba_tiny),
    "dense_tiny": (dense_detector.DenseDetector, dense_detector.dense_tiny),
}


def list_models() -> list[str]:
    """Names accepted by `build_model`."""
    return sorted(PRESETS)


def apply_overrides(cfg, overrides: dict, where: str = "config"):
    """A copy of dataclass `cfg` with `overrides` applied (dicts recurse into nested configs)."""
    names = {f.name for f in dataclasses.fields(cfg)}
    changes = {}
    for key, value in overrides.items():
        if key not in names:
            raise ConfigError(f"{where}: unknown field {key!r}; fields are {sorted(names)}")
        current = getattr(cfg, key)
        if isinstance(value, dict) and dataclasses.is_dataclass(current):
            value = apply_overrides(current, value, f"{where}.{key}")
        changes[key] = value
    return dataclasses.replace(cfg, **changes)


def config_from_dict(cls, data: dict):
    """Rebuild a (nested) dataclass config from `dataclasses.asdict` output, e.g. a checkpoint's."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            value = config_from_dict(type(default), value)
        elif isinstance(default, tuple) and isinstance(value, list):
            value = tuple(value)
        kwargs[f.name] = value
    return cls(**kwargs)


def model_config(name: str, **overrides):
    """The config `build_model(name, **overrides)` would build."""
    if name not in PRESETS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of {', '.join(list_models())}")
    _, preset = PRESETS[name]
    return apply_overrides(preset(), overrides, where=name)


def build_model(name: str, **overrides) -> nn.Module:
    """Build preset `name` (see `list_models()`), with config fields replaced by `overrides`."""
    model_cls, _ = PRESETS[name] if name in PRESETS else (None, None)
    cfg = model_config(name, **overrides)
    model = model_cls(cfg)
    model.preset = name
    return model
