"""Reading another codebase's checkpoint file into a flat state dict, without its code.

- The official repositories save `torch.save({"model": state_dict, "optimizer": ..., "args": ...})`
  (`.pth`); RT-DETR's PyTorch version saves `{"model": ...}` or `{"ema": {"module": ...}}`.
- Hugging Face transformers saves `model.safetensors` (or the older `pytorch_model.bin`) in a folder.
  The safetensors format is an 8-byte header length, a JSON header of names, dtypes, shapes and byte
  offsets, then the raw bytes: read here in a few lines, so that no extra package is needed.
"""
from __future__ import annotations

import argparse
import json
import os
import struct
from pathlib import Path

import torch
from torch import Tensor

from ..errors import InputError

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
                      "U8": torch.uint8, "BOOL": torch.bool}
HF_FILES = ("model.safetensors", "pytorch_model.bin")


def read_safetensors(path: Path) -> dict[str, Tensor]:
    """name -> tensor from a `.safetensors` file."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + length])
    body = memoryview(data)[8 + length:]
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        flat = torch.frombuffer(bytearray(body[start:end]), dtype=SAFETENSORS_DTYPES[entry["dtype"]])
        out[name] = flat.reshape(entry["shape"])  # (numel,) -> shape
    return out


def unwrap(obj, path: Path) -> dict[str, Tensor]:
    """The state dict inside a saved object: `model`, `ema.module`, `state_dict`, or the object itself."""
    if isinstance(obj, dict) and "ema" in obj and isinstance(obj["ema"], dict) and "module" in obj["ema"]:
        return unwrap(obj["ema"]["module"], path)
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            return unwrap(obj[key], path)
    if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
        return dict(obj)
    raise InputError(f"{path}: expected a state dict (or a dict with 'model' holding one), "
                     f"found {type(obj).__name__} with keys {list(obj)[:5] if isinstance(obj, dict) else '-'}")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """The flat state dict in `path`: a `.pth`/`.bin`/`.pt` file, a `.safetensors` file, or a
    Hugging Face folder holding one of `HF_FILES`."""
    path = Path(path)
    if path.is_dir():
        found = [path / f for f in HF_FILES if (path / f).exists()]
        if not found:
            raise InputError(f"{path}: a folder, but it holds none of {', '.join(HF_FILES)}")
        path = found[0]
    if not path.exists():
        raise InputError(f"{path}: no such file; expected an official .pth or a Hugging Face model file")
    if path.suffix == ".safetensors":
        return read_safetensors(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # the official files keep their args
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file is the user's input
        raise InputError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
    return unwrap(obj, path)


def guess_source(state: dict[str, Tensor]) -> str:
    """"transformers" if the keys look like a Hugging Face `...ForObjectDetection`, else "official"."""
    return "transformers" if all(k.startswith(("model.", "class_labels_classifier", "bbox_predictor",
                                                "class_embed", "bbox_embed", "model_")) for k in state) \
        and any(k.startswith("model.") for k in state) else "official"
