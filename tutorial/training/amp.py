"""bfloat16 autocast on a CPU pays only where the CPU has bf16 arithmetic.

`--amp bf16` runs the forward under `torch.autocast(dtype=torch.bfloat16)`. On a CPU with AMX-BF16
or AVX512-BF16 (recent Xeons) that doubles the tiny ResNet's speed. Without them, oneDNN emulates
bf16: measured on an AMD EPYC with AVX2 only, a 3x3 convolution (16 x 64 x 80 x 80) took 6.6 s
under bf16 autocast against 0.17 s in float32, and a `dn_detr_tiny` training step 15 s against
about 1 s. `train` therefore warns, in one line, before such a run starts.
"""
from __future__ import annotations

from pathlib import Path

NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo names of the bf16 units


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
