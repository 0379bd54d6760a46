// Multi-scale deformable attention: the CUDA kernels (forward and backward), float32 and float64.
//
// The arithmetic is in ms_deform_attn_math.h, shared with the CPU extension that the tests run
// on every machine; this file decides which thread does what. Layouts: see that header.
//
// Forward, one thread per output element (b, q, m, c): thread idx computes out[idx] with
// `ms_deform_attn_forward_element`, looping over the L·P sampling points of its head.
//   Why this mapping. Consecutive threads differ in c, the fastest-moving index of both value
//   (B, N, M, d) and out (B, Q, M, d). So when a warp gathers the corner pixel of a point, its
//   32 threads read 32 consecutive floats of one pixel (one 128-byte transaction when d ≥ 32)
//   instead of 32 scattered ones, and the final store is coalesced as well. The d threads of a
//   head read the same sampling location and weight: one broadcast load per warp.
//   The op is a gather: every output element reads 4·L·P values and does ~10 FLOPs per 4 reads,
//   so it is limited by memory, not arithmetic (notebook 08 counts the bytes and FLOPs).
//
// Backward, one thread per (b, q, m, c) again, channels padded to a warp segment (see below):
//   - grad_value: every sampled corner pixel receives g·A·w. Different queries (and points)
//     sample the same pixels, so threads collide: the scatter uses atomicAdd. Floating-point
//     addition is not associative and the order of the atomic adds changes from run to run, so
//     grad_value is NOT bit-reproducible on the GPU (it agrees to rounding; the CPU extension,
//     which splits the work so that nothing collides, is deterministic).
//   - grad_attn and grad_loc of a point are sums over the head's d channels: each thread computes
//     its channel's share (`ms_deform_attn_backward_point`) and the shares are summed with warp
//     shuffles. For that, a head's channels must sit in one aligned warp segment: the channel
//     index is padded to d_pad = the next power of two when d ≤ 32 (then a head is a segment of
//     d_pad lanes, and one lane stores the sum: no atomics, deterministic) or to a multiple of 32
//     when d > 32 (then each of the d_pad/32 warps sums its lanes and adds with one atomicAdd).
//     Padding lanes (c ≥ d) take part in the shuffles with zeros.
#include <cuda_runtime.h>

#include <cstdio>

#include "kernels.h"
#include "ms_deform_attn_math.h"

