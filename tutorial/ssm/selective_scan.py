"""The selective scan (S6): Mamba's SSM, whose Δ, B and C depend on the input.

Mamba (Gu & Dao, 2023), Sec. 3.2, Algorithm 2. Each of the D channels of u is an independent
SSM with a diagonal A (D, N) and N states; per token t:

    Δ_t = softplus(delta_t + delta_bias)                    (Δ = τ_Δ(Parameter + s_Δ(x)))
    Ā_t = exp(Δ_t A),   B̄_t x_t = Δ_t B_t u_t              (Mamba's discretisation, B̄ ≈ ΔB)
    h_t = Ā_t h_{t-1} + B̄_t u_t,   y_t = C_t h_t + D u_t    (Eq. 2a-2b plus the skip D)
    out_t = y_t · SiLU(z_t)                                 (the gate, when z is given)

Because Ā_t, B_t, C_t change with t there is no convolution kernel: the states are computed
by a scan over t (seed, the hardware-aware algorithm: 1. read Δ, A, B, C; 2. discretise to
Ā, B̄ of size (B, L, D, N); 3. parallel associative scan over (B, L, D, N) states; 4. multiply
and sum with C to outputs (B, L, D)). Here step 3 is any of `tutorial/ssm/parallel_scan.py`'s
scans; the official fused kernel keeps the (B, L, D, N) tensors in SRAM, this reference
materialises them.

`selective_scan` mirrors the official `selective_scan_ref`
(mamba_ssm/ops/selective_scan_interface.py): same arguments, shapes and precision rules.

Glossary (the Mamba paper's letters, official names in brackets): B batch [batch],
D channels [dim, d_inner], L sequence length [seqlen], N state size [dstate], G groups of
channels sharing one B_t and C_t [ngroups]; u the input x_t, delta the Δ before bias and
softplus, z the gate, `D` the skip weights (the letter D is also the channel count, as in the
paper).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor

from .parallel_scan import chunked_scan, parallel_scan_fn, sequential_scan

SCANS = ("sequential", "parallel", "chunked")


def _per_channel(M: Tensor, name: str, b: int, d: int, n: int, length: int, dtype: torch.dtype) -> Tensor:
    """B or C in any of the official layouts -> (B or 1, D, N, L or 1): one (N,) vector per channel and step.

    (D, N) fixed for all tokens; (B, N, L) input-dependent, shared by all channels; (B, G, N, L)
    input-dependent, channel c using group g = c // (D / G) (official `repeat(..., "B G N L -> B (G H) N L")`).
    """
    M = M.to(dtype)
    if M.dim() == 2 and M.shape == (d, n):  # time-invariant
        return rearrange(M, "d n -> 1 d n 1")  # (1, D, N, 1)
    if M.dim() == 3 and M.shape == (b, n, length):  # selective, one group
        return rearrange(M, "b n l -> b 1 n l")  # (B, 1, N, L)
    if M.dim() == 4 and M.shape[0] == b and M.shape[2:] == (n, length) and d % M.shape[1] == 0:  # G groups
        return repeat(M, "b g n l -> b (g h) n l", h=d // M.shape[1])  # (B, D, N, L)
    raise ValueError(f"selective_scan: {name} must be (D, N) = ({d}, {n}), (B, N, L) = ({b}, {n}, {length}) or "
                     f"(B, G, N, L) with G dividing D = {d}; got {tuple(M.shape)}")


def selective_scan(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
                   z: Tensor | None = None, delta_bias: Tensor | None = None, delta_softplus: bool = False,
                   return_last_state: bool = False, scan: str = "sequential", chunk: int = 2048):
    """The selective SSM over a batch of sequences (official `selective_scan_ref` semantics).

    u (B, D, L) input; delta (B, D, L) the step before bias and softplus; A (D, N) (negative for a
    decaying state); B, C either (D, N) fixed, (B, N, L) input-dependent or (B, G, N, L) per
    group of D/G channels; D (D,) skip; z (B, D, L) gate; delta_bias (D,).
    -> out (B, D, L) in u's dtype, and with `return_last_state` also h_{L-1} (B, D, N).

    Precision as the official: u, delta, B, C are computed in float32 (float64 stays float64,
    for tests), the output is cast back to u's dtype, the last state stays in the compute
    dtype. SiLU(z) is taken in the compute dtype too, as the CUDA kernel does.
    `scan` picks the scan of step 3: "sequential" (the loop, as the official reference),
    "parallel" or "chunked" (chunks of `chunk` steps); all give the same result. Unlike the
    official loop, which keeps only the current state, every mode here materialises all
    states (B, D, N, L) so that step 4 is shared.
    """
    if scan not in SCANS:
        raise ValueError(f"selective_scan: scan must be one of {SCANS}, got {scan!r}")
    if u.dim() != 3 or delta.shape != u.shape:
        raise ValueError(f"selective_scan: u and delta must both be (B, D, L), got {tuple(u.shape)} and "
                         f"{tuple(delta.shape)}")
    b, d, length = u.shape
    if A.dim() != 2 or A.shape[0] != d:
        raise ValueError(f"selective_scan: A must be (D, N) = ({d}, N), got {tuple(A.shape)}")
    n = A.shape[1]
    dtype_in = u.dtype
    dtype = torch.float64 if dtype_in == torch.float64 else torch.float32
    # 1) read Δ, A, B, C; Δ = softplus(delta + delta_bias), all in the compute dtype
    u, delta = u.to(dtype), delta.to(dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(dtype)[:, None]  # (B, D, L)
    if delta_softplus:
        delta = F.softplus(delta)  # (B, D, L), softplus(x) = x for x > 20 as in the kernel

    # 2) discretise: Ā = exp(ΔA), B̄u = ΔBu, laid out (B, D, N, L) so that the scan runs along the last axis
    A = A.to(dtype)
    delta_A = torch.exp(rearrange(delta, "b d l -> b d 1 l") * rearrange(A, "d n -> 1 d n 1"))  # (B, D, N, L)
    delta_B_u = rearrange(delta * u, "b d l -> b d 1 l") * _per_channel(B, "B", b, d, n, length, dtype)  # (B, D, N, L)

    # 3) scan: h_t = Ā_t h_{t-1} + B̄_t u_t
    if scan == "sequential":
        h = sequential_scan(delta_A, delta_B_u)  # (B, D, N, L)
    elif scan == "parallel":
        h = parallel_scan_fn(delta_A, delta_B_u)  # (B, D, N, L)
    else:
        h = chunked_scan(delta_A, delta_B_u, chunk=chunk)  # (B, D, N, L)

    # 4) read out: y_t = C_t h_t (+ D u_t), gate with SiLU(z)
    y = (h * _per_channel(C, "C", b, d, n, length, dtype)).sum(2)  # (B, D, L)
    if D is not None:
        y = y + u * D.to(dtype)[:, None]  # (B, D, L)
    if z is not None:
        y = y * F.silu(z.to(dtype))  # (B, D, L)
    out = y.to(dtype_in)  # (B, D, L)
    return (out, h[..., -1]) if return_last_state else out  # h_{L-1} (B, D, N)
