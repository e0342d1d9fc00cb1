// The inverse MSE of one tiny problem in the form the whole-run kernels iterate (n == N): the
// Gram matrix kept for the problem's whole run, so a gradient is one product on the step-to-step
// dependency chain. Shared by the CPU kernels (cpu_momentum_run.cpp, cpu_adam_run.cpp) and the
// CUDA ones (one thread per problem). No torch headers here.
#pragma once

#include "small_matrix.h"

namespace gdla {
namespace small {

// What a momentum run on one problem keeps for its whole run (n == N): A, and for one side the
// Gram matrix H (A^T A for 'right', A A^T for 'left') and A^T, so the gradient of mean((P - I)^2)
// is scale (H X - A^T) or scale (X H - A^T): one product on the step-to-step dependency chain.
template <typename T, int N>
struct MomentumProblem {
  T a[N * N], h[N * N], at[N * N];
  int side;
  T scale;

  GDLA_HD void init(const T* A, int side_code) {
    side = side_code;
    scale = static_cast<T>((side == 2 ? 1.0 : 2.0) / static_cast<double>(N * N));
    for (int i = 0; i < N * N; ++i) a[i] = A[i];
    for (int i = 0; i < N; ++i)
      for (int j = 0; j < N; ++j) at[i * N + j] = a[j * N + i];
    if (side == 0) matmul_split<T, N>(at, a, h);  // A^T A
    if (side == 1) matmul_split<T, N>(a, at, h);  // A A^T
    if (side == 2)
      for (int i = 0; i < N * N; ++i) h[i] = T(0);  // unused: the both-sided gradient needs R
  }

  // One step of seed 000's momentum: returns sum((P(X) - I)^2) at the X it started from (double;
  // the caller divides by n^2), then g = d mean((P - I)^2) / dX, buf = started ? momentum buf + g : g,
  // X = X - buf lr. The update rounds as the Python path writes it: (momentum buf) + g, then X - (buf lr).
  GDLA_HD double step(T* __restrict x, T* __restrict buf, T lr, T momentum, bool started) const {
    T g[N * N];
    const double sum = gradient(x, g);
    update(x, buf, g, lr, momentum, started);
    return sum;
  }

  // The update half of step(), from g as gradient() left it.
  GDLA_HD void update(T* __restrict x, T* __restrict buf, const T* __restrict g, T lr, T momentum,
                      bool started) const {
    for (int i = 0; i < N * N; ++i) {
      const T grad = scale * g[i];
      buf[i] = started ? momentum * buf[i] + grad : grad;
      x[i] = x[i] - buf[i] * lr;
    }
  }

  // sum((P(X) - I)^2) at x (double), and g = the gradient of mean((P - I)^2) divided by ``scale``.
  GDLA_HD double gradient(const T* __restrict x, T* __restrict g) const {
    T r[N * N];
    side_product<T, N, true>(side, a, x, r);
    double rows[N];  // one partial sum a row, then the rows in order: short dependency chains
    for (int i = 0; i < N; ++i) {
      double row = 0.0;
      for (int j = 0; j < N; ++j) {
        const T value = r[i * N + j] - (i == j ? T(1) : T(0));
        row += static_cast<double>(value) * static_cast<double>(value);
        r[i * N + j] = value;
      }
      rows[i] = row;
    }
    double sum = 0.0;
    for (int i = 0; i < N; ++i) sum += rows[i];
    if (side == 0) {
      matmul_split<T, N>(h, x, g);  // A^T A X
      for (int i = 0; i < N * N; ++i) g[i] = g[i] - at[i];
    } else if (side == 1) {
      matmul_split<T, N>(x, h, g);  // X A A^T
      for (int i = 0; i < N * N; ++i) g[i] = g[i] - at[i];
    } else {  // A^T R + R A^T
      T v[N * N];
      matmul_split<T, N>(at, r, g);
      matmul_split<T, N>(r, at, v);
      for (int i = 0; i < N * N; ++i) g[i] += v[i];
    }
    return sum;
  }
};

}  // namespace small
}  // namespace gdla
