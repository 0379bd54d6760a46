// What the two bindings (binding_cpu.cpp, binding_cuda.cpp) share: argument checks that name the
// argument and what was expected, and the translation from tensors to raw pointers (kernels.h):
// deform_shape, and the selective scan's ScanParams for the forward (scan_forward_params) and the
// backward (scan_backward_params), filled here once for both devices.
// The ops are registered with TORCH_LIBRARY (torch.ops.<namespace>.<op>), which needs far
// lighter headers than torch/extension.h: the bindings compile in seconds, not a minute.
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

#include "kernels.h"

namespace tk {

inline void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& like, int64_t dim) {
  TORCH_CHECK(t.dim() == dim, name, " must have ", dim, " dimensions, got shape ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " must be ", like.scalar_type(), " like the first input, got ",
              t.scalar_type());
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), ", the first input on ", like.device());
}

// value (B, N, M, d), spatial_shapes (L, 2) int64, level_start (L,) int64, sampling_loc
// (B, Q, M, L, P, 2), attention_weights (B, Q, M, L, P) -> the sizes, after checking them all.
inline DeformShape deform_shape(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& level_start,
                                const at::Tensor& loc, const at::Tensor& attn) {
  TORCH_CHECK(value.dim() == 4 && value.is_contiguous(), "value must be a contiguous (B, N, M, d) tensor, got ",
              value.sizes());
  TORCH_CHECK(value.scalar_type() == at::kFloat || value.scalar_type() == at::kDouble,
              "value must be float32 or float64, got ", value.scalar_type());
  TORCH_CHECK(shapes.dim() == 2 && shapes.size(1) == 2 && shapes.scalar_type() == at::kLong && shapes.is_contiguous(),
              "spatial_shapes must be a contiguous int64 (L, 2) tensor of (H_l, W_l)");
  TORCH_CHECK(level_start.dim() == 1 && level_start.size(0) == shapes.size(0) &&
                  level_start.scalar_type() == at::kLong && level_start.is_contiguous(),
              "level_start_index must be a contiguous int64 (L,) tensor");
  check_tensor(loc, "sampling_locations", value, 6);
  check_tensor(attn, "attention_weights", value, 5);
  DeformShape s{value.size(0), value.size(1), value.size(2), value.size(3), loc.size(1), loc.size(3), loc.size(4)};
  TORCH_CHECK(loc.size(0) == s.B && loc.size(2) == s.M && loc.size(5) == 2,
              "sampling_locations must be (B, Q, M, L, P, 2) = (", s.B, ", Q, ", s.M, ", L, P, 2), got ", loc.sizes());
  TORCH_CHECK(attn.sizes() == loc.sizes().slice(0, 5), "attention_weights must be (B, Q, M, L, P) = ",
              loc.sizes().slice(0, 5), ", got ", attn.sizes());
  TORCH_CHECK(shapes.size(0) == s.L, "spatial_shapes has ", shapes.size(0), " levels, sampling_locations ", s.L);
  return s;
}

// The selective scan's inputs -> ScanParams with the input pointers set (outputs left null).
// u, delta (B, D, L); A (D, N); B, C (B, G, N, L); D, delta_bias (D,); z (B, D, L).
template <typename T>
ScanParams<T> scan_params(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                          const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                          const std::optional<at::Tensor>& delta_bias, bool softplus, int64_t threads, int64_t items) {
  TORCH_CHECK(u.dim() == 3 && u.is_contiguous(), "u must be a contiguous (B, D, L) tensor, got ", u.sizes());
  check_tensor(delta, "delta", u, 3);
  check_tensor(A, "A", u, 2);
  check_tensor(B, "B", u, 4);
  check_tensor(C, "C", u, 4);
  ScanParams<T> p{};
  p.batch = u.size(0);
  p.dim = u.size(1);
  p.seqlen = u.size(2);
  p.dstate = A.size(1);
  p.groups = B.size(1);
  p.threads = static_cast<int>(threads);
  p.items = static_cast<int>(items);
  p.softplus = softplus;
  TORCH_CHECK(delta.sizes() == u.sizes(), "delta must be (B, D, L) = ", u.sizes(), ", got ", delta.sizes());
  TORCH_CHECK(A.size(0) == p.dim, "A must be (D, N) with D = ", p.dim, ", got ", A.sizes());
  TORCH_CHECK(p.groups >= 1 && p.dim % p.groups == 0, "B's group count G = ", p.groups, " must divide D = ", p.dim);
  for (const auto* M : {&B, &C})
    TORCH_CHECK(M->size(0) == p.batch && M->size(1) == p.groups && M->size(2) == p.dstate && M->size(3) == p.seqlen,
                "B and C must be (B, G, N, L) = (", p.batch, ", ", p.groups, ", ", p.dstate, ", ", p.seqlen, "), got ",
                M->sizes());
  TORCH_CHECK(threads >= 1 && items >= 1, "the chunk geometry (threads, items) must be positive");
  p.u = u.data_ptr<T>();
  p.delta = delta.data_ptr<T>();
  p.A = A.data_ptr<T>();
  p.B = B.data_ptr<T>();
  p.C = C.data_ptr<T>();
  if (D) {
    check_tensor(*D, "D", u, 1);
    TORCH_CHECK(D->size(0) == p.dim, "D must be (D,) = (", p.dim, ",)");
    p.D = D->data_ptr<T>();
  }
  if (z) {
    check_tensor(*z, "z", u, 3);
    TORCH_CHECK(z->sizes() == u.sizes(), "z must be (B, D, L) = ", u.sizes(), ", got ", z->sizes());
    p.z = z->data_ptr<T>();
  }
  if (delta_bias) {
    check_tensor(*delta_bias, "delta_bias", u, 1);
    TORCH_CHECK(delta_bias->size(0) == p.dim, "delta_bias must be (D,) = (", p.dim, ",)");
    p.delta_bias = delta_bias->data_ptr<T>();
  }
  return p;
}

