// Per-problem code for batches of tiny n x n problems, shared by the CPU kernels (one OpenMP
// iteration per problem) and the CUDA kernels (one thread per problem): the Newton-Schulz and
// heavy-ball inverse solvers, and the register-resident path of the fused inverse-MSE loss.
//
// Each problem lives in fixed-size local arrays: with a compile-time N (n <= 8) the loops unroll
// and the arrays stay in registers; n in 9..16 runs the same code with a runtime bound on
// 16 x 16 arrays. No torch headers here, so the CUDA kernel file compiles in seconds.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

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

namespace gdla {
namespace small {

#ifndef __CUDACC__
using std::pow;
using std::exp;
using std::sqrt;  // the float overloads for float problems
using std::tanh;
#endif

// Largest n the kernels accept, and the largest with a fully unrolled specialisation.
constexpr int kMaxN = 16;
constexpr int kMaxUnrolledN = 8;

template <typename T>
GDLA_HD T abs_value(T x) {
  return x < T(0) ? -x : x;
}

// Reads a row-major n x n matrix into local storage with row stride N.
template <typename T, int N, bool kFixed>
GDLA_HD void load(const T* src, T* dst, int n) {
  GDLA_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    GDLA_UNROLL
    for (int j = 0; j < N; ++j) {
      if (j >= n) break;
      dst[i * N + j] = src[i * n + j];
    }
  }
}

template <typename T, int N, bool kFixed>
GDLA_HD void store(const T* src, T* dst, int n) {
  GDLA_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    GDLA_UNROLL
    for (int j = 0; j < N; ++j) {
      if (j >= n) break;
      dst[i * n + j] = src[i * N + j];
    }
  }
}

// c = a b for n x n matrices with row stride N.
template <typename T, int N, bool kFixed>
GDLA_HD void matmul(const T* a, const T* b, T* c, int n) {
  GDLA_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    GDLA_UNROLL
    for (int j = 0; j < N; ++j) {
      if (j >= n) break;
      T acc = T(0);
      GDLA_UNROLL
      for (int l = 0; l < N; ++l) {
        if (l >= n) break;
        acc += a[i * N + l] * b[l * N + j];
      }
      c[i * N + j] = acc;
    }
  }
}

// The classic safe start of Newton-Schulz: X0 = A^T / (||A||_1 ||A||_inf), for which
// ||I - A X0||_2 < 1 whenever A is invertible.
template <typename T, int N, bool kFixed>
GDLA_HD void scaled_transpose(const T* a, T* x, int n) {
  T norm1 = T(0), norm_inf = T(0);
  GDLA_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    T row = T(0), col = T(0);
    GDLA_UNROLL
    for (int j = 0; j < N; ++j) {
      if (j >= n) break;
      row += abs_value(a[i * N + j]);
      col += abs_value(a[j * N + i]);
    }
    norm_inf = row > norm_inf ? row : norm_inf;
    norm1 = col > norm1 ? col : norm1;
  }
  const T scale = T(1) / (norm1 * norm_inf);
  GDLA_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    GDLA_UNROLL
    for (int j = 0; j < N; ++j) {
      if (j >= n) break;
      x[i * N + j] = a[j * N + i] * scale;
    }
  }
}

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
    scaled_transpose<T, N, kFixed>(a, x, n);
  }
  // Compare squared sums: ||R||_F^2 <= tol^2 n avoids a square root per step.
  const double threshold = tol * tol * static_cast<double>(n);
  int steps = 0;
  for (;;) {
    matmul<T, N, kFixed>(a, x, t, n);  // t = A X
    double r2 = 0.0;
    GDLA_UNROLL
    for (int i = 0; i < N; ++i) {
      if (i >= n) break;
      GDLA_UNROLL
      for (int j = 0; j < N; ++j) {
        if (j >= n) break;
        const T r = t[i * N + j] - (i == j ? T(1) : T(0));
        r2 += static_cast<double>(r) * static_cast<double>(r);
      }
    }
    if (r2 <= threshold && (sizeof(T) >= sizeof(double) || residual_squared_double<T, N, kFixed>(a, x, n) <= threshold)) {
      break;
    }
    if (!(r2 < 1e300) || steps >= max_steps) break;
    matmul<T, N, kFixed>(x, t, u, n);  // u = X A X
    GDLA_UNROLL
    for (int i = 0; i < N; ++i) {
      if (i >= n) break;
      GDLA_UNROLL
      for (int j = 0; j < N; ++j) {
        if (j >= n) break;
        x[i * N + j] = T(2) * x[i * N + j] - u[i * N + j];
      }
    }
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
    GDLA_UNROLL
    for (int i = 0; i < N; ++i) {
      if (i >= n) break;
      GDLA_UNROLL
      for (int j = 0; j < N; ++j) {
        if (j >= n) break;
        T g = T(0);
        GDLA_UNROLL
        for (int l = 0; l < N; ++l) {
          if (l >= n) break;
          g += a[l * N + i] * t[l * N + j];
        }
        buf[i * N + j] = momentum * buf[i * N + j] + c * g;
      }
    }
    GDLA_UNROLL
    for (int i = 0; i < N; ++i) {
      if (i >= n) break;
      GDLA_UNROLL
      for (int j = 0; j < N; ++j) {
        if (j >= n) break;
        x[i * N + j] -= lr * buf[i * N + j];
      }
    }
  }
  store<T, N, kFixed>(x, X, n);
}

