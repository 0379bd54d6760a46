"""The selective scan (S6) against a scalar loop written here, in float64, for every layout of
B and C, the D skip, the z gate, delta_bias/softplus and the last state; the three scans agree
in value and gradient; precision rules for half inputs; causality."""
from __future__ import annotations

import math

import pytest
import torch

from tutorial.ssm.selective_scan import selective_scan

F64 = torch.float64
SCANS = ["sequential", "parallel", "chunked"]


def naive_selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """One batch element, channel, step and state at a time, with Python floats.

    h[k] <- exp(Δ A[c,k]) h[k] + Δ B_k u;  y = Σ_k C_k h[k] + D[c] u;  y *= z·sigmoid(z).
    """
    b, d, length = u.shape
    n = A.shape[1]

    def at(M, i, c, k, t):  # M's value for batch i, channel c, state k, step t, in any layout
        if M.dim() == 2:
            return M[c, k].item()
        if M.dim() == 3:
            return M[i, k, t].item()
        return M[i, c // (d // M.shape[1]), k, t].item()

    out = torch.zeros(b, d, length, dtype=F64)
    last = torch.zeros(b, d, n, dtype=F64)
    for i in range(b):
        for c in range(d):
            h = [0.0] * n
            for t in range(length):
                dt = delta[i, c, t].item() + (delta_bias[c].item() if delta_bias is not None else 0.0)
                if delta_softplus:
                    dt = math.log1p(math.exp(dt))
                x = u[i, c, t].item()
                y = 0.0
                for k in range(n):
                    h[k] = math.exp(dt * A[c, k].item()) * h[k] + dt * at(B, i, c, k, t) * x
                    y += at(C, i, c, k, t) * h[k]
                if D is not None:
                    y += D[c].item() * x
                if z is not None:
                    zz = z[i, c, t].item()
                    y *= zz / (1 + math.exp(-zz))
                out[i, c, t] = y
            last[i, c] = torch.tensor(h, dtype=F64)
    return out, last


def problem(b=2, d=4, n=3, length=6, layout_B="variable", layout_C="variable", groups=2, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    shapes = {"fixed": (d, n), "variable": (b, n, length), "grouped": (b, groups, n, length)}
    return dict(u=rnd(b, d, length), delta=rnd(b, d, length) * 0.5,
                A=-torch.rand(d, n, generator=g, dtype=dtype) * 2 - 0.1,
                B=rnd(*shapes[layout_B]), C=rnd(*shapes[layout_C]),
                D=rnd(d), z=rnd(b, d, length), delta_bias=rnd(d) * 0.3)


LAYOUTS = [("fixed", "fixed"), ("variable", "variable"), ("grouped", "grouped"), ("fixed", "variable"),
           ("grouped", "variable")]


@pytest.mark.parametrize("scan", SCANS)
@pytest.mark.parametrize("layout", LAYOUTS, ids=lambda x: f"B{x[0]}-C{x[1]}")
def test_against_naive_loop_all_options(layout, scan):
    p = problem(layout_B=layout[0], layout_C=layout[1])
    out, last = selective_scan(**p, delta_softplus=True, return_last_state=True, scan=scan, chunk=4)
    expected, expected_last = naive_selective_scan(**p, delta_softplus=True)
    assert out.shape == (2, 4, 6) and last.shape == (2, 4, 3)
    assert (out - expected).abs().max() < 1e-12
    assert (last - expected_last).abs().max() < 1e-12


@pytest.mark.parametrize("scan", SCANS)
def test_against_naive_loop_no_options(scan):
    p = problem(seed=1)
    bare = {k: p[k] for k in ("u", "delta", "A", "B", "C")}
    p["delta"] = p["delta"].abs()  # without softplus Δ must be positive to be a step
    bare["delta"] = p["delta"]
    out = selective_scan(**bare, scan=scan, chunk=5)
    expected, _ = naive_selective_scan(**bare)
    assert (out - expected).abs().max() < 1e-12


def test_documented_semantics_of_each_option():
    """D adds D·u; z multiplies by SiLU(z); delta_bias shifts Δ before the softplus."""
    p = problem(seed=2)
    base = dict(u=p["u"], delta=p["delta"], A=p["A"], B=p["B"], C=p["C"])
    y0 = selective_scan(**base, delta_softplus=True)
    y_d = selective_scan(**base, D=p["D"], delta_softplus=True)
    assert torch.allclose(y_d - y0, p["D"][:, None] * p["u"], atol=1e-13)
    y_z = selective_scan(**base, D=p["D"], z=p["z"], delta_softplus=True)
    assert torch.allclose(y_z, y_d * torch.nn.functional.silu(p["z"]), atol=1e-13)
    shifted = dict(base, delta=p["delta"] + p["delta_bias"][:, None])
    assert torch.allclose(selective_scan(**base, delta_bias=p["delta_bias"], delta_softplus=True),
                          selective_scan(**shifted, delta_softplus=True), atol=1e-13)
    # the last state is the state after the last step: one more step from it continues the scan
    u2 = torch.cat([p["u"], p["u"][..., :1]], -1)
    delta2 = torch.cat([p["delta"], p["delta"][..., :1]], -1)
    B2 = torch.cat([p["B"], p["B"][..., :1]], -1)
    C2 = torch.cat([p["C"], p["C"][..., :1]], -1)
    y_long = selective_scan(u2, delta2, p["A"], B2, C2, delta_softplus=True)
    _, h = selective_scan(**base, delta_softplus=True, return_last_state=True)
    dt = torch.nn.functional.softplus(p["delta"][..., 0])  # (B, D)
    h_next = torch.exp(dt[..., None] * p["A"]) * h + (dt * p["u"][..., 0])[..., None] * p["B"][:, None, :, 0]
    assert torch.allclose(y_long[..., -1], (h_next * p["C"][:, None, :, 0]).sum(-1), atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_precision_rules_as_official(dtype):
    """Inputs are computed in float32 and the output cast back to the input dtype (official ref)."""
    p = problem(seed=3, dtype=torch.float32)
    half = dict(p, u=p["u"].to(dtype), delta=p["delta"].to(dtype), B=p["B"].to(dtype), C=p["C"].to(dtype),
                z=p["z"].to(dtype))
    out, last = selective_scan(**half, delta_softplus=True, return_last_state=True, scan="parallel")
    assert out.dtype == dtype and last.dtype == torch.float32
    upcast = {k: v.float() for k, v in half.items()}
    ref, ref_last = selective_scan(**upcast, delta_softplus=True, return_last_state=True, scan="parallel")
    assert torch.equal(out, ref.to(dtype))
    assert torch.allclose(last, ref_last, atol=1e-5)


def test_scans_agree_on_gradients_and_gradcheck():
    p = problem(length=37, layout_B="grouped", layout_C="variable", seed=4)
    grads = {}
    for scan in SCANS:
        leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
        out = selective_scan(**leaves, delta_softplus=True, scan=scan, chunk=10)
        grads[scan] = torch.autograd.grad(out.square().sum(), list(leaves.values()))
    for scan in ("parallel", "chunked"):
        for name, g, g_ref in zip(p, grads[scan], grads["sequential"]):
            assert (g - g_ref).abs().max() < 1e-10, (scan, name)
    small = {k: v.requires_grad_() for k, v in problem(b=1, d=2, n=2, length=5, seed=5).items()}
    fn = lambda *xs: selective_scan(*xs, delta_softplus=True, scan="parallel")  # noqa: E731
    assert torch.autograd.gradcheck(fn, tuple(small[k] for k in ("u", "delta", "A", "B", "C", "D", "z",
                                                                  "delta_bias")))


def test_long_sequence_scans_agree():
    p = problem(b=1, d=2, n=4, length=1000, seed=6)
    ref, ref_last = selective_scan(**p, delta_softplus=True, return_last_state=True, scan="sequential")
    for scan, chunk in (("parallel", 2048), ("chunked", 333)):
        out, last = selective_scan(**p, delta_softplus=True, return_last_state=True, scan=scan, chunk=chunk)
        assert (out - ref).abs().max() < 1e-11 and (last - ref_last).abs().max() < 1e-11


@pytest.mark.parametrize("scan", SCANS)
def test_causality(scan):
    p = problem(length=15, seed=7)
    t = 8
    out = selective_scan(**p, delta_softplus=True, scan=scan, chunk=4)
    for key in ("u", "delta", "B", "C", "z"):
        q = dict(p)
        q[key] = p[key].clone()
        q[key][..., t] += 1.0
        out2 = selective_scan(**q, delta_softplus=True, scan=scan, chunk=4)
        assert torch.equal(out[..., :t], out2[..., :t]), key
        assert (out[..., t] - out2[..., t]).abs().max() > 0, key


def test_errors_name_the_argument():
    p = problem()
    with pytest.raises(ValueError, match="scan must be one of"):
        selective_scan(**p, scan="fast")
    with pytest.raises(ValueError, match="B must be"):
        selective_scan(**dict(p, B=torch.randn(2, 3, 3, 6, dtype=F64)))  # 3 groups do not divide 4 channels
    with pytest.raises(ValueError, match="A must be"):
        selective_scan(**dict(p, A=torch.randn(3, 3, dtype=F64)))
