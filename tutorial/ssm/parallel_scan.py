"""Scanning a linear recurrence in parallel: h_t = a_t h_{t-1} + b_t in O(log L) steps.

Seed, "Mamba (Scan methods)". Once Δ, B, C depend on the input (`tutorial/ssm/selective_scan.py`)
the SSM is no longer a convolution, but its recurrence is still *linear* in h, and that is
enough to parallelise it. Write one step as the pair (a_t, b_t), the map h ↦ a_t h + b_t.
Doing step 1 then step 2 is again such a map:

    (a1, b1) ∘ (a2, b2) = (a1·a2, a2·b1 + b2)        since a2(a1 h + b1) + b2 = a1a2 h + a2b1 + b2

and composition is associative, so h_t = ((a_0, b_0) ∘ ... ∘ (a_t, b_t)) applied to h_{-1} = 0
can be computed by any parallel prefix-sum ("scan") algorithm (Blelloch 1990) with ∘ in place
of +. This is what the official CUDA kernel does (`SSMScanOp` in
csrc/selective_scan/selective_scan_common.h, scanned with cub's BlockScan).

Four ways to compute the same h, all along the last axis of tensors shaped (..., L):
- `sequential_scan`: the plain loop, L dependent steps (the reference);
- `parallel_scan`: the recursive odd/even (work-efficient) scan: combine neighbouring pairs,
  scan the L/2 pairs, fill in the rest; log2(L) levels, O(L) work, any L (`odd_even_scan_steps`
  lists which element it combines with which, level by level);
- `parallel_scan_fn`: the same forward with a hand-written backward that is itself a scan,
  run in reverse: the adjoint recurrence λ_t = a_{t+1} λ_{t+1} + ∂loss/∂h_t;
- `chunked_scan`: the hardware-aware layout of Mamba's kernel (seed, steps 1-4): the sequence
  is cut into chunks that fit in fast memory (2048 = 128 threads x 16 items in the official
  kernel); each chunk is scanned in parallel and the state is carried from one chunk to the
  next (the kernel's "running prefix").

Glossary: a `a` the decays (Ā_t in Mamba), b `b` the inputs (B̄_t x_t), h `h` the states,
λ `lam` the adjoint state, L sequence length; leading axes (...) are independent sequences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def scan_combine(a1: Tensor, b1: Tensor, a2: Tensor, b2: Tensor) -> tuple[Tensor, Tensor]:
    """Compose two recurrence steps: step 1 (h ↦ a1 h + b1), then step 2 (h ↦ a2 h + b2).  [exercise]

    Elementwise on tensors of one shape -> (a, b) with h ↦ a h + b equal to doing both steps:
    (a1, b1) ∘ (a2, b2) = (a1·a2, a2·b1 + b2). This is the associative operator the scan uses
    (official `SSMScanOp`).
    """
    return a1 * a2, a2 * b1 + b2


def sequential_scan(a: Tensor, b: Tensor) -> Tensor:
    """h_t = a_t h_{t-1} + b_t with h_{-1} = 0, one step after another.

    a, b (..., L) -> h (..., L). The reference the parallel scans are tested against.

    The steps are read with `unbind` rather than `a[..., t]`: autograd's backward of each index
    writes its gradient into a zero tensor of the full (..., L) size, L of them, which makes the
    backward O(L²) (28 s instead of 0.5 s for L = 1024 steps of 4096 channels on this CPU);
    `unbind`'s backward stacks the L gradients once.
    """
    h, hs = torch.zeros_like(b[..., 0]), []
    for a_t, b_t in zip(a.unbind(-1), b.unbind(-1)):
        h = a_t * h + b_t  # (...)
        hs.append(h)
    return torch.stack(hs, dim=-1)  # (..., L)


def parallel_scan(a: Tensor, b: Tensor) -> Tensor:
    """h_t = a_t h_{t-1} + b_t with h_{-1} = 0, in log2(L) parallel levels.  [exercise]

    a, b (..., L) of the same shape -> h (..., L), for any length L (not only powers of two).
    Must equal an explicit loop over t. One way, the work-efficient odd/even scan:
    1) combine neighbours (a_{2i}, b_{2i}) ∘ (a_{2i+1}, b_{2i+1}): L/2 pairs;
    2) scan the pairs recursively: that gives h at the odd positions 1, 3, 5, ...;
    3) fill in the even positions: h_{2i} = a_{2i} h_{2i-1} + b_{2i}, and h_0 = b_0.
    """
    length = b.shape[-1]
    if length == 1:
        return b
    n = length // 2  # number of pairs; an odd L leaves the last element unpaired
    a_pair, b_pair = scan_combine(a[..., 0:2 * n:2], b[..., 0:2 * n:2], a[..., 1::2], b[..., 1::2])  # (..., n)
    h_odd = parallel_scan(a_pair, b_pair)  # (..., n) h_1, h_3, h_5, ...
    m = (length - 1) // 2  # even positions 2, 4, ... < L
    h_even = a[..., 2::2] * h_odd[..., :m] + b[..., 2::2]  # (..., m) h_2, h_4, ...
    h_even = torch.cat([b[..., :1], h_even], dim=-1)  # (..., m+1) with h_0 = b_0
    h = torch.stack([h_even[..., :n], h_odd], dim=-1).flatten(-2)  # (..., 2n) interleaved
    return torch.cat([h, h_even[..., n:]], dim=-1)  # (..., L) plus the unpaired last one



def odd_even_scan_steps(length: int) -> list[dict]:
    """The combines `parallel_scan` performs on a sequence of `length`, level by level -> [{"phase":
    "up" | "down", "depth": k, "pairs": [(src, dst), ...]}], positions in the original sequence.

    It is `parallel_scan`'s recursion run on the positions themselves: the same slices of a
    (length,) tensor of positions, so step 1 (the up-sweep) pairs `[0:2n:2]` with `[1::2]`, step
    2 recurses on the odd slots, step 3 (the down-sweep) fills `[2::2]` from the odd slot before
    each. A pair means: element dst <- element src ∘ element dst (`scan_combine`, src earlier).
    Replaying the levels in order turns every element into its prefix, i.e. h_t; the pairs of
    one level are independent (one parallel step). For the figure of notebook 07
    (`tutorial.viz.ssm.plot_scan_tree`)."""
    def recurse(pos: Tensor, depth: int) -> list[dict]:  # pos (L',): where this level's elements sit
        length = pos.shape[-1]
        if length == 1:
            return []
        n, m = length // 2, (length - 1) // 2  # pairs, even positions 2, 4, ... < L' (as in `parallel_scan`)
        up = list(zip(pos[0:2 * n:2].tolist(), pos[1::2].tolist()))  # 1) combine neighbours into the odd slot
        inner = recurse(pos[1::2], depth + 1)  # 2) scan the pairs: h at the odd slots
        down = list(zip(pos[1::2][:m].tolist(), pos[2::2].tolist()))  # 3) h_{2i} from h_{2i-1}
        return ([{"phase": "up", "depth": depth, "pairs": up}] + inner
                + ([{"phase": "down", "depth": depth, "pairs": down}] if down else []))

    return recurse(torch.arange(length), 0)


class ParallelScan(torch.autograd.Function):
    """`parallel_scan` with its backward pass written as a reverse scan.

    With g_t = ∂loss/∂h_t (the direct gradient), the total gradient of h_t, λ_t, also counts
    every later state h_t influences through h_{t+1} = a_{t+1} h_t + b_{t+1}:

        λ_t = a_{t+1} λ_{t+1} + g_t,   λ_{L-1} = g_{L-1}     (a linear recurrence, backwards)
        ∂loss/∂b_t = λ_t,              ∂loss/∂a_t = λ_t h_{t-1}   (h_{-1} = 0)

    so the backward is the same scan on the flipped sequence, with the decays shifted by one.
    The official kernel does the same (csrc/selective_scan/selective_scan_bwd_kernel.cuh).
    The backward is built from differentiable tensor ops, so double backward works too.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        h = parallel_scan(a, b)  # (..., L)
        ctx.save_for_backward(a, h)
        return h

    @staticmethod
    def backward(ctx, grad_h: Tensor) -> tuple[Tensor, Tensor]:
        a, h = ctx.saved_tensors
        a_next = F.pad(a[..., 1:], (0, 1))  # (..., L) a_{t+1}, 0 after the end
        lam = parallel_scan(a_next.flip(-1), grad_h.flip(-1)).flip(-1)  # (..., L) reverse scan
        h_prev = F.pad(h[..., :-1], (1, 0))  # (..., L) h_{t-1}, h_{-1} = 0
        return lam * h_prev, lam


