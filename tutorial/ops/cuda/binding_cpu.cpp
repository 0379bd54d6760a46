// The CPU extension's ops: torch.ops.tutorial_kernels_cpu.<op>. Built by tutorial/ops/kernels.py.
#include <ATen/Parallel.h>
#include <ATen/ops/sum.h>

#include "binding.h"

namespace tk {
namespace {

at::Tensor deform_forward(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& level_start,
                          const at::Tensor& loc, const at::Tensor& attn) {
  const DeformShape s = deform_shape(value, shapes, level_start, loc, attn);
  TORCH_CHECK(value.device().is_cpu(), "the CPU extension needs CPU tensors");
  at::Tensor out = at::empty({s.B, s.Q, s.M * s.d}, value.options());  // (B, Q, M·d)
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cpu", [&] {
    ms_deform_attn_forward_cpu<scalar_t>(s, value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
                                         level_start.data_ptr<int64_t>(), loc.data_ptr<scalar_t>(),
                                         attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deform_backward(const at::Tensor& value, const at::Tensor& shapes,
                                                               const at::Tensor& level_start, const at::Tensor& loc,
                                                               const at::Tensor& attn, const at::Tensor& grad_out) {
  const DeformShape s = deform_shape(value, shapes, level_start, loc, attn);
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.numel() == s.B * s.Q * s.M * s.d &&
                  grad_out.scalar_type() == value.scalar_type(),
              "grad_output must be a contiguous (B, Q, M·d) tensor like the output");
  at::Tensor grad_value = at::zeros_like(value), grad_loc = at::zeros_like(loc), grad_attn = at::zeros_like(attn);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cpu", [&] {
    ms_deform_attn_backward_cpu<scalar_t>(s, value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
                                          level_start.data_ptr<int64_t>(), loc.data_ptr<scalar_t>(),
                                          attn.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                                          grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(),
                                          grad_attn.data_ptr<scalar_t>());
  });
  return {grad_value, grad_loc, grad_attn};
}

// -> out (B, D, L), y (B, D, L) the pre-gate output (empty without z), states (B, D, n_chunks, N).
ScanOutputs scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                         const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                         const std::optional<at::Tensor>& delta_bias, bool softplus, int64_t threads, int64_t items) {
  check_scan_input(u, /*cuda=*/false);
  at::Tensor out, y, states;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_forward_cpu", [&] {
    selective_scan_forward_cpu(scan_forward_params<scalar_t>(u, delta, A, B, C, D, z, delta_bias, softplus, threads,
                                                             items, out, y, states));
  });
  return {out, y, states};
}

// -> du, ddelta, dA, dB, dC, dD, dz, ddelta_bias (dD, dz, ddelta_bias zero when not given).
ScanGradients scan_backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                            const std::optional<at::Tensor>& delta_bias, bool softplus, const at::Tensor& y,
                            const at::Tensor& states, const at::Tensor& dout, int64_t threads, int64_t items) {
  check_scan_input(u, /*cuda=*/false);
  const int workers = std::max(1, at::get_num_threads());
  const int64_t dim = u.size(1);
  // one zeroed copy per worker of every gradient that several channels add into
  ScanGrads g{at::empty_like(u), at::empty_like(u), at::zeros_like(u),
              at::zeros({workers, A.size(0), A.size(1)}, A.options()),
              at::zeros({workers, B.size(0), B.size(1), B.size(2), B.size(3)}, B.options()),
              at::zeros({workers, C.size(0), C.size(1), C.size(2), C.size(3)}, C.options()),
              at::zeros({workers, dim}, u.options()), at::zeros({workers, dim}, u.options())};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_backward_cpu", [&] {
    selective_scan_backward_cpu(scan_backward_params<scalar_t>(u, delta, A, B, C, D, z, delta_bias, softplus, y, states,
                                                               dout, threads, items, g),
                                workers);
  });
  return {g.du, g.ddelta, g.dA.sum(0), g.dB.sum(0), g.dC.sum(0), g.dD.sum(0), g.dz, g.ddelta_bias.sum(0)};
}

}  // namespace
}  // namespace tk

TORCH_LIBRARY(tutorial_kernels_cpu, m) {
  m.def("ms_deform_attn_forward", &tk::deform_forward);
  m.def("ms_deform_attn_backward", &tk::deform_backward);
  m.def("selective_scan_forward", &tk::scan_forward);
  m.def("selective_scan_backward", &tk::scan_backward);
}
