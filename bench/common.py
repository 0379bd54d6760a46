"""Helpers shared by the benchmarks: machine description, JSON output, round-robin timing."""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}


def write_json(name: str, payload: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=1) + "\n")
    print(f"wrote {path}")
    return path


def time_runs(fns: dict, warmup: int, repeats: int) -> dict[str, dict]:
    """Seconds per call of each function in `fns` {name: fn()}, measured round-robin (run i of
    every function, then run i + 1, ...) so that a change of machine load hits all alike: `warmup`
    rounds excluded, then {name: {"median_ms", "p25_ms", "p75_ms", "iqr_ms", "runs"}} over `repeats`."""
    times = {name: [] for name in fns}
    for i in range(warmup + repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        q = statistics.quantiles(ts, n=4) if len(ts) > 1 else [ts[0]] * 3
        out[name] = {"median_ms": round(1e3 * statistics.median(ts), 3), "p25_ms": round(1e3 * q[0], 3),
                     "p75_ms": round(1e3 * q[2], 3), "iqr_ms": round(1e3 * (q[2] - q[0]), 3), "runs": len(ts)}
    return out
