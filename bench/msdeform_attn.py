"""Multi-scale deformable attention on this CPU: forward and forward+backward time and peak memory
of the pure-PyTorch references, at the paper's encoder shapes and at the tiny preset's.

    python bench/msdeform_attn.py            # writes bench/results/msdeform_attn.json

Paper shapes (Deformable DETR's encoder on an 800x1200 image): batch 2, 8 heads x 32 channels,
4 levels of 100x150, 50x75, 25x38, 13x19, 4 points, every token a query (Q = N = 19,947).
Tiny shapes: detr/deformable tiny on a 160x160 shapes image: batch 16, 8 heads x 16 channels,
levels 20x20, 10x10, 5x5, 3x3. Each measurement runs in a fresh subprocess; peak memory is the
process's peak resident set (VmHWM) minus its resident set just before the call. Times are the
median of `--repeats` runs after one warm-up.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "paper": dict(batch=2, heads=8, channels=32, shapes=[(100, 150), (50, 75), (25, 38), (13, 19)], points=4),
    "tiny": dict(batch=16, heads=8, channels=16, shapes=[(20, 20), (10, 10), (5, 5), (3, 3)], points=4),
}
IMPLS = ("grid_sample", "explicit")


def vm(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def measure(config: str, impl: str, backward: bool, repeats: int) -> dict:
    """Run in a subprocess: time and peak memory of one configuration."""
    import torch

    from tutorial.ops.deformable_attention import ms_deform_attn_core, ms_deform_attn_explicit

    c = CONFIGS[config]
    fn = {"grid_sample": ms_deform_attn_core, "explicit": ms_deform_attn_explicit}[impl]
    g = torch.Generator().manual_seed(0)
    n = sum(h * w for h, w in c["shapes"])
    b, m, d, lv, p = c["batch"], c["heads"], c["channels"], len(c["shapes"]), c["points"]
    value = torch.randn(b, n, m, d, generator=g, requires_grad=backward)
    loc = torch.rand(b, n, m, lv, p, 2, generator=g, requires_grad=backward)
    w = torch.rand(b, n, m, lv, p, generator=g).softmax(-1).requires_grad_(backward)

    def run():
        out = fn(value, c["shapes"], loc, w)
        if backward:
            out.sum().backward()
        return out

    run()  # warm-up
    times, peaks = [], []
    for _ in range(repeats):
        base = vm("VmRSS")
        t0 = time.perf_counter()
        out = run()
        times.append(time.perf_counter() - t0)
        peaks.append(vm("VmHWM") - base)
        del out
    return {"config": config, "impl": impl, "pass": "forward+backward" if backward else "forward",
            "queries": n, "median_s": round(statistics.median(times), 4),
            "peak_extra_MiB": round(max(peaks) / 2**20, 1), "threads": torch.get_num_threads()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--one", nargs=3, metavar=("CONFIG", "IMPL", "BACKWARD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # child process
        config, impl, backward = args.one
        print(json.dumps(measure(config, impl, backward == "1", args.repeats)))
        return
    from bench.common import run_child, write_json

    rows = []
    for config in CONFIGS:
        for impl in IMPLS:
            for backward in ("0", "1"):
                row = run_child(__file__, ["--repeats", args.repeats, "--one", config, impl, backward],
                                what=f"{config} {impl} backward={backward}")
                print(row)
                rows.append(row)
    write_json("msdeform_attn", {"configs": CONFIGS, "rows": rows})


if __name__ == "__main__":
    main()
