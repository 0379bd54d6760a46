// Multi-scale deformable attention: the per-thread arithmetic, written once.
//
// Deformable DETR (Zhu et al., ICLR 2021), Eq. 3; the PyTorch references are
// `ms_deform_attn_core` / `ms_deform_attn_explicit` in tutorial/ops/deformable_attention.py.
// The CUDA kernels (ms_deform_attn_cuda.cu) and the CPU extension (ms_deform_attn_cpu.cpp) both
// call these functions, so the CPU tests check the GPU's arithmetic.
//
// Layouts (all contiguous, row-major), the official ones:
//   value             (B, N, M, d)      N = Σ_l H_l·W_l tokens, levels one after another
//   spatial_shapes    (L, 2)            (H_l, W_l), int64
//   level_start       (L,)              index of level l's first token in N, int64
//   sampling_loc      (B, Q, M, L, P, 2)  (x, y) in [0, 1], pixel centres at (i + 0.5) / size
//   attention_weights (B, Q, M, L, P)
//   output            (B, Q, M, d)      = (B, Q, M·d)
// In `value`, channel c of head m of token n of batch b sits at ((b·N + n)·M + m)·d + c, so the d
// channels of one head are adjacent and two neighbouring pixels are M·d apart (`stride` below).
#pragma once

#include "common.h"

