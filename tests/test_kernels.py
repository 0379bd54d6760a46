"""The kernels of `tutorial/ops/cuda/` against the PyTorch references.

On every machine: the CPU extension, which runs the CUDA kernels' per-thread functions over the
same index space, against `ms_deform_attn_core` / `ms_deform_attn_explicit` and `selective_scan`
(forward in float64 to 1e-10 and float32 to 1e-5, backward against the references' autograd and
with `gradcheck`); nvcc compiling the .cu files for sm_80 and sm_90 and the whole CUDA extension
building, where nvcc is found; backend selection. On a GPU only (`-m gpu`, skipped without one):
the CUDA kernels against the references with the official tolerances.
"""
from __future__ import annotations

import functools
import shutil

import pytest
import torch

from tutorial.ops import kernels
from tutorial.ops.deformable_attention import MSDeformAttn, ms_deform_attn_core, ms_deform_attn_explicit
from tutorial.ssm.selective_scan import selective_scan as scan_reference

F64, F32 = torch.float64, torch.float32
HAS_GPU = torch.cuda.is_available()
gpu = pytest.mark.skipif(not HAS_GPU, reason="needs a CUDA device (none here)")


@pytest.fixture(scope="session")
def cpu_ops():
    """The CPU extension, built once per test process (later processes load the cached build)."""
    if shutil.which("c++") is None and shutil.which("g++") is None:
        pytest.skip("no C++ compiler on this machine")
    return kernels.build_cpu_extension()


def max_diff(a, b) -> float:
    return (a.double() - b.double()).abs().max().item() if a.numel() else 0.0


# ---- multi-scale deformable attention ---------------------------------------------------------------

def deform_problem(b=2, q=5, m=2, d=8, shapes=((5, 7), (3, 2)), p=3, dtype=F64, seed=0, spread=(-0.3, 1.3)):
    """Random inputs; locations spread past [0, 1] so that some points, and some corners, fall outside."""
    g = torch.Generator().manual_seed(seed)
    n, lv = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(b, n, m, d, generator=g, dtype=dtype)
    lo, hi = spread
    loc = torch.rand(b, q, m, lv, p, 2, generator=g, dtype=dtype) * (hi - lo) + lo
    loc[0, 0, 0, 0, 0] = torch.tensor([3.0, -2.0])  # far outside: contributes nothing
    weights = torch.rand(b, q, m, lv, p, generator=g, dtype=dtype).softmax(-1)
    return value, [tuple(s) for s in shapes], loc, weights


# channel counts of the issue; non-square levels; other sizes kept small so that the suite stays fast
DEFORM_CASES = {
    "d30": dict(d=30), "d32": dict(d=32), "d64": dict(d=64, q=3), "d71": dict(d=71, q=3),
    "d1025": dict(b=1, q=2, m=1, d=1025, shapes=((3, 4), (2, 1)), p=2),
    "4-levels-non-square": dict(d=4, shapes=((6, 9), (3, 5), (2, 3), (1, 2)), p=4),
    "one-pixel-level": dict(d=3, shapes=((1, 1), (2, 7))),
}


@pytest.mark.parametrize("case", DEFORM_CASES, ids=str)
def test_deform_forward_float64(cpu_ops, case):
    value, shapes, loc, w = deform_problem(**DEFORM_CASES[case])
    out = kernels.ms_deform_attn(value, shapes, loc, w, backend="cpu")
    assert kernels.last_backend("ms_deform_attn") == "cpu"
    assert out.shape == (value.shape[0], loc.shape[1], value.shape[2] * value.shape[3])
    assert max_diff(out, ms_deform_attn_core(value, shapes, loc, w)) < 1e-10
    assert max_diff(out, ms_deform_attn_explicit(value, shapes, loc, w)) < 1e-10


@pytest.mark.parametrize("case", DEFORM_CASES, ids=str)
def test_deform_forward_float32(cpu_ops, case):
    value, shapes, loc, w = deform_problem(**DEFORM_CASES[case])
    out = kernels.ms_deform_attn(value.float(), shapes, loc.float(), w.float(), backend="cpu")
    assert out.dtype == F32
    # the float32 kernel against the float64 reference of the same (rounded) inputs
    expected = ms_deform_attn_core(value.float().double(), shapes, loc.float().double(), w.float().double())
    assert max_diff(out, expected) < 1e-5


