"""Helpers shared by the benchmarks: machine description, JSON output, round-robin timing, one
measurement in a fresh subprocess."""
from __future__ import annotations

import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from argparse import SUPPRESS, ArgumentParser
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parent.parent  # the repository
RESULTS = ROOT / "bench" / "results"


def machine() -> dict:
    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d")}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_stamp(path: Path) -> dict:
    """Which checkpoint a result came from: {"path", "sha256"} of the file, and its manifest's
    "git_commit" (the commit it was shipped at), so `tests/test_results_provenance.py` can tell a
    results file computed from an older checkpoint."""
    path = Path(path)
    manifest = path.with_suffix(".json")
    commit = json.loads(manifest.read_text()).get("git_commit") if manifest.exists() else None
    where = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
    return {"path": str(where), "sha256": file_sha256(path), "git_commit": commit}


def read_previous(name: str) -> dict:
    """bench/results/<name>.json as last written, or {}."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.exists() else {}


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


class ChildFailed(RuntimeError):
    """A measurement's subprocess exited with an error: `returncode` and the end of its `stderr`."""

    def __init__(self, what: str, returncode: int, stderr: str):
        super().__init__(f"the subprocess for {what} failed (exit {returncode}):\n{stderr[-4000:]}")
        self.returncode, self.stderr = returncode, stderr


def run_child(script: str | os.PathLike, args: list, what: str, timeout: float | None = None) -> dict:
    """Run `python <script> <args>` in a fresh process, from the repository root, and return the JSON
    object that the child prints on the last line of its stdout (its earlier lines are ignored).

    A fresh process per measurement: its peak memory is its own, and no warm cache, allocator or
    thread pool carries over from the previous measurement. Raises `ChildFailed` (naming `what`)
    if the child exits with an error, `subprocess.TimeoutExpired` past `timeout` seconds."""
    out = subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                         timeout=timeout)
    if out.returncode:
        raise ChildFailed(what, out.returncode, out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])


def add_child_options(p: ArgumentParser, one: tuple[str, ...], warmup: int, repeats: int, threads: int = 1) -> None:
    """The options of a bench that times each measurement in a fresh child (`run_child`): --warmup,
    --repeats, --threads, and the hidden --one <one...> that makes this process that child."""
    p.add_argument("--warmup", type=int, default=warmup)
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--threads", type=int, default=threads)
    p.add_argument("--one", nargs=len(one), metavar=one, help=SUPPRESS)


def answered_as_child(args, measure: Callable[..., dict]) -> bool:
    """Set torch's thread count from --threads; with --one, print measure(*args.one) as one JSON line
    (what `run_child` reads) and return True: the caller then returns."""
    torch.set_num_threads(args.threads)
    if args.one:
        print(json.dumps(measure(*args.one)))
    return bool(args.one)