namespace tk {

// Where one sampling point lands on one level: its four neighbouring pixels and their weights.
// Corner order: 0 top-left (y0, x0), 1 top-right (y0, x1), 2 bottom-left (y1, x0), 3 bottom-right.
template <typename T>
struct Corners {
  int64_t pixel[4];  // row·W + column within the level, or -1 when the corner lies outside the map
  T weight[4];       // bilinear weight of each corner: (1 - |Δx|)(1 - |Δy|)
  T lx, ly;          // fractional position between the corners (for the gradient)
};

// The boundary rule of the official kernel (`ms_deform_attn_im2col_bilinear`), which equals
// grid_sample(align_corners=False, padding_mode="zeros"):
//   x = loc_x·W − 0.5 and y = loc_y·H − 0.5 in pixel units (pixel j's centre is at x = j);
//   a point with x ≤ −1, y ≤ −1, x ≥ W or y ≥ H touches no pixel at all (everything is zero);
//   otherwise each of the four corners counts only when it lies inside the map (zero padding).
template <typename T>
TK_HD Corners<T> bilinear_corners(T loc_x, T loc_y, int64_t H, int64_t W) {
  Corners<T> k;
  const T x = loc_x * static_cast<T>(W) - T(0.5);
  const T y = loc_y * static_cast<T>(H) - T(0.5);
  if (!(x > T(-1) && y > T(-1) && x < static_cast<T>(W) && y < static_cast<T>(H))) {  // also NaN
    for (int i = 0; i < 4; ++i) { k.pixel[i] = -1; k.weight[i] = T(0); }
    k.lx = k.ly = T(0);
    return k;
  }
  const T fx = tk_floor(x), fy = tk_floor(y);
  const int64_t x0 = static_cast<int64_t>(fx), y0 = static_cast<int64_t>(fy);
  const int64_t x1 = x0 + 1, y1 = y0 + 1;
  k.lx = x - fx;  // distance from the left column, in [0, 1)
  k.ly = y - fy;  // distance from the top row
  const T hx = T(1) - k.lx, hy = T(1) - k.ly;
  const int64_t xs[4] = {x0, x1, x0, x1}, ys[4] = {y0, y0, y1, y1};
  const T ws[4] = {hy * hx, hy * k.lx, k.ly * hx, k.ly * k.lx};
  for (int i = 0; i < 4; ++i) {
    const bool inside = xs[i] >= 0 && xs[i] < W && ys[i] >= 0 && ys[i] < H;
    k.pixel[i] = inside ? ys[i] * W + xs[i] : -1;
    k.weight[i] = ws[i];
  }
  return k;
}

// The four corner values of one channel (zero outside). `level` points at channel c of head m
// of the level's first pixel; neighbouring pixels are `stride` = M·d elements apart.
template <typename T>
TK_HD void corner_values(const Corners<T>& k, const T* level, int64_t stride, T v[4]) {
  for (int i = 0; i < 4; ++i) v[i] = k.pixel[i] >= 0 ? level[k.pixel[i] * stride] : T(0);
}

// Bilinear sample of one channel: Σ_corners weight · value.
template <typename T>
TK_HD T bilinear_sample(const Corners<T>& k, const T* level, int64_t stride) {
  T v[4];
  corner_values(k, level, stride, v);
  return k.weight[0] * v[0] + k.weight[1] * v[1] + k.weight[2] * v[2] + k.weight[3] * v[3];
}

// One output element out[b, q, m, c] = Σ_l Σ_p A[b,q,m,l,p] · x^l_{m,c}(loc[b,q,m,l,p]) (Eq. 3's
// inner sum for channel c). `idx` is the flat index of (b, q, m, c) in the output, which is also
// the CUDA thread's index: thread idx computes exactly this element.
template <typename T>
TK_HD T ms_deform_attn_forward_element(const T* value, const int64_t* shapes, const int64_t* level_start,
                                       const T* loc, const T* attn, int64_t N, int64_t Q, int64_t M,
                                       int64_t d, int64_t L, int64_t P, int64_t idx) {
  const int64_t c = idx % d;
  const int64_t m = (idx / d) % M;
  const int64_t bq = idx / (d * M);  // b·Q + q
  const int64_t b = bq / Q;
  const int64_t stride = M * d;
  const int64_t point0 = (bq * M + m) * L * P;  // first (l, p) of this (b, q, m) in attn; loc is 2x
  T out = T(0);
  for (int64_t l = 0; l < L; ++l) {
    const T* level = value + ((b * N + level_start[l]) * M + m) * d + c;  // pixel 0 of level l
    for (int64_t p = 0; p < P; ++p) {
      const int64_t point = point0 + l * P + p;
      const Corners<T> k = bilinear_corners(loc[2 * point], loc[2 * point + 1], shapes[2 * l], shapes[2 * l + 1]);
      out += attn[point] * bilinear_sample(k, level, stride);
    }
  }
  return out;
}

// One channel's share of the gradient with respect to one sampling point.
template <typename T>
struct PointGrad {
  T attn;  // ∂loss/∂A   = g · sample
  T x, y;  // ∂loss/∂loc = g · A · ∂sample/∂loc
};

// The backward of one (b, q, m, c, l, p) term out_c += A · sample_c, with g = ∂loss/∂out_c:
//   1) scatter into the value gradient: each corner pixel receives g · A · weight (`add` is a plain
//      add on the CPU and atomicAdd on the GPU: many queries sample the same pixel);
//   2) return this channel's share of ∂loss/∂A and ∂loss/∂(x, y); the caller sums the shares of
//      the d channels (a warp reduction on the GPU, a loop on the CPU).
// With x = loc_x·W − 0.5, the bilinear sample s = Σ w_i v_i has
//   ∂s/∂x = (1 − ly)(v_tr − v_tl) + ly (v_br − v_bl),   ∂s/∂y = (1 − lx)(v_bl − v_tl) + lx (v_br − v_tr)
// and ∂x/∂loc_x = W, ∂y/∂loc_y = H. Corners outside the map have v = 0 and receive nothing.
template <typename T, typename Add>
TK_HD PointGrad<T> ms_deform_attn_backward_point(const Corners<T>& k, const T* level, T* grad_level,
                                                 int64_t stride, int64_t H, int64_t W, T a, T g, Add add) {
  T v[4];
  corner_values(k, level, stride, v);
  const T ga = g * a;
  for (int i = 0; i < 4; ++i)
    if (k.pixel[i] >= 0) add(&grad_level[k.pixel[i] * stride], ga * k.weight[i]);
  const T sample = k.weight[0] * v[0] + k.weight[1] * v[1] + k.weight[2] * v[2] + k.weight[3] * v[3];
  const T ds_dx = (T(1) - k.ly) * (v[1] - v[0]) + k.ly * (v[3] - v[2]);
  const T ds_dy = (T(1) - k.lx) * (v[2] - v[0]) + k.lx * (v[3] - v[1]);
  return {g * sample, ga * ds_dx * static_cast<T>(W), ga * ds_dy * static_cast<T>(H)};
}

}  // namespace tk
