// The selective scan on the CPU: the CUDA kernel's blocks and threads, walked with loops.
//
// The GPU runs one block per channel (b, d), kThreads threads of kItems steps each per chunk.
// Here `at::parallel_for` hands out the (b, d) channels, and inside one channel the chunk loop
// and the three phases of the chunk scan are the kernel's, with the block's threads run one
// after another: phase 1 `thread_reduce` for every thread, phase 2 a loop over the threads'
// folded steps starting from the chunk carry (where the GPU uses warp shuffles), phase 3
// `thread_scan` for every thread. The arithmetic is the shared header's (selective_scan_math.h).
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "kernels.h"
#include "selective_scan_math.h"

namespace tk {
namespace {

// Everything one channel (b, d) reads and writes, found from the flat layouts in kernels.h.
template <typename T>
struct Channel {
  int64_t b, d, g;
  const T *u, *delta, *z, *B, *C;  // (L,) each; B and C of state n start at n·L
  T *out, *y, *states;
};

template <typename T>
Channel<T> channel(const ScanParams<T>& p, int64_t bd) {
  Channel<T> ch;
  ch.b = bd / p.dim;
  ch.d = bd % p.dim;
  ch.g = ch.d / (p.dim / p.groups);
  const int64_t row = bd * p.seqlen, group = (ch.b * p.groups + ch.g) * p.dstate * p.seqlen;
  ch.u = p.u + row;
  ch.delta = p.delta + row;
  ch.z = p.z ? p.z + row : nullptr;
  ch.B = p.B + group;
  ch.C = p.C + group;
  ch.out = p.out ? p.out + row : nullptr;
  ch.y = p.y ? p.y + row : nullptr;
  ch.states = p.states + bd * p.n_chunks() * p.dstate;
  return ch;
}

// Scratch for one chunk, reused from chunk to chunk: the register arrays and shared memory of a block.
template <typename T>
struct Scratch {
  std::vector<Step<T>> steps, aggregates;
  std::vector<T> dt, dt_raw, h, y, g, lam, dy, du, ddt, h_in, rho_in, rho;
  Scratch(int64_t chunk, int threads, int64_t dstate)
      : steps(chunk), aggregates(threads), dt(chunk), dt_raw(chunk), h(chunk), y(chunk), g(chunk), lam(chunk),
        dy(chunk), du(chunk), ddt(chunk), h_in(threads), rho_in(threads), rho(dstate) {}
};

// 1) read Δ for steps t0 .. t0 + valid − 1: delta + delta_bias, then softplus.
template <typename T>
void read_delta(const ScanParams<T>& p, const Channel<T>& ch, int64_t t0, int64_t valid, Scratch<T>& s) {
  const T bias = p.delta_bias ? p.delta_bias[ch.d] : T(0);
  for (int64_t i = 0; i < valid; ++i) {
    s.dt_raw[i] = ch.delta[t0 + i] + bias;
    s.dt[i] = p.softplus ? softplus(s.dt_raw[i]) : s.dt_raw[i];
  }
}

// 2) discretise state n of the chunk (identity steps past the end) and 3) scan it from `carry`:
// leaves h (chunk,) and each thread's start state in h_in; returns the state at the chunk's end.
template <typename T>
T scan_chunk(const ScanParams<T>& p, const Channel<T>& ch, int64_t n, int64_t t0, int64_t valid, T carry,
             Scratch<T>& s) {
  const int K = p.items;
  const T A = p.A[ch.d * p.dstate + n];
  for (int64_t i = 0; i < p.chunk(); ++i)
    s.steps[i] = i < valid ? discretise(s.dt[i], A, ch.B[n * p.seqlen + t0 + i], ch.u[t0 + i]) : identity_step<T>();
  for (int j = 0; j < p.threads; ++j) s.aggregates[j] = thread_reduce(&s.steps[j * K], K);  // phase 1
  Step<T> prefix = carry_step(carry);                                                          // phase 2
  for (int j = 0; j < p.threads; ++j) {
    s.h_in[j] = prefix.b;  // the state before thread j's first step
    prefix = combine(prefix, s.aggregates[j]);
  }
  for (int j = 0; j < p.threads; ++j) thread_scan(&s.steps[j * K], K, s.h_in[j], &s.h[j * K]);  // phase 3
  return prefix.b;
}

template <typename T>
void forward_channel(const ScanParams<T>& p, int64_t bd, Scratch<T>& s) {
  const Channel<T> ch = channel(p, bd);
  const int64_t N = p.dstate;
  for (int64_t c = 0; c < p.n_chunks(); ++c) {
    const int64_t t0 = c * p.chunk(), valid = std::min(p.chunk(), p.seqlen - t0);
    read_delta(p, ch, t0, valid, s);
    std::fill(s.y.begin(), s.y.end(), T(0));
    for (int64_t n = 0; n < N; ++n) {
      const T carry = c == 0 ? T(0) : ch.states[(c - 1) * N + n];
      ch.states[c * N + n] = scan_chunk(p, ch, n, t0, valid, carry, s);
      for (int64_t i = 0; i < valid; ++i) s.y[i] += ch.C[n * p.seqlen + t0 + i] * s.h[i];  // 4) y = Σ_n C h
    }
    const T D = p.D ? p.D[ch.d] : T(0);
    for (int64_t i = 0; i < valid; ++i) {  // 4) skip, gate, write back
      T y_pre;
      ch.out[t0 + i] = readout(s.y[i], ch.u[t0 + i], D, ch.z != nullptr, ch.z ? ch.z[t0 + i] : T(0), &y_pre);
      if (ch.y) ch.y[t0 + i] = y_pre;
    }
  }
}

// The backward of one channel, chunks last to first; `w` is the worker's partial-sum slot.
template <typename T>
void backward_channel(const ScanParams<T>& p, int64_t bd, int w, Scratch<T>& s) {
  const Channel<T> ch = channel(p, bd);
  const int64_t N = p.dstate, L = p.seqlen, D_ = p.dim;
  const int K = p.items;
  const int64_t row = bd * L;
  T* dA = p.dA + w * D_ * N;  // this worker's copies of the gradients that channels share
  T* dB = p.dB + w * p.batch * p.groups * N * L + (ch.b * p.groups + ch.g) * N * L;
  T* dC = p.dC + w * p.batch * p.groups * N * L + (ch.b * p.groups + ch.g) * N * L;
  const T D = p.D ? p.D[ch.d] : T(0);
  T dD = T(0), dbias = T(0);
  std::fill(s.rho.begin(), s.rho.end(), T(0));  // reverse carries, one per state
  for (int64_t c = p.n_chunks() - 1; c >= 0; --c) {
    const int64_t t0 = c * p.chunk(), valid = std::min(p.chunk(), L - t0);
    read_delta(p, ch, t0, valid, s);
    for (int64_t i = 0; i < p.chunk(); ++i) {  // the readout's backward: dy, dz, the D skip
      if (i >= valid) {
        s.dy[i] = T(0);
        continue;
      }
      T dz;
      s.dy[i] = readout_backward(p.dout[row + t0 + i], ch.y ? ch.y[t0 + i] : T(0), ch.z != nullptr,
                                 ch.z ? ch.z[t0 + i] : T(0), &dz);
      if (p.dz) p.dz[row + t0 + i] = dz;
      dD += s.dy[i] * ch.u[t0 + i];
      s.du[i] = s.dy[i] * D;
      s.ddt[i] = T(0);
    }
    for (int64_t n = 0; n < N; ++n) {
      const T A = p.A[ch.d * N + n];
      const T carry = c == 0 ? T(0) : ch.states[(c - 1) * N + n];
      scan_chunk(p, ch, n, t0, valid, carry, s);  // recompute h for this chunk from its saved carry
      for (int64_t i = 0; i < p.chunk(); ++i) s.g[i] = i < valid ? ch.C[n * L + t0 + i] * s.dy[i] : T(0);
      for (int j = 0; j < p.threads; ++j)  // phase 1, backwards
        s.aggregates[j] = thread_reduce_reverse(&s.steps[j * K], &s.g[j * K], K);
      Step<T> prefix = carry_step(s.rho[n]);  // phase 2, from the last thread to the first
      for (int j = p.threads - 1; j >= 0; --j) {
        s.rho_in[j] = prefix.b;
        prefix = combine(prefix, s.aggregates[j]);
      }
      s.rho[n] = prefix.b;  // ρ at this chunk's first step: the carry for the chunk before
      for (int j = 0; j < p.threads; ++j)  // phase 3, backwards
        thread_adjoint(&s.steps[j * K], &s.g[j * K], K, s.rho_in[j], &s.lam[j * K]);
      T dA_n = T(0);
      for (int64_t i = 0; i < valid; ++i) {
        const T h_prev = i % K == 0 ? s.h_in[i / K] : s.h[i - 1];
        const T Bi = ch.B[n * L + t0 + i];
        const StepGrad<T> sg = step_backward(s.lam[i], h_prev, s.h[i], s.steps[i].a, s.dt[i], ch.u[t0 + i], Bi, A,
                                             s.dy[i]);
        s.ddt[i] += sg.delta;
        s.du[i] += sg.u;
        dB[n * L + t0 + i] += sg.B;
        dC[n * L + t0 + i] += sg.C;
        dA_n += sg.A;
      }
      dA[ch.d * N + n] += dA_n;
    }
    for (int64_t i = 0; i < valid; ++i) {  // through the softplus: ∂softplus(x)/∂x = σ(x)
      const T ddelta = p.softplus ? s.ddt[i] * sigmoid(s.dt_raw[i]) : s.ddt[i];
      p.ddelta[row + t0 + i] = ddelta;
      p.du[row + t0 + i] = s.du[i];
      dbias += ddelta;
    }
  }
  p.dD[w * D_ + ch.d] += dD;
  p.ddelta_bias[w * D_ + ch.d] += dbias;
}

}  // namespace

template <typename T>
void selective_scan_forward_cpu(const ScanParams<T>& p) {
  // Each (b, d) channel writes only its own out, y and states: no two workers share an address.
  at::parallel_for(0, p.batch * p.dim, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(p.chunk(), p.threads, p.dstate);
    for (int64_t bd = begin; bd < end; ++bd) forward_channel(p, bd, s);
  });
}

template <typename T>
void selective_scan_backward_cpu(const ScanParams<T>& p, int workers) {
  // du, ddelta, dz belong to one channel. dA, dD, ddelta_bias are summed over the batch, dB and dC
  // over the channels of a group: on the GPU, atomicAdd; here each worker adds into its own copy
  // (slot w), a fixed share of the channels per worker, so the result does not depend on timing.
  const int64_t total = p.batch * p.dim, per_worker = (total + workers - 1) / workers;
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    Scratch<T> s(p.chunk(), p.threads, p.dstate);
    for (int64_t w = begin; w < end; ++w)
      for (int64_t bd = w * per_worker; bd < std::min(total, (w + 1) * per_worker); ++bd)
        backward_channel(p, bd, static_cast<int>(w), s);
  });
}

template void selective_scan_forward_cpu<float>(const ScanParams<float>&);
template void selective_scan_forward_cpu<double>(const ScanParams<double>&);
template void selective_scan_backward_cpu<float>(const ScanParams<float>&, int);
template void selective_scan_backward_cpu<double>(const ScanParams<double>&, int);

}  // namespace tk
