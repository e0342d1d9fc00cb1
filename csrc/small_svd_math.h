// One small SVD problem in the seed notebook's penalty form, for the whole-run kernels (CPU: a
// problem in local storage; CUDA: one thread). M is m x n, the unknowns U (m x k), s (k), V (n x k),
// all row-major, m, n <= kMaxN:
//   loss = mean((U diag(s^2) V^T - M)^2) + wu mean((U^T U - I)^2) + wv mean((V^T V - I)^2),
// and the svd problem's projection, the sign fix: V[:, i] <- -V[:, i] where
//   c_i = u_i^T (M - sum_{j != i} s_j^2 u_j v_j^T) v_i < 0
// (plugins/problems/svd.py states both; tests compare them with it). No torch headers here.
#pragma once

#include "small_limits.h"
#include "small_matrix.h"
#include "small_rules.h"
#include "small_run_loop.h"

namespace gdla {
namespace small {

template <typename T>
struct SvdPenalty {
  const T* M;  // m x n
  int m, n, k;
  T wu, wv;

  // The loss (double) at (U, s, V) and its gradients.
  GDLA_HD double gradient(const T* U, const T* s, const T* V, T* gU, T* gs, T* gV) const {
    T S[kMaxN], FV[kMaxN * kMaxN], FtU[kMaxN * kMaxN];
    for (int j = 0; j < k; ++j) S[j] = s[j] * s[j];
    for (int a = 0; a < m * k; ++a) FV[a] = T(0);
    for (int a = 0; a < n * k; ++a) FtU[a] = T(0);
    double fit = 0.0;
    for (int i = 0; i < m; ++i) {
      for (int l = 0; l < n; ++l) {
        T f = T(0);
        for (int j = 0; j < k; ++j) f += U[i * k + j] * S[j] * V[l * k + j];
        f = f - M[i * n + l];
        fit += static_cast<double>(f) * static_cast<double>(f);
        for (int j = 0; j < k; ++j) {
          FV[i * k + j] += f * V[l * k + j];
          FtU[l * k + j] += f * U[i * k + j];
        }
      }
    }
    const T c = static_cast<T>(2.0 / (static_cast<double>(m) * n));
    const double per_gram = 1.0 / (static_cast<double>(k) * k);
    const T cu = static_cast<T>(4.0 * per_gram) * wu, cv = static_cast<T>(4.0 * per_gram) * wv;
    const double pu = penalty(U, m, cu, gU), pv = penalty(V, n, cv, gV);
    for (int i = 0; i < m; ++i)
      for (int j = 0; j < k; ++j) gU[i * k + j] += c * FV[i * k + j] * S[j];
    for (int l = 0; l < n; ++l)
      for (int j = 0; j < k; ++j) gV[l * k + j] += c * FtU[l * k + j] * S[j];
    for (int j = 0; j < k; ++j) {
      T dot = T(0);
      for (int i = 0; i < m; ++i) dot += U[i * k + j] * FV[i * k + j];
      gs[j] = T(2) * s[j] * c * dot;
    }
    return fit / (static_cast<double>(m) * n) + static_cast<double>(wu) * pu * per_gram +
           static_cast<double>(wv) * pv * per_gram;
  }

  // sum((F^T F - I)^2) for F (rows x k); g = scale F (F^T F - I).
  GDLA_HD double penalty(const T* F, int rows, T scale, T* g) const {
    T G[kMaxN * kMaxN];
    double sum = 0.0;
    for (int a = 0; a < k; ++a) {
      for (int b = 0; b < k; ++b) {
        T dot = T(0);
        for (int i = 0; i < rows; ++i) dot += F[i * k + a] * F[i * k + b];
        const T value = dot - (a == b ? T(1) : T(0));
        G[a * k + b] = value;
        sum += static_cast<double>(value) * static_cast<double>(value);
      }
    }
    for (int i = 0; i < rows; ++i) {
      for (int b = 0; b < k; ++b) {
        T acc = T(0);
        for (int a = 0; a < k; ++a) acc += F[i * k + a] * G[a * k + b];
        g[i * k + b] = scale * acc;
      }
    }
    return sum;
  }

  // The sign fix (see the top of this file), in place on V.
  GDLA_HD void sign_fix(const T* U, const T* s, T* V) const {
    T gu[kMaxN * kMaxN], gv[kMaxN * kMaxN];
    for (int a = 0; a < k; ++a) {
      for (int b = 0; b < k; ++b) {
        T du = T(0), dv = T(0);
        for (int i = 0; i < m; ++i) du += U[i * k + a] * U[i * k + b];
        for (int l = 0; l < n; ++l) dv += V[l * k + a] * V[l * k + b];
        gu[a * k + b] = du, gv[a * k + b] = dv;
      }
    }
    for (int a = 0; a < k; ++a) {
      T own = T(0);
      for (int i = 0; i < m; ++i) {
        T mv = T(0);
        for (int l = 0; l < n; ++l) mv += M[i * n + l] * V[l * k + a];
        own += U[i * k + a] * mv;
      }
      T fitted = T(0);
      for (int j = 0; j < k; ++j) fitted += gu[a * k + j] * (s[j] * s[j]) * gv[j * k + a];
      const T corr = own - fitted + s[a] * s[a] * gu[a * k + a] * gv[a * k + a];
      if (corr < T(0))
        for (int l = 0; l < n; ++l) V[l * k + a] = -V[l * k + a];
    }
  }
};

// ``steps`` SGD steps on one SvdPenalty problem (rates lrs[0..steps)), the sign fix after each
// when asked; losses[s] = the loss before step s. Stops after a step that diverged. Returns the
// steps taken. U, s, V and the buffers are read and written in place.
template <typename T>
GDLA_HD int64_t svd_sgd_run(const SvdPenalty<T>& problem, const SgdRule<T>& rule, T* U, T* s, T* V, T* bu, T* bs,
                            T* bv, const double* lrs, int64_t steps, bool started, bool sign_fix, double first,
                            double blow_up, double* losses) {
  const int m = problem.m, n = problem.n, k = problem.k;
  T u[kMaxN * kMaxN], v[kMaxN * kMaxN], sv[kMaxN], gu[kMaxN * kMaxN], gv[kMaxN * kMaxN], gs[kMaxN];
  T mu[kMaxN * kMaxN], mv[kMaxN * kMaxN], ms[kMaxN];
  for (int a = 0; a < m * k; ++a) u[a] = U[a], mu[a] = bu[a];
  for (int a = 0; a < n * k; ++a) v[a] = V[a], mv[a] = bv[a];
  for (int a = 0; a < k; ++a) sv[a] = s[a], ms[a] = bs[a];
  const int64_t done = run_loop(
      steps, -1.0, first, blow_up, losses, [&]() GDLA_LAMBDA_INLINE { return problem.gradient(u, sv, v, gu, gs, gv); },
      [&](int64_t step) GDLA_LAMBDA_INLINE {
        const T lr = static_cast<T>(lrs[step]);
        rule.apply(u, mu, gu, m * k, lr, started);
        rule.apply(sv, ms, gs, k, lr, started);
        rule.apply(v, mv, gv, n * k, lr, started);
        if (sign_fix) problem.sign_fix(u, sv, v);
        started = true;
      });
  for (int a = 0; a < m * k; ++a) U[a] = u[a], bu[a] = mu[a];
  for (int a = 0; a < n * k; ++a) V[a] = v[a], bv[a] = mv[a];
  for (int a = 0; a < k; ++a) s[a] = sv[a], bs[a] = ms[a];
  return done;
}

}  // namespace small
}  // namespace gdla
