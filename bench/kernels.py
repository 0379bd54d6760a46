"""The kernels of `tutorial/ops/cuda/`: build times, the CPU extension against the PyTorch references on
this CPU, and, on a GPU, each CUDA kernel's time and effective bandwidth.

    python bench/kernels.py                 # writes bench/results/kernels.json
    python bench/kernels.py --quick         # small shapes only, for a smoke test

Shapes (the papers'):
- deformable attention: Deformable DETR's encoder on an 800x1200 image: batch 2, 8 heads x 32
  channels, levels 100x150, 50x75, 25x38, 13x19, 4 points, every token a query (Q = N = 19,947);
- selective scan: batch 2, 1,536 channels (Mamba-130M's d_inner), state 16, B and C input-dependent
  (B, N, L), D skip, z gate, delta_bias + softplus; lengths 1K to 16K.
Times are the median of `--repeats` runs after one warm-up, with torch's threads (2 here). The
PyTorch selective-scan reference (scan="chunked") materialises (B, D, N, L) tensors, 0.8 GB each
at 4K, so it is run only up to --reference-max-length (forward) and half that with the backward.

Build times: the CPU extension compiled from scratch in a temporary folder (in a subprocess, so
the cached build is untouched), and `kernels.compile_check` (nvcc -c, sm_80 + sm_90, per file).

On a GPU: the CUDA kernels' times (CUDA events) and effective bandwidth, the bytes each kernel
must move (its inputs read once, its outputs written once) divided by its time, as a fraction of
the device's copy bandwidth (a device-to-device copy of 1 GiB: read + write bytes / time).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tutorial.ops import kernels  # noqa: E402

DEFORM = dict(batch=2, heads=8, channels=32, shapes=[(100, 150), (50, 75), (25, 38), (13, 19)], points=4)
SCAN = dict(batch=2, channels=1536, state=16, lengths=[1024, 2048, 4096, 8192, 16384])
QUICK_DEFORM = dict(batch=1, heads=8, channels=32, shapes=[(20, 30), (10, 15), (5, 8), (3, 4)], points=4)
QUICK_SCAN = dict(batch=2, channels=64, state=16, lengths=[1024, 2048])


def deform_inputs(c: dict, device="cpu", dtype=torch.float32, grad=False):
    g = torch.Generator().manual_seed(0)
    n = sum(h * w for h, w in c["shapes"])
    b, m, d, lv, p = c["batch"], c["heads"], c["channels"], len(c["shapes"]), c["points"]
    value = torch.randn(b, n, m, d, generator=g, dtype=dtype)
    loc = torch.rand(b, n, m, lv, p, 2, generator=g, dtype=dtype)
    w = torch.rand(b, n, m, lv, p, generator=g, dtype=dtype).softmax(-1)
    return [t.to(device).requires_grad_(grad) for t in (value, loc, w)]


def scan_inputs(c: dict, length: int, device="cpu", grad=False):
    g = torch.Generator().manual_seed(0)
    b, d, n = c["batch"], c["channels"], c["state"]
    rnd = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    args = dict(u=rnd(b, d, length), delta=rnd(b, d, length) * 0.5, A=-(torch.rand(d, n, generator=g) + 0.1),
                B=rnd(b, n, length), C=rnd(b, n, length), D=rnd(d), z=rnd(b, d, length), delta_bias=rnd(d) * 0.1)
    return {k: v.to(device).requires_grad_(grad) for k, v in args.items()}


def timed(fn, repeats: int, sync=lambda: None) -> float:
    fn()  # warm-up
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def with_backward(fn, inputs):
    def run():
        out = fn()
        out.sum().backward()
        for t in inputs:
            t.grad = None
    return run


# ---- build times -------------------------------------------------------------------------------------------

def build_times() -> dict:
    """Compile the CPU extension from scratch (subprocess, temporary folder) and run the nvcc compile check."""
    out: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        code = ("import time, sys; sys.path.insert(0, %r); from tutorial.ops import kernels; t = time.perf_counter(); "
                "kernels._load('cpu', kernels.CPU_SOURCES, False, directory=%r, extra_cflags=kernels.CPU_FLAGS); "
                "print(time.perf_counter() - t)") % (str(ROOT), tmp)
        run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        out["cpu_extension_s"] = round(float(run.stdout.split()[-1]), 1) if run.returncode == 0 else None
        if run.returncode != 0:
            out["cpu_extension_error"] = run.stderr[-2000:]
    if kernels.nvcc() is not None:
        out["nvcc_compile_check_s"] = {k: round(v, 1) for k, v in kernels.compile_check(("80", "90")).items()}
    else:
        out["nvcc_compile_check_s"] = "not run: nvcc not found"
    return out


# ---- CPU: the extension against the references -------------------------------------------------------------

def cpu_deform(c: dict, repeats: int) -> list[dict]:
    rows = []
    for backend in ("reference", "cpu"):
        for backward in (False, True):
            value, loc, w = deform_inputs(c, grad=backward)
            fn = lambda: kernels.ms_deform_attn(value, c["shapes"], loc, w, backend=backend)  # noqa: E731
            t = timed(with_backward(fn, (value, loc, w)) if backward else fn, repeats)
            rows.append({"op": "ms_deform_attn", "backend": backend, "pass": "forward+backward" if backward else "forward",
                         "queries": value.shape[1], "median_s": round(t, 3)})
            print(rows[-1], flush=True)
    return rows


def cpu_scan(c: dict, repeats: int, reference_max: int) -> list[dict]:
    rows = []
    for length in c["lengths"]:
        for backend in ("reference", "cpu"):
            for backward in (False, True):
                row = {"op": "selective_scan", "backend": backend, "pass": "forward+backward" if backward else "forward",
                       "length": length}
                limit = reference_max // 2 if backward else reference_max
                if backend == "reference" and length > limit:
                    row["median_s"] = None
                    row["note"] = f"not run: the reference materialises (B, D, N, L) tensors (limit L <= {limit})"
                else:
                    args = scan_inputs(c, length, grad=backward)
                    fn = lambda: kernels.selective_scan(**args, delta_softplus=True, backend=backend)  # noqa: E731
                    n_rep = repeats if length <= 4096 else 1
                    row["median_s"] = round(timed(with_backward(fn, list(args.values())) if backward else fn, n_rep), 3)
                    row["repeats"] = n_rep
                rows.append(row)
                print(row, flush=True)
    return rows


# ---- GPU: the CUDA kernels ---------------------------------------------------------------------------------

def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB: (read + written bytes) / time, bytes per second."""
    x = torch.empty(2**28, device="cuda")  # 1 GiB of float32
    y = torch.empty_like(x)
    t = timed(lambda: y.copy_(x), 5, torch.cuda.synchronize)
    return 2 * x.numel() * 4 / t


