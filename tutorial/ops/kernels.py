"""CUDA kernels for multi-scale deformable attention and the selective scan, and a CPU twin of each.

Seed, "GPU Memory Hierarchy" and the hardware-aware scan's four steps (1. read Δ, A, B, C from
HBM; 2. discretise in SRAM; 3. parallel scan in SRAM; 4. multiply by C, write the outputs back).
Both ops move far more bytes than they compute with (notebook 08 counts them), so a kernel wins
by reading each input once and keeping every intermediate on chip. The sources are in
`tutorial/ops/cuda/`:

- `ms_deform_attn_math.h`, `selective_scan_math.h`: the per-thread arithmetic (bilinear sampling,
  its boundary rule and gradient scatter; the scan's combine operator and the chunk carry) as
  `__host__ __device__` functions;
- `ms_deform_attn_cuda.cu`, `selective_scan_cuda.cu`: the CUDA kernels, which call them;
- `ms_deform_attn_cpu.cpp`, `selective_scan_cpu.cpp`: the CPU extension, which calls the same
  functions over the same index space (threads become loop iterations), so the kernels' math is
  tested on every machine, including those without a GPU;
- `binding.h`, `binding_cpu.cpp`, `binding_cuda.cpp`: torch ops (`torch.ops.tutorial_kernels_cpu`,
  `torch.ops.tutorial_kernels_cuda`).

Use:
    out = ms_deform_attn(value, spatial_shapes, sampling_locations, attention_weights, backend="auto")
    out = selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus=True, backend="auto")
    last_backend("selective_scan")  # -> "cuda", "cpu" or "reference": which one ran

Backends: "cuda" (the CUDA kernels; tensors on a GPU), "cpu" (the CPU extension; CPU tensors),
"reference" (the PyTorch references `tutorial.ops.deformable_attention.ms_deform_attn_core` and
`tutorial.ssm.selective_scan.selective_scan`), and "auto": the CUDA kernel when the tensors are on a
GPU and the extension builds (the first call builds it; later processes reuse the build). On CPU
tensors "auto" picks the CPU extension for deformable attention (a whole `deformable_detr_tiny`
training step runs 1.7x faster with it than with `F.grid_sample`) and the reference for the scan
(its CPU twin is a test of the kernel's math, not faster). Without a compiler, or with
TUTORIAL_KERNELS=reference in the environment, "auto" is the reference. bfloat16 and float16
inputs (autocast) run the kernels in float32, as the official `MSDeformAttnFunction` does under
AMP. `resolve_backend` says in advance what "auto" will pick.

Builds go through `torch.utils.cpp_extension.load` (ninja) into `build/kernels/` at the root of
the checkout (git-ignored), or torch's default cache when that is not writable; a rebuild happens
only when a source changes. Without a compiler or a GPU nothing else in the package needs them.

Glossary: the deformable-attention letters of `tutorial/ops/deformable_attention.py` (B, Q, N, M, L,
P, d) and the selective-scan letters of `tutorial/ssm/selective_scan.py` (B, D, L, N, G).
"""
from __future__ import annotations

import functools
import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch
from torch import Tensor

SOURCES = Path(__file__).resolve().parent / "cuda"
CPU_SOURCES = ("binding_cpu.cpp", "ms_deform_attn_cpu.cpp", "selective_scan_cpu.cpp")
CUDA_SOURCES = ("binding_cuda.cpp", "ms_deform_attn_cuda.cu", "selective_scan_cuda.cu")
BACKENDS = ("auto", "cuda", "cpu", "reference")
CUDA_ARCHS = ("80", "90")  # A100 (sm_80) and H100 (sm_90): what `compile_check` compiles for
CPU_FLAGS = ["-O3"]  # g++ (torch adds -std=c++20, -fPIC, its include paths)
NVCC_FLAGS = ["-O3", "-std=c++17", "-lineinfo"]  # the .cu files include no torch header: C++17 is enough
SCAN_THREADS, SCAN_ITEMS = 128, 16  # the GPU scan's chunk: 128 threads x 16 steps = 2048 (kernels.h)

BUILD_SECONDS: dict[str, float] = {}  # wall time of each build made by this process ("cpu", "cuda")
_OPS: dict = {}  # the loaded extensions' ops, by kind
_LAST: dict[str, str] = {}


