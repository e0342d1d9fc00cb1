// CPU kernels of the batched tiny-inverse solvers: OpenMP over the batch, each problem iterated
// to its own stop in local storage, never returning to Python in between. Newton-Schulz for
// n <= 8 runs one problem per SIMD lane (cpu_lanes.h); n in 9..16 and the heavy-ball solver run
// one problem at a time (small_inverse_math.h, shared with the CUDA kernel).
#include "cpu_isa.h"
#include "cpu_lanes.h"
#include "cpu_parallel.h"
#include "op_args.h"
#include "small_dispatch.h"
#include "small_inverse_math.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

namespace gdla {
namespace {

// Hides a vector's value from the optimiser, so an expression is not contracted across it (a product kept apart
// from the sum it feeds: no fused multiply-add).
#if defined(__x86_64__) || defined(__i386__)
#define GDLA_OPAQUE(value) __asm__("" : "+x"(value))
#elif defined(__aarch64__)
#define GDLA_OPAQUE(value) __asm__("" : "+w"(value))
#else
#define GDLA_OPAQUE(value) __asm__("" : "+m"(value))
#endif

// Problems below which the batch runs on one thread (each takes about a microsecond).
constexpr int64_t kProblemGrain = 64;

// Problems per OpenMP work item: a multiple of every group width (at most 16 lanes).
constexpr int64_t kProblemsPerTask = 256;

// Solves problems [begin, end) group by group with Bytes-wide vectors.
template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void newton_schulz_range(const T* A, const T* X0, T* X, int64_t* steps, int64_t begin,
                                            int64_t end, int max_steps, double tol) {
  constexpr int L = lanes::Vec<T, Bytes>::kLanes;
  constexpr int64_t nn = N * N;
  for (int64_t b = begin; b < end; b += L) {
    const int count = static_cast<int>(end - b < L ? end - b : L);
    lanes::newton_schulz_group<T, N, Bytes>(A + b * nn, X0 ? X0 + b * nn : nullptr, X + b * nn, steps + b, count,
                                            max_steps, tol);
  }
}

// The same loop compiled for three instruction sets; simd_bytes() picks one at run time, so the
// binary stays portable (plain x86-64 or ARM) and still uses AVX2/AVX-512 where present.
template <typename T, int N>
void newton_schulz_range_16(const T* A, const T* X0, T* X, int64_t* steps, int64_t begin, int64_t end,
                            int max_steps, double tol) {
  newton_schulz_range<T, N, 16>(A, X0, X, steps, begin, end, max_steps, tol);
}

#ifdef GDLA_RUN_X86_DISPATCH
template <typename T, int N>
__attribute__((target("arch=x86-64-v3"))) void newton_schulz_range_32(const T* A, const T* X0, T* X,
                                                                      int64_t* steps, int64_t begin, int64_t end,
                                                                      int max_steps, double tol) {
  newton_schulz_range<T, N, 32>(A, X0, X, steps, begin, end, max_steps, tol);
}

template <typename T, int N>
__attribute__((target("arch=x86-64-v4"))) void newton_schulz_range_64(const T* A, const T* X0, T* X,
                                                                      int64_t* steps, int64_t begin, int64_t end,
                                                                      int max_steps, double tol) {
  newton_schulz_range<T, N, 64>(A, X0, X, steps, begin, end, max_steps, tol);
}
#endif

template <typename T, int N, bool kFixed>
void newton_schulz_batch(const T* A, const T* X0, T* X, int64_t* steps, int64_t batch, int n, int max_steps,
                         double tol) {
  const int64_t nn = static_cast<int64_t>(n) * n;
  if constexpr (kFixed) {
    auto range = &newton_schulz_range_16<T, N>;
#ifdef GDLA_RUN_X86_DISPATCH
    const int bytes = simd_bytes();
    if (bytes == 64) range = &newton_schulz_range_64<T, N>;
    if (bytes == 32) range = &newton_schulz_range_32<T, N>;
#endif
    const int64_t tasks = (batch + kProblemsPerTask - 1) / kProblemsPerTask;
#pragma omp parallel for schedule(static) if (batch >= kProblemGrain)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t begin = task * kProblemsPerTask;
      range(A, X0, X, steps, begin, std::min(batch, begin + kProblemsPerTask), max_steps, tol);
    }
    return;
  }
#pragma omp parallel for schedule(static) if (batch >= kProblemGrain)
  for (int64_t b = 0; b < batch; ++b) {
    steps[b] = small::newton_schulz<T, N, kFixed>(A + b * nn, X0 ? X0 + b * nn : nullptr, X + b * nn, n, max_steps,
                                                  tol);
  }
}

// ||P(X) - I||_F of problems [begin, end), one after another: each row of P - I accumulated in
// double, a vector of N doubles for N = 4 and 8 (written with vector types: GCC leaves the plain
// loops scalar), then its squares summed in order. (residuals_lanes gives the same bits, W problems at a time.)
template <typename T, int N, bool kFixed>
GDLA_ALWAYS_INLINE void residuals_range(const T* __restrict A, const T* __restrict X, T* __restrict out,
                                        int64_t begin, int64_t end, int n_runtime, int side) {
  const int n = kFixed ? N : n_runtime;
  const int64_t nn = static_cast<int64_t>(n) * n;
  const T* __restrict lefts = side == 1 ? X : A;
  const T* __restrict rights = side == 1 ? A : X;
  for (int64_t b = begin; b < end; ++b) {
    const T* __restrict left = lefts + b * nn;
    const T* __restrict right = rights + b * nn;
    double total = 0.0;
    if constexpr (kFixed && (N == 4 || N == 8)) {  // rows as vectors of N doubles
      using VT = typename lanes::Vec<T, N * sizeof(T)>::V;
      using VD = typename lanes::Vec<double, N * sizeof(double)>::V;
      VD rows_of_right[N];
      for (int l = 0; l < N; ++l) {
        VT row;
        __builtin_memcpy(&row, right + l * N, sizeof(row));
        rows_of_right[l] = __builtin_convertvector(row, VD);
      }
      for (int i = 0; i < N; ++i) {
        VD row = VD{};
        row[i] = -1.0;
        for (int l = 0; l < N; ++l) row += static_cast<double>(left[i * N + l]) * rows_of_right[l];
        const VD squares = row * row;
        for (int j = 0; j < N; ++j) total += squares[j];
      }
      out[b] = static_cast<T>(std::sqrt(total));
      continue;
    }
    for (int i = 0; i < n; ++i) {
      double row[N];
      for (int j = 0; j < N; ++j) row[j] = i == j ? -1.0 : 0.0;
      for (int l = 0; l < n; ++l) {
        const double scale = static_cast<double>(left[i * n + l]);
        for (int j = 0; j < N; ++j) {
          if (kFixed || j < n) row[j] += scale * static_cast<double>(right[l * n + j]);
        }
      }
      for (int j = 0; j < n; ++j) total += row[j] * row[j];
    }
    out[b] = static_cast<T>(std::sqrt(total));
  }
}

// residuals_range for N = 4 and 8, W problems side by side (one a lane of a vector of W doubles): every lane does
// what residuals_range does for its problem, operation for operation (each entry of P - I from -1 or 0 by one
// multiply-add a term, in the same order, its square rounded before it is added, the squares added in the same
// order), so the bits are the same; the serial sum of squares is shared by W problems instead of paid by each.
template <typename T, int N, int W>
GDLA_ALWAYS_INLINE void residuals_lanes(const T* __restrict A, const T* __restrict X, T* __restrict out,
                                        int64_t begin, int64_t end, int side) {
  using VD = typename lanes::Vec<double, W * sizeof(double)>::V;
  constexpr int64_t nn = N * N;
  const T* __restrict lefts = side == 1 ? X : A;
  const T* __restrict rights = side == 1 ? A : X;
  int64_t b = begin;
  for (; b + W <= end; b += W) {
    VD right[N][N];
    for (int e = 0; e < N * N; ++e) {
      for (int w = 0; w < W; ++w) right[e / N][e % N][w] = static_cast<double>(rights[(b + w) * nn + e]);
    }
    VD total = VD{};
    for (int i = 0; i < N; ++i) {
      VD left[N], row[N];
      for (int l = 0; l < N; ++l) {
        for (int w = 0; w < W; ++w) left[l][w] = static_cast<double>(lefts[(b + w) * nn + i * N + l]);
      }
      for (int j = 0; j < N; ++j) row[j] = VD{} - (i == j ? 1.0 : 0.0);
      for (int l = 0; l < N; ++l) {
        for (int j = 0; j < N; ++j) row[j] += left[l] * right[l][j];
      }
      for (int j = 0; j < N; ++j) {
        VD square = row[j] * row[j];
        GDLA_OPAQUE(square);  // rounded on its own, as residuals_range's: never fused into the sum
        total += square;
      }
    }
    for (int w = 0; w < W; ++w) out[b + w] = static_cast<T>(std::sqrt(total[w]));
  }
  if (b < end) residuals_range<T, N, true>(A, X, out, b, end, N, side);
}

template <typename T, int N, bool kFixed>
void residuals_range_portable(const T* A, const T* X, T* out, int64_t begin, int64_t end, int n, int side) {
  if constexpr (kFixed && (N == 4 || N == 8)) {
    residuals_lanes<T, N, 2>(A, X, out, begin, end, side);
  } else {
    residuals_range<T, N, kFixed>(A, X, out, begin, end, n, side);
  }
}

#ifdef GDLA_RUN_X86_DISPATCH
template <typename T, int N, bool kFixed>
GDLA_TARGET_AVX2 void residuals_range_avx2(const T* A, const T* X, T* out, int64_t begin, int64_t end, int n,
                                           int side) {
  if constexpr (kFixed && (N == 4 || N == 8)) {
    residuals_lanes<T, N, 4>(A, X, out, begin, end, side);
  } else {
    residuals_range<T, N, kFixed>(A, X, out, begin, end, n, side);
  }
}
#endif

template <typename T, int N, bool kFixed>
void residuals_batch(const T* A, const T* X, T* out, int64_t batch, int n, int side) {
  auto range = &residuals_range_portable<T, N, kFixed>;
#ifdef GDLA_RUN_X86_DISPATCH
  if (has_avx2()) range = &residuals_range_avx2<T, N, kFixed>;
#endif
  const int64_t tasks = (batch + kProblemsPerTask - 1) / kProblemsPerTask;
#pragma omp parallel for schedule(static) if (batch >= 4 * kProblemsPerTask)
  for (int64_t task = 0; task < tasks; ++task) {
    const int64_t begin = task * kProblemsPerTask;
    range(A, X, out, begin, std::min(batch, begin + kProblemsPerTask), n, side);
  }
}

template <typename T, int N, bool kFixed>
void heavy_ball_batch(const T* A, const T* X0, T* X, int64_t batch, int n, T lr, T momentum, int steps) {
  const int64_t nn = static_cast<int64_t>(n) * n;
#pragma omp parallel for schedule(static) if (batch >= kProblemGrain)
  for (int64_t b = 0; b < batch; ++b) {
    small::heavy_ball<T, N, kFixed>(A + b * nn, X0 + b * nn, X + b * nn, n, lr, momentum, steps);
  }
}

std::tuple<at::Tensor, at::Tensor> newton_schulz_cpu(const at::Tensor& A, const std::optional<at::Tensor>& X0,
                                                     int64_t max_steps, double tol) {
  const int n = check_newton_schulz_args(A, X0, max_steps, tol);
  const at::Tensor ac = A.contiguous();
  const at::Tensor x0c = X0.has_value() ? X0->contiguous() : at::Tensor();
  at::Tensor X = at::empty(A.sizes(), A.options());
  at::Tensor steps = at::empty(batch_dims(A, 2), A.options().dtype(at::kLong));
  const int64_t batch = batch_count(A, 2);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_newton_schulz_cpu", [&] {
    const scalar_t* x0 = x0c.defined() ? x0c.data_ptr<scalar_t>() : nullptr;
    small::dispatch_size(n, [&](auto size, auto fixed) {
      newton_schulz_batch<scalar_t, decltype(size)::value, decltype(fixed)::value>(
          ac.data_ptr<scalar_t>(), x0, X.data_ptr<scalar_t>(), steps.data_ptr<int64_t>(), batch, n,
          static_cast<int>(max_steps), tol);
    });
  });
  return {X, steps};
}

