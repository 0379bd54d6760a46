// The CUDA extension's ops: torch.ops.tutorial_kernels_cuda.<op>, the same signatures as the CPU
// extension's (binding_cpu.cpp). Built by tutorial/ops/kernels.py with nvcc for the .cu files.
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/sum.h>

#include "binding.h"

namespace tk {
namespace {

void check_status(int status, const char* what) {
  TORCH_CHECK(status == 0, what, " failed to launch (CUDA error ", status, "; see the message above)");
}

void* current_stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

at::Tensor deform_forward(const at::Tensor& value, const at::Tensor& shapes, const at::Tensor& level_start,
                          const at::Tensor& loc, const at::Tensor& attn) {
  const DeformShape s = deform_shape(value, shapes, level_start, loc, attn);
  TORCH_CHECK(value.is_cuda() && shapes.is_cuda() && level_start.is_cuda(), "the CUDA extension needs GPU tensors");
  const c10::cuda::CUDAGuard guard(value.device());
  at::Tensor out = at::empty({s.B, s.Q, s.M * s.d}, value.options());  // (B, Q, M·d)
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_forward_cuda", [&] {
    check_status(ms_deform_attn_forward_cuda<scalar_t>(s, value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(),
                                                       level_start.data_ptr<int64_t>(), loc.data_ptr<scalar_t>(),
                                                       attn.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                                       current_stream()),
                 "ms_deform_attn forward");
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> deform_backward(const at::Tensor& value, const at::Tensor& shapes,
                                                               const at::Tensor& level_start, const at::Tensor& loc,
                                                               const at::Tensor& attn, const at::Tensor& grad_out) {
  const DeformShape s = deform_shape(value, shapes, level_start, loc, attn);
  TORCH_CHECK(value.is_cuda() && shapes.is_cuda() && level_start.is_cuda(), "the CUDA extension needs GPU tensors");
  TORCH_CHECK(grad_out.is_contiguous() && grad_out.numel() == s.B * s.Q * s.M * s.d &&
                  grad_out.scalar_type() == value.scalar_type() && grad_out.device() == value.device(),
              "grad_output must be a contiguous (B, Q, M·d) tensor like the output");
  const c10::cuda::CUDAGuard guard(value.device());
  at::Tensor grad_value = at::zeros_like(value), grad_loc = at::zeros_like(loc), grad_attn = at::zeros_like(attn);
  AT_DISPATCH_FLOATING_TYPES(value.scalar_type(), "ms_deform_attn_backward_cuda", [&] {
    check_status(ms_deform_attn_backward_cuda<scalar_t>(
                     s, value.data_ptr<scalar_t>(), shapes.data_ptr<int64_t>(), level_start.data_ptr<int64_t>(),
                     loc.data_ptr<scalar_t>(), attn.data_ptr<scalar_t>(), grad_out.data_ptr<scalar_t>(),
                     grad_value.data_ptr<scalar_t>(), grad_loc.data_ptr<scalar_t>(), grad_attn.data_ptr<scalar_t>(),
                     current_stream()),
                 "ms_deform_attn backward");
  });
  return {grad_value, grad_loc, grad_attn};
}

void check_geometry(int64_t threads, int64_t items, int64_t dstate) {
  TORCH_CHECK(threads == kScanThreads && items == kScanItems, "the CUDA selective scan's chunk is fixed at (",
              kScanThreads, ", ", kScanItems, "), got (", threads, ", ", items, ")");
  TORCH_CHECK(dstate <= kMaxState, "the CUDA selective scan supports N <= ", kMaxState, ", got ", dstate);
}

ScanOutputs scan_forward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                         const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                         const std::optional<at::Tensor>& delta_bias, bool softplus, int64_t threads, int64_t items) {
  check_scan_input(u, /*cuda=*/true);
  const c10::cuda::CUDAGuard guard(u.device());
  at::Tensor out, y, states;
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_forward_cuda", [&] {
    const ScanParams<scalar_t> p = scan_forward_params<scalar_t>(u, delta, A, B, C, D, z, delta_bias, softplus, threads,
                                                                 items, out, y, states);
    check_geometry(threads, items, p.dstate);
    check_status(selective_scan_forward_cuda(p, current_stream()), "selective_scan forward");
  });
  return {out, y, states};
}

ScanGradients scan_backward(const at::Tensor& u, const at::Tensor& delta, const at::Tensor& A, const at::Tensor& B,
                            const at::Tensor& C, const std::optional<at::Tensor>& D, const std::optional<at::Tensor>& z,
                            const std::optional<at::Tensor>& delta_bias, bool softplus, const at::Tensor& y,
                            const at::Tensor& states, const at::Tensor& dout, int64_t threads, int64_t items) {
  check_scan_input(u, /*cuda=*/true);
  const c10::cuda::CUDAGuard guard(u.device());
  const int64_t dim = u.size(1);
  ScanGrads g{at::empty_like(u), at::empty_like(u), at::zeros_like(u),
              at::zeros_like(A), at::zeros_like(B), at::zeros_like(C),  // added into atomically
              at::zeros({dim}, u.options()), at::zeros({dim}, u.options())};
  AT_DISPATCH_FLOATING_TYPES(u.scalar_type(), "selective_scan_backward_cuda", [&] {
    const ScanParams<scalar_t> p = scan_backward_params<scalar_t>(u, delta, A, B, C, D, z, delta_bias, softplus, y,
                                                                  states, dout, threads, items, g);
    check_geometry(threads, items, p.dstate);
    check_status(selective_scan_backward_cuda(p, current_stream()), "selective_scan backward");
  });
  return {g.du, g.ddelta, g.dA, g.dB, g.dC, g.dD, g.dz, g.ddelta_bias};
}

}  // namespace
}  // namespace tk

TORCH_LIBRARY(tutorial_kernels_cuda, m) {
  m.def("ms_deform_attn_forward", &tk::deform_forward);
  m.def("ms_deform_attn_backward", &tk::deform_backward);
  m.def("selective_scan_forward", &tk::scan_forward);
  m.def("selective_scan_backward", &tk::scan_backward);
}
