"""bfloat16 autocast on a CPU pays only where the CPU has bf16 arithmetic.

`--amp bf16` runs the forward under `torch.autocast(dtype=torch.bfloat16)`. On a CPU with AMX-BF16
or AVX512-BF16 (recent Xeons) that doubles the tiny ResNet's speed. Without them, oneDNN emulates
bf16: measured on an AMD EPYC with AVX2 only, a 3x3 convolution (16 x 64 x 80 x 80) took 6.6 s
under bf16 autocast against 0.17 s in float32, and a `dn_detr_tiny` training step 15 s against
about 1 s. `train` therefore warns, in one line, before such a run starts.

`eval --amp bf16` and `predict --amp bf16` run inference the same way; post-processing and
COCOeval see float32 (`to_float`).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of the bf16 units
AMP_CHOICES = ("fp32", "bf16")


def autocast(device: torch.device | str, amp: str) -> contextlib.AbstractContextManager:
    """The forward's precision context: bfloat16 autocast for amp="bf16", a no-op for "fp32"."""
    if amp not in AMP_CHOICES:
        raise ValueError(f"amp must be one of {AMP_CHOICES}, got {amp!r}")
    device_type = torch.device(device).type
    return torch.autocast(device_type, dtype=torch.bfloat16, enabled=amp == "bf16")


def input_layout(images: torch.Tensor, amp: str) -> torch.Tensor:
    """Images (B, 3, H, W) in channels-last memory under bf16, unchanged in float32. oneDNN's fast bf16
    convolutions work in NHWC; measured on one AMX core: `detr_r50` bf16 inference at 800 x 1216 2.31 s
    (NCHW) -> 0.74 s, `rtdetr_r50` at 640 x 640 1.17 -> 0.38 s, a `dn_detr_tiny` bf16 training step
    45 -> 54 images/s. (Converting the model's weights too gained nothing more.)"""
    return images.contiguous(memory_format=torch.channels_last) if amp == "bf16" else images


def to_float(x):
    """Floating-point tensors inside nested dicts/lists/tuples, cast to float32 (after autocast)."""
    if torch.is_tensor(x):
        return x.float() if x.is_floating_point() else x
    if isinstance(x, dict):
        return {k: to_float(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(to_float(v) for v in x)
    return x


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The first processor's feature flags, or an empty set where there is no /proc/cpuinfo."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def bf16_warning(device_type: str, flags: set[str] | None = None) -> str | None:
    """A one-line warning when bf16 autocast would run emulated on this CPU, else None
    (GPUs, CPUs with a bf16 unit, and machines whose flags cannot be read)."""
    flags = cpu_flags() if flags is None else flags
    if device_type != "cpu" or not flags or any(f in flags for f in NATIVE_BF16_FLAGS):
        return None
    return ("warning: --amp bf16 on a CPU without AMX-BF16 or AVX512-BF16 runs bf16 emulated, much slower "
            "than float32 (measured 40x on a convolution on an AVX2 CPU); use --amp fp32 here")