def deform_grads(fn, value, shapes, loc, w, grad_out):
    inputs = [t.detach().clone().requires_grad_() for t in (value, loc, w)]
    out = fn(inputs[0], shapes, inputs[1], inputs[2])
    return torch.autograd.grad((out * grad_out).sum(), inputs)


@pytest.mark.parametrize("case", DEFORM_CASES, ids=str)
def test_deform_backward_matches_reference_autograd(cpu_ops, case):
    value, shapes, loc, w = deform_problem(**DEFORM_CASES[case])
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3], dtype=F64)
    ours = deform_grads(functools.partial(kernels.ms_deform_attn, backend="cpu"), value, shapes, loc, w, grad_out)
    ref = deform_grads(ms_deform_attn_core, value, shapes, loc, w, grad_out)
    for name, a, b in zip(("value", "sampling_locations", "attention_weights"), ours, ref):
        assert max_diff(a, b) < 1e-9, name


def test_deform_backward_float32(cpu_ops):
    value, shapes, loc, w = deform_problem(d=32)
    grad_out = torch.randn(value.shape[0], loc.shape[1], 64, dtype=F64)
    ours = deform_grads(functools.partial(kernels.ms_deform_attn, backend="cpu"), value.float(), shapes, loc.float(),
                        w.float(), grad_out.float())
    ref = deform_grads(ms_deform_attn_core, value, shapes, loc, w, grad_out)
    for a, b in zip(ours, ref):
        assert a.dtype == F32 and max_diff(a, b) < 1e-4 * max(1.0, b.abs().max().item())


def test_deform_gradcheck(cpu_ops):
    value, shapes, loc, w = deform_problem(b=1, q=3, m=2, d=3, shapes=((3, 4), (2, 3)), p=2)
    # random points almost surely keep eps = 1e-6 away from the pixel-centre lines where bilinear
    # interpolation has kinks; one point is far outside and has zero gradient
    args = [t.clone().requires_grad_() for t in (value, loc, w)]
    fn = lambda v, l, a: kernels.ms_deform_attn(v, shapes, l, a, backend="cpu")  # noqa: E731
    assert torch.autograd.gradcheck(fn, args)


def test_deform_backward_is_deterministic_on_the_cpu(cpu_ops):
    value, shapes, loc, w = deform_problem(q=40, d=16)  # many queries share pixels
    grad_out = torch.randn(2, 40, 32, dtype=F64)
    fn = functools.partial(kernels.ms_deform_attn, backend="cpu")
    first, second = deform_grads(fn, value, shapes, loc, w, grad_out), deform_grads(fn, value, shapes, loc, w, grad_out)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_deform_module_with_the_kernel_as_core(cpu_ops):
    torch.manual_seed(0)
    ref = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2).double()
    ours = MSDeformAttn(d_model=32, n_levels=2, n_heads=4, n_points=2,
                        core=functools.partial(kernels.ms_deform_attn, backend="cpu")).double()
    ours.load_state_dict(ref.state_dict())
    shapes = [(4, 6), (2, 3)]
    query, value = torch.randn(2, 7, 32, dtype=F64), torch.randn(2, 30, 32, dtype=F64)
    refpts = torch.rand(2, 7, 2, 2, dtype=F64)
    assert max_diff(ours(query, refpts, value, shapes)[0], ref(query, refpts, value, shapes)[0]) < 1e-10


# ---- selective scan ---------------------------------------------------------------------------------------

def scan_problem(b=2, d=3, n=4, length=7, groups=1, dtype=F64, seed=0, D=True, z=True, bias=True):
    """Inputs as Mamba produces them: A < 0, B and C input-dependent ((B, N, L), or (B, G, N, L) when groups > 1)."""
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    bc = (b, n, length) if groups == 1 else (b, groups, n, length)
    return dict(u=rnd(b, d, length), delta=rnd(b, d, length) * 0.5,
                A=-(torch.rand(d, n, generator=g, dtype=dtype) + 0.1), B=rnd(*bc), C=rnd(*bc),
                D=rnd(d) if D else None, z=rnd(b, d, length) if z else None, delta_bias=rnd(d) * 0.1 if bias else None)


