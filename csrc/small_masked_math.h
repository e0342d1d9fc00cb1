// One small masked operator in the seed notebook's form, for the whole-run kernels (CPU: a problem
// in local storage; CUDA: one thread): S = Init + Omega * U (n x n, n <= 16), the prediction
// Z_H = act(S act(S ... act(S X))) after H hops (X: n x p, p <= kMaxColumns, H <= kMaxHops), and
// the loss ||Y - Z_H||_F ("frobenius", the seed's) or mean((Y - Z_H)^2) ("mse"), as
// plugins/problems/sparse.py states them (tests compare the two). No torch headers here.
#pragma once

#include "small_limits.h"
#include "small_matrix.h"
#include "small_run_loop.h"

namespace gdla {
namespace small {

// 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 cube.
template <typename T>
GDLA_HD T activate(int kind, T x) {
  switch (kind) {
    case 1: return x > T(0) ? x : T(0);
    case 2: return tanh(x);
    case 3: return T(1) / (T(1) + exp(-x));
    case 4: return x * x * x;
    default: return x;
  }
}

// d act / d x at the pre-activation x whose activation is y.
template <typename T>
GDLA_HD T activate_slope(int kind, T x, T y) {
  switch (kind) {
    case 1: return y > T(0) ? T(1) : T(0);
    case 2: return T(1) - y * y;
    case 3: return y * (T(1) - y);
    case 4: return T(3) * x * x;
    default: return T(1);
  }
}

template <typename T>
struct MaskedHops {
  const T *init, *omega, *X, *Y;  // n x n, n x n, n x p, n x p
  int n, p, hops, activation;
  bool mse;

  // The loss (double) at U and its gradient gU = Omega * dL/dS.
  GDLA_HD double gradient(const T* U, T* gU) const {
    T S[kMaxN * kMaxN], pre[kMaxHops][kMaxN * kMaxColumns], Z[kMaxHops + 1][kMaxN * kMaxColumns];
    for (int a = 0; a < n * n; ++a) S[a] = init[a] + omega[a] * U[a];
    for (int a = 0; a < n * p; ++a) Z[0][a] = X[a];
    for (int h = 0; h < hops; ++h) {
      for (int i = 0; i < n; ++i) {
        for (int c = 0; c < p; ++c) {
          T acc = T(0);
          for (int l = 0; l < n; ++l) acc += S[i * n + l] * Z[h][l * p + c];
          pre[h][i * p + c] = acc;
          Z[h + 1][i * p + c] = activate(activation, acc);
        }
      }
    }
    T D[kMaxN * kMaxColumns];
    double sum = 0.0;
    for (int a = 0; a < n * p; ++a) {
      const T r = Y[a] - Z[hops][a];
      D[a] = r;
      sum += static_cast<double>(r) * static_cast<double>(r);
    }
    double loss;
    T scale;  // dL/dZ_H = scale * R
    if (mse) {
      loss = sum / (static_cast<double>(n) * p);
      scale = static_cast<T>(-2.0 / (static_cast<double>(n) * p));
    } else {
      loss = sqrt(sum);
      scale = loss > 0.0 ? static_cast<T>(-1.0 / loss) : T(0);
    }
    for (int a = 0; a < n * p; ++a) D[a] = scale * D[a];
    T dS[kMaxN * kMaxN];
    for (int a = 0; a < n * n; ++a) dS[a] = T(0);
    for (int h = hops - 1; h >= 0; --h) {
      for (int a = 0; a < n * p; ++a) D[a] = D[a] * activate_slope(activation, pre[h][a], Z[h + 1][a]);
      for (int i = 0; i < n; ++i)
        for (int l = 0; l < n; ++l) {
          T acc = T(0);
          for (int c = 0; c < p; ++c) acc += D[i * p + c] * Z[h][l * p + c];
          dS[i * n + l] += acc;
        }
      if (h > 0) {
        T back[kMaxN * kMaxColumns];
        for (int l = 0; l < n; ++l)
          for (int c = 0; c < p; ++c) {
            T acc = T(0);
            for (int i = 0; i < n; ++i) acc += S[i * n + l] * D[i * p + c];
            back[l * p + c] = acc;
          }
        for (int a = 0; a < n * p; ++a) D[a] = back[a];
      }
    }
    for (int a = 0; a < n * n; ++a) gU[a] = omega[a] * dS[a];
    return loss;
  }
};

// ``steps`` SGD steps (small::SgdRule, small_rules.h) on one MaskedHops problem, rates lrs[0..steps); losses[s] =
// the loss before step s. Stops after a step that diverged. Returns the steps taken.
template <typename T, typename Rule>
GDLA_HD int64_t masked_sgd_run(const MaskedHops<T>& problem, const Rule& rule, T* U, T* buf, const double* lrs,
                               int64_t steps, bool started, double first, double blow_up, double* losses) {
  const int nn = problem.n * problem.n;
  T u[kMaxN * kMaxN], b[kMaxN * kMaxN], g[kMaxN * kMaxN];
  for (int a = 0; a < nn; ++a) u[a] = U[a], b[a] = buf[a];
  const int64_t done = run_loop(
      steps, -1.0, first, blow_up, losses, [&]() GDLA_LAMBDA_INLINE { return problem.gradient(u, g); },
      [&](int64_t step) GDLA_LAMBDA_INLINE {
        rule.apply(u, b, g, nn, static_cast<T>(lrs[step]), started);
        started = true;
      });
  for (int a = 0; a < nn; ++a) U[a] = u[a], buf[a] = b[a];
  return done;
}

}  // namespace small
}  // namespace gdla