def build_dir(kind: str) -> Path:
    """Where the extension `kind` ("cpu" or "cuda") is built: build/kernels/<kind> in the checkout."""
    root = SOURCES.parents[2] / "build" / "kernels" / kind  # the repository root
    try:
        root.mkdir(parents=True, exist_ok=True)
        return root
    except OSError:  # an installed, read-only package: torch's cache
        return Path(_cpp_extension()._get_build_directory(f"tutorial_kernels_{kind}", verbose=False))


def cuda_home() -> str | None:
    """The CUDA toolkit: $CUDA_HOME, else /usr/local/cuda, else the folder above `nvcc` on the PATH.

    (torch guesses from `which nvcc`, which is wrong when nvcc is a wrapper script in /usr/local/bin.)
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if shutil.which("nvcc"):
        candidates.append(str(Path(shutil.which("nvcc")).resolve().parent.parent))
    for path in filter(None, candidates):
        if (Path(path) / "bin" / "nvcc").exists() and (Path(path) / "include" / "cuda_runtime.h").exists():
            return path
    return None


def nvcc() -> str | None:
    """The nvcc executable, or None."""
    home = cuda_home()
    return str(Path(home) / "bin" / "nvcc") if home else shutil.which("nvcc")


def _cpp_extension():
    """torch.utils.cpp_extension, imported with CUDA_HOME set first (torch reads it at import) and
    without its warning that this machine has no CUDA runtime (it need not have one to compile)."""
    import logging

    home = cuda_home()
    if home and "CUDA_HOME" not in os.environ:
        os.environ["CUDA_HOME"] = home
    logger = logging.getLogger("torch.utils.cpp_extension")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        logger.setLevel(level)
    if home:
        cpp_extension.CUDA_HOME = home
    return cpp_extension


def _load(kind: str, sources: tuple[str, ...], verbose: bool, directory: str | Path | None = None,
          **kwargs) -> None:
    cpp_extension = _cpp_extension()

    # ninja: the pip package puts it next to this Python, which may not be on the PATH
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    t0 = time.perf_counter()
    cpp_extension.load(name=f"tutorial_kernels_{kind}", sources=[str(SOURCES / s) for s in sources],
                       build_directory=str(directory or build_dir(kind)), is_python_module=False, verbose=verbose,
                       extra_include_paths=[str(SOURCES)], **kwargs)
    BUILD_SECONDS[kind] = time.perf_counter() - t0


def build_cpu_extension(verbose: bool = False):
    """Build (or load the cached build of) the CPU extension; -> its ops, `torch.ops.tutorial_kernels_cpu`.

    20-60 s the first time on two cores (three files; the torch headers dominate), then a second
    or two. Raises when there is no C++ compiler. Once loaded, later calls return the same ops.
    """
    if "cpu" not in _OPS:
        _load("cpu", CPU_SOURCES, verbose, extra_cflags=CPU_FLAGS)
        _OPS["cpu"] = torch.ops.tutorial_kernels_cpu
    return _OPS["cpu"]


def build_cuda_extension(verbose: bool = False, archs: tuple[str, ...] | None = None):
    """Build (or load) the CUDA extension; -> its ops, `torch.ops.tutorial_kernels_cuda`. Raises without nvcc.

    `archs` (e.g. ("8.0", "9.0")), default $TORCH_CUDA_ARCH_LIST, else this GPU's architecture, else
    (no GPU: a build-only check) sm_80. A process loads the extension once (its ops register a
    namespace); later calls return the same ops whatever `archs` they pass.
    """
    if "cuda" in _OPS:
        return _OPS["cuda"]
    if cuda_home() is None:
        raise RuntimeError("build_cuda_extension: no CUDA toolkit found (set CUDA_HOME, or put nvcc on the PATH)")
    if archs is None and "TORCH_CUDA_ARCH_LIST" not in os.environ:
        archs = ("{}.{}".format(*torch.cuda.get_device_capability()),) if torch.cuda.is_available() else ("8.0",)
    if archs is not None:
        os.environ["TORCH_CUDA_ARCH_LIST"] = ";".join(archs)
    _load("cuda", CUDA_SOURCES, verbose, extra_cflags=CPU_FLAGS, extra_cuda_cflags=NVCC_FLAGS)
    _OPS["cuda"] = torch.ops.tutorial_kernels_cuda
    return _OPS["cuda"]


@functools.cache
def _cpu_ops_or_none():
    """The CPU ops for "auto": built once per process (a line on stderr when that compiles); None, with
    one warning, if the build fails."""
    if not any(build_dir("cpu").glob("tutorial_kernels_cpu*.so")):
        print("tutorial.kernels: compiling the CPU deformable-attention kernel once (20-60 s)", file=sys.stderr)
    try:
        return build_cpu_extension()
    except Exception as err:  # noqa: BLE001 - any build failure means: use the reference
        warnings.warn(f"tutorial.kernels: the CPU extension did not build, using the PyTorch reference ({err})")
        return None


@functools.cache
def _cuda_ops_or_none():
    """The CUDA ops for "auto": built once per process; None (with one warning) if the build fails."""
    try:
        return build_cuda_extension()
    except Exception as err:  # noqa: BLE001 - any build failure means: use the reference
        warnings.warn(f"tutorial.kernels: the CUDA extension did not build, using the PyTorch reference ({err})")
        return None


def compile_check(archs: tuple[str, ...] = CUDA_ARCHS, out_dir: str | Path | None = None) -> dict[str, float]:
    """Compile the .cu files for each arch with nvcc alone (no torch headers, no GPU needed).

    `nvcc -c -gencode arch=compute_XX,code=sm_XX ...` per file; raises RuntimeError with nvcc's
    message when a kernel no longer compiles. -> {file: seconds}.
    """
    import subprocess
    import tempfile

    exe = nvcc()
    if exe is None:
        raise RuntimeError("compile_check: nvcc not found (set CUDA_HOME or put nvcc on the PATH)")
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    times = {}
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(out_dir or tmp)
        for name in CUDA_SOURCES:
            if not name.endswith(".cu"):
                continue
            t0 = time.perf_counter()
            run = subprocess.run([exe, "-c", *NVCC_FLAGS, *gencode, "-I", str(SOURCES), str(SOURCES / name),
                                  "-o", str(out / (name + ".o"))], capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(f"compile_check: nvcc failed on {name}:\n{run.stderr}")
            times[name] = time.perf_counter() - t0
    return times


# ---- backend choice --------------------------------------------------------------------------------

def resolve_backend(backend: str, *tensors: Tensor, supported: bool = True, cpu: bool = False) -> str:
    """The backend that `backend` means for these tensors: "auto" -> "cuda" when they are all on a GPU,
    the kernel supports them (`supported`: layouts, variants) and the CUDA extension builds; "cpu" when
    `cpu` (the op's CPU twin is the faster choice), they are all on the CPU and the CPU extension
    builds; else "reference". Other names are returned as they are, after checking the name."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend != "auto":
        return backend
    if not supported or os.environ.get("TUTORIAL_KERNELS") == "reference":
        return "reference"
    present = [t for t in tensors if t is not None]
    if all(t.is_cuda for t in present) and _cuda_ops_or_none() is not None:
        return "cuda"
    if cpu and all(t.device.type == "cpu" for t in present) and _cpu_ops_or_none() is not None:
        return "cpu"
    return "reference"


def last_backend(op: str) -> str | None:
    """Which backend ran in this process's last call of `op` ("ms_deform_attn" or "selective_scan")."""
    return _LAST.get(op)


def _ops(backend: str, device: torch.device, op: str):
    if backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"{op}: backend='cuda' needs tensors on a GPU, got {device}")
        return build_cuda_extension()
    if device.type != "cpu":
        raise ValueError(f"{op}: backend='cpu' needs CPU tensors, got {device}")
    return build_cpu_extension()