at::Tensor heavy_ball_cpu(const at::Tensor& A, const at::Tensor& X0, double lr, double momentum, int64_t steps) {
  const int n = check_heavy_ball_args(A, X0, lr, momentum, steps);
  const at::Tensor ac = A.contiguous(), x0c = X0.contiguous();
  at::Tensor X = at::empty(A.sizes(), A.options());
  const int64_t batch = batch_count(A, 2);
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_heavy_ball_cpu", [&] {
    small::dispatch_size(n, [&](auto size, auto fixed) {
      heavy_ball_batch<scalar_t, decltype(size)::value, decltype(fixed)::value>(
          ac.data_ptr<scalar_t>(), x0c.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), batch, n,
          static_cast<scalar_t>(lr), static_cast<scalar_t>(momentum), static_cast<int>(steps));
    });
  });
  return X;
}

at::Tensor residuals_cpu(const at::Tensor& A, const at::Tensor& X, c10::string_view side) {
  const int n = check_small_residuals_args(A, X);
  const int code = momentum_run_side(side, "small_inverse_residuals", /*both=*/false);
  const at::Tensor ac = A.contiguous(), xc = X.contiguous();
  at::Tensor out = at::empty(batch_dims(A, 2), A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_small_inverse_residuals_cpu", [&] {
    small::dispatch_size(n, [&](auto size, auto fixed) {
      residuals_batch<scalar_t, decltype(size)::value, decltype(fixed)::value>(
          ac.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), batch_count(A, 2), n, code);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CPU, m) {
  m.impl("small_inverse_residuals", &residuals_cpu);
  m.impl("small_inverse_newton_schulz", &newton_schulz_cpu);
  m.impl("small_inverse_momentum", &heavy_ball_cpu);
}

}  // namespace gdla
