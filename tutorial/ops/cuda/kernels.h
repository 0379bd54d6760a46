// The entry points of the kernels on raw pointers: what the torch bindings (binding_cpu.cpp,
// binding_cuda.cpp) call. No torch headers here, so the .cu files compile quickly with nvcc alone.
#pragma once

#include <cstdint>

#include "common.h"  // TK_HD

namespace tk {

// ---- multi-scale deformable attention (layouts in ms_deform_attn_math.h) ----
struct DeformShape {
  int64_t B, N, M, d, Q, L, P;
};

template <typename T>
void ms_deform_attn_forward_cpu(const DeformShape& s, const T* value, const int64_t* shapes,
                                const int64_t* level_start, const T* loc, const T* attn, T* out);
template <typename T>
void ms_deform_attn_backward_cpu(const DeformShape& s, const T* value, const int64_t* shapes,
                                 const int64_t* level_start, const T* loc, const T* attn, const T* grad_out,
                                 T* grad_value, T* grad_loc, T* grad_attn);
// CUDA: the same on device pointers, launched on `stream` (a cudaStream_t); the gradients must be
// zeroed. The CUDA launchers return the launch's cudaError_t as an int (0: success).
template <typename T>
int ms_deform_attn_forward_cuda(const DeformShape& s, const T* value, const int64_t* shapes,
                                 const int64_t* level_start, const T* loc, const T* attn, T* out, void* stream);
template <typename T>
int ms_deform_attn_backward_cuda(const DeformShape& s, const T* value, const int64_t* shapes,
                                  const int64_t* level_start, const T* loc, const T* attn, const T* grad_out,
                                  T* grad_value, T* grad_loc, T* grad_attn, void* stream);

// ---- selective scan (notation in selective_scan_math.h) ----
// All tensors contiguous in the compute type T: u, delta, z, out, y, du, ddelta, dz, dout (B, D, L);
// A, dA (D, N); B, C, dB, dC (B, G, N, L) (channel c uses group c / (D/G)); D, dD, delta_bias,
// ddelta_bias (D,); states (B, D, n_chunks, N): h at the end of every chunk, saved by the forward
// for the backward (the last one is the final state). D, z and delta_bias may be null; y (the
// pre-gate output y + D u, needed by the backward for dz) is written only when z is given.
template <typename T>
struct ScanParams {
  int64_t batch, dim, dstate, seqlen, groups;
  int threads, items;  // chunk geometry: chunk = threads · items steps (128 · 16 on the GPU)
  bool softplus;
  const T *u, *delta, *A, *B, *C, *D, *z, *delta_bias;
  T *out, *y, *states;
  const T* dout;
  T *du, *ddelta, *dA, *dB, *dC, *dD, *dz, *ddelta_bias;
  TK_HD int64_t chunk() const { return int64_t(threads) * items; }
  TK_HD int64_t n_chunks() const { return (seqlen + chunk() - 1) / chunk(); }
};

template <typename T>
void selective_scan_forward_cpu(const ScanParams<T>& p);
// `workers` partial copies of dA, dB, dC, dD, ddelta_bias (each zeroed, laid out one after another)
// stand in for the GPU's atomicAdd; the binding sums them.
template <typename T>
void selective_scan_backward_cpu(const ScanParams<T>& p, int workers);
template <typename T>
int selective_scan_forward_cuda(const ScanParams<T>& p, void* stream);
// dA, dB, dC, dD, ddelta_bias must be zeroed (the kernel adds into them atomically).
template <typename T>
int selective_scan_backward_cuda(const ScanParams<T>& p, void* stream);

constexpr int kScanThreads = 128;  // the GPU kernel's chunk geometry, as the official kernel's
constexpr int kScanItems = 16;
constexpr int kMaxState = 256;     // largest N the GPU kernel supports (as the official)

}  // namespace tk
