// Seed 000's momentum on a group of tiny problems side by side, one problem a SIMD lane, for the
// AVX2 build (run_task_32 in cpu_momentum_run.cpp; the 16- and 64-byte builds run
// lanes::momentum_group in cpu_lanes.h). CPU only, no torch headers.
//
// The same step as small::MomentumProblem::step, lane by lane: R = P(X) - I; the step's loss is
// mean(R^2) at the X it started from; g = scale (H X - A^T) (right, H = A^T A), scale (X H - A^T)
// (left, H = A A^T) or scale (A^T R + R A^T) (both); buf = started ? momentum buf + g : g;
// X = X - buf lr. The side and whether buf has started are template parameters, so a step's
// loops unroll completely and the matrices stay in registers (where N is small enough).
//
// Every rounding is written out. GCC contracts a multiply and an add into an FMA where it sees
// fit, and what it sees fit changes with the caller and the compiler version; here every
// multiply-add is an explicit fused one (fmadd), and no plain product ever meets an addition, so
// there is nothing left to contract and the bits are the same whoever compiles or calls this:
// - an entry of a product plus a shift, s + u_0 v_0 + ... + u_{N-1} v_{N-1}: a chain of fused
//   multiply-adds started at s, left to right (N roundings). H starts at 0, R = A X - I (X A - I)
//   at -1 on the diagonal and 0 elsewhere, the gradient of right and left at -A^T;
// - both: (A X + X A) / 2 - I is the chain of A X's N products then X A's N products started at
//   0, then fmadd(1/2, that, -1 or 0) (the halving is exact); the gradient A^T R + R A^T is one
//   chain of 2N products started at 0;
// - the loss: each entry of R widened to double and fused into its line's sum of squares, left
//   to right (for float32 the square is exact in double, so fused or not is the same), the lines
//   added in order, each lane's sum fused into the group's total times 1/n^2, lanes in order. A
//   line is a column of R for right (the order its columns come in, see below), a row otherwise;
// - the update: scale g rounded, buf = fmadd(momentum, buf, scale g), X = fmadd(-buf, lr, X).
// A step never reads anything but the group's state, so a run of n steps in one call gives the
// same bits as n calls of one step, and the group's loss does not depend on the thread count.
//
// Right runs column by column: column j of R and of the gradient needs only column j of X, which
// is then updated in place; left runs row by row the same way. Both needs all of R for any entry
// of its gradient, so R is computed whole first. Padding lanes hold A = I, X = 0 and buf = 0 (as
// in lanes::momentum_group) and add nothing to the loss.
#pragma once

#include "cpu_isa.h"
#include "cpu_lanes.h"

#include <cstdint>

#ifdef GDLA_RUN_X86_DISPATCH
#include <immintrin.h>

// Everything here is always inlined into the one AVX2 build that calls it, where 32-byte vectors
// are registers; -Wpsabi would warn that the baseline ABI passes them differently, which never
// happens to an inlined function (see cpu_momentum_4x4.h).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace gdla {
namespace lanes {
namespace momentum_avx2 {

typedef float v8sf __attribute__((vector_size(32)));
typedef double v4df __attribute__((vector_size(32)));

// a b + c, rounded once.
GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE v8sf fmadd(v8sf a, v8sf b, v8sf c) { return __builtin_ia32_vfmaddps256(a, b, c); }
GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE v4df fmadd(v4df a, v4df b, v4df c) { return __builtin_ia32_vfmaddpd256(a, b, c); }

// One entry of a group's matrix widened to double, as H four-lane halves (lanes 0-3, 4-7 of a
// float vector; a double vector is its own half). _mm256_cvtps_pd directly: GCC lowers a
// generic 8-float to 8-double conversion to 2-lane conversions through the stack.
template <typename T>
struct Wide;
template <>
struct Wide<float> {
  static constexpr int H = 2;
  GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE static v4df half(v8sf v, int k) {
    return (v4df)_mm256_cvtps_pd(k == 0 ? _mm256_castps256_ps128((__m256)v) : _mm256_extractf128_ps((__m256)v, 1));
  }
};
template <>
struct Wide<double> {
  static constexpr int H = 1;
  GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE static v4df half(v4df v, int) { return v; }
};

// s + u_0 v_0 + ... + u_{K-1} v_{K-1}: each product fused into the running sum, left to right.
template <int K, typename V, typename U, typename W>
GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE V chain(V s, const U& u, const W& v) {
#pragma GCC unroll 16
  for (int l = 0; l < K; ++l) s = fmadd(u(l), v(l), s);
  return s;
}

// A group's state and what it keeps for the whole call.
template <typename T, int N>
struct Group {
  using V = typename Vec<T, 32>::V;
  static constexpr int H = Wide<T>::H;
  V a[N][N], at[N][N], h[N][N], x[N][N], b[N][N];
  V scale, lr, momentum;

