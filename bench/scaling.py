"""Attention against the selective scan: time and peak memory against the sequence length N.

    python bench/scaling.py            # writes bench/results/scaling.json and scaling.png
    python bench/scaling.py --lengths 256 1024 4096 --time-cap 30     # a quicker look
    python bench/scaling.py --replot    # redraw scaling.png from scaling.json

Seed, "Attention scales quadratically in sequence length N" and the hardware-aware algorithm's
four steps. One token-mixing operation on N tokens of width C = 256, batch 1, on one CPU thread:

- softmax attention, 8 heads of 32 channels, self-attention (q, k, v all (1, 8, N, 32); the
  projections, which cost O(N), are left out):
  "attention (explicit)" = `tutorial.ops.attention.scaled_dot_product_attention`, which materialises
  the (1, 8, N, N) weights (what DETR's and AIFI's `need_weights=True` path runs);
  "attention (fused)" = `torch.nn.functional.scaled_dot_product_attention`, PyTorch's fused
  kernel (on a CPU a flash-attention-style loop over blocks of keys: the N x N weights are never
  stored, so its memory is O(N), but its time is still O(N²));
- the selective scan (Mamba's S6, `tutorial.ssm.selective_scan.selective_scan`, steps 1-4) over
  D = 256 channels with state size 16 (Mamba's default), input-dependent Δ, B, C and the skip D,
  with each of its three scans: "scan (sequential)" the Python loop over t (the reference),
  "scan (parallel)" the odd/even scan with the reverse-scan backward, "scan (chunked)" chunks of
  2048 scanned in parallel with the state carried across. All three materialise the
  (1, 256, 16, N) states (the official CUDA kernel keeps them in SRAM instead: seed, step 3).

Each point is "forward" (under `torch.no_grad()`, as in inference) or "forward+backward" (the
gradient of the output's sum with respect to every input), measured in a fresh subprocess with
`torch.set_num_threads(1)`: time is the median of 3 calls after a warm-up (one call when a call
takes more than a second); peak memory is the process's peak resident set (VmHWM) after the calls
minus its resident set just before them, inputs excluded. A point is skipped, and recorded as
such, when extrapolating from the previous length predicts more than `--time-cap` seconds or
`--memory-cap` GiB, or when its subprocess exceeds the timeout; longer lengths of the same method
and pass are then skipped with the same reason. The parallel scan's speed-up is
the sequential scan's time over the parallel scan's at the same N and pass.

Timings come from a shared machine (2 cores, several trainings running when the committed result
was made): they are noisy, by tens of percent from run to run; compare slopes and orders of
magnitude, not the second digit. The machine, date and thread count are in the JSON.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SHAPES = {"batch": 1, "channels": 256, "heads": 8, "head_dim": 32, "d_state": 16, "chunk": 2048}
METHODS = {  # name -> (how time grows, how memory grows) with N, for extrapolating the caps
    "attention (explicit)": (2, 2),
    "attention (fused)": (2, 1),
    "scan (sequential)": (1, 1),
    "scan (parallel)": (1, 1),
    "scan (chunked)": (1, 1),
}
PASSES = ("forward", "forward+backward")
LENGTHS = [256, 512, 1024, 2048, 4096, 8192, 16384, 32768]


def vm(field: str) -> int:
    """A /proc/self/status field in bytes (VmRSS: resident now, VmHWM: peak resident)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def make_call(method: str, length: int, backward: bool):
    """Inputs for one method at length N and a function running one forward (and backward) pass."""
    import torch
    import torch.nn.functional as F

    from tutorial.ops.attention import scaled_dot_product_attention
    from tutorial.ssm.selective_scan import selective_scan

    s = SHAPES
    g = torch.Generator().manual_seed(0)
    if method.startswith("attention"):
        q, k, v = (torch.randn(s["batch"], s["heads"], length, s["head_dim"], generator=g).requires_grad_(backward)
                   for _ in range(3))  # (B, M, N, d) each
        fn = ((lambda: scaled_dot_product_attention(q, k, v)[0]) if method == "attention (explicit)"
              else (lambda: F.scaled_dot_product_attention(q, k, v)))  # (B, M, N, d)
    else:
        b, d, n = s["batch"], s["channels"], s["d_state"]
        u = torch.randn(b, d, length, generator=g).requires_grad_(backward)  # (B, D, L)
        delta = (0.5 * torch.randn(b, d, length, generator=g) - 2).requires_grad_(backward)  # (B, D, L)
        A = (-torch.arange(1, n + 1, dtype=torch.float32).repeat(d, 1)).requires_grad_(backward)  # (D, N)
        B = torch.randn(b, n, length, generator=g).requires_grad_(backward)  # (B, N, L)
        C = torch.randn(b, n, length, generator=g).requires_grad_(backward)  # (B, N, L)
        D = torch.ones(d).requires_grad_(backward)  # (D,)
        scan = method[len("scan ("):-1]
        fn = lambda: selective_scan(u, delta, A, B, C, D, delta_softplus=True, scan=scan,  # noqa: E731
                                    chunk=s["chunk"])  # (B, D, L)

    def call():
        if not backward:
            with torch.no_grad():
                return fn()
        out = fn()
        out.sum().backward()
        return out

    return call


