"""State-space models, step by step: the continuous SSM, its discretisation, HiPPO, and the
recurrent and convolutional views of a time-invariant SSM.

Seed, "Mamba (Selective State Spaces)" and "Mamba (HiPPO)". A continuous-time SSM maps a signal
x(t) to y(t) through a hidden state h(t) ∈ R^N:

    h'(t) = A h(t) + B x(t),      y(t) = C h(t)                                   (S4 Eq. 1)

Discretising with a step Δ and a zero-order hold (x constant over each step) gives

    h_t = Ā h_{t-1} + B̄ x_t,      y_t = C h_t                                     (Mamba Eq. 2)
    Ā = exp(ΔA),                   B̄ = (ΔA)^{-1} (exp(ΔA) - I) · ΔB               (Mamba Eq. 4, ZOH)

Mamba keeps Ā = exp(ΔA) but simplifies B̄ ≈ ΔB, the first-order term of the series, exact up
to O(Δ²) (the official code computes `deltaB_u = delta * B * u`).

With A, B, C, Δ fixed over time the SSM is linear time-invariant, and the same output can be
computed two ways (seed: "Recurrent ... or Convolutional"):
- recurrent: one step per token, O(N) memory, unbounded context, cheap inference;
- convolutional: y = x * K̄ with the kernel K̄ = (CB̄, CĀB̄, ..., CĀ^{L-1}B̄)         (Mamba Eq. 3)
  computed once, then a causal convolution (by FFT) over the whole sequence: parallel training.
Mamba makes Δ, B, C depend on the input (`tutorial/ssm/selective_scan.py`), which breaks the
convolution and brings back the scan (`tutorial/ssm/parallel_scan.py`).

HiPPO (Gu et al., NeurIPS 2020): the LegS matrix A makes h(t) the coefficients of the best
approximation of the whole history x(s), s ≤ t, by N scaled Legendre polynomials; S4 and Mamba
initialise A from it (Mamba's S4D-real A = -(1, 2, ..., N) is its diagonal part).

Glossary (sizes in lower case as in mamba-minimal, shapes in capitals). In the state-space
files the letters are the Mamba paper's, not the detector files': L sequence length, N state
size [d_state], P input channels of a multi-input SSM; Δ `delta`, A `A`, B `B`, C `C`,
Ā `A_bar`, B̄ `B_bar`, K̄ `K`.
"""
from __future__ import annotations

import torch
from torch import Tensor

# --- discretisation -----------------------------------------------------------------------------


def discretize_zoh(A: Tensor, B: Tensor, delta: float | Tensor) -> tuple[Tensor, Tensor]:
    """Zero-order-hold discretisation of h' = A h + B x with step Δ.  [exercise]

    A (N, N), B (N, P), delta a float or a tensor of positive steps of any shape (...)
    -> (A_bar (..., N, N), B_bar (..., N, P)) with, exactly as the seed writes it,

        Ā = exp(ΔA),    B̄ = (ΔA)^{-1} (exp(ΔA) - I) · ΔB                        (Mamba Eq. 4)

    Use `torch.linalg.matrix_exp` for exp(ΔA) and `torch.linalg.solve` instead of an explicit
    inverse; ΔA must be invertible (true for HiPPO's and S4D's A).
    """
    delta = torch.as_tensor(delta, dtype=A.dtype, device=A.device)
    dA = delta[..., None, None] * A  # (..., N, N)
    dB = delta[..., None, None] * B  # (..., N, P)
    A_bar = torch.linalg.matrix_exp(dA)  # (..., N, N)
    identity = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
    B_bar = torch.linalg.solve(dA, (A_bar - identity) @ dB)  # (..., N, P)
    return A_bar, B_bar