// c = a^T b (transpose_a) or a b^T (transpose_b) for n x n matrices with row stride N.
template <typename T, int N, bool kFixed, bool kTransposeA>
GDLA_HD void matmul_t(const T* a, const T* b, T* c, int n) {
  GDLA_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    GDLA_UNROLL
    for (int j = 0; j < N; ++j) {
      if (j >= n) break;
      T acc = T(0);
      GDLA_UNROLL
      for (int l = 0; l < N; ++l) {
        if (l >= n) break;
        acc += kTransposeA ? a[l * N + i] * b[l * N + j] : a[i * N + l] * b[j * N + l];
      }
      c[i * N + j] = acc;
    }
  }
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
  if (side == 1) {
    matmul<T, N, kFixed>(m, a, r, n);
  } else {
    matmul<T, N, kFixed>(a, m, r, n);
  }
  if (side == 2) {
    matmul<T, N, kFixed>(m, a, u, n);
    GDLA_UNROLL
    for (int i = 0; i < N * N; ++i) r[i] = T(0.5) * (r[i] + u[i]);
  }
  double sum = 0.0;
  GDLA_UNROLL
  for (int i = 0; i < N; ++i) {
    GDLA_UNROLL
    for (int j = 0; j < N; ++j) {
      const T value = r[i * N + j] - (i == j ? T(1) : T(0));
      sum += static_cast<double>(value) * static_cast<double>(value);
      r[i * N + j] = scale * value;
    }
  }
  if (gM != nullptr) {
    if (side == 1) {
      matmul_t<T, N, kFixed, false>(r, a, u, n);  // R A^T
    } else {
      matmul_t<T, N, kFixed, true>(a, r, u, n);  // A^T R
    }
    if (side == 2) {
      T v[N * N];
      matmul_t<T, N, kFixed, false>(r, a, v, n);
      GDLA_UNROLL
      for (int i = 0; i < N * N; ++i) u[i] += v[i];
    }
    store<T, N, kFixed>(u, gM, n);
  }
  if (gA != nullptr) {
    if (side == 1) {
      matmul_t<T, N, kFixed, true>(m, r, u, n);  // M^T R
    } else {
      matmul_t<T, N, kFixed, false>(r, m, u, n);  // R M^T
    }
    if (side == 2) {
      T v[N * N];
      matmul_t<T, N, kFixed, true>(m, r, v, n);
      GDLA_UNROLL
      for (int i = 0; i < N * N; ++i) u[i] += v[i];
    }
    store<T, N, kFixed>(u, gA, n);
  }
  return sum;
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
    if (side == 1) {
      matmul_split<T, N>(x, a, r);
    } else {
      matmul_split<T, N>(a, x, r);
    }
    if (side == 2) {
      T u[N * N];
      matmul_split<T, N>(x, a, u);
      for (int i = 0; i < N * N; ++i) r[i] = T(0.5) * (r[i] + u[i]);
    }
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

// torch.optim.Adam's update (no weight decay, no amsgrad) on one problem's entries, written as
// torch's single-tensor path orders it: m <- m + (1 - beta1)(g - m); v <- v beta2 + (1 - beta2) g g;
// x <- x - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps), t the 1-based step count.
template <typename T>
struct AdamRule {
  double beta1, beta2;
  T eps;

  GDLA_HD void apply(T* __restrict x, T* __restrict m, T* __restrict v, const T* __restrict g, T scale, int count,
                     double lr, int64_t t) const {
    const double bias1 = 1.0 - pow(beta1, static_cast<double>(t));
    const double bias2 = 1.0 - pow(beta2, static_cast<double>(t));
    const T step_size = static_cast<T>(lr / bias1), root2 = static_cast<T>(sqrt(bias2));
    const T w1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2), w2 = static_cast<T>(1.0 - beta2);
    for (int i = 0; i < count; ++i) {
      const T grad = scale * g[i];
      m[i] = m[i] + w1 * (grad - m[i]);
      v[i] = v[i] * b2 + w2 * grad * grad;
      const T denom = sqrt(v[i]) / root2 + eps;
      x[i] = x[i] - step_size * (m[i] / denom);
    }
  }
};

