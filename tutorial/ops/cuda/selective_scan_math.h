// The selective scan (Mamba's S6): the per-thread arithmetic, written once.
//
// Mamba (Gu & Dao, 2023), Sec. 3.2-3.3, Algorithm 2; the PyTorch reference is `selective_scan`
// in tutorial/ssm/selective_scan.py (official `selective_scan_ref` semantics), the scan operator is
// `scan_combine` in tutorial/ssm/parallel_scan.py. The CUDA kernels (selective_scan_cuda.cu) and the
// CPU extension (selective_scan_cpu.cpp) both call these functions.
//
// One channel d of one sequence b is a block's job. Per step t and state n:
//   Δ_t = softplus(delta_t + delta_bias)                  (when delta_softplus)
//   Ā_t = exp(Δ_t A_n),  B̄_t u_t = Δ_t B_{n,t} u_t         seed step 2: discretise
//   h_t = Ā_t h_{t-1} + B̄_t u_t                            seed step 3: scan
//   y_t = Σ_n C_{n,t} h_t + D u_t,  out_t = y_t · SiLU(z_t)  seed step 4: read out
//
// Layout of the work, as in the official kernel: the sequence is cut into chunks of
// kThreads · kItems steps (128 · 16 = 2048); thread j of the block owns the kItems consecutive
// steps j·kItems ... j·kItems + kItems − 1 of the chunk. A chunk is scanned in three phases:
//   1) each thread folds its own steps into one step (`thread_reduce`), in registers;
//   2) the block scans the kThreads folded steps (exclusive), starting from the state carried
//      in from the previous chunk (`carry_step`): a warp-shuffle scan on the GPU, a loop on the CPU;
//   3) each thread replays its steps from the state before its first one (`thread_scan`).
// Steps past the end of the sequence are the identity step (1, 0), which changes nothing.
#pragma once

#include "common.h"

namespace tk {

// One step of the recurrence as a pair: the map h ↦ a·h + b.
template <typename T>
struct Step {
  T a, b;
};

template <typename T>
TK_HD Step<T> identity_step() { return {T(1), T(0)}; }

// The associative operator of the scan (`scan_combine`, the official `SSMScanOp`):
// first (a1, b1) then (a2, b2) is h ↦ a2(a1 h + b1) + b2 = (a1·a2) h + (a2·b1 + b2).
template <typename T>
TK_HD Step<T> combine(Step<T> first, Step<T> second) {
  return {first.a * second.a, second.a * first.b + second.b};
}

// The chunk carry: the state h that the previous chunk ended in, as a step. (1, h) takes the start
// state h_{-1} = 0 to h, so composing it in front of a chunk's steps makes the chunk start from h
// (`chunked_scan`'s "running prefix").
template <typename T>
TK_HD Step<T> carry_step(T h) { return {T(1), h}; }

template <typename T>
TK_HD T softplus(T x) { return x <= T(20) ? tk_log1p(tk_exp(x)) : x; }  // as F.softplus and the kernel

template <typename T>
TK_HD T sigmoid(T x) { return T(1) / (T(1) + tk_exp(-x)); }

template <typename T>
TK_HD T silu(T x) { return x * sigmoid(x); }

template <typename T>
TK_HD T silu_grad(T x) {  // d/dx x·σ(x) = σ(x)(1 + x(1 − σ(x)))
  const T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// Seed step 2, for one step and one state: Ā = exp(Δ A), B̄u = Δ B u (Mamba's discretisation).
template <typename T>
TK_HD Step<T> discretise(T delta, T A, T B, T u) { return {tk_exp(delta * A), delta * u * B}; }

// Phase 1: fold a thread's `count` steps, in order, into one step.
template <typename T>
TK_HD Step<T> thread_reduce(const Step<T>* steps, int count) {
  Step<T> acc = identity_step<T>();
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int k = 0; k < count; ++k) acc = combine(acc, steps[k]);
  return acc;
}

// Phase 3: replay a thread's steps from the state h before its first one; h_out[k] = h after step k.
template <typename T>
TK_HD void thread_scan(const Step<T>* steps, int count, T h, T* h_out) {
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int k = 0; k < count; ++k) {
    h = steps[k].a * h + steps[k].b;
    h_out[k] = h;
  }
}

// ---- backward ----------------------------------------------------------------------------------
// With g_t = ∂loss/∂h_t through y_t only (g_t = C_{n,t} · dy_t), the total gradient of h_t is the
// adjoint λ_t = g_t + ρ_{t+1}, where ρ_t = Ā_t λ_t is what step t passes back to step t−1. So ρ
// obeys a linear recurrence that runs backwards, ρ_t = Ā_t ρ_{t+1} + Ā_t g_t, the same kind of
// scan with steps (Ā_t, Ā_t g_t) taken from the end: `ParallelScan.backward` in parallel_scan.py.
// The chunk carry runs backwards too: ρ at the first step of the next chunk.

// The reverse step of step t: ρ ↦ Ā_t ρ + Ā_t g_t.
template <typename T>
TK_HD Step<T> adjoint_step(T a, T g) { return {a, a * g}; }

// Phase 1 backwards: fold a thread's reverse steps, last step first.
template <typename T>
TK_HD Step<T> thread_reduce_reverse(const Step<T>* steps, const T* g, int count) {
  Step<T> acc = identity_step<T>();
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int k = count - 1; k >= 0; --k) acc = combine(acc, adjoint_step(steps[k].a, g[k]));
  return acc;
}

// Phase 3 backwards: from ρ coming in from the steps after this thread's last one,
// λ_k = g_k + ρ, then ρ ← Ā_k λ_k, last step first.
template <typename T>
TK_HD void thread_adjoint(const Step<T>* steps, const T* g, int count, T rho, T* lam) {
#ifdef __CUDACC__
#pragma unroll
#endif
  for (int k = count - 1; k >= 0; --k) {
    lam[k] = g[k] + rho;
    rho = steps[k].a * lam[k];
  }
}

// The gradients that one step t and one state n contribute, from λ_t (see above), the states
// h_{t−1} and h_t, and dy_t: with h_t = Ā h_{t−1} + Δ B u, Ā = exp(Δ A) and y_t ∋ C h_t,
//   ∂/∂Δ += λ (B u + h_{t−1} Ā A),  ∂/∂u += λ Δ B,  ∂/∂B = λ Δ u,  ∂/∂A += λ h_{t−1} Ā Δ,  ∂/∂C = dy h_t.
template <typename T>
struct StepGrad {
  T delta, u, B, C, A;
};

template <typename T>
TK_HD StepGrad<T> step_backward(T lam, T h_prev, T h, T a, T delta, T u, T B, T A, T dy) {
  return {lam * (B * u + h_prev * a * A), lam * delta * B, lam * delta * u, dy * h, lam * h_prev * a * delta};
}

// Seed step 4 and its backward for one step: out = (y + D u) · SiLU(z).
template <typename T>
TK_HD T readout(T y_scan, T u, T D, bool has_z, T z, T* y_pre_gate) {
  const T y = y_scan + D * u;
  *y_pre_gate = y;
  return has_z ? y * silu(z) : y;
}

// Given dout and the pre-gate y: dy (the gradient of the scan's output and of D u) and dz.
template <typename T>
TK_HD T readout_backward(T dout, T y_pre_gate, bool has_z, T z, T* dz) {
  if (!has_z) {
    *dz = T(0);
    return dout;
  }
  *dz = dout * y_pre_gate * silu_grad(z);
  return dout * silu(z);
}

}  // namespace tk
