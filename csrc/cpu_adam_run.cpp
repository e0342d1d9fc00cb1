// CPU kernel of inverse_adam_run: torch.optim.Adam on the inverse MSE of tiny square problems
// (n <= 16), many steps per call with a learning rate per step (a schedule), returning each
// step's loss. gdla.solve's fused path calls it once for a whole run and with one step for a
// step-by-step run, so both give the same bits. Problems run one after another, each for the
// whole chunk of steps in local storage; a step's loss sums the problems' losses in batch order.
#include "cpu_isa.h"
#include "cpu_lanes.h"
#include "cpu_run_chunks.h"
#include "op_args.h"
#include "small_dispatch.h"
#include "small_momentum_math.h"
#include "small_rules.h"
#include "small_run_loop.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace gdla {
namespace {

// Steps per chunk of a batch: its losses are checked for divergence once the chunk is done.
constexpr int64_t kAdamChunk = 4096;

struct AdamArgs {
  int side;
  double beta1, beta2, eps;
  int64_t step0;  // Adam steps taken before this call
};

// One problem's run of ``steps`` steps from step ``offset`` of this call (``lrs`` from there on),
// through small::run_loop (which also takes stop_loss). A batch's member (member = true) runs all
// ``steps`` untested (the batch's stop rule is run_in_chunks') and adds its loss to losses[s]
// (add = true) or stores it. Returns the steps taken.
template <typename T, int N>
GDLA_ALWAYS_INLINE int64_t run_single(const T* A, T* X, T* M, T* V, const double* lrs, const AdamArgs& args,
                                      int64_t offset, int64_t steps, double first, double blow_up, double stop_loss,
                                      double* losses, bool member = false, bool add = false) {
  constexpr int nn = N * N;
  small::MomentumProblem<T, N> problem;
  problem.init(A, args.side);
  const small::AdamRule<T> rule{args.beta1, args.beta2, static_cast<T>(args.eps)};
  const double inv_count = 1.0 / static_cast<double>(nn);
  T x[nn], m[nn], v[nn], g[nn];
  for (int i = 0; i < nn; ++i) x[i] = X[i], m[i] = M[i], v[i] = V[i];
  int64_t done = 0;
  if (member) {
    for (; done < steps; ++done) {
      const double loss = problem.gradient(x, g) * inv_count;
      losses[done] = add ? losses[done] + loss : loss;
      rule.apply(x, m, v, g, problem.scale, nn, lrs[done], args.step0 + offset + done + 1);
    }
  } else {
    done = small::run_loop(
        steps, stop_loss, first, blow_up, losses,
        [&]() GDLA_LAMBDA_INLINE { return problem.gradient(x, g) * inv_count; },
        [&](int64_t s) GDLA_LAMBDA_INLINE {
          rule.apply(x, m, v, g, problem.scale, nn, lrs[s], args.step0 + offset + s + 1);
        });
  }
  for (int i = 0; i < nn; ++i) X[i] = x[i], M[i] = m[i], V[i] = v[i];
  return done;
}

template <typename T, int N>
GDLA_ALWAYS_INLINE int64_t run_batch(const T* A, T* X, T* M, T* V, int64_t batch, const double* lrs, int64_t steps,
                                     const AdamArgs& args, double first, double blow_up, double stop_loss,
                                     double* losses) {
  constexpr int64_t nn = N * N;
  if (batch == 1) return run_single<T, N>(A, X, M, V, lrs, args, 0, steps, first, blow_up, stop_loss, losses);
  return run_in_chunks<T>({X, M, V}, batch * nn, steps, kAdamChunk, first, blow_up, losses,
                          [&](int64_t done, int64_t count, double* out) {
                            for (int64_t p = 0; p < batch; ++p) {
                              run_single<T, N>(A + p * nn, X + p * nn, M + p * nn, V + p * nn, lrs + done, args,
                                               done, count, first, blow_up, -1.0, out, true, p > 0);
                            }
                          });
}

template <typename T, int N>
int64_t run_batch_portable(const T* A, T* X, T* M, T* V, int64_t batch, const double* lrs, int64_t steps,
                           const AdamArgs& args, double first, double blow_up, double stop_loss, double* losses) {
  return run_batch<T, N>(A, X, M, V, batch, lrs, steps, args, first, blow_up, stop_loss, losses);
}

#ifdef GDLA_RUN_X86_DISPATCH
template <typename T, int N>
GDLA_TARGET_AVX2 int64_t run_batch_avx2(const T* A, T* X, T* M, T* V, int64_t batch, const double* lrs,
                                        int64_t steps, const AdamArgs& args, double first, double blow_up,
                                        double stop_loss, double* losses) {
  return run_batch<T, N>(A, X, M, V, batch, lrs, steps, args, first, blow_up, stop_loss, losses);
}
#endif

at::Tensor inverse_adam_run_cpu(const at::Tensor& A, at::Tensor& X, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                                c10::string_view side, const at::Tensor& lrs, double beta1, double beta2, double eps,
                                int64_t step0, double first_loss, double blow_up, double stop_loss) {
  const int n = check_adam_run_args(A, X, exp_avg, exp_avg_sq, lrs, beta1, beta2, eps, step0, blow_up);
  const AdamArgs args{momentum_run_side(side, "inverse_adam_run"), beta1, beta2, eps, step0};
  const int64_t steps = lrs.numel(), batch = A.numel() / (static_cast<int64_t>(n) * n);
  const int64_t extra = check_stop_loss("inverse_adam_run", stop_loss, batch);
  at::Tensor losses = at::empty({steps + extra}, A.options().dtype(at::kDouble));
  const at::Tensor rates = lrs.contiguous();
  int64_t done = 0;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_inverse_adam_run_cpu", [&] {
    small::dispatch_exact_size(n, [&](auto size) {
      constexpr int N = decltype(size)::value;
      auto run = &run_batch_portable<scalar_t, N>;
#ifdef GDLA_RUN_X86_DISPATCH
      if (has_avx2()) run = &run_batch_avx2<scalar_t, N>;
#endif
      done = run(
          A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), exp_avg.data_ptr<scalar_t>(),
          exp_avg_sq.data_ptr<scalar_t>(), batch, rates.data_ptr<double>(), steps, args, first_loss, blow_up,
          stop_loss, losses.data_ptr<double>());
    });
  });
  return losses.narrow(0, 0, done + extra);
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CPU, m) {
  m.impl("inverse_adam_run", &inverse_adam_run_cpu);
}

}  // namespace gdla
