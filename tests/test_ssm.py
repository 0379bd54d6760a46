"""The continuous and discrete SSM in float64: ZOH against an RK4 integration of the ODE and the
block-exponential trick; the simplified B̄; HiPPO-LegS against exact Legendre projections;
the recurrent view against the convolutional view."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import eval_legendre

from tutorial.checks import check_discretize_zoh, zoh_block_exp
from tutorial.ssm.ssm import (discretize_simplified, discretize_zoh, discretize_zoh_diagonal, hippo_legs,
                          hippo_legs_memory, legendre_basis, legendre_reconstruct, ssm_convolutional, ssm_kernel,
                          ssm_recurrent)

F64 = torch.float64


def rk4_step_response(A: torch.Tensor, B: torch.Tensor, h0: torch.Tensor, x: torch.Tensor, delta: float,
                      steps: int = 2000) -> torch.Tensor:
    """h(Δ) for h' = A h + B x with x held constant, by classical RK4 with `steps` substeps."""
    f = lambda h: A @ h + B @ x  # noqa: E731
    h, dt = h0.clone(), delta / steps
    for _ in range(steps):
        k1 = f(h)
        k2 = f(h + dt / 2 * k1)
        k3 = f(h + dt / 2 * k2)
        k4 = f(h + dt * k3)
        h = h + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
    return h


@pytest.mark.parametrize("delta", [0.05, 0.7])
def test_zoh_equals_the_ode_solution(delta):
    """Ā h0 + B̄ x is the exact solution after one step of the ODE with x held constant."""
    g = torch.Generator().manual_seed(0)
    A, _ = hippo_legs(5)
    A = A + 0.3 * torch.randn(5, 5, generator=g, dtype=F64)  # a full, non-triangular A
    B = torch.randn(5, 2, generator=g, dtype=F64)
    h0, x = torch.randn(5, generator=g, dtype=F64), torch.randn(2, generator=g, dtype=F64)
    A_bar, B_bar = discretize_zoh(A, B, delta)
    expected = rk4_step_response(A, B, h0, x, delta)
    assert (A_bar @ h0 + B_bar @ x - expected).abs().max() < 1e-10


def test_zoh_equals_block_exponential_and_batches():
    check_discretize_zoh(discretize_zoh)
    A, B = hippo_legs(6)
    A_bar, B_bar = discretize_zoh(A, B[:, None], torch.tensor([[0.1, 1.0], [0.01, 3.0]], dtype=F64))
    assert A_bar.shape == (2, 2, 6, 6) and B_bar.shape == (2, 2, 6, 1)
    A_exp, B_exp = zoh_block_exp(A, B[:, None], 3.0)
    assert (A_bar[1, 1] - A_exp).abs().max() < 1e-12 and (B_bar[1, 1] - B_exp).abs().max() < 1e-12


def test_diagonal_zoh_equals_full_zoh_of_a_diagonal_matrix():
    g = torch.Generator().manual_seed(1)
    a = -torch.rand(4, generator=g, dtype=F64) * 3 - 0.1  # (N,) stable diagonal
    b = torch.randn(4, generator=g, dtype=F64)
    for delta in (1e-6, 0.2, 5.0):
        A_bar, B_bar = discretize_zoh_diagonal(a, b, torch.tensor(delta, dtype=F64))
        A_full, B_full = discretize_zoh(torch.diag(a), b[:, None], delta)
        assert (A_bar - torch.diagonal(A_full)).abs().max() < 1e-12
        assert (B_bar - B_full[:, 0]).abs().max() < 1e-12


def test_simplified_B_bar_is_exact_to_first_order():
    """|ΔB - B̄_ZOH| = O(Δ²): the error divided by Δ² tends to |A B| / 2."""
    a = -torch.arange(1, 5, dtype=F64)  # S4D-real A
    b = torch.ones(4, dtype=F64)
    for delta in (1e-2, 1e-3, 1e-4):
        d = torch.tensor(delta, dtype=F64)
        A_zoh, B_zoh = discretize_zoh_diagonal(a, b, d)
        A_s, B_s = discretize_simplified(a, b, d)
        assert torch.equal(A_s, A_zoh)  # Ā is the same exp(ΔA)
        ratio = (B_s - B_zoh).abs() / delta ** 2
        assert torch.allclose(ratio, (a * b).abs() / 2, rtol=2 * delta * 4)