SCAN_CASES = {  # (problem, chunk = (threads, items) of the CPU twin; None = the GPU's 128 x 16 = 2048)
    "L1": (dict(length=1), None),
    "L7": (dict(length=7), None),
    "L7-chunks-of-4": (dict(length=7), (2, 2)),
    "L2049": (dict(length=2049, b=1, d=2, n=3), None),
    "L4097-groups": (dict(length=4097, b=1, d=4, n=2, groups=2), None),
    "L50-chunks-of-6-plain": (dict(length=50, D=False, z=False, bias=False), (3, 2)),
    "D1025": (dict(length=7, b=1, d=1025, n=2), (2, 2)),
}


@pytest.mark.parametrize("case", SCAN_CASES, ids=str)
@pytest.mark.parametrize("softplus", [True, False], ids=["softplus", "no-softplus"])
def test_scan_forward_float64(cpu_ops, case, softplus):
    problem, chunk = SCAN_CASES[case]
    args = scan_problem(**problem)
    if not softplus:  # then Δ = delta + delta_bias must be positive itself, or the state explodes
        args["delta"] = args["delta"].abs() + 0.05
        args["delta_bias"] = None if args["delta_bias"] is None else args["delta_bias"].abs()
    out, last = kernels.selective_scan(**args, delta_softplus=softplus, return_last_state=True, backend="cpu",
                                       chunk=chunk)
    assert kernels.last_backend("selective_scan") == "cpu"
    ref_out, ref_last = scan_reference(**args, delta_softplus=softplus, return_last_state=True)
    assert max_diff(out, ref_out) < 1e-10
    assert max_diff(last, ref_last) < 1e-10


@pytest.mark.parametrize("case", SCAN_CASES, ids=str)
def test_scan_forward_float32(cpu_ops, case):
    problem, chunk = SCAN_CASES[case]
    args = scan_problem(**problem)
    args32 = {k: None if v is None else v.float() for k, v in args.items()}
    out = kernels.selective_scan(**args32, delta_softplus=True, backend="cpu", chunk=chunk)
    assert out.dtype == F32
    expected = scan_reference(**{k: None if v is None else v.double() for k, v in args32.items()}, delta_softplus=True)
    assert max_diff(out, expected) < 1e-5 * max(1.0, expected.abs().max().item())


def scan_grads(fn, args, grad_out, **kw):
    inputs = {k: v.detach().clone().requires_grad_() for k, v in args.items() if v is not None}
    out = fn(**{**args, **inputs}, **kw)
    return dict(zip(inputs, torch.autograd.grad((out * grad_out).sum(), list(inputs.values()))))


@pytest.mark.parametrize("case", ["L1", "L7-chunks-of-4", "L2049", "L4097-groups", "L50-chunks-of-6-plain"])
def test_scan_backward_matches_reference_autograd(cpu_ops, case):
    problem, chunk = SCAN_CASES[case]
    args = scan_problem(**problem)
    grad_out = torch.randn(args["u"].shape, dtype=F64)
    ours = scan_grads(kernels.selective_scan, args, grad_out, delta_softplus=True, backend="cpu", chunk=chunk)
    # the reference's parallel scan: the same values as its loop, and a backward that is not O(L²)
    ref = scan_grads(scan_reference, args, grad_out, delta_softplus=True, scan="parallel")
    assert ours.keys() == ref.keys()
    for name in ref:
        assert max_diff(ours[name], ref[name]) < 1e-9 * max(1.0, ref[name].abs().max().item()), name