// Whether a run stops after a step with this loss: not finite, or blown up over the run's first.
GDLA_HD bool diverged(double loss, double first, double blow_up, bool is_first) {
  if (!(loss - loss == 0.0)) return true;  // NaN or +-inf
  const double floor = first > 1e-30 ? first : 1e-30;
  return !is_first && loss > blow_up * floor;
}

// The loop of one problem's whole run of ``steps`` steps. ``pass()`` evaluates the loss at the
// current iterate (keeping what the update needs); ``update(s)`` then takes step s (0-based, of
// this call) from that pass. losses[s] receives step s's loss (the loss where it started); the run
// stops after a step whose loss diverged. With stop_loss >= 0 (a tolerance on the loss, which a
// caller derives from one on the residual) the run also tests where each step leaves the problem,
// with the pass the next step needs anyway: it stops, that step not taken, once the loss at the
// current iterate is <= stop_loss (never before the call's first step), and losses[done] receives
// the loss at the final iterate (NaN after a diverging step), so ``losses`` holds steps + 1 slots.
// Returns the steps taken.
template <typename Pass, typename Update>
GDLA_HD int64_t run_loop(int64_t steps, double stop_loss, double first, double blow_up, double* losses, Pass&& pass,
                         Update&& update) {
  const bool test = stop_loss >= 0.0;
  bool is_first = first != first;  // NaN: this call's first step sets it
  int64_t done = 0;
  if (steps == 0 && !test) return 0;
  for (;;) {
    const double loss = pass();
    if (test && (done == steps || (done > 0 && loss <= stop_loss))) {
      losses[done] = loss;
      break;
    }
    update(done);
    losses[done++] = loss;
    if (diverged(loss, first, blow_up, is_first)) {
      if (test) losses[done] = NAN;
      break;
    }
    if (is_first) first = loss, is_first = false;
    if (!test && done == steps) break;
  }
  return done;
}

// Calls f(std::integral_constant<int, N>) for every size n <= kMaxN (whole-run kernels with n == N).
template <typename F>
inline void dispatch_exact_size(int n, F&& f) {
  switch (n) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 9: f(std::integral_constant<int, 9>{}); break;
    case 10: f(std::integral_constant<int, 10>{}); break;
    case 11: f(std::integral_constant<int, 11>{}); break;
    case 12: f(std::integral_constant<int, 12>{}); break;
    case 13: f(std::integral_constant<int, 13>{}); break;
    case 14: f(std::integral_constant<int, 14>{}); break;
    case 15: f(std::integral_constant<int, 15>{}); break;
    default: f(std::integral_constant<int, 16>{}); break;
  }
}

// Calls f(std::integral_constant<int, N>) for the register-resident size n <= kMaxUnrolledN.
template <typename F>
inline void dispatch_unrolled_size(int n, F&& f) {
  switch (n) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 5: f(std::integral_constant<int, 5>{}); break;
    case 6: f(std::integral_constant<int, 6>{}); break;
    case 7: f(std::integral_constant<int, 7>{}); break;
    default: f(std::integral_constant<int, 8>{}); break;
  }
}

// Calls f(std::integral_constant<int, N>, std::bool_constant<fixed>) for the specialisation
// that serves size n: one per n <= kMaxUnrolledN, one runtime-bounded for the rest.
template <typename F>
inline void dispatch_size(int n, F&& f) {
  switch (n) {
    case 1: f(std::integral_constant<int, 1>{}, std::true_type{}); break;
    case 2: f(std::integral_constant<int, 2>{}, std::true_type{}); break;
    case 3: f(std::integral_constant<int, 3>{}, std::true_type{}); break;
    case 4: f(std::integral_constant<int, 4>{}, std::true_type{}); break;
    case 5: f(std::integral_constant<int, 5>{}, std::true_type{}); break;
    case 6: f(std::integral_constant<int, 6>{}, std::true_type{}); break;
    case 7: f(std::integral_constant<int, 7>{}, std::true_type{}); break;
    case 8: f(std::integral_constant<int, 8>{}, std::true_type{}); break;
    default: f(std::integral_constant<int, kMaxN>{}, std::false_type{}); break;
  }
}

}  // namespace small
}  // namespace gdla
