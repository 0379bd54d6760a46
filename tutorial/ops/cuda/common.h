// Shared by every kernel source, compiled by nvcc (GPU) and by g++ (the CPU extension).
//
// TK_HD marks a function that both compilers build: under nvcc (__CUDACC__) it is
// `__host__ __device__`, so a CUDA thread can call it; under g++ it is a plain inline function,
// so the CPU extension calls the very same code. This is how the tests check the GPU's per-thread
// arithmetic on a machine without a GPU.
#pragma once

#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define TK_HD __host__ __device__ __forceinline__
#else
#define TK_HD inline
#endif

namespace tk {

// exp and log1p for float and double by overloading, so templates pick the right precision
// (expf / exp) on both the host and the device.
TK_HD float tk_exp(float x) { return expf(x); }
TK_HD double tk_exp(double x) { return exp(x); }
TK_HD float tk_log1p(float x) { return log1pf(x); }
TK_HD double tk_log1p(double x) { return log1p(x); }
TK_HD float tk_floor(float x) { return floorf(x); }
TK_HD double tk_floor(double x) { return floor(x); }

// "Add v to *p": plainly on the CPU (the callers make sure no two threads share *p), with an
// atomic read-modify-write on the GPU (`AtomicAdd`, defined in the .cu files), where thousands
// of threads may add to the same address.
struct PlainAdd {
  template <typename T>
  TK_HD void operator()(T* p, T v) const { *p += v; }
};

}  // namespace tk