def measure(method: str, length: int, backward: bool, repeats: int) -> dict:
    """In a subprocess: median time and peak extra memory of one call."""
    import torch

    torch.set_num_threads(1)
    call = make_call(method, length, backward)
    base = vm("VmRSS")
    t0 = time.perf_counter()
    call()  # warm-up
    first = time.perf_counter() - t0
    times = [first]
    if first < 1.0:
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            call()
            times.append(time.perf_counter() - t0)
    return {"time_s": round(statistics.median(times), 5), "calls_timed": len(times),
            "peak_MiB": round((vm("VmHWM") - base) / 2**20, 1), "threads": torch.get_num_threads()}


def predicted(rows: list[dict], method: str, pass_: str, length: int) -> tuple[float, float] | None:
    """Time (s) and memory (MiB) at `length`, extrapolated from the last measured length with the
    method's growth exponents; None if nothing was measured yet."""
    done = [r for r in rows if r["method"] == method and r["pass"] == pass_ and "time_s" in r]
    if not done:
        return None
    last = done[-1]
    t_exp, m_exp = METHODS[method]
    ratio = length / last["N"]
    return last["time_s"] * ratio**t_exp, max(last["peak_MiB"], 1.0) * ratio**m_exp


def speedups(rows: list[dict]) -> list[dict]:
    """Sequential-scan time over parallel- (and chunked-) scan time at each N and pass."""
    t = {(r["method"], r["pass"], r["N"]): r["time_s"] for r in rows if "time_s" in r}
    out = []
    for pass_ in PASSES:
        for n in sorted({r["N"] for r in rows}):
            seq = t.get(("scan (sequential)", pass_, n))
            par, chk = t.get(("scan (parallel)", pass_, n)), t.get(("scan (chunked)", pass_, n))
            if seq and par:
                out.append({"pass": pass_, "N": n, "parallel_speedup": round(seq / par, 2),
                            "chunked_speedup": round(seq / chk, 2) if chk else None})
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=LENGTHS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--time-cap", type=float, default=120.0, help="skip a point predicted to take longer (s per call)")
    p.add_argument("--memory-cap", type=float, default=4.0, help="skip a point predicted to need more (GiB)")
    p.add_argument("--timeout", type=float, default=600.0, help="kill a measurement's subprocess after this (s)")
    p.add_argument("--name", default="scaling")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the existing JSON")
    p.add_argument("--one", nargs=3, metavar=("METHOD", "N", "BACKWARD"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:  # child process
        method, length, backward = args.one
        print(json.dumps(measure(method, int(length), backward == "1", args.repeats)))
        return

    import matplotlib

    matplotlib.use("Agg")
    from bench.common import RESULTS, ChildFailed, run_child, write_json
    from tutorial.viz.ssm import plot_scaling

    if args.replot:
        fig = plot_scaling(json.loads((RESULTS / f"{args.name}.json").read_text()))
        fig.savefig(RESULTS / f"{args.name}.png", dpi=120)
        print(f"wrote {RESULTS / (args.name + '.png')}")
        return
    rows: list[dict] = []
    started = time.time()
    for method in args.methods:
        for pass_ in PASSES:
            stop = None  # once a length is skipped, longer ones are too
            for length in sorted(args.lengths):
                row = {"method": method, "pass": pass_, "N": length}
                guess = predicted(rows, method, pass_, length)
                if stop:
                    row["skipped"] = stop
                elif guess and guess[0] > args.time_cap:
                    row["skipped"] = stop = f"too slow: predicted {guess[0]:.0f} s per call > {args.time_cap:.0f} s"
                elif guess and guess[1] > args.memory_cap * 1024:
                    row["skipped"] = stop = (f"too much memory: predicted {guess[1] / 1024:.1f} GiB > "
                                             f"{args.memory_cap:.1f} GiB")
                else:
                    child = ["--repeats", args.repeats, "--one", method, length, "1" if pass_ != "forward" else "0"]
                    try:
                        row.update(run_child(__file__, child, what=f"{method} {pass_} N={length}",
                                             timeout=args.timeout))
                    except subprocess.TimeoutExpired:
                        row["skipped"] = stop = f"too slow: killed after {args.timeout:.0f} s"
                    except ChildFailed as e:  # e.g. killed for memory
                        row["skipped"] = stop = f"failed (exit {e.returncode}): {e.stderr.strip()[-200:]}"
                print(row, flush=True)
                rows.append(row)
    result = {"shapes": SHAPES, "methods": list(args.methods), "lengths": sorted(args.lengths),
              "caps": {"time_s": args.time_cap, "memory_GiB": args.memory_cap, "timeout_s": args.timeout},
              "rows": rows, "speedups": speedups(rows), "bench_wall_time_s": round(time.time() - started, 1),
              "command": " ".join(["python bench/scaling.py", *sys.argv[1:]])}
    write_json(args.name, result)
    fig = plot_scaling(json.loads((RESULTS / f"{args.name}.json").read_text()))
    fig.savefig(RESULTS / f"{args.name}.png", dpi=120)
    print(f"wrote {RESULTS / (args.name + '.png')}")


if __name__ == "__main__":
    main()
