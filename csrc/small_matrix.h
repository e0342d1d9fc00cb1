// One tiny problem's matrices in local storage (row stride N), for the per-problem code shared by
// the CPU kernels (one OpenMP iteration per problem) and the CUDA kernels (one thread per
// problem): the host/device markers, loads and stores, the products, and P(X) of each side.
//
// With a compile-time N (n <= kMaxUnrolledN) the loops unroll and the arrays stay in registers;
// n up to kMaxN runs the same code with a runtime bound on kMaxN x kMaxN arrays (kFixed false).
// No torch headers here, so the CUDA kernel files compile in seconds.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "small_limits.h"

// GDLA_UNROLL unrolls a loop bounded by N only where N is the real size (kFixed): unrolling
// the runtime-bounded 16 x 16 x 16 loops would only bloat the code (and the compile time).
#if defined(__CUDACC__)
#define GDLA_HD __host__ __device__ inline
#define GDLA_PRAGMA(x) _Pragma(#x)
#define GDLA_UNROLL GDLA_PRAGMA(unroll(kFixed ? N : 1))
#define GDLA_PRAGMA_UNROLL_ALL GDLA_PRAGMA(unroll)
#elif defined(__GNUC__) || defined(__clang__)
// always_inline: a kernel compiled for AVX2 (cpu_isa.h) must take these in, not call the baseline build
#define GDLA_HD __attribute__((always_inline)) inline
#define GDLA_UNROLL
#define GDLA_PRAGMA_UNROLL_ALL
#else
#define GDLA_HD inline
#define GDLA_UNROLL
#define GDLA_PRAGMA_UNROLL_ALL
#endif

// GDLA_LAMBDA_INLINE: a lambda's always_inline, so a kernel compiled for AVX2 (cpu_isa.h) takes its
// body into its own build (the same instructions, FMA contractions included, as code written inline).
#if !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__))
#define GDLA_LAMBDA_INLINE __attribute__((always_inline))
#else
#define GDLA_LAMBDA_INLINE
#endif

namespace gdla {
namespace small {

#ifndef __CUDACC__
using std::exp;
using std::frexp;
using std::ldexp;
using std::pow;
using std::sqrt;  // the float overloads for float problems
using std::tanh;
#endif

// f(i, j) for every entry of an n x n matrix, row by row (the loops unrolled where kFixed).
template <int N, bool kFixed, typename F>
GDLA_HD void each_entry(int n, const F& f) {
  GDLA_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    GDLA_UNROLL
    for (int j = 0; j < N; ++j) {
      if (j >= n) break;
      f(i, j);
    }
  }
}

// Reads a row-major n x n matrix into local storage with row stride N.
template <typename T, int N, bool kFixed>
GDLA_HD void load(const T* src, T* dst, int n) {
  each_entry<N, kFixed>(n, [&](int i, int j) GDLA_LAMBDA_INLINE { dst[i * N + j] = src[i * n + j]; });
}

template <typename T, int N, bool kFixed>
GDLA_HD void store(const T* src, T* dst, int n) {
  each_entry<N, kFixed>(n, [&](int i, int j) GDLA_LAMBDA_INLINE { dst[i * n + j] = src[i * N + j]; });
}

// c = a b for n x n matrices with row stride N; a^T in place of a with kTransposeA, b^T in place
// of b with kTransposeB. Every entry sums its products in the order of l.
template <typename T, int N, bool kFixed, bool kTransposeA = false, bool kTransposeB = false>
GDLA_HD void matmul(const T* a, const T* b, T* c, int n) {
  each_entry<N, kFixed>(n, [&](int i, int j) GDLA_LAMBDA_INLINE {
    T acc = T(0);
    GDLA_UNROLL
    for (int l = 0; l < N; ++l) {
      if (l >= n) break;
      acc += (kTransposeA ? a[l * N + i] : a[i * N + l]) * (kTransposeB ? b[j * N + l] : b[l * N + j]);
    }
    c[i * N + j] = acc;
  });
}

// c = a b, row by row (a row of b scaled and added at a time, which vectorises over the row).
// Every entry is a[i,0] b[0,j] + a[i,1] b[1,j] + ... summed left to right.
template <typename T, int N>
GDLA_HD void matmul_split(const T* __restrict a, const T* __restrict b, T* __restrict c) {
#if !defined(__CUDACC__) && (defined(__GNUC__) || defined(__clang__))
  constexpr int kBytes = (N * sizeof(T)) % 32 == 0 ? 32 : (N * sizeof(T)) % 16 == 0 ? 16 : 0;
  if constexpr (kBytes != 0) {
    // rows that fill 16- or 32-byte vectors: written with vector types, since GCC's own
    // vectorisation of the loop below is 5x slower at 16 x 16 floats; the same operations in the
    // same order
    typedef T vec __attribute__((vector_size(kBytes)));
    constexpr int W = static_cast<int>(N * sizeof(T) / kBytes), L = static_cast<int>(kBytes / sizeof(T));
    for (int i = 0; i < N; ++i) {
      vec acc[W];
      for (int w = 0; w < W; ++w) {
        vec row;
        __builtin_memcpy(&row, b + L * w, kBytes);
        acc[w] = a[i * N] * row;
      }
      for (int l = 1; l < N; ++l) {
        const T scale = a[i * N + l];
        for (int w = 0; w < W; ++w) {
          vec row;
          __builtin_memcpy(&row, b + l * N + L * w, kBytes);
          acc[w] += scale * row;
        }
      }
      for (int w = 0; w < W; ++w) __builtin_memcpy(c + i * N + L * w, &acc[w], kBytes);
    }
    return;
  }
#endif
  // row i of c accumulates a[i, l] * row l of b: the inner loop over j vectorises
  for (int i = 0; i < N; ++i) {
    T acc[N];
    for (int j = 0; j < N; ++j) acc[j] = a[i * N] * b[j];
    for (int l = 1; l < N; ++l) {
      const T scale = a[i * N + l];
      for (int j = 0; j < N; ++j) acc[j] += scale * b[l * N + j];
    }
    for (int j = 0; j < N; ++j) c[i * N + j] = acc[j];
  }
}

// P(X) of the inverse problems' sides, for n == N: side 0 right (A X), 1 left (X A), 2 both
// ((A X + X A) / 2), into r. kSplit picks matmul_split (the whole-run kernels' products) over matmul.
template <typename T, int N, bool kSplit>
GDLA_HD void product(const T* a, const T* b, T* c) {
  if constexpr (kSplit) {
    matmul_split<T, N>(a, b, c);
  } else {
    matmul<T, N, true>(a, b, c, N);
  }
}

template <typename T, int N, bool kSplit>
GDLA_HD void side_product(int side, const T* a, const T* x, T* r) {
  if (side == 1) {
    product<T, N, kSplit>(x, a, r);
  } else {
    product<T, N, kSplit>(a, x, r);
  }
  if (side == 2) {
    T u[N * N];
    product<T, N, kSplit>(x, a, u);
    GDLA_PRAGMA_UNROLL_ALL
    for (int i = 0; i < N * N; ++i) r[i] = T(0.5) * (r[i] + u[i]);
  }
}

}  // namespace small
}  // namespace gdla
