// The selective scan (Mamba's S6): the CUDA kernels (forward and backward), float32 and float64.
//
// The arithmetic is in selective_scan_math.h, shared with the CPU extension that the tests run on
// every machine; this file decides which thread does what and where the data lives.
//
// Work: one block per channel (b, d), grid (D, B); kThreads = 128 threads; the sequence is cut
// into chunks of kChunk = kThreads · kItems = 2048 steps, handled one after another, with the
// state carried from chunk to chunk (the official kernel's layout). Thread j owns the kItems
// consecutive steps j·kItems ... j·kItems + 15 of the chunk, in registers.
//
// The seed's four steps of the hardware-aware scan, per chunk:
//   1) read from HBM: u, Δ (and per state B_n, C_n) for the chunk, once, coalesced: consecutive
//      threads read consecutive steps into shared memory, then each thread takes its kItems
//      steps from there into registers (`load_chunk`);
//   2) discretise on chip: Ā = exp(Δ A_n), B̄u = Δ B_n u, in registers; the (L, N) tensors Ā and
//      B̄u of the reference never exist in HBM;
//   3) scan on chip: each thread folds its steps (`thread_reduce`), the block scans the 128 folded
//      steps with warp shuffles and shared memory, starting from the state the previous chunk
//      ended in (`block_exclusive_scan`), and each thread replays its steps (`thread_scan`);
//   4) multiply by C and sum over the N states in registers, add D·u, gate with SiLU(z), and
//      write y back to HBM once (`store_chunk`).
// HBM traffic is therefore about the size of the inputs and outputs, O(B·L·D + B·L·N·G), instead
// of O(B·L·D·N) for the materialised states. The forward also writes the state at the end of
// every chunk, (B, D, n_chunks, N): the backward restarts each chunk from it.
//
// Backward, same blocks, chunks last to first: recompute the chunk's states from the saved
// carry (forward scan), then scan the adjoint backwards (steps (Ā_t, Ā_t g_t), see the header)
// with the same block scan in reverse thread order, carrying ρ from chunk to chunk in shared
// memory. dA, dD, ddelta_bias are summed over the batch and dB, dC over the channels of a group,
// by different blocks: those use atomicAdd, so they are not bit-reproducible from run to run.
// The float64 build (for tests) keeps the same geometry and spills some registers.
#include <cuda_runtime.h>

#include <cstdio>

#include "kernels.h"
#include "selective_scan_math.h"

