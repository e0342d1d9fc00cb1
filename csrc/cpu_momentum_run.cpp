// CPU kernel of inverse_momentum_run: seed 000's momentum on the inverse MSE of a batch of tiny
// square problems, many steps per call, returning the loss of every step. gdla.solve's fused
// path calls it once for a whole run (and with steps=1 for a step-by-step run, so both give the
// same bits). One problem stays in local storage for the whole call; a batch advances step by
// step, problems in parallel, and each step's loss is the sum of the per-problem losses in
// batch order (the same bits at any thread count).
#include "cpu_isa.h"
#include "cpu_lanes.h"
#include "cpu_momentum_4x4.h"
#include "cpu_momentum_lanes.h"
#include "cpu_run_chunks.h"
#include "op_args.h"
#include "small_dispatch.h"
#include "small_momentum_math.h"
#include "small_run_loop.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

namespace gdla {
namespace {

// Problems below which a step runs on one thread.
constexpr int64_t kRunGrain = 256;

// One problem's whole run in local storage (small::run_loop); returns the steps taken.
template <typename T, int N>
GDLA_ALWAYS_INLINE int64_t run_one(const T* A, T* X, T* buf, int side, double inv_count, T lr, T momentum,
                                   int64_t steps, bool started, double first, double blow_up, double stop_loss,
                                   double* losses) {
  constexpr int64_t nn = N * N;
  small::MomentumProblem<T, N> problem;
  problem.init(A, side);
  T x[nn], b[nn], g[nn];
  for (int64_t i = 0; i < nn; ++i) x[i] = X[i], b[i] = buf[i];
  const int64_t done = small::run_loop(
      steps, stop_loss, first, blow_up, losses,
      [&]() GDLA_LAMBDA_INLINE { return problem.gradient(x, g) * inv_count; },
      [&](int64_t) GDLA_LAMBDA_INLINE {
        problem.update(x, b, g, lr, momentum, started);
        started = true;
      });
  for (int64_t i = 0; i < nn; ++i) X[i] = x[i], buf[i] = b[i];
  return done;
}

template <typename T, int N>
int64_t run_one_portable(const T* A, T* X, T* buf, int side, double inv_count, T lr, T momentum, int64_t steps,
                         bool started, double first, double blow_up, double stop_loss, double* losses) {
  return run_one<T, N>(A, X, buf, side, inv_count, lr, momentum, steps, started, first, blow_up, stop_loss, losses);
}

#ifdef GDLA_RUN_X86_DISPATCH
template <typename T, int N>
GDLA_TARGET_AVX2 int64_t run_one_avx2(const T* A, T* X, T* buf, int side, double inv_count, T lr, T momentum,
                                      int64_t steps, bool started, double first, double blow_up, double stop_loss,
                                      double* losses) {
  return run_one<T, N>(A, X, buf, side, inv_count, lr, momentum, steps, started, first, blow_up, stop_loss, losses);
}

// Seed 000's own size, 4x4 float32 on one side: two 8-float vectors a matrix (cpu_momentum_4x4.h).
GDLA_TARGET_AVX2 int64_t run_4x4_avx2(const float* A, float* X, float* buf, int side, double inv_count, float lr,
                                      float momentum, int64_t steps, bool started, double first, double blow_up,
                                      double stop_loss, double* losses) {
  return momentum4::run(A, X, buf, side, inv_count, lr, momentum, steps, started, first, blow_up, stop_loss, losses);
}
#endif

// Problems per OpenMP task of a batch (a multiple of every lane count), and steps per chunk: a
// chunk's per-task loss partials (tasks x steps doubles) bound the scratch memory.
constexpr int64_t kRunTask = 256;
constexpr int64_t kRunChunk = 4096;

// Runs problems [begin, end) for ``steps`` steps, lane group by lane group, into ``partial[s]``
// (the sum over those problems, in problem order, of each step's loss).
// The AVX2 build runs lanes::momentum_group_avx2 (cpu_momentum_lanes.h: every rounding written
// out), the others lanes::momentum_group (cpu_lanes.h).
template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void run_task(const T* A, T* X, T* buf, int64_t begin, int64_t end, int side, T lr, T momentum,
                                 bool started, int64_t steps, double* partial, double* scratch) {
  constexpr int L = lanes::Vec<T, Bytes>::kLanes;
  constexpr int64_t nn = N * N;
  for (int64_t p = begin; p < end; p += L) {
    const int count = static_cast<int>(end - p < L ? end - p : L);
    double* target = p == begin ? partial : scratch;
#ifdef GDLA_RUN_X86_DISPATCH
    if constexpr (Bytes == 32) {
      lanes::momentum_group_avx2<T, N>(A + p * nn, X + p * nn, buf + p * nn, count, side, lr, momentum, started,
                                       steps, target);
    } else
#endif
    {
      lanes::momentum_group<T, N, Bytes>(A + p * nn, X + p * nn, buf + p * nn, count, side, lr, momentum, started,
                                         steps, target);
    }
    if (p != begin) {
      for (int64_t s = 0; s < steps; ++s) partial[s] += scratch[s];
    }
  }
}

template <typename T, int N>
void run_task_16(const T* A, T* X, T* buf, int64_t begin, int64_t end, int side, T lr, T momentum, bool started,
                 int64_t steps, double* partial, double* scratch) {
  run_task<T, N, 16>(A, X, buf, begin, end, side, lr, momentum, started, steps, partial, scratch);
}

#ifdef GDLA_RUN_X86_DISPATCH
template <typename T, int N>
__attribute__((target("arch=x86-64-v3"))) void run_task_32(const T* A, T* X, T* buf, int64_t begin, int64_t end,
                                                            int side, T lr, T momentum, bool started, int64_t steps,
                                                            double* partial, double* scratch) {
  run_task<T, N, 32>(A, X, buf, begin, end, side, lr, momentum, started, steps, partial, scratch);
}

template <typename T, int N>
__attribute__((target("arch=x86-64-v4"))) void run_task_64(const T* A, T* X, T* buf, int64_t begin, int64_t end,
                                                            int side, T lr, T momentum, bool started, int64_t steps,
                                                            double* partial, double* scratch) {
  run_task<T, N, 64>(A, X, buf, begin, end, side, lr, momentum, started, steps, partial, scratch);
}
#endif

// Every problem of the batch for ``steps`` steps; losses[s] = the tasks' partials summed in task order.
template <typename T, int N>
void run_all(const T* A, T* X, T* buf, int64_t batch, int side, T lr, T momentum, bool started, int64_t steps,
             double* losses) {
  auto task_fn = &run_task_16<T, N>;
#ifdef GDLA_RUN_X86_DISPATCH
  const int bytes = simd_bytes();
  if (bytes == 64) task_fn = &run_task_64<T, N>;
  if (bytes == 32) task_fn = &run_task_32<T, N>;
#endif
  const int64_t tasks = (batch + kRunTask - 1) / kRunTask;
  std::vector<double> partial(static_cast<size_t>(tasks * steps));
#pragma omp parallel if (batch >= kRunGrain)
  {
    std::vector<double> scratch(static_cast<size_t>(steps));
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tasks; ++t) {
      const int64_t begin = t * kRunTask, end = std::min(batch, begin + kRunTask);
      task_fn(A, X, buf, begin, end, side, lr, momentum, started, steps, partial.data() + t * steps,
              scratch.data());
    }
  }
  for (int64_t s = 0; s < steps; ++s) {
    double loss = 0.0;
    for (int64_t t = 0; t < tasks; ++t) loss += partial[t * steps + s];
    losses[s] = loss;
  }
}

template <typename T, int N>
int64_t run_batch(const T* A, T* X, T* buf, int64_t batch, int side, double lr, double momentum, int64_t steps,
                  bool started, double first_loss, double blow_up, double stop_loss, double* losses) {
  constexpr int64_t nn = N * N;
  const double inv_count = 1.0 / static_cast<double>(nn);
  const T t_lr = static_cast<T>(lr), t_mu = static_cast<T>(momentum);
  const double first = first_loss;
  if (batch == 1) {  // the whole run in registers
#ifdef GDLA_RUN_X86_DISPATCH
    if constexpr (std::is_same_v<T, float> && N == 4) {
      if (has_avx2() && side != 2) {
        return run_4x4_avx2(A, X, buf, side, inv_count, t_lr, t_mu, steps, started, first, blow_up, stop_loss, losses);
      }
    }
    if (has_avx2()) {
      return run_one_avx2<T, N>(A, X, buf, side, inv_count, t_lr, t_mu, steps, started, first, blow_up, stop_loss, losses);
    }
#endif
    return run_one_portable<T, N>(A, X, buf, side, inv_count, t_lr, t_mu, steps, started, first, blow_up, stop_loss, losses);
  }
  const int64_t entries = batch * nn;
  return run_in_chunks<T>({X, buf}, entries, steps, kRunChunk, first, blow_up, losses,
                          [&](int64_t done, int64_t count, double* out) {
                            run_all<T, N>(A, X, buf, batch, side, t_lr, t_mu, started || done > 0, count, out);
                          });
}

at::Tensor inverse_momentum_run_cpu(const at::Tensor& A, at::Tensor& X, at::Tensor& buf, c10::string_view side,
                                    double lr, double momentum, int64_t steps, bool started, double first_loss,
                                    double blow_up, double stop_loss) {
  const int64_t n = check_momentum_run_args(A, X, buf, lr, momentum, steps, blow_up);
  const int code = momentum_run_side(side);
  const int64_t batch = A.numel() / (n * n);
  const int64_t extra = check_stop_loss("inverse_momentum_run", stop_loss, batch);
  at::Tensor losses = at::empty({steps + extra}, A.options().dtype(at::kDouble));
  int64_t done = 0;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_inverse_momentum_run_cpu", [&] {
    small::dispatch_unrolled_size(static_cast<int>(n), [&](auto size) {
      done = run_batch<scalar_t, decltype(size)::value>(A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(),
                                                        buf.data_ptr<scalar_t>(), batch, code, lr, momentum, steps,
                                                        started, first_loss, blow_up, stop_loss,
                                                        losses.data_ptr<double>());
    });
  });
  return losses.narrow(0, 0, done + extra);
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CPU, m) {
  m.impl("inverse_momentum_run", &inverse_momentum_run_cpu);
}

}  // namespace gdla