def discretize_zoh_diagonal(A: Tensor, B: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """The same ZOH for a diagonal A, elementwise: Ā = exp(ΔA), B̄ = (ΔA)^{-1}(exp(ΔA) - 1)·ΔB.

    A holds the diagonal entries (nonzero); A, B and delta broadcast against each other, e.g.
    delta (B, D, L, 1), A (D, 1, N), B (B, 1, L, N) -> Ā, B̄ (B, D, L, N). `expm1` keeps
    exp(ΔA) - 1 accurate when ΔA is small.
    """
    dA = delta * A
    return torch.exp(dA), torch.expm1(dA) / dA * (delta * B)


def discretize_simplified(A: Tensor, B: Tensor, delta: Tensor) -> tuple[Tensor, Tensor]:
    """Mamba's discretisation for a diagonal A: Ā = exp(ΔA) (ZOH) but B̄ = ΔB (Euler).

    Broadcasting as `discretize_zoh_diagonal`. ΔB is the first term of the ZOH series
    (ΔA)^{-1}(exp(ΔA) - 1)ΔB = (1 + ΔA/2 + ...)ΔB, so it is exact up to O(Δ²); it is what
    the official `selective_scan_ref` computes (`deltaB_u = delta * B * u`).
    """
    return torch.exp(delta * A), delta * B


# --- HiPPO ----------------------------------------------------------------------------------------


def hippo_legs(n: int, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """The HiPPO-LegS matrices (HiPPO Sec. 3, "LegS"; written as S4 Eq. 2, with the sign that makes A stable).

    -> A (N, N), B (N,):
        A_nk = -sqrt(2n+1) sqrt(2k+1)  if n > k,    -(n+1)  if n = k,    0  if n < k
        B_n  = sqrt(2n+1)
    """
    r = torch.sqrt(2 * torch.arange(n, dtype=dtype) + 1)  # (N,) sqrt(2n+1)
    A = -torch.tril(r[:, None] * r[None, :], diagonal=-1)  # (N, N) strictly lower part
    A = A - torch.diag(torch.arange(1, n + 1, dtype=dtype))  # (N, N) diagonal -(n+1)
    return A, r.clone()


def legendre_basis(n: int, x: Tensor) -> Tensor:
    """The first N orthonormal Legendre polynomials sqrt(2k+1) P_k(x) at points x (M,) in [-1, 1]
    -> (N, M), by Bonnet's recurrence (k+1) P_{k+1} = (2k+1) x P_k - k P_{k-1}."""
    p = [torch.ones_like(x), x]
    for k in range(1, n - 1):
        p.append(((2 * k + 1) * x * p[k] - k * p[k - 1]) / (k + 1))
    scale = torch.sqrt(2 * torch.arange(n, dtype=x.dtype, device=x.device) + 1)  # (N,)
    return scale[:, None] * torch.stack(p[:n])  # (N, M)


def legendre_reconstruct(c: Tensor, x: Tensor) -> Tensor:
    """The signal a HiPPO state remembers: f̂(x) = Σ_k c_k sqrt(2k+1) P_k(x).

    c (..., N) coefficients, x (M,) points in [-1, 1] -> (..., M). Where x sits in time depends
    on the memory (see `hippo_legs_memory`): after t steps of the scale-invariant LegS memory,
    time s ∈ [0, t] is x = 2s/t - 1; for the time-invariant memory with step Δ, the input λ time
    units ago (λ = Δ · steps back) is x = 2 exp(-λ) - 1, so the recent past is sharp and older
    inputs are squeezed towards x = -1 (the seed's "old signals decay exponentially").
    """
    return c @ legendre_basis(c.shape[-1], x)  # (..., M)


def hippo_legs_memory(f: Tensor, n: int, delta: float | None = None) -> Tensor:
    """Run HiPPO-LegS over a sampled signal and return its state after every sample.

    f (..., L) samples, sample k held constant over one time step; n the state size N
    -> c (..., L, N), c[..., k, :] the Legendre coefficients of the signal seen up to sample k.

    - delta=None: the scale-invariant LegS of HiPPO, h'(t) = (1/t)(A h + B f). In log-time
      τ = ln t it is time-invariant, so each step is an exact ZOH step with Δ_k = ln((k+1)/k)
      (a step that shrinks over time: the memory covers all of [0, t] uniformly). The first
      step (Δ_0 = ∞) leaves -A^{-1}B f_0 = f_0 e_0.
    - delta=float: the time-invariant SSM S4 initialises with, h_t = Ā h_{t-1} + B̄ f_t, the
      seed's recurrence with a fixed Δ: an exponentially-warped memory of the recent past.
    Reconstruct with `legendre_reconstruct`.
    """
    A, B = hippo_legs(n, dtype=f.dtype)
    length = f.shape[-1]
    if delta is None:
        steps = torch.log1p(1 / torch.arange(1, length, dtype=f.dtype))  # (L-1,) Δ_k = ln((k+1)/k)
        c = f[..., :1] * torch.eye(n, dtype=f.dtype)[0]  # (..., N) state after sample 0: f_0 e_0
        states, rest = [c], range(1, length)
    else:
        steps = torch.full((length,), float(delta), dtype=f.dtype)  # (L,)
        c = f.new_zeros(*f.shape[:-1], n)  # (..., N)
        states, rest = [], range(length)
    A_bar, B_bar = discretize_zoh(A, B[:, None], steps)  # (S, N, N), (S, N, 1), one per step
    for i, k in enumerate(rest):
        c = c @ A_bar[i].T + f[..., k, None] * B_bar[i, :, 0]  # (..., N)
        states.append(c)
    return torch.stack(states, dim=-2)  # (..., L, N)


# --- the two views of a time-invariant SSM --------------------------------------------------------


def ssm_recurrent(A_bar: Tensor, B_bar: Tensor, C: Tensor, x: Tensor) -> Tensor:
    """The recurrent view: h_t = Ā h_{t-1} + B̄ x_t, y_t = C h_t, h_{-1} = 0, one step at a time.

    A_bar (N, N), B_bar (N,), C (N,), x (..., L) -> y (..., L).
    """
    h = x.new_zeros(*x.shape[:-1], A_bar.shape[0])  # (..., N)
    ys = []
    for t in range(x.shape[-1]):
        h = h @ A_bar.T + x[..., t, None] * B_bar  # (..., N)
        ys.append(h @ C)  # (...,)
    return torch.stack(ys, dim=-1)  # (..., L)


def ssm_kernel(A_bar: Tensor, B_bar: Tensor, C: Tensor, length: int) -> Tensor:
    """The SSM convolution kernel K̄ = (CB̄, CĀB̄, ..., CĀ^{L-1}B̄) (Mamba Eq. 3a) -> (L,).

    A_bar (N, N), B_bar (N,), C (N,). Computed here by repeated multiplication; S4's fast
    algorithm (a Cauchy kernel on the DPLR form of A) is out of scope.
    """
    v, ks = B_bar, []
    for _ in range(length):
        ks.append(C @ v)  # CĀ^k B̄
        v = A_bar @ v  # (N,)
    return torch.stack(ks)  # (L,)


def ssm_convolutional(K: Tensor, x: Tensor) -> Tensor:
    """The convolutional view: y_t = Σ_{k=0}^{t} K̄_k x_{t-k} (Mamba Eq. 3b), a causal convolution by FFT.

    K (L,), x (..., L) -> y (..., L). Both are zero-padded to 2L so that the FFT's circular
    convolution does not wrap the end of the sequence onto its start.
    """
    length = x.shape[-1]
    k_f = torch.fft.rfft(K, n=2 * length)  # (L+1,)
    x_f = torch.fft.rfft(x, n=2 * length)  # (..., L+1)
    return torch.fft.irfft(x_f * k_f, n=2 * length)[..., :length]  # (..., L)