// What the scan entry points return, in both bindings: the forward's out, y, states, and the
// backward's du, ddelta, dA, dB, dC, dD, dz, ddelta_bias.
using ScanOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ScanGradients =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The scan's first check in each binding: u on the binding's device, in float32 or float64.
inline void check_scan_input(const at::Tensor& u, bool cuda) {
  TORCH_CHECK(cuda ? u.is_cuda() : u.device().is_cpu(),
              cuda ? "the CUDA extension needs GPU tensors" : "the CPU extension needs CPU tensors");
  TORCH_CHECK(u.scalar_type() == at::kFloat || u.scalar_type() == at::kDouble, "u must be float32 or float64");
}

// The forward: ScanParams with the outputs allocated here and their pointers set. out (B, D, L);
// y (B, D, L) the pre-gate output, empty without z; states (B, D, n_chunks, N), h at each chunk's end.
template <typename T>
ScanParams<T> scan_forward_params(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                  const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                  const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                                  bool softplus, int64_t threads, int64_t items, at::Tensor& out, at::Tensor& y,
                                  at::Tensor& states) {
  ScanParams<T> p = scan_params<T>(u, delta, A, B, C, D, z, delta_bias, softplus, threads, items);
  out = at::empty_like(u);                                               // (B, D, L)
  y = z ? at::empty_like(u) : at::empty({0}, u.options());               // (B, D, L) or empty
  states = at::empty({p.batch, p.dim, p.n_chunks(), p.dstate}, u.options());  // (B, D, n_chunks, N)
  p.out = out.data_ptr<T>();
  p.y = z ? y.data_ptr<T>() : nullptr;
  p.states = states.data_ptr<T>();
  return p;
}

// The gradients the backward writes into, allocated by each binding: du, ddelta, dz (B, D, L); dA
// (D, N); dB, dC (B, G, N, L); dD, ddelta_bias (D,). The CPU gives the last five a leading (workers,)
// axis, one zeroed copy per worker, summed afterwards; CUDA adds into them atomically.
struct ScanGrads {
  at::Tensor du, ddelta, dz, dA, dB, dC, dD, ddelta_bias;
};

// The backward: ScanParams of the inputs, of the forward's y and states (checked against the
// inputs), of dout (B, D, L) and of the gradients in g (dz only with z).
template <typename T>
ScanParams<T> scan_backward_params(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A,
                                   const at::Tensor& B, const at::Tensor& C, const std::optional<at::Tensor>& D,
                                   const std::optional<at::Tensor>& z, const std::optional<at::Tensor>& delta_bias,
                                   bool softplus, const at::Tensor& y, const at::Tensor& states, const at::Tensor& dout,
                                   int64_t threads, int64_t items, ScanGrads& g) {
  ScanParams<T> p = scan_params<T>(u, delta, A, B, C, D, z, delta_bias, softplus, threads, items);
  check_tensor(dout, "dout", u, 3);
  check_tensor(states, "states", u, 4);
  TORCH_CHECK(dout.sizes() == u.sizes(), "dout must be (B, D, L) = ", u.sizes(), ", got ", dout.sizes());
  TORCH_CHECK(states.size(0) == p.batch && states.size(1) == p.dim && states.size(2) == p.n_chunks() &&
                  states.size(3) == p.dstate,
              "states must be (B, D, n_chunks, N) as the forward returned them, got ", states.sizes());
  TORCH_CHECK(!z || (y.sizes() == u.sizes() && y.is_contiguous()), "y must be the forward's (B, D, L) pre-gate output");
  p.y = z ? const_cast<T*>(y.data_ptr<T>()) : nullptr;
  p.states = const_cast<T*>(states.data_ptr<T>());
  p.dout = dout.data_ptr<T>();
  p.du = g.du.data_ptr<T>();
  p.ddelta = g.ddelta.data_ptr<T>();
  p.dz = z ? g.dz.data_ptr<T>() : nullptr;
  p.dA = g.dA.data_ptr<T>();
  p.dB = g.dB.data_ptr<T>();
  p.dC = g.dC.data_ptr<T>();
  p.dD = g.dD.data_ptr<T>();
  p.ddelta_bias = g.ddelta_bias.data_ptr<T>();
  return p;
}

}  // namespace tk
