"""Checkers for the state-space model (tutorial/ssm/ssm.py, tutorial/ssm/parallel_scan.py); oracles:
the matrix-exponential block trick for the discretisation and explicit loops for the scans."""
from __future__ import annotations

import torch
from torch import Tensor

from .common import report


def zoh_block_exp(A: Tensor, B: Tensor, delta: float) -> tuple[Tensor, Tensor]:
    """ZOH without any inverse: exp(Δ [[A, B], [0, 0]]) = [[Ā, B̄], [0, I]] (Van Loan, 1978)."""
    n, p = B.shape
    M = torch.zeros(n + p, n + p, dtype=A.dtype)
    M[:n, :n], M[:n, n:] = A, B
    E = torch.linalg.matrix_exp(delta * M)  # (N+P, N+P)
    return E[:n, :n], E[:n, n:]


def check_discretize_zoh(fn) -> float:
    g = torch.Generator().manual_seed(40)
    n, p = 4, 2
    A = torch.randn(n, n, generator=g, dtype=torch.float64) - 2 * torch.eye(n, dtype=torch.float64)
    B = torch.randn(n, p, generator=g, dtype=torch.float64)
    worst = 0.0
    for delta in (0.01, 0.3, 1.7):
        A_bar, B_bar = fn(A, B, delta)
        A_exp, B_exp = zoh_block_exp(A, B, delta)
        worst = max(worst, report(f"discretize_zoh Ā (Δ={delta})", A_bar, A_exp, 1e-10),
                    report(f"discretize_zoh B̄ (Δ={delta})", B_bar, B_exp, 1e-10))
    deltas = torch.tensor([0.05, 0.5, 2.0], dtype=torch.float64)  # a batch of steps
    A_bar, B_bar = fn(A, B, deltas)
    A_exp, B_exp = map(torch.stack, zip(*(zoh_block_exp(A, B, float(d)) for d in deltas)))
    return max(worst, report("discretize_zoh Ā (a batch of 3 steps)", A_bar, A_exp, 1e-10),
               report("discretize_zoh B̄ (a batch of 3 steps)", B_bar, B_exp, 1e-10))


def check_scan_combine(fn) -> float:
    g = torch.Generator().manual_seed(41)
    a1, b1, a2, b2 = torch.randn(4, 3, 5, generator=g, dtype=torch.float64)
    step1 = lambda h: a1 * h + b1  # noqa: E731  the two recurrence steps, applied explicitly
    step2 = lambda h: a2 * h + b2  # noqa: E731
    zero, one = torch.zeros(3, 5, dtype=torch.float64), torch.ones(3, 5, dtype=torch.float64)
    b_expected = step2(step1(zero))  # the composed affine map at h = 0 is its offset b ...
    a_expected = step2(step1(one)) - b_expected  # ... and its slope is a
    a, b = fn(a1, b1, a2, b2)
    return max(report("scan_combine a (step 1 then step 2)", a, a_expected, 1e-12),
               report("scan_combine b (step 1 then step 2)", b, b_expected, 1e-12))


def linear_recurrence_loop(a: Tensor, b: Tensor) -> Tensor:
    """h_t = a_t h_{t-1} + b_t, h_{-1} = 0, one sequence and one step at a time."""
    flat_a, flat_b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
    h = torch.zeros_like(flat_b)
    for i in range(flat_b.shape[0]):
        state = 0.0
        for t in range(flat_b.shape[1]):
            state = flat_a[i, t].item() * state + flat_b[i, t].item()
            h[i, t] = state
    return h.reshape(b.shape)


def check_parallel_scan(fn) -> float:
    g = torch.Generator().manual_seed(42)
    worst = 0.0
    for length in (1, 2, 3, 7, 16, 33, 100):  # odd lengths and non-powers of two
        a = torch.rand(2, 3, length, generator=g, dtype=torch.float64) * 1.2 - 0.1  # some a < 0, some > 1
        b = torch.randn(2, 3, length, generator=g, dtype=torch.float64)
        worst = max(worst, report(f"parallel_scan (L={length}, vs a loop)", fn(a, b), linear_recurrence_loop(a, b),
                                  1e-10))
    return worst