def parallel_scan_fn(a: Tensor, b: Tensor) -> Tensor:
    """`parallel_scan` with the reverse-scan backward of `ParallelScan`. a, b (..., L) -> h (..., L)."""
    if a.shape != b.shape:
        raise ValueError(f"parallel_scan_fn: a {tuple(a.shape)} and b {tuple(b.shape)} must have the same shape")
    return ParallelScan.apply(a, b)


def chunked_scan(a: Tensor, b: Tensor, chunk: int = 2048, scan=parallel_scan_fn) -> Tensor:
    """The scan the way the hardware-aware kernel runs it: chunk by chunk, carrying the state.

    a, b (..., L) -> h (..., L). Within a chunk of `chunk` steps (the last may be shorter):
    `scan` (default the parallel scan). Across chunks: the previous chunk's last state h is the
    running prefix (1, h), composed in front of the chunk's first step:
    (1, h) ∘ (a_0, b_0) = (a_0, a_0 h + b_0). Only (..., chunk) values are live at a time; the
    official kernel also saves just these per-chunk states for its backward pass.
    """
    if chunk < 1:
        raise ValueError(f"chunked_scan: chunk must be a positive length, got {chunk}")
    hs, carry = [], None
    for start in range(0, b.shape[-1], chunk):
        a_c, b_c = a[..., start:start + chunk], b[..., start:start + chunk]  # (..., chunk)
        if carry is not None:  # fold the running prefix into the first step of the chunk
            _, b_first = scan_combine(torch.ones_like(carry), carry, a_c[..., 0], b_c[..., 0])  # (...)
            b_c = torch.cat([b_first[..., None], b_c[..., 1:]], dim=-1)  # (..., chunk)
        h_c = scan(a_c, b_c)  # (..., chunk)
        carry = h_c[..., -1]  # (...)
        hs.append(h_c)
    return torch.cat(hs, dim=-1)  # (..., L)