def gpu_rows(deform: dict, scan: dict, repeats: int) -> dict:
    kernels.build_cuda_extension()
    bw = copy_bandwidth()
    sync = torch.cuda.synchronize
    rows = []

    def record(op, what, seconds, nbytes, **extra):
        rows.append({"op": op, "pass": what, "median_ms": round(seconds * 1e3, 3), "bytes": nbytes,
                     "effective_GBps": round(nbytes / seconds / 1e9, 1),
                     "fraction_of_copy_bandwidth": round(nbytes / seconds / bw, 3), **extra})
        print(rows[-1], flush=True)

    value, loc, w = deform_inputs(deform, device="cuda", grad=True)
    b, n, m, d = value.shape
    q, lp = loc.shape[1], loc.shape[3] * loc.shape[4]
    fwd_bytes = kernels.ms_deform_attn_cost(b, q, n, m, d, loc.shape[3], loc.shape[4])["bytes_compulsory"]
    t = timed(lambda: kernels.ms_deform_attn(value, deform["shapes"], loc, w, backend="cuda"), repeats, sync)
    record("ms_deform_attn", "forward", t, fwd_bytes)
    out = kernels.ms_deform_attn(value, deform["shapes"], loc, w, backend="cuda")
    grad = torch.randn_like(out)
    t = timed(lambda: torch.autograd.grad(out, (value, loc, w), grad, retain_graph=True), repeats, sync)
    record("ms_deform_attn", "backward", t, fwd_bytes + 4 * (b * n * m * d + 3 * b * q * m * lp))  # + the gradients

    for length in scan["lengths"]:
        args = scan_inputs(scan, length, device="cuda", grad=True)
        bsz, dim, n_state = scan["batch"], scan["channels"], scan["state"]
        io = 4 * bsz * dim * length  # one (B, D, L) float32 tensor
        bc = 4 * bsz * n_state * length  # one (B, N, L) tensor
        fn = lambda: kernels.selective_scan(**args, delta_softplus=True, backend="cuda")  # noqa: E731
        fused = kernels.selective_scan_cost(bsz, dim, length, n_state)["bytes_fused"]  # = 5 io + 2 bc
        record("selective_scan", "forward", timed(fn, repeats, sync), fused, length=length)
        out = fn()
        grad = torch.randn_like(out)
        t = timed(lambda: torch.autograd.grad(out, list(args.values()), grad, retain_graph=True), repeats, sync)
        record("selective_scan", "backward", t, 5 * io + 2 * bc + 3 * io + 2 * bc, length=length)  # in + out
    return {"device": torch.cuda.get_device_name(0), "copy_bandwidth_GBps": round(bw / 1e9, 1), "rows": rows}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--reference-max-length", type=int, default=4096)
    p.add_argument("--quick", action="store_true", help="small shapes (a smoke test), results not written")
    p.add_argument("--skip-builds", action="store_true", help="do not time the builds")
    args = p.parse_args()
    from bench.common import write_json

    deform, scan = (QUICK_DEFORM, QUICK_SCAN) if args.quick else (DEFORM, SCAN)
    kernels.build_cpu_extension()
    payload = {"shapes": {"ms_deform_attn": deform, "selective_scan": scan}}
    payload["build"] = "skipped" if args.skip_builds else build_times()
    print("build:", payload["build"], flush=True)
    payload["cpu"] = cpu_deform(deform, args.repeats) + cpu_scan(scan, args.repeats, args.reference_max_length)
    if torch.cuda.is_available():
        payload["gpu"] = gpu_rows(deform, scan, args.repeats)
    else:
        payload["gpu"] = "not run: no CUDA device on this machine"
    if args.quick:
        print(json.dumps(payload, indent=1))
    else:
        write_json("kernels", payload)


if __name__ == "__main__":
    main()
