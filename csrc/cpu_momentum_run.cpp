// CPU kernel of inverse_momentum_run: seed 000's momentum on the inverse MSE of a batch of tiny
// square problems, many steps per call, returning the loss of every step. gdla.solve's fused
// path calls it once for a whole run (and with steps=1 for a step-by-step run, so both give the
// same bits). One problem stays in local storage for the whole call; a batch advances step by
// step, problems in parallel, and each step's loss is the sum of the per-problem losses in
// batch order (the same bits at any thread count).
#include "cpu_lanes.h"
#include "op_args.h"
#include "small_inverse_math.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

namespace gdla {
namespace {

// Problems below which a step runs on one thread.
constexpr int64_t kRunGrain = 256;

// One problem's whole run in local storage; returns the steps taken.
template <typename T, int N>
GDLA_ALWAYS_INLINE int64_t run_one(const T* A, T* X, T* buf, int side, double inv_count, T lr, T momentum,
                                   int64_t steps, bool started, double first, double blow_up, double* losses) {
  constexpr int64_t nn = N * N;
  small::MomentumProblem<T, N> problem;
  problem.init(A, side);
  T x[nn], b[nn];
  for (int64_t i = 0; i < nn; ++i) x[i] = X[i], b[i] = buf[i];
  bool is_first = std::isnan(first);
  int64_t done = 0;
  while (done < steps) {
    const double loss = problem.step(x, b, lr, momentum, started) * inv_count;
    started = true;
    losses[done++] = loss;
    if (small::diverged(loss, first, blow_up, is_first)) break;
    if (is_first) first = loss, is_first = false;
  }
  for (int64_t i = 0; i < nn; ++i) X[i] = x[i], buf[i] = b[i];
  return done;
}

template <typename T, int N>
int64_t run_one_portable(const T* A, T* X, T* buf, int side, double inv_count, T lr, T momentum, int64_t steps,
                         bool started, double first, double blow_up, double* losses) {
  return run_one<T, N>(A, X, buf, side, inv_count, lr, momentum, steps, started, first, blow_up, losses);
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GDLA_RUN_X86_DISPATCH 1
// The same loop compiled for AVX2 (picked at run time: the default build stays portable). The
// instruction set changes the vector width, never the arithmetic: no FMA contraction (ISO C++),
// so both versions give the same bits.
template <typename T, int N>
__attribute__((target("arch=x86-64-v3"))) int64_t run_one_avx2(const T* A, T* X, T* buf, int side,
                                                                double inv_count, T lr, T momentum, int64_t steps,
                                                                bool started, double first, double blow_up,
                                                                double* losses) {
  return run_one<T, N>(A, X, buf, side, inv_count, lr, momentum, steps, started, first, blow_up, losses);
}

bool has_avx2() {
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return supported;
}
#endif

template <typename T, int N>
int64_t run_batch(const T* A, T* X, T* buf, int64_t batch, int side, double lr, double momentum, int64_t steps,
                  bool started, double first_loss, double blow_up, double* losses) {
  constexpr int64_t nn = N * N;
  const double inv_count = 1.0 / static_cast<double>(nn);
  const T t_lr = static_cast<T>(lr), t_mu = static_cast<T>(momentum);
  bool is_first = std::isnan(first_loss);
  double first = first_loss;
  if (batch == 1) {  // the whole run in registers
#ifdef GDLA_RUN_X86_DISPATCH
    if (has_avx2()) {
      return run_one_avx2<T, N>(A, X, buf, side, inv_count, t_lr, t_mu, steps, started, first, blow_up, losses);
    }
#endif
    return run_one_portable<T, N>(A, X, buf, side, inv_count, t_lr, t_mu, steps, started, first, blow_up, losses);
  }
  std::vector<double> member(static_cast<size_t>(batch));
  int64_t done = 0;
  while (done < steps) {
#pragma omp parallel for schedule(static) if (batch >= kRunGrain)
    for (int64_t p = 0; p < batch; ++p) {
      small::MomentumProblem<T, N> problem;
      problem.init(A + p * nn, side);
      T x[nn], b[nn];
      for (int64_t i = 0; i < nn; ++i) x[i] = X[p * nn + i], b[i] = buf[p * nn + i];
      member[p] = problem.step(x, b, t_lr, t_mu, started) * inv_count;
      for (int64_t i = 0; i < nn; ++i) X[p * nn + i] = x[i], buf[p * nn + i] = b[i];
    }
    started = true;
    double loss = 0.0;
    for (int64_t p = 0; p < batch; ++p) loss += member[p];
    losses[done++] = loss;
    if (small::diverged(loss, first, blow_up, is_first)) break;
    if (is_first) first = loss, is_first = false;
  }
  return done;
}

at::Tensor inverse_momentum_run_cpu(const at::Tensor& A, at::Tensor& X, at::Tensor& buf, c10::string_view side,
                                    double lr, double momentum, int64_t steps, bool started, double first_loss,
                                    double blow_up) {
  const int64_t n = check_momentum_run_args(A, X, buf, lr, momentum, steps, blow_up);
  const int code = momentum_run_side(side);
  const int64_t batch = A.numel() / (n * n);
  at::Tensor losses = at::empty({steps}, A.options().dtype(at::kDouble));
  int64_t done = 0;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_inverse_momentum_run_cpu", [&] {
    small::dispatch_unrolled_size(static_cast<int>(n), [&](auto size) {
      done = run_batch<scalar_t, decltype(size)::value>(A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(),
                                                        buf.data_ptr<scalar_t>(), batch, code, lr, momentum, steps,
                                                        started, first_loss, blow_up, losses.data_ptr<double>());
    });
  });
  return losses.narrow(0, 0, done);
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CPU, m) {
  m.impl("inverse_momentum_run", &inverse_momentum_run_cpu);
}

}  // namespace gdla
