// CPU kernel of inverse_momentum_run: seed 000's momentum on the inverse MSE of a batch of tiny
// square problems, many steps per call, returning the loss of every step. gdla.solve's fused
// path calls it once for a whole run (and with steps=1 for a step-by-step run, so both give the
// same bits). One problem stays in local storage for the whole call; a batch advances step by
// step, problems in parallel, and each step's loss is the sum of the per-problem losses in
// batch order (the same bits at any thread count).
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

template <typename T, int N>
int64_t run_batch(const T* A, T* X, T* buf, int64_t batch, int side, double lr, double momentum, int64_t steps,
                  bool started, double first_loss, double blow_up, double* losses) {
  constexpr int64_t nn = N * N;
  const T scale = static_cast<T>((side == 2 ? 1.0 : 2.0) / static_cast<double>(nn));
  const double inv_count = 1.0 / static_cast<double>(nn);
  const T t_lr = static_cast<T>(lr), t_mu = static_cast<T>(momentum);
  bool is_first = std::isnan(first_loss);
  double first = first_loss;
  if (batch == 1) {  // the whole run in registers
    T a[nn], x[nn], b[nn];
    for (int64_t i = 0; i < nn; ++i) a[i] = A[i], x[i] = X[i], b[i] = buf[i];
    int64_t done = 0;
    while (done < steps) {
      const double loss = small::momentum_step<T, N>(a, x, b, side, scale, t_lr, t_mu, started) * inv_count;
      started = true;
      losses[done++] = loss;
      if (small::diverged(loss, first, blow_up, is_first)) break;
      if (is_first) first = loss, is_first = false;
    }
    for (int64_t i = 0; i < nn; ++i) X[i] = x[i], buf[i] = b[i];
    return done;
  }
  std::vector<double> member(static_cast<size_t>(batch));
  int64_t done = 0;
  while (done < steps) {
#pragma omp parallel for schedule(static) if (batch >= kRunGrain)
    for (int64_t p = 0; p < batch; ++p) {
      T a[nn], x[nn], b[nn];
      for (int64_t i = 0; i < nn; ++i) a[i] = A[p * nn + i], x[i] = X[p * nn + i], b[i] = buf[p * nn + i];
      member[p] = small::momentum_step<T, N>(a, x, b, side, scale, t_lr, t_mu, started) * inv_count;
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
