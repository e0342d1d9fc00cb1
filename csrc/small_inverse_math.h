// The inverse solvers of one tiny n x n problem, shared by the CPU kernels (one OpenMP iteration
// per problem) and the CUDA kernels (one thread per problem): Newton-Schulz (from the safe start,
// small_safe_start.h, or a given X0), heavy-ball gradient descent, the residual ||P(X) - I||_F^2
// in double, and the register-resident path of the fused inverse-MSE loss.
#pragma once

#include "small_matrix.h"
#include "small_safe_start.h"

namespace gdla {
namespace small {

// ||A X - I||_F^2 (side 0; side 1: ||X A - I||_F^2) evaluated in double, whatever T is (a and x
// convert exactly).
template <typename T, int N, bool kFixed>
GDLA_HD double residual_squared_double(const T* a, const T* x, int n, int side = 0) {
  const T* left = side == 1 ? x : a;
  const T* right = side == 1 ? a : x;
  double r2 = 0.0;
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      double acc = i == j ? -1.0 : 0.0;
      for (int l = 0; l < n; ++l) acc += static_cast<double>(left[i * N + l]) * static_cast<double>(right[l * N + j]);
      r2 += acc * acc;
    }
  }
  return r2;
}

// Newton-Schulz on one problem: X <- X (2I - A X) until ||A X - I||_F / sqrt(n) <= tol, the
// residual stops being finite, or max_steps updates were made. Returns the number of updates.
// The residual is tracked in T; when it passes, a float32 problem confirms it in double, so the
// X returned satisfies the tolerance exactly (rounding of a float32 A X could otherwise hide
// up to a few 1e-7 of residual). kFixed: n == N is known at compile time.
template <typename T, int N, bool kFixed>
GDLA_HD int newton_schulz(const T* A, const T* X0, T* X, int n_runtime, int max_steps, double tol) {
  const int n = kFixed ? N : n_runtime;
  T a[N * N], x[N * N], t[N * N], u[N * N];
  load<T, N, kFixed>(A, a, n);
  if (X0 != nullptr) {
    load<T, N, kFixed>(X0, x, n);
  } else {
    safe_start<T, N, kFixed>(a, x, n);  // a zero A: x stays 0, and the residual n, for max_steps
  }
  // Compare squared sums: ||R||_F^2 <= tol^2 n avoids a square root per step.
  const double threshold = tol * tol * static_cast<double>(n);
  int steps = 0;
  for (;;) {
    matmul<T, N, kFixed>(a, x, t, n);  // t = A X
    double r2 = 0.0;
    each_entry<N, kFixed>(n, [&](int i, int j) GDLA_LAMBDA_INLINE {
      const T r = t[i * N + j] - (i == j ? T(1) : T(0));
      r2 += static_cast<double>(r) * static_cast<double>(r);
    });
    if (r2 <= threshold && (sizeof(T) >= sizeof(double) || residual_squared_double<T, N, kFixed>(a, x, n) <= threshold)) {
      break;
    }
    if (!(r2 < 1e300) || steps >= max_steps) break;
    matmul<T, N, kFixed>(x, t, u, n);  // u = X A X
    each_entry<N, kFixed>(n, [&](int i, int j) GDLA_LAMBDA_INLINE {
      x[i * N + j] = T(2) * x[i * N + j] - u[i * N + j];  // X (2I - A X) = 2X - X A X
    });
    ++steps;
  }
  store<T, N, kFixed>(x, X, n);
  return steps;
}

// Heavy-ball gradient descent on one problem's loss mean((A X - I)^2):
// buf <- momentum buf + (2/n^2) A^T (A X - I);  X <- X - lr buf, for a fixed number of steps.
template <typename T, int N, bool kFixed>
GDLA_HD void heavy_ball(const T* A, const T* X0, T* X, int n_runtime, T lr, T momentum, int steps) {
  const int n = kFixed ? N : n_runtime;
  T a[N * N], x[N * N], t[N * N], buf[N * N];
  load<T, N, kFixed>(A, a, n);
  load<T, N, kFixed>(X0, x, n);
  GDLA_UNROLL
  for (int i = 0; i < N * N; ++i) buf[i] = T(0);
  const T c = T(2) / static_cast<T>(n * n);
  for (int step = 0; step < steps; ++step) {
    matmul<T, N, kFixed>(a, x, t, n);
    GDLA_UNROLL
    for (int i = 0; i < N; ++i) {
      if (i >= n) break;
      t[i * N + i] -= T(1);
    }
    each_entry<N, kFixed>(n, [&](int i, int j) GDLA_LAMBDA_INLINE {
      T g = T(0);  // (A^T t)[i, j]
      GDLA_UNROLL
      for (int l = 0; l < N; ++l) {
        if (l >= n) break;
        g += a[l * N + i] * t[l * N + j];
      }
      buf[i * N + j] = momentum * buf[i * N + j] + c * g;
    });
    each_entry<N, kFixed>(n, [&](int i, int j) GDLA_LAMBDA_INLINE { x[i * N + j] -= lr * buf[i * N + j]; });
  }
  store<T, N, kFixed>(x, X, n);
}

// The inverse-MSE loss of one square n x n problem (n == N) in registers, the small-size path of
// the fused loss ops. side: 0 right (P = A M), 1 left (P = M A), 2 both (P = (A M + M A)/2).
// Returns sum((P - I)^2); with R = scale (P - I) writes, when not null,
//   gM = A^T R (right), R A^T (left), A^T R + R A^T (both),
//   gA = R M^T (right), M^T R (left), R M^T + M^T R (both).
template <typename T, int N>
GDLA_HD double inverse_mse_small(const T* A, const T* M, int side, T scale, T* gM, T* gA) {
  constexpr bool kFixed = true;
  const int n = N;
  T a[N * N], m[N * N], r[N * N], u[N * N];
  load<T, N, kFixed>(A, a, n);
  load<T, N, kFixed>(M, m, n);
  side_product<T, N, false>(side, a, m, r);
  double sum = 0.0;
  each_entry<N, kFixed>(n, [&](int i, int j) GDLA_LAMBDA_INLINE {
    const T value = r[i * N + j] - (i == j ? T(1) : T(0));
    sum += static_cast<double>(value) * static_cast<double>(value);
    r[i * N + j] = scale * value;
  });
  if (gM != nullptr) {
    if (side == 1) {
      matmul<T, N, kFixed, false, true>(r, a, u, n);  // R A^T
    } else {
      matmul<T, N, kFixed, true>(a, r, u, n);  // A^T R
    }
    if (side == 2) {
      T v[N * N];
      matmul<T, N, kFixed, false, true>(r, a, v, n);
      GDLA_UNROLL
      for (int i = 0; i < N * N; ++i) u[i] += v[i];
    }
    store<T, N, kFixed>(u, gM, n);
  }
  if (gA != nullptr) {
    if (side == 1) {
      matmul<T, N, kFixed, true>(m, r, u, n);  // M^T R
    } else {
      matmul<T, N, kFixed, false, true>(r, m, u, n);  // R M^T
    }
    if (side == 2) {
      T v[N * N];
      matmul<T, N, kFixed, true>(m, r, v, n);
      GDLA_UNROLL
      for (int i = 0; i < N * N; ++i) u[i] += v[i];
    }
    store<T, N, kFixed>(u, gA, n);
  }
  return sum;
}

}  // namespace small
}  // namespace gdla