# ---- multi-scale deformable attention ----------------------------------------------------------------

class MSDeformAttnFunction(torch.autograd.Function):
    """The kernel's forward and backward (gradients for value, sampling locations and attention weights).

    value (B, N, M, d), spatial_shapes (L, 2) int64, level_start_index (L,) int64,
    sampling_locations (B, Q, M, L, P, 2), attention_weights (B, Q, M, L, P) -> (B, Q, M·d).
    """

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations, attention_weights, ops):
        ctx.ops = ops
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations, attention_weights)
        return ops.ms_deform_attn_forward(value, spatial_shapes, level_start_index, sampling_locations,
                                          attention_weights)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        grad_value, grad_loc, grad_attn = ctx.ops.ms_deform_attn_backward(value, shapes, starts, loc, attn,
                                                                          grad_out.contiguous())
        return grad_value, None, None, grad_loc, grad_attn, None


def ms_deform_attn(value: Tensor, spatial_shapes, sampling_locations: Tensor, attention_weights: Tensor,
                   backend: str = "auto") -> Tensor:
    """Multi-scale deformable attention's sampling core (Deformable DETR, Eq. 3's inner sum).

    Same arguments and result as `tutorial.ops.deformable_attention.ms_deform_attn_core`: value
    (B, N, M, d), spatial_shapes [(H_l, W_l)] (or an (L, 2) tensor), sampling_locations
    (B, Q, M, L, P, 2) as (x, y) in [0, 1], attention_weights (B, Q, M, L, P) -> (B, Q, M·d).
    `backend`: see the module docstring; `last_backend("ms_deform_attn")` tells which ran. Plug it
    into the module with `MSDeformAttn(core=functools.partial(ms_deform_attn, backend="cuda"))`.
    """
    from .deformable_attention import ms_deform_attn_core

    shapes = [tuple(int(x) for x in hw) for hw in (spatial_shapes.tolist() if isinstance(spatial_shapes, Tensor)
                                                   else spatial_shapes)]
    chosen = resolve_backend(backend, value, sampling_locations, attention_weights, cpu=True)
    _LAST["ms_deform_attn"] = chosen
    if chosen == "reference":
        return ms_deform_attn_core(value, shapes, sampling_locations, attention_weights)
    if backend == "auto" and value.dtype in (torch.bfloat16, torch.float16):  # autocast: the kernel in float32
        out = ms_deform_attn(value.float(), shapes, sampling_locations.float(), attention_weights.float(), chosen)
        return out.to(value.dtype)  # (B, Q, M·d)
    if value.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"ms_deform_attn: the kernels take float32 or float64 value, got {value.dtype}")
    ops = _ops(chosen, value.device, "ms_deform_attn")
    shape_t = torch.tensor(shapes, dtype=torch.int64, device=value.device)  # (L, 2)
    starts = torch.cat([shape_t.new_zeros(1), shape_t.prod(1).cumsum(0)[:-1]])  # (L,) first token of each level
    if value.shape[1] != int(shape_t.prod(1).sum()):
        raise ValueError(f"ms_deform_attn: value has N = {value.shape[1]} tokens, spatial_shapes {shapes} "
                         f"give {int(shape_t.prod(1).sum())}")
    dtype = value.dtype
    return MSDeformAttnFunction.apply(value.contiguous(), shape_t, starts,
                                      sampling_locations.to(dtype).contiguous(),
                                      attention_weights.to(dtype).contiguous(), ops)