def test_scan_backward_float32(cpu_ops):
    args = scan_problem(length=2100, b=1, d=2, n=3)
    grad_out = torch.randn(args["u"].shape, dtype=F64)
    args32 = {k: None if v is None else v.float() for k, v in args.items()}
    ours = scan_grads(kernels.selective_scan, args32, grad_out.float(), delta_softplus=True, backend="cpu")
    ref = scan_grads(scan_reference, args, grad_out, delta_softplus=True, scan="parallel")
    for name in ref:
        assert ours[name].dtype == F32
        assert max_diff(ours[name], ref[name]) < 1e-4 * max(1.0, ref[name].abs().max().item()), name


@pytest.mark.parametrize("groups", [1, 2])
def test_scan_gradcheck(cpu_ops, groups):
    args = scan_problem(b=2, d=2, n=2, length=9, groups=groups)
    names = [k for k, v in args.items() if v is not None]
    fn = lambda *xs: kernels.selective_scan(**dict(zip(names, xs)), delta_softplus=True, backend="cpu",  # noqa: E731
                                            chunk=(2, 2))  # 3 chunks: the carry in both directions
    assert torch.autograd.gradcheck(fn, [args[k].clone().requires_grad_() for k in names])


def test_scan_chunk_geometry_does_not_change_the_result(cpu_ops):
    args = scan_problem(length=37)
    outs = [kernels.selective_scan(**args, delta_softplus=True, backend="cpu", chunk=c)
            for c in [(1, 1), (2, 3), (4, 4), (128, 16)]]
    assert all(max_diff(o, outs[0]) < 1e-12 for o in outs)


# ---- backends -------------------------------------------------------------------------------------------

def test_auto_on_cpu_tensors_runs_the_cpu_deform_kernel_and_the_scan_reference(cpu_ops):
    value, shapes, loc, w = deform_problem()
    assert kernels.resolve_backend("auto", value, loc, w, cpu=True) == "cpu"
    out = kernels.ms_deform_attn(value, shapes, loc, w)
    assert kernels.last_backend("ms_deform_attn") == "cpu"
    assert max_diff(out, ms_deform_attn_core(value, shapes, loc, w)) < 1e-10
    args = scan_problem()
    kernels.selective_scan(**args, delta_softplus=True)
    assert kernels.last_backend("selective_scan") == "reference"


def test_auto_runs_the_reference_when_told(monkeypatch):
    value, shapes, loc, w = deform_problem()
    monkeypatch.setenv("TUTORIAL_KERNELS", "reference")
    out = kernels.ms_deform_attn(value, shapes, loc, w)
    assert kernels.last_backend("ms_deform_attn") == "reference"
    assert torch.equal(out, ms_deform_attn_core(value, shapes, loc, w))


def test_auto_runs_bf16_through_the_kernel_in_float32(cpu_ops):
    value, shapes, loc, w = deform_problem()
    half = [t.to(torch.bfloat16) for t in (value, loc, w)]
    out = kernels.ms_deform_attn(half[0], shapes, half[1], half[2])
    assert kernels.last_backend("ms_deform_attn") == "cpu" and out.dtype == torch.bfloat16
    expected = ms_deform_attn_core(*(t.double() for t in half[:1]), shapes, *(t.double() for t in half[1:]))
    assert max_diff(out.double(), expected) < 2e-2  # only bf16's rounding of the result


def test_backend_errors_name_the_problem(cpu_ops):
    value, shapes, loc, w = deform_problem()
    with pytest.raises(ValueError, match="backend must be one of"):
        kernels.ms_deform_attn(value, shapes, loc, w, backend="gpu")
    if not HAS_GPU:
        with pytest.raises(ValueError, match="needs tensors on a GPU"):
            kernels.ms_deform_attn(value, shapes, loc, w, backend="cuda")
    fixed = scan_problem()
    fixed["B"] = torch.randn(3, 4, dtype=F64)  # time-invariant (D, N): the reference handles it, the kernels do not
    with pytest.raises(ValueError, match="input-dependent B and C"):
        kernels.selective_scan(**fixed, backend="cpu")
    kernels.selective_scan(**fixed, backend="auto")
    assert kernels.last_backend("selective_scan") == "reference"
    with pytest.raises(RuntimeError, match="sampling_locations must be"):
        kernels.ms_deform_attn(value, shapes, loc[..., :1].contiguous(), w, backend="cpu")