  // The loss of one entry r of R: its square added to the row's sum (double halves).
  GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE static void square_into(V r, v4df (&row)[H]) {
#pragma GCC unroll 2
    for (int k = 0; k < H; ++k) {
      const v4df wide = Wide<T>::half(r, k);
      row[k] = fmadd(wide, wide, row[k]);
    }
  }

  // buf and X of entry (i, j) from its gradient g / scale.
  template <bool Started>
  GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE void update(int i, int j, V g, V old_x) {
    const V grad = scale * g;
    if constexpr (Started) {
      b[i][j] = fmadd(momentum, b[i][j], grad);
    } else {
      b[i][j] = grad;
    }
    x[i][j] = fmadd(-b[i][j], lr, old_x);
  }

  // One step; sum[k] receives each lane's sum of squares of R (double halves).
  template <int Side, bool Started>
  GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE void step(v4df (&sum)[H]) {
    v4df lines[N][H] = {};  // the sums of squares of R's columns (right) or rows (left, both)
    if constexpr (Side == 0) {  // right, column by column (one column's loss at a time: fewer live registers)
#pragma GCC unroll 16
      for (int j = 0; j < N; ++j) {
        V col[N];
#pragma GCC unroll 16
        for (int l = 0; l < N; ++l) col[l] = x[l][j];
        auto xl = [&](int l) GDLA_LAMBDA_INLINE -> const V& { return col[l]; };
#pragma GCC unroll 16
        for (int i = 0; i < N; ++i) {
          const V r = chain<N>(V{} - T(i == j), [&](int l) GDLA_LAMBDA_INLINE -> const V& { return a[i][l]; }, xl);
          square_into(r, lines[j]);
        }
#pragma GCC unroll 16
        for (int i = 0; i < N; ++i) {
          const V g = chain<N>(-at[i][j], [&](int l) GDLA_LAMBDA_INLINE -> const V& { return h[i][l]; }, xl);
          update<Started>(i, j, g, col[i]);
        }
      }
    } else if constexpr (Side == 1) {  // left, row by row
#pragma GCC unroll 16
      for (int i = 0; i < N; ++i) {
        V row[N];
#pragma GCC unroll 16
        for (int l = 0; l < N; ++l) row[l] = x[i][l];
        auto xl = [&](int l) GDLA_LAMBDA_INLINE -> const V& { return row[l]; };
#pragma GCC unroll 16
        for (int j = 0; j < N; ++j) {
          const V r = chain<N>(V{} - T(i == j), xl, [&](int l) GDLA_LAMBDA_INLINE -> const V& { return a[l][j]; });
          square_into(r, lines[i]);
        }
#pragma GCC unroll 16
        for (int j = 0; j < N; ++j) {
          const V g = chain<N>(-at[i][j], xl, [&](int l) GDLA_LAMBDA_INLINE -> const V& { return h[l][j]; });
          update<Started>(i, j, g, row[j]);
        }
      }
    } else {  // both: R whole first
      V r[N][N];
      const V half = V{} + T(0.5);
#pragma GCC unroll 16
      for (int i = 0; i < N; ++i) {
#pragma GCC unroll 16
        for (int j = 0; j < N; ++j) {
          V p = chain<N>(V{}, [&](int l) GDLA_LAMBDA_INLINE -> const V& { return a[i][l]; },
                         [&](int l) GDLA_LAMBDA_INLINE -> const V& { return x[l][j]; });
          p = chain<N>(p, [&](int l) GDLA_LAMBDA_INLINE -> const V& { return x[i][l]; },
                       [&](int l) GDLA_LAMBDA_INLINE -> const V& { return a[l][j]; });
          r[i][j] = fmadd(half, p, V{} - T(i == j));
          square_into(r[i][j], lines[i]);
        }
      }
#pragma GCC unroll 16
      for (int i = 0; i < N; ++i) {
#pragma GCC unroll 16
        for (int j = 0; j < N; ++j) {
          V g = chain<N>(V{}, [&](int l) GDLA_LAMBDA_INLINE -> const V& { return at[i][l]; },
                         [&](int l) GDLA_LAMBDA_INLINE -> const V& { return r[l][j]; });
          g = chain<N>(g, [&](int l) GDLA_LAMBDA_INLINE -> const V& { return r[i][l]; },
                       [&](int l) GDLA_LAMBDA_INLINE -> const V& { return at[l][j]; });
          update<Started>(i, j, g, x[i][j]);
        }
      }
    }
#pragma GCC unroll 2
    for (int k = 0; k < H; ++k) {  // the lines in order (0 + the first is exact)
      v4df total = v4df{};
#pragma GCC unroll 16
      for (int i = 0; i < N; ++i) total += lines[i][k];
      sum[k] = total;
    }
  }
};

// The group's loss of one step: each lane's sum of squares times 1/n^2, fused into the total
// (an explicit fma, so no compiler choice moves it), lanes w < count in order.
template <int H>
GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE double lanes_total(const v4df (&sum)[H], int count, double inv_count) {
  double total = 0.0;
  for (int w = 0; w < count; ++w) total = __builtin_fma(sum[w / 4][w % 4], inv_count, total);
  return total;
}

// lanes::momentum_group's arguments and results for one side (0 right, 1 left, 2 both).
template <typename T, int N, int Side>
GDLA_TARGET_AVX2 GDLA_ALWAYS_INLINE void group(const T* A, T* X, T* B, int count, T lr, T momentum, bool started,
                                               int64_t steps, double* out) {
  using V = typename Vec<T, 32>::V;
  Group<T, N> s;
  load_momentum_group<T, N, 32>(A, X, B, count, s.a, s.x, s.b);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) s.at[i][j] = s.a[j][i];
  for (int i = 0; i < N; ++i) {  // H = A^T A (right) or A A^T (left); both does not use it
    for (int j = 0; j < N; ++j) {
      if constexpr (Side == 0) {
        s.h[i][j] = chain<N>(V{}, [&](int l) -> const V& { return s.at[i][l]; },
                             [&](int l) -> const V& { return s.a[l][j]; });
      } else if constexpr (Side == 1) {
        s.h[i][j] = chain<N>(V{}, [&](int l) -> const V& { return s.a[i][l]; },
                             [&](int l) -> const V& { return s.at[l][j]; });
      } else {
        s.h[i][j] = V{};
      }
    }
  }
  s.scale = V{} + static_cast<T>((Side == 2 ? 1.0 : 2.0) / static_cast<double>(N * N));
  s.lr = V{} + lr;
  s.momentum = V{} + momentum;
  const double inv_count = 1.0 / static_cast<double>(N * N);
  v4df sum[Group<T, N>::H];
  int64_t k = 0;
  if (!started && steps > 0) {  // the first step sets buf = g
    s.template step<Side, false>(sum);
    out[k++] = lanes_total(sum, count, inv_count);
  }
  for (; k < steps; ++k) {
    s.template step<Side, true>(sum);
    out[k] = lanes_total(sum, count, inv_count);
  }
  for (int w = 0; w < count; ++w) {
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        X[(w * N + i) * N + j] = s.x[i][j][w];
        B[(w * N + i) * N + j] = s.b[i][j][w];
      }
    }
  }
}

}  // namespace momentum_avx2

// lanes::momentum_group's AVX2 build (Bytes == 32): the same arguments, the side dispatched once a call. Not
// inlined: its caller (run_task, always inlined into run_task_32) has no target of its own to inline it into, and
// one call a group for all its steps costs nothing.
template <typename T, int N>
GDLA_TARGET_AVX2 void momentum_group_avx2(const T* A, T* X, T* B, int count, int side, T lr, T momentum, bool started,
                                          int64_t steps, double* out) {
  if (side == 0) {
    momentum_avx2::group<T, N, 0>(A, X, B, count, lr, momentum, started, steps, out);
  } else if (side == 1) {
    momentum_avx2::group<T, N, 1>(A, X, B, count, lr, momentum, started, steps, out);
  } else {
    momentum_avx2::group<T, N, 2>(A, X, B, count, lr, momentum, started, steps, out);
  }
}

}  // namespace lanes
}  // namespace gdla

#endif  // GDLA_RUN_X86_DISPATCH