# ---- selective scan -----------------------------------------------------------------------------------

class SelectiveScanFunction(torch.autograd.Function):
    """The kernel's forward and backward. Inputs already in the compute dtype and contiguous:
    u, delta (B, D, L), A (D, N), B, C (B, G, N, L), D, delta_bias (D,) or None, z (B, D, L) or None
    -> out (B, D, L), states (B, D, n_chunks, N) (the chunk-end states; not differentiable)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, ops, geometry):
        out, y, states = ops.selective_scan_forward(u, delta, A, B, C, D, z, delta_bias, softplus, *geometry)
        ctx.ops, ctx.softplus, ctx.geometry = ops, softplus, geometry
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, y, states)
        ctx.mark_non_differentiable(states)
        return out, states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, _dstates):
        u, delta, A, B, C, D, z, delta_bias, y, states = ctx.saved_tensors
        du, ddelta, dA, dB, dC, dD, dz, dbias = ctx.ops.selective_scan_backward(
            u, delta, A, B, C, D, z, delta_bias, ctx.softplus, y, states, dout.contiguous(), *ctx.geometry)
        has_D, has_z, has_bias = ctx.has
        return (du, ddelta, dA, dB, dC, dD if has_D else None, dz if has_z else None,
                dbias if has_bias else None, None, None, None)


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, backend: str = "auto", chunk: tuple[int, int] | None = None,
                   scan: str = "chunked"):
    """The selective scan (Mamba, Algorithm 2) with the official `selective_scan_ref` semantics.

    Same arguments and result as `tutorial.ssm.selective_scan.selective_scan`: u, delta (B, D, L);
    A (D, N); B, C (B, N, L) or (B, G, N, L) (the kernels need input-dependent B and C; a fixed
    (D, N) one runs on the reference); D, delta_bias (D,); z (B, D, L) -> out (B, D, L) in u's
    dtype (and the last state (B, D, N) with `return_last_state`, not differentiable on the
    kernels, as in the official). Computed in float32 (float64 for float64 inputs).
    `chunk` = (threads, items) sets the CPU twin's chunk geometry (default the GPU's, 128 x 16);
    `scan` is the reference's scan mode.
    """
    from ..ssm.selective_scan import selective_scan as reference

    variable = all(M.dim() in (3, 4) for M in (B, C))
    chosen = resolve_backend(backend, u, delta, A, B, C, D, z, delta_bias, supported=variable)
    _LAST["selective_scan"] = chosen
    if chosen == "reference":
        return reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus, return_last_state, scan=scan)
    if not variable:
        raise ValueError(f"selective_scan: the kernels need input-dependent B and C, (B, N, L) or (B, G, N, L); "
                         f"got B {tuple(B.shape)}, C {tuple(C.shape)}")
    ops = _ops(chosen, u.device, "selective_scan")
    if chosen == "cuda" and chunk not in (None, (SCAN_THREADS, SCAN_ITEMS)):
        raise ValueError(f"selective_scan: the CUDA kernel's chunk is fixed at {(SCAN_THREADS, SCAN_ITEMS)}")
    dtype = torch.float64 if u.dtype == torch.float64 else torch.float32
    prep = lambda t: None if t is None else t.to(dtype).contiguous()  # noqa: E731
    B4, C4 = (M[:, None] if M.dim() == 3 else M for M in (B, C))  # (B, G, N, L)
    if B4.shape[1] != C4.shape[1]:  # the kernels index B and C alike: give both one group per channel
        B4, C4 = (M.repeat_interleave(u.shape[1] // M.shape[1], dim=1) for M in (B4, C4))  # (B, D, N, L)
    out, states = SelectiveScanFunction.apply(prep(u), prep(delta), prep(A), prep(B4), prep(C4), prep(D), prep(z),
                                              prep(delta_bias), delta_softplus, ops,
                                              chunk or (SCAN_THREADS, SCAN_ITEMS))
    out = out.to(u.dtype)  # (B, D, L)
    return (out, states[:, :, -1]) if return_last_state else out  # last state (B, D, N)


# ---- bytes and FLOPs (notebook 08, bench/kernels.py) ------------------------------------------------

def ms_deform_attn_cost(B: int, Q: int, N: int, M: int, d: int, L: int, P: int, itemsize: int = 4) -> dict:
    """FLOPs and bytes of the deformable-attention forward (the sampling core, Eq. 3's inner sum).

    flops: per sampling point and channel, a bilinear sample (4 multiplies, 3 adds) and the
    weighted accumulation (2): 9·d, plus ~20 per point for its corners and weights.
    bytes_compulsory: every input read once and the output written once (value, locations,
    weights; out): the least any kernel must move through HBM.
    bytes_gathered: every corner value fetched separately (4 per point and channel), what the
    threads load when no cache catches the reuse: the traffic into the SMs.
    """
    points = B * Q * M * L * P
    flops = points * (9 * d + 20)
    compulsory = itemsize * (B * N * M * d + 3 * points + B * Q * M * d)
    gathered = itemsize * (4 * points * d + 3 * points + B * Q * M * d)
    return {"flops": flops, "bytes_compulsory": compulsory, "bytes_gathered": gathered}


def selective_scan_cost(B: int, D: int, L: int, N: int, G: int = 1, itemsize: int = 4, gate: bool = True) -> dict:
    """FLOPs and bytes of the selective-scan forward (Mamba, Algorithm 2, with D skip and SiLU(z) gate).

    flops: per channel, step and state: ΔA, exp, ΔuB, a·h + b (2), C·h accumulated (2): 7; per
    channel and step ~10 more (softplus, Δu, D·u, the gate).
    bytes_fused: what the hardware-aware kernel moves (seed, steps 1 and 4): u, Δ (and z) read,
    B and C (B, G, N, L) read, out (and the pre-gate y the backward needs) written, once each.
    bytes_materialised: what a step-by-step implementation such as `tutorial.selective_scan`
    moves through memory: Ā, B̄u, the states h and the products C·h, four (B, D, N, L) tensors,
    each written once and read once.
    """
    flops = B * D * L * (7 * N + 10)
    fused = itemsize * (B * D * L * (2 + gate) + 2 * B * G * N * L + B * D * L * (1 + gate))
    materialised = fused + itemsize * 8 * B * D * N * L
    return {"flops": flops, "bytes_fused": fused, "bytes_materialised": materialised}


# Published peak numbers (vendor data sheets), not measured here: FP32 without tensor cores, HBM bandwidth.
GPU_SPECS = {
    "A100 SXM4 80GB": {"fp32_flops": 19.5e12, "hbm_bytes_per_s": 2.039e12},
    "H100 SXM5 80GB": {"fp32_flops": 67e12, "hbm_bytes_per_s": 3.35e12},
}
