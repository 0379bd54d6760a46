// Multi-scale deformable attention on the CPU: the CUDA kernels' index space, walked with loops.
//
// Forward: the GPU runs one thread per output element (b, q, m, c), each looping over the L·P
// points of its head (`ms_deform_attn_forward_element`). Here `at::parallel_for` hands out the
// heads (b, q, m), and the loop over a head's d channels is innermost, so that a point's corners
// (`bilinear_corners`) are found once per head instead of once per channel: every output element
// still gets exactly the GPU thread's arithmetic, `out += A · bilinear_sample(corners, ...)` over the
// points in the same order, so the results are bit-identical.
// Backward: the GPU runs one thread per (b, q, m, c) (channels padded to a warp segment) that
// scatters into grad_value with atomicAdd and sums the channels' shares of grad_attn / grad_loc
// with warp shuffles. Here the work is split by (b, m) pairs: everything one pair writes,
// grad_value[b, :, m, :] and grad_loc / grad_attn[b, :, m], belongs to that pair alone, so the
// workers never add to the same address, need no atomics, and the result is the same on every run.
#include <ATen/Parallel.h>

#include "kernels.h"
#include "ms_deform_attn_math.h"

namespace tk {

template <typename T>
void ms_deform_attn_forward_cpu(const DeformShape& s, const T* value, const int64_t* shapes,
                                const int64_t* level_start, const T* loc, const T* attn, T* out) {
  const int64_t stride = s.M * s.d;
  at::parallel_for(0, s.B * s.Q * s.M, 64, [&](int64_t begin, int64_t end) {
    for (int64_t head = begin; head < end; ++head) {  // (b, q, m): the d GPU threads idx = head·d + c
      const int64_t b = head / (s.Q * s.M), m = head % s.M;
      T* o = out + head * s.d;
      for (int64_t c = 0; c < s.d; ++c) o[c] = T(0);
      for (int64_t l = 0; l < s.L; ++l) {
        const T* level = value + ((b * s.N + level_start[l]) * s.M + m) * s.d;  // pixel 0 of level l, channel 0
        for (int64_t p = 0; p < s.P; ++p) {
          const int64_t point = (head * s.L + l) * s.P + p;
          const Corners<T> k = bilinear_corners(loc[2 * point], loc[2 * point + 1], shapes[2 * l], shapes[2 * l + 1]);
          for (int64_t c = 0; c < s.d; ++c) o[c] += attn[point] * bilinear_sample(k, level + c, stride);
        }
      }
    }
  });
}

template <typename T>
void ms_deform_attn_backward_cpu(const DeformShape& s, const T* value, const int64_t* shapes,
                                 const int64_t* level_start, const T* loc, const T* attn, const T* grad_out,
                                 T* grad_value, T* grad_loc, T* grad_attn) {
  const int64_t stride = s.M * s.d;
  at::parallel_for(0, s.B * s.M, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bm = begin; bm < end; ++bm) {
      const int64_t b = bm / s.M, m = bm % s.M;
      for (int64_t q = 0; q < s.Q; ++q) {
        const int64_t head = (b * s.Q + q) * s.M + m;  // (b, q, m)
        const T* g = grad_out + head * s.d;            // ∂loss/∂out[b, q, m, :]
        for (int64_t l = 0; l < s.L; ++l) {
          const int64_t H = shapes[2 * l], W = shapes[2 * l + 1];
          const int64_t first = ((b * s.N + level_start[l]) * s.M + m) * s.d;  // level l, head m, channel 0
          for (int64_t p = 0; p < s.P; ++p) {
            const int64_t point = (head * s.L + l) * s.P + p;
            const Corners<T> k = bilinear_corners(loc[2 * point], loc[2 * point + 1], H, W);
            PointGrad<T> sum{T(0), T(0), T(0)};
            for (int64_t c = 0; c < s.d; ++c) {  // the GPU's d threads, one after another
              const PointGrad<T> share = ms_deform_attn_backward_point(
                  k, value + first + c, grad_value + first + c, stride, H, W, attn[point], g[c], PlainAdd{});
              sum.attn += share.attn;
              sum.x += share.x;
              sum.y += share.y;
            }
            grad_attn[point] = sum.attn;
            grad_loc[2 * point] = sum.x;
            grad_loc[2 * point + 1] = sum.y;
          }
        }
      }
    }
  });
}

#define TK_INSTANTIATE(T)                                                                                  \
  template void ms_deform_attn_forward_cpu<T>(const DeformShape&, const T*, const int64_t*, const int64_t*, \
                                              const T*, const T*, T*);                                     \
  template void ms_deform_attn_backward_cpu<T>(const DeformShape&, const T*, const int64_t*, const int64_t*, \
                                               const T*, const T*, const T*, T*, T*, T*);
TK_INSTANTIATE(float)
TK_INSTANTIATE(double)
#undef TK_INSTANTIATE

}  // namespace tk