namespace tk {
namespace {

constexpr int kBlock = 256;  // threads per block: a multiple of the warp size (32)
constexpr unsigned kFullMask = 0xffffffffu;

struct AtomicAdd {
  template <typename T>
  __device__ void operator()(T* p, T v) const { atomicAdd(p, v); }  // double atomicAdd needs sm_60+
};

int launch_status(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
  return int(err);
}

template <typename T>
__global__ void forward_kernel(DeformShape s, const T* __restrict__ value, const int64_t* __restrict__ shapes,
                               const int64_t* __restrict__ level_start, const T* __restrict__ loc,
                               const T* __restrict__ attn, T* __restrict__ out) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;  // = flat (b, q, m, c)
  if (idx >= s.B * s.Q * s.M * s.d) return;
  out[idx] = ms_deform_attn_forward_element(value, shapes, level_start, loc, attn, s.N, s.Q, s.M, s.d, s.L, s.P, idx);
}

// Sum v over the `width` lanes of this thread's warp segment (width a power of two ≤ 32);
// the segment's first lane ends up with the total. Every lane of the warp must call it.
template <typename T>
__device__ T segment_sum(T v, int width) {
  for (int offset = width / 2; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset, width);
  return v;
}

template <typename T>
__global__ void backward_kernel(DeformShape s, int64_t d_pad, const T* __restrict__ value,
                                const int64_t* __restrict__ shapes, const int64_t* __restrict__ level_start,
                                const T* __restrict__ loc, const T* __restrict__ attn, const T* __restrict__ grad_out,
                                T* grad_value, T* grad_loc, T* grad_attn) {
  const int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t head = t / d_pad;  // flat (b, q, m)
  const int64_t c = t % d_pad;
  const bool head_ok = head < s.B * s.Q * s.M;  // threads past the end still join the shuffles
  const bool active = head_ok && c < s.d;
  const int width = d_pad < 32 ? int(d_pad) : 32;  // the lanes that hold one head (or one warp of it)
  const bool leader = head_ok && (threadIdx.x % width) == 0;
  const int64_t b = head / (s.Q * s.M), m = head % s.M;
  const T g = active ? grad_out[head * s.d + c] : T(0);
  const int64_t stride = s.M * s.d;
  for (int64_t l = 0; l < s.L; ++l) {  // the same trip count in every lane: shuffles stay converged
    const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
    const int64_t first = ((b * s.N + level_start[l]) * s.M + m) * s.d + c;  // pixel 0 of level l, channel c
    for (int64_t p = 0; p < s.P; ++p) {
      const int64_t point = (head * s.L + l) * s.P + p;
      PointGrad<T> share{T(0), T(0), T(0)};
      if (active) {
        const Corners<T> k = bilinear_corners(loc[2 * point], loc[2 * point + 1], H, W);
        share = ms_deform_attn_backward_point(k, value + first, grad_value + first, stride, H, W, attn[point], g,
                                              AtomicAdd{});
      }
      share.attn = segment_sum(share.attn, width);
      share.x = segment_sum(share.x, width);
      share.y = segment_sum(share.y, width);
      if (leader) {
        if (d_pad <= 32) {  // the whole head was one segment: a plain, deterministic store
          grad_attn[point] = share.attn;
          grad_loc[2 * point] = share.x;
          grad_loc[2 * point + 1] = share.y;
        } else {  // one partial sum per warp of the head
          atomicAdd(&grad_attn[point], share.attn);
          atomicAdd(&grad_loc[2 * point], share.x);
          atomicAdd(&grad_loc[2 * point + 1], share.y);
        }
      }
    }
  }
}

int64_t blocks_for(int64_t threads) { return (threads + kBlock - 1) / kBlock; }

}  // namespace

template <typename T>
int ms_deform_attn_forward_cuda(const DeformShape& s, const T* value, const int64_t* shapes,
                                 const int64_t* level_start, const T* loc, const T* attn, T* out, void* stream) {
  const int64_t n = s.B * s.Q * s.M * s.d;
  if (n == 0) return 0;
  forward_kernel<T><<<blocks_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(s, value, shapes, level_start,
                                                                                     loc, attn, out);
  return launch_status("ms_deform_attn forward kernel");
}

template <typename T>
int ms_deform_attn_backward_cuda(const DeformShape& s, const T* value, const int64_t* shapes,
                                  const int64_t* level_start, const T* loc, const T* attn, const T* grad_out,
                                  T* grad_value, T* grad_loc, T* grad_attn, void* stream) {
  int64_t d_pad = 1;
  if (s.d <= 32) {
    while (d_pad < s.d) d_pad *= 2;  // 30 -> 32, 7 -> 8
  } else {
    d_pad = (s.d + 31) / 32 * 32;  // 71 -> 96, 1025 -> 1056
  }
  const int64_t n = s.B * s.Q * s.M * d_pad;
  if (n == 0) return 0;
  backward_kernel<T><<<blocks_for(n), kBlock, 0, static_cast<cudaStream_t>(stream)>>>(
      s, d_pad, value, shapes, level_start, loc, attn, grad_out, grad_value, grad_loc, grad_attn);
  return launch_status("ms_deform_attn backward kernel");
}

#define TK_INSTANTIATE(T)                                                                                       \
  template int ms_deform_attn_forward_cuda<T>(const DeformShape&, const T*, const int64_t*, const int64_t*,     \
                                               const T*, const T*, T*, void*);                                  \
  template int ms_deform_attn_backward_cuda<T>(const DeformShape&, const T*, const int64_t*, const int64_t*,    \
                                                const T*, const T*, const T*, T*, T*, T*, void*);
TK_INSTANTIATE(float)
TK_INSTANTIATE(double)
#undef TK_INSTANTIATE

}  // namespace tk