# ---- compiling the CUDA sources (no GPU needed) --------------------------------------------------------------

needs_nvcc = pytest.mark.skipif(kernels.nvcc() is None, reason="nvcc not found (set CUDA_HOME or put nvcc on the PATH)")


@needs_nvcc
def test_cuda_sources_compile_for_sm80_and_sm90(tmp_path):
    times = kernels.compile_check(("80", "90"), out_dir=tmp_path)
    assert set(times) == {"ms_deform_attn_cuda.cu", "selective_scan_cuda.cu"}
    assert all((tmp_path / (name + ".o")).stat().st_size > 0 for name in times)


@pytest.mark.slow
@needs_nvcc
def test_cuda_extension_builds_and_registers_its_ops():
    """The whole CUDA extension (binding included) compiles, links and loads; calling it needs a GPU."""
    ops = kernels.build_cuda_extension()
    for op in ("ms_deform_attn_forward", "ms_deform_attn_backward", "selective_scan_forward",
               "selective_scan_backward"):
        assert hasattr(ops, op)


# ---- on a GPU ---------------------------------------------------------------------------------------------

@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("d", [30, 32, 64, 71, 1025])
def test_gpu_deform_forward_and_backward(d):
    value, shapes, loc, w = deform_problem(**(DEFORM_CASES["d1025"] if d == 1025 else dict(d=d, q=9)))
    grad_out = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * d, dtype=F64)
    cuda = lambda *t: [x.float().cuda() for x in t]  # noqa: E731
    out = kernels.ms_deform_attn(*cuda(value), shapes, *cuda(loc, w), backend="auto")
    assert kernels.last_backend("ms_deform_attn") == "cuda"  # the kernel really ran
    assert max_diff(out.cpu(), ms_deform_attn_core(value, shapes, loc, w)) < 1e-5  # float32 vs float64 reference
    fn = functools.partial(kernels.ms_deform_attn, backend="cuda")
    ours = deform_grads(fn, *cuda(value), shapes, *cuda(loc, w), grad_out.float().cuda())
    ref = deform_grads(ms_deform_attn_core, value, shapes, loc, w, grad_out)
    for a, b in zip(ours, ref):
        assert max_diff(a.cpu(), b) < 1e-4 * max(1.0, b.abs().max().item())
    ours64 = deform_grads(fn, value.cuda(), shapes, loc.cuda(), w.cuda(), grad_out.cuda())
    for a, b in zip(ours64, ref):
        assert max_diff(a.cpu(), b) < 1e-9


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("length", [1, 7, 2049, 4097])
def test_gpu_scan_forward_and_backward(length):
    args = scan_problem(b=2, d=8, n=16, length=length, groups=2, dtype=F32)
    cuda_args = {k: None if v is None else v.cuda() for k, v in args.items()}
    out, last = kernels.selective_scan(**cuda_args, delta_softplus=True, return_last_state=True, backend="auto")
    assert kernels.last_backend("selective_scan") == "cuda"  # the kernel really ran
    ref, ref_last = scan_reference(**args, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out.cpu(), ref, rtol=6e-4, atol=2e-3)  # the official tests' float32 tolerances
    torch.testing.assert_close(last.cpu(), ref_last, rtol=6e-4, atol=2e-3)
    grad_out = torch.randn(args["u"].shape)
    ours = scan_grads(kernels.selective_scan, cuda_args, grad_out.cuda(), delta_softplus=True, backend="cuda")
    theirs = scan_grads(scan_reference, args, grad_out, delta_softplus=True, scan="parallel")
    for name in theirs:
        torch.testing.assert_close(ours[name].cpu(), theirs[name], rtol=6e-4, atol=2e-3, msg=name)
    args64 = {k: None if v is None else v.double().cuda() for k, v in args.items()}
    out64 = kernels.selective_scan(**args64, delta_softplus=True, backend="cuda")
    assert max_diff(out64.cpu(), scan_reference(**{k: None if v is None else v.double() for k, v in args.items()},
                                                delta_softplus=True)) < 1e-10