namespace tk {
namespace {

constexpr int kThreads = kScanThreads;        // 128
constexpr int kItems = kScanItems;            // 16
constexpr int kChunk = kThreads * kItems;     // 2048 steps per chunk
constexpr int kWarps = kThreads / 32;         // 4
constexpr unsigned kFullMask = 0xffffffffu;

template <typename T>
struct Shared {
  // Transposition buffer for one chunk: step i is kept at i + i / kItems, one pad word per kItems,
  // so that thread j's steps start at j·(kItems + 1). When the 32 threads of a warp read "their
  // k-th step" the addresses are 17 words apart, 17 is odd, and they fall in 32 different banks:
  // no bank conflicts (without the pad they would be 16 apart: a 16-way conflict).
  T buf[kChunk + kThreads];
  Step<T> warp_totals[kWarps];
  T partial[kWarps];  // block_sum
  T rho[kMaxState];   // backward: the reverse carry of every state
};

// Step 1: the chunk's `valid` values src[0 .. valid) (the rest `fill`) into each thread's registers.
template <typename T>
__device__ void load_chunk(const T* __restrict__ src, int valid, T* buf, T (&dst)[kItems], T fill) {
  __syncthreads();  // the buffer's previous user is done
  for (int i = threadIdx.x; i < kChunk; i += kThreads) buf[i + i / kItems] = i < valid ? src[i] : fill;  // coalesced
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kItems; ++k) dst[k] = buf[threadIdx.x * (kItems + 1) + k];
}

// Step 4: each thread's registers back to dst[0 .. valid), coalesced (or added atomically).
template <typename T, bool kAtomic = false>
__device__ void store_chunk(T* dst, int valid, T* buf, const T (&src)[kItems]) {
  __syncthreads();
#pragma unroll
  for (int k = 0; k < kItems; ++k) buf[threadIdx.x * (kItems + 1) + k] = src[k];
  __syncthreads();
  for (int i = threadIdx.x; i < valid; i += kThreads) {
    if (kAtomic)
      atomicAdd(&dst[i], buf[i + i / kItems]);
    else
      dst[i] = buf[i + i / kItems];
  }
}

template <typename T>
__device__ Step<T> shfl_step(Step<T> s, int offset, bool down) {
  return down ? Step<T>{__shfl_down_sync(kFullMask, s.a, offset), __shfl_down_sync(kFullMask, s.b, offset)}
              : Step<T>{__shfl_up_sync(kFullMask, s.a, offset), __shfl_up_sync(kFullMask, s.b, offset)};
}

// Step 3's phase 2: the exclusive scan of the threads' folded steps, after the chunk carry.
// Returns, for this thread, carry ∘ (folded steps of all threads before it), whose b is the state
// before the thread's first step; *chunk_end receives the state after the whole chunk.
// kReverse scans from the last thread to the first (the backward's adjoint).
//   a) within each warp: a Kogge-Stone inclusive scan, 5 rounds of shuffles (round r combines
//      with the lane 2^r places earlier in scan order);
//   b) the warps' totals go through shared memory; each thread composes those of earlier warps;
//   c) exclusive = the inclusive value of the previous lane, behind the carry and earlier warps.
template <typename T, bool kReverse>
__device__ Step<T> block_exclusive_scan(Step<T> folded, T carry, Shared<T>& sh, T* chunk_end) {
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int rank = kReverse ? 31 - lane : lane;  // position in scan order within the warp
  const int warp_rank = kReverse ? kWarps - 1 - warp : warp;
  Step<T> inclusive = folded;
#pragma unroll
  for (int offset = 1; offset < 32; offset *= 2) {
    const Step<T> earlier = shfl_step(inclusive, offset, kReverse);
    if (rank >= offset) inclusive = combine(earlier, inclusive);
  }
  const Step<T> previous = shfl_step(inclusive, 1, kReverse);
  const Step<T> exclusive = rank == 0 ? identity_step<T>() : previous;
  if (rank == 31) sh.warp_totals[warp_rank] = inclusive;
  __syncthreads();
  Step<T> prefix = carry_step(carry);
  for (int w = 0; w < warp_rank; ++w) prefix = combine(prefix, sh.warp_totals[w]);
  Step<T> total = prefix;
  for (int w = warp_rank; w < kWarps; ++w) total = combine(total, sh.warp_totals[w]);
  *chunk_end = total.b;
  __syncthreads();  // warp_totals is free again
  return combine(prefix, exclusive);
}

// The sum of v over the block (every thread gets it).
template <typename T>
__device__ T block_sum(T v, Shared<T>& sh) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(kFullMask, v, offset);
  __syncthreads();
  if (threadIdx.x % 32 == 0) sh.partial[threadIdx.x / 32] = v;
  __syncthreads();
  T total = T(0);
#pragma unroll
  for (int w = 0; w < kWarps; ++w) total += sh.partial[w];
  return total;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_kernel(ScanParams<T> p) {
  __shared__ Shared<T> sh;
  const int64_t d = blockIdx.x, b = blockIdx.y, L = p.seqlen, N = p.dstate;
  const int64_t row = (b * p.dim + d) * L;                                    // (b, d, 0) in (B, D, L)
  const int64_t group = (b * p.groups + d / (p.dim / p.groups)) * N * L;    // (b, g, 0, 0) in (B, G, N, L)
  const int64_t n_chunks = (L + kChunk - 1) / kChunk;  // = p.n_chunks(): the binding sets the geometry
  T* states = p.states + (b * p.dim + d) * n_chunks * N;
  const T bias = p.delta_bias ? p.delta_bias[d] : T(0), D = p.D ? p.D[d] : T(0);
  for (int64_t c = 0; c < n_chunks; ++c) {
    const int64_t t0 = c * kChunk;
    const int valid = int(L - t0 < kChunk ? L - t0 : kChunk);
    const int first = threadIdx.x * kItems;  // this thread's first step within the chunk
    // 1) read u and Δ from HBM
    T u[kItems], dt[kItems], y[kItems];
    load_chunk(p.u + row + t0, valid, sh.buf, u, T(0));
    load_chunk(p.delta + row + t0, valid, sh.buf, dt, T(0));
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      dt[k] = p.softplus ? softplus(dt[k] + bias) : dt[k] + bias;
      y[k] = T(0);
    }
    for (int64_t n = 0; n < N; ++n) {
      T Bn[kItems], Cn[kItems], h[kItems];
      load_chunk(p.B + group + n * L + t0, valid, sh.buf, Bn, T(0));
      // 2) discretise on chip
      Step<T> steps[kItems];
      const T A = p.A[d * N + n];
#pragma unroll
      for (int k = 0; k < kItems; ++k)
        steps[k] = first + k < valid ? discretise(dt[k], A, Bn[k], u[k]) : identity_step<T>();
      // 3) scan on chip, from the state the previous chunk ended in
      const T carry = c == 0 ? T(0) : states[(c - 1) * N + n];
      T chunk_end;
      const Step<T> before = block_exclusive_scan<T, false>(thread_reduce(steps, kItems), carry, sh, &chunk_end);
      thread_scan(steps, kItems, before.b, h);
      if (threadIdx.x == 0) states[c * N + n] = chunk_end;  // the carry for the next chunk (and the backward)
      // 4) multiply by C and sum over the states
      load_chunk(p.C + group + n * L + t0, valid, sh.buf, Cn, T(0));
#pragma unroll
      for (int k = 0; k < kItems; ++k) y[k] += Cn[k] * h[k];
    }
    // 4) D skip and SiLU(z) gate, then write back to HBM
    T z[kItems], out[kItems], y_pre[kItems];
    if (p.z) load_chunk(p.z + row + t0, valid, sh.buf, z, T(0));
#pragma unroll
    for (int k = 0; k < kItems; ++k) out[k] = readout(y[k], u[k], D, p.z != nullptr, p.z ? z[k] : T(0), &y_pre[k]);
    store_chunk(p.out + row + t0, valid, sh.buf, out);
    if (p.y) store_chunk(p.y + row + t0, valid, sh.buf, y_pre);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) backward_kernel(ScanParams<T> p) {
  __shared__ Shared<T> sh;
  const int64_t d = blockIdx.x, b = blockIdx.y, L = p.seqlen, N = p.dstate;
  const int64_t row = (b * p.dim + d) * L;
  const int64_t group = (b * p.groups + d / (p.dim / p.groups)) * N * L;
  const int64_t n_chunks = (L + kChunk - 1) / kChunk;
  const T* states = p.states + (b * p.dim + d) * n_chunks * N;
  const T bias = p.delta_bias ? p.delta_bias[d] : T(0), D = p.D ? p.D[d] : T(0);
  for (int64_t n = threadIdx.x; n < N; n += kThreads) sh.rho[n] = T(0);  // nothing comes after the last step
  T dD = T(0), dbias = T(0);  // this thread's share
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk;
    const int valid = int(L - t0 < kChunk ? L - t0 : kChunk);
    const int first = threadIdx.x * kItems;
    T u[kItems], dt[kItems], dy[kItems], du[kItems], ddt[kItems];
    load_chunk(p.u + row + t0, valid, sh.buf, u, T(0));
    load_chunk(p.delta + row + t0, valid, sh.buf, dt, T(0));
    {  // the readout's backward: dy, dz, the D skip
      T dout[kItems], z[kItems], y_pre[kItems], dz[kItems];
      load_chunk(p.dout + row + t0, valid, sh.buf, dout, T(0));
      if (p.z) {
        load_chunk(p.z + row + t0, valid, sh.buf, z, T(0));
        load_chunk(p.y + row + t0, valid, sh.buf, y_pre, T(0));
      }
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        dt[k] = p.softplus ? softplus(dt[k] + bias) : dt[k] + bias;
        dy[k] = readout_backward(dout[k], p.z ? y_pre[k] : T(0), p.z != nullptr, p.z ? z[k] : T(0), &dz[k]);
        dD += dy[k] * u[k];  // zero past the end: dout was filled with 0
        du[k] = dy[k] * D;
        ddt[k] = T(0);
      }
      if (p.z) store_chunk(p.dz + row + t0, valid, sh.buf, dz);
    }
    for (int64_t n = 0; n < N; ++n) {
      T Bn[kItems], Cn[kItems], h[kItems], g[kItems];
      Step<T> steps[kItems];
      const T A = p.A[d * N + n];
      load_chunk(p.B + group + n * L + t0, valid, sh.buf, Bn, T(0));
#pragma unroll
      for (int k = 0; k < kItems; ++k)
        steps[k] = first + k < valid ? discretise(dt[k], A, Bn[k], u[k]) : identity_step<T>();
      // recompute the chunk's states from the carry the forward saved
      const T carry = c == 0 ? T(0) : states[(c - 1) * N + n];
      T chunk_end;
      const T h_in = block_exclusive_scan<T, false>(thread_reduce(steps, kItems), carry, sh, &chunk_end).b;
      thread_scan(steps, kItems, h_in, h);
      // the adjoint, scanned backwards from ρ carried in from the next chunk
      load_chunk(p.C + group + n * L + t0, valid, sh.buf, Cn, T(0));
#pragma unroll
      for (int k = 0; k < kItems; ++k) g[k] = Cn[k] * dy[k];  // zero past the end (dy = 0 there)
      const T rho_next = sh.rho[n];
      T rho_first;
      const T rho_in = block_exclusive_scan<T, true>(thread_reduce_reverse(steps, g, kItems), rho_next, sh,
                                                     &rho_first).b;
      if (threadIdx.x == 0) sh.rho[n] = rho_first;  // every thread has read rho[n] (the scan synchronised)
      thread_adjoint(steps, g, kItems, rho_in, g);  // g becomes λ, in place
      T dA = T(0);
#pragma unroll
      for (int k = 0; k < kItems; ++k) {
        const T h_prev = k == 0 ? h_in : h[k - 1];
        const StepGrad<T> sg = step_backward(g[k], h_prev, h[k], steps[k].a, dt[k], u[k], Bn[k], A, dy[k]);
        const bool inside = first + k < valid;
        ddt[k] += inside ? sg.delta : T(0);
        du[k] += inside ? sg.u : T(0);
        Bn[k] = inside ? sg.B : T(0);  // Bn and Cn now hold dB and dC
        Cn[k] = inside ? sg.C : T(0);
        dA += inside ? sg.A : T(0);
      }
      // channels of one group (other blocks) add into the same dB, dC: atomically
      store_chunk<T, true>(p.dB + group + n * L + t0, valid, sh.buf, Bn);
      store_chunk<T, true>(p.dC + group + n * L + t0, valid, sh.buf, Cn);
      dA = block_sum(dA, sh);
      if (threadIdx.x == 0) atomicAdd(&p.dA[d * N + n], dA);  // summed over the batch's blocks
    }
    // through the softplus, ∂softplus(x)/∂x = σ(x): read delta again rather than keep it in registers
    T raw[kItems];
    load_chunk(p.delta + row + t0, valid, sh.buf, raw, T(0));
#pragma unroll
    for (int k = 0; k < kItems; ++k) {
      if (p.softplus) ddt[k] *= sigmoid(raw[k] + bias);
      dbias += first + k < valid ? ddt[k] : T(0);
    }
    store_chunk(p.ddelta + row + t0, valid, sh.buf, ddt);
    store_chunk(p.du + row + t0, valid, sh.buf, du);
  }
  dD = block_sum(dD, sh);
  dbias = block_sum(dbias, sh);
  if (threadIdx.x == 0) {
    atomicAdd(&p.dD[d], dD);
    atomicAdd(&p.ddelta_bias[d], dbias);
  }
}

int launch_status(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) fprintf(stderr, "%s: %s\n", what, cudaGetErrorString(err));
  return int(err);
}

}  // namespace

template <typename T>
int selective_scan_forward_cuda(const ScanParams<T>& p, void* stream) {
  if (p.batch == 0 || p.dim == 0 || p.seqlen == 0) return 0;
  forward_kernel<T><<<dim3(p.dim, p.batch), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("selective_scan forward kernel");
}

template <typename T>
int selective_scan_backward_cuda(const ScanParams<T>& p, void* stream) {
  if (p.batch == 0 || p.dim == 0 || p.seqlen == 0) return 0;
  backward_kernel<T><<<dim3(p.dim, p.batch), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(p);
  return launch_status("selective_scan backward kernel");
}

template int selective_scan_forward_cuda<float>(const ScanParams<float>&, void*);
template int selective_scan_forward_cuda<double>(const ScanParams<double>&, void*);
template int selective_scan_backward_cuda<float>(const ScanParams<float>&, void*);
template int selective_scan_backward_cuda<double>(const ScanParams<double>&, void*);

}  // namespace tk
