"""A key map: how another codebase's state dict becomes this package's, rule by rule.

A checkpoint of the official repositories or of Hugging Face transformers holds the same tensors
as ours under other names; a few are fused (`nn.MultiheadAttention.in_proj_weight` holds q, k and v
stacked) or have no counterpart (a BatchNorm's `num_batches_tracked`). A `KeyMap` says, in order:
- `ignore`: source keys with no counterpart, each with the reason;
- `splits`: a fused source tensor cut into equal chunks along dim 0, one per target name;
- `renames`: a regular expression on the source key and its replacement (`re.sub` syntax).
The first rule that matches a key wins. `apply` then insists that every source key was used or
ignored, that no two source keys land on the same target, and that every target key is filled with
a tensor of the right shape: the result loads with `strict=True`, and anything else is a
`ConversionError` that names the key.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from ..errors import InputError


class ConversionError(InputError):
    """A source key with no rule, a target key left empty, or a tensor of the wrong shape."""


@dataclass(frozen=True)
class KeyMap:
    """Rules from a source codebase's key names to ours (see the module docstring)."""
    renames: tuple[tuple[str, str], ...]
    splits: tuple[tuple[str, tuple[str, ...]], ...] = ()
    ignore: tuple[tuple[str, str], ...] = ()
    prepare: Callable[[dict[str, Tensor]], dict[str, Tensor]] | None = None  # a source-side fix-up first

    def target_names(self, key: str, tensor: Tensor) -> list[tuple[str, Tensor]] | None:
        """[(our key, tensor)] for one source key; [] if ignored; None if no rule matches."""
        for pattern, _ in self.ignore:
            if re.fullmatch(pattern, key):
                return []
        for pattern, targets in self.splits:
            if re.fullmatch(pattern, key):
                chunks = tensor.chunk(len(targets), dim=0)  # (n·d, ...) -> n × (d, ...)
                return [(re.sub(pattern, t, key), c) for t, c in zip(targets, chunks)]
        for pattern, replacement in self.renames:
            if re.fullmatch(pattern, key):
                return [(re.sub(pattern, replacement, key), tensor)]
        return None


def substitutions(rules: tuple[tuple[str, str], ...]) -> Callable[[dict[str, Tensor]], dict[str, Tensor]]:
    """A `prepare` step: `re.sub` each rule, in order, inside every key (e.g. older names of a
    codebase rewritten to its current ones before the map proper)."""
    def rename(state: dict[str, Tensor]) -> dict[str, Tensor]:
        out = {}
        for key, tensor in state.items():
            for pattern, replacement in rules:
                key = re.sub(pattern, replacement, key)
            out[key] = tensor
        return out
    return rename


def apply(keymap: KeyMap, source: Mapping[str, Tensor], target: Mapping[str, Tensor],
          where: str = "checkpoint") -> dict[str, Tensor]:
    """`source` renamed onto the keys of `target` (a model's state dict, used for names and
    shapes); raises `ConversionError` naming the first key that does not fit."""
    source = keymap.prepare(dict(source)) if keymap.prepare else dict(source)
    out: dict[str, Tensor] = {}
    origin: dict[str, str] = {}
    for key, tensor in source.items():
        mapped = keymap.target_names(key, tensor)
        if mapped is None:
            raise ConversionError(f"{where}: key {key!r} {tuple(tensor.shape)} has no mapping onto this model")
        for name, value in mapped:
            check_target(name, value, key, target, origin, where)
            out[name], origin[name] = value.contiguous(), key
    missing = [k for k in target if k not in out]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise ConversionError(f"{where}: the model's key {missing[0]!r}{more} got no tensor from the checkpoint")
    return out


def check_target(name: str, value: Tensor, key: str, target: Mapping[str, Tensor], origin: dict[str, str],
                 where: str) -> None:
    """One mapped tensor: its target key exists, is not yet taken, and has the model's shape."""
    if name not in target:
        raise ConversionError(f"{where}: key {key!r} maps to {name!r}, which this model does not have")
    if name in origin:
        raise ConversionError(f"{where}: keys {origin[name]!r} and {key!r} both map to {name!r}")
    if tuple(value.shape) != tuple(target[name].shape):
        raise ConversionError(f"{where}: key {key!r} has shape {tuple(value.shape)}, but {name!r} "
                              f"expects {tuple(target[name].shape)}")