def test_hippo_legs_matrix():
    A, B = hippo_legs(4)
    r = [math.sqrt(2 * n + 1) for n in range(4)]
    for n in range(4):
        assert B[n] == pytest.approx(r[n])
        for k in range(4):
            expected = -r[n] * r[k] if n > k else (-(n + 1) if n == k else 0.0)
            assert A[n, k] == pytest.approx(expected)
    assert torch.linalg.eigvals(A).real.max() < 0  # stable


def exact_legendre_projection(f: np.ndarray, u_lo: np.ndarray, u_hi: np.ndarray, n: int) -> np.ndarray:
    """c_k = Σ_j f_j ∫_{u_lo_j}^{u_hi_j} sqrt(2k+1) P_k(2u - 1) du, exactly, with the antiderivative
    ∫_{-1}^{x} P_k = (P_{k+1}(x) - P_{k-1}(x)) / (2k+1) (scipy's Legendre polynomials)."""
    def antiderivative(k, x):
        return x + 1 if k == 0 else (eval_legendre(k + 1, x) - eval_legendre(k - 1, x)) / (2 * k + 1)
    return np.array([math.sqrt(2 * k + 1) / 2 * np.sum(f * (antiderivative(k, 2 * u_hi - 1)
                                                            - antiderivative(k, 2 * u_lo - 1))) for k in range(n)])


def test_hippo_legs_memory_is_the_exact_legendre_projection():
    """LegS's state after t samples are the Legendre coefficients of the (piecewise-constant)
    signal over [0, t]; the time-invariant version's, over an exponentially warped past."""
    length, n = 120, 12
    s = np.arange(length)
    f = np.sin(s / 9.0) + 0.3 * np.cos(s / 4.0)
    c = hippo_legs_memory(torch.tensor(f), n)  # (L, N)
    assert c.shape == (length, n)
    for t in (1, 2, 50, length):
        expected = exact_legendre_projection(f[:t], s[:t] / t, (s[:t] + 1) / t, n)
        assert np.abs(c[t - 1].numpy() - expected).max() < 1e-11
    delta = 0.05
    c_ti = hippo_legs_memory(torch.tensor(f), n, delta=delta)[-1]  # (N,)
    lag_lo, lag_hi = (length - 1 - s) * delta, (length - s) * delta
    expected = exact_legendre_projection(f, np.exp(-lag_hi), np.exp(-lag_lo), n)
    assert np.abs(c_ti.numpy() - expected).max() < 1e-11


def test_legendre_reconstruction_of_a_smooth_signal():
    x = torch.linspace(-1, 1, 201, dtype=F64)
    basis = legendre_basis(8, x)  # (8, 201)
    scipy_basis = np.stack([math.sqrt(2 * k + 1) * eval_legendre(k, x.numpy()) for k in range(8)])
    assert np.abs(basis.numpy() - scipy_basis).max() < 1e-12
    # a polynomial of degree < N is reconstructed exactly from its exact LegS coefficients
    length, n = 400, 6
    s = (np.arange(length) + 0.5) / length
    poly = 1 - 2 * s + 3 * s ** 3
    c = hippo_legs_memory(torch.tensor(poly), n)[-1]
    recon = legendre_reconstruct(c, torch.tensor(2 * s - 1))
    assert np.abs(recon.numpy() - poly).max() < 2e-2  # piecewise-constant sampling error only


@pytest.mark.parametrize("length", [1, 7, 64])
def test_recurrent_view_equals_convolutional_view(length):
    g = torch.Generator().manual_seed(2)
    A, B = hippo_legs(8)
    A_bar, B_bar = discretize_zoh(A, B[:, None], 0.1)
    C = torch.randn(8, generator=g, dtype=F64)
    x = torch.randn(3, length, generator=g, dtype=F64)
    y_rec = ssm_recurrent(A_bar, B_bar[:, 0], C, x)  # (3, L)
    K = ssm_kernel(A_bar, B_bar[:, 0], C, length)  # (L,)
    y_conv = ssm_convolutional(K, x)
    assert y_rec.shape == y_conv.shape == (3, length)
    assert (y_rec - y_conv).abs().max() < 1e-10
    # and the convolution is the explicit sum y_t = Σ_k K_k x_{t-k}
    y_sum = torch.stack([sum(K[k] * x[:, t - k] for k in range(t + 1)) for t in range(length)], dim=-1)
    assert (y_conv - y_sum).abs().max() < 1e-10
