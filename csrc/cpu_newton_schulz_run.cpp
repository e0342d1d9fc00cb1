// CPU kernel of small_inverse_newton_schulz_run: a gdla.solve run of Newton-Schulz, X <- 2X - X A X, on a batch of
// tiny square problems, many steps per call. Every member takes every step (the solve's rule: the batch stops
// together, once its worst residual passes), so a step needs the whole batch's loss and worst residual: the batch
// advances one step a pass, its members side by side in SIMD lanes (cpu_lanes.h's layout, one problem a lane), and
// each pass also evaluates, in double, ||A X - I||_F^2 of every member at the X it starts from: the loss of the step
// it takes and the residual after the previous one (the residual test inside the kernel). The next X goes to a
// second buffer, so a run that stops keeps the X the test passed at. The loss sums the members' in batch order
// (fixed blocks, then block by block): the same bits at any thread count, and a whole run equals the same kernel
// called one step at a time.
#include "cpu_isa.h"
#include "cpu_lanes.h"
#include "op_args.h"
#include "small_dispatch.h"
#include "small_run_loop.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <type_traits>
#include <vector>

namespace gdla {
namespace {

// Steps a round takes at most: the per-group figures a round keeps are groups x (kRound + 1) pairs of doubles.
constexpr int64_t kRound = 64;

// Groups per OpenMP work item.
constexpr int64_t kGroupsPerTask = 8;

// A float32 problem's residual below this (where rounding of a float32 A X would show) is evaluated in double.
constexpr double kExactBelow = 1e-2;

// r2 = ||A X - I||_F^2 of every lane, evaluated in double (a float32 lane's entries convert exactly); written through
// a reference, as a vector returned by value would change the ABI. (A widened once a group, outside the step loop,
// measured slower: the 16 wide vectors it keeps crowd the step's registers.)
template <typename T, int N, int Bytes, typename VD>
GDLA_ALWAYS_INLINE void residual_squared_double(const typename lanes::Vec<T, Bytes>::V (&a)[N][N],
                                                const typename lanes::Vec<T, Bytes>::V (&x)[N][N], VD& r2) {
  VD xd[N][N];
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) xd[i][j] = __builtin_convertvector(x[i][j], VD);
  }
  r2 = VD{};
  for (int i = 0; i < N; ++i) {
    VD row[N];
    for (int l = 0; l < N; ++l) row[l] = __builtin_convertvector(a[i][l], VD);
    for (int j = 0; j < N; ++j) {
      VD acc = VD{} - (i == j ? 1.0 : 0.0);
      for (int l = 0; l < N; ++l) acc += row[l] * xd[l][j];
      r2 += acc * acc;
    }
  }
}

// One group of problems side by side (count <= the lane count), row-major one after the other in X, taken from the
// iterate after step `from` of the round to the one after step `until` (or, with `tol` > 0, to the first one after
// `from` whose worst residual is <= tol and that is not before `reach`, where other groups already stand: the batch
// cannot stop sooner, so the group goes straight there instead of being taken on by phase 2), X read and written in
// place (with `safe`, the round's first iterate is the safe start of A, small_safe_start.h, instead of X). Each
// iterate's figures go to loss[s] (the lanes' ||A X - I||_F^2 / n^2 summed in lane order) and worst[s] (their largest
// ||A X - I||_F^2, NaN if one is). Returns the step it stopped after, raising `reach` to it. Full: a group of L
// problems (every group but the last), compiled apart: a count known to be L spares the partial group's paths and
// keeps more of the group in registers.
template <typename T, int N, int Bytes, bool Full>
GDLA_ALWAYS_INLINE int64_t group_run(const T* A, T* X, int count, bool safe, int64_t from, int64_t until, double tol,
                                     std::atomic<int64_t>& reach, double* loss, double* worst) {
  using V = typename lanes::Vec<T, Bytes>::V;
  using M = typename lanes::Vec<T, Bytes>::M;
  constexpr int L = lanes::Vec<T, Bytes>::kLanes;
  if constexpr (Full) count = L;
  using VD = typename lanes::Vec<double, Bytes * sizeof(double) / sizeof(T)>::V;
  constexpr double kPerEntry = 1.0 / static_cast<double>(N * N);
  const double root_n = std::sqrt(static_cast<double>(N));
  V a[N][N], x[N][N];
  lanes::load_group<T, N, Bytes>(A, safe ? nullptr : X, count, a, x);
  if (safe) lanes::safe_start_group<T, N, Bytes>(a, x);  // newton_schulz_group's start
  M real;  // the group's problems (not its padding lanes)
  for (int w = 0; w < L; ++w) real[w] = w < count ? -1 : 0;
  int64_t s = from;
  for (;; ++s) {
    V t[N][N], r2;  // A X, and ||A X - I||_F^2 per lane in T
    lanes::product_residual<T, N, Bytes>(a, x, t, r2);
    VD figure = __builtin_convertvector(r2, VD);
    if constexpr (sizeof(T) < sizeof(double)) {
      // float32 lanes with a residual below kExactBelow (or one out of float's range) take it in double instead
      const M exact = real & ~((r2 > T(kExactBelow * kExactBelow * N)) & (r2 < T(1e30)));
      if (lanes::any_lane<L>(exact)) {
        VD precise;
        residual_squared_double<T, N, Bytes>(a, x, precise);
        for (int w = 0; w < L; ++w) {
          if (exact[w] != 0) figure[w] = precise[w];
        }
      }
    }
    double total = 0.0, top = 0.0;
    bool nan = false;
    for (int w = 0; w < count; ++w) {
      const double value = figure[w];
      total += value * kPerEntry;
      nan |= value != value;
      top = value > top ? value : top;
    }
    loss[s] = total;
    worst[s] = nan ? NAN : top;
    if (s == until || (tol > 0.0 && s > from && std::sqrt(top) / root_n <= tol && !nan &&
                       s >= reach.load(std::memory_order_relaxed))) {
      break;
    }
    for (int i = 0; i < N; ++i) {  // X (2I - A X) = 2X - X t row by row (newton_schulz_group's update)
      V u[N];
      for (int j = 0; j < N; ++j) {
        V acc = x[i][0] * t[0][j];
        for (int l = 1; l < N; ++l) acc += x[i][l] * t[l][j];
        u[j] = acc;
      }
      for (int j = 0; j < N; ++j) x[i][j] = x[i][j] + x[i][j] - u[j];
    }
  }
  lanes::store_group<T, N, Bytes>(x, count, X);
  int64_t seen = reach.load(std::memory_order_relaxed);
  while (seen < s && !reach.compare_exchange_weak(seen, s, std::memory_order_relaxed)) {
  }
  return s;
}

// A phase of a round over every group: group g from its own step (begin[g]; -1: skip it) to `until`, or with `tol` to
// its own first passing iterate not before the furthest any group stopped at so far (`reach`, shared by the threads;
// where each group stops depends on the schedule, its figures do not); stopped[g] receives where it stopped.
struct Phase {
  const int64_t* begin;
  int64_t until;
  double tol;
  bool safe;
  std::atomic<int64_t>* reach;
};

template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void phase_range(const T* A, T* X, int64_t batch, int64_t g0, int64_t g1, const Phase& phase,
                                    int64_t stride, double* loss, double* worst, int64_t* stopped) {
  constexpr int L = lanes::Vec<T, Bytes>::kLanes;
  constexpr int64_t nn = N * N;
  for (int64_t g = g0; g < g1; ++g) {
    if (phase.begin[g] < 0) continue;
    const int64_t b = g * L;
    const int count = static_cast<int>(batch - b < L ? batch - b : L);
    const auto run = [&](auto full) GDLA_LAMBDA_INLINE {
      return group_run<T, N, Bytes, decltype(full)::value>(A + b * nn, X + b * nn, count, phase.safe, phase.begin[g],
                                                           phase.until, phase.tol, *phase.reach, loss + g * stride,
                                                           worst + g * stride);
    };
    stopped[g] = count == L ? run(std::true_type{}) : run(std::false_type{});
  }
}

template <typename T, int N>
void phase_16(const T* A, T* X, int64_t batch, int64_t g0, int64_t g1, const Phase& phase, int64_t stride,
              double* loss, double* worst, int64_t* stopped) {
  phase_range<T, N, 16>(A, X, batch, g0, g1, phase, stride, loss, worst, stopped);
}

#ifdef GDLA_RUN_X86_DISPATCH
template <typename T, int N>
__attribute__((target("arch=x86-64-v3"))) void phase_32(const T* A, T* X, int64_t batch, int64_t g0, int64_t g1,
                                                        const Phase& phase, int64_t stride, double* loss,
                                                        double* worst, int64_t* stopped) {
  phase_range<T, N, 32>(A, X, batch, g0, g1, phase, stride, loss, worst, stopped);
}

template <typename T, int N>
__attribute__((target("arch=x86-64-v4"))) void phase_64(const T* A, T* X, int64_t batch, int64_t g0, int64_t g1,
                                                        const Phase& phase, int64_t stride, double* loss,
                                                        double* worst, int64_t* stopped) {
  phase_range<T, N, 64>(A, X, batch, g0, g1, phase, stride, loss, worst, stopped);
}
#endif

// The run (see the file comment), in rounds of at most kRound steps. A round lets every group run in registers to
// its own first passing iterate, or on to the furthest one another group stopped at before it (phase 1), takes the
// groups that stopped sooner on to the latest of those (phase 2), then reads the batch's figures step by step: a
// step's loss (the groups' sums added in group order) and the worst residual after it. A stop where not every group
// stands (a step that diverged) runs the round again from its first iterate to there; a last iterate where some group
// no longer passes goes on (phase 1 from there).
template <typename T, int N, int Bytes>
double run_rounds(const T* A, T* X, int64_t batch, int64_t steps, double tol, double first, double blow_up,
                  bool safe, std::vector<double>& losses, std::vector<double>& residuals) {
  constexpr int L = lanes::Vec<T, Bytes>::kLanes;
  auto phase_fn = &phase_16<T, N>;
#ifdef GDLA_RUN_X86_DISPATCH
  if (Bytes == 64) phase_fn = &phase_64<T, N>;
  if (Bytes == 32) phase_fn = &phase_32<T, N>;
#endif
  const int64_t nn = static_cast<int64_t>(N) * N;
  const int64_t groups = (batch + L - 1) / L;
  const int64_t tasks = (groups + kGroupsPerTask - 1) / kGroupsPerTask;
  const int64_t stride = std::min(kRound, steps) + 1;
  // scratch kept from call to call (a fresh allocation of this size costs page faults: more than a short run), never
  // zeroed: every entry read was written first
  static thread_local std::vector<double> loss_store, worst_store;
  static thread_local std::vector<int64_t> begin, stopped;
  static thread_local std::vector<T> start;  // the round's first iterate, where X holds it
  if (loss_store.size() < static_cast<size_t>(groups * stride)) {
    loss_store.resize(static_cast<size_t>(groups * stride));
    worst_store.resize(static_cast<size_t>(groups * stride));
  }
  if (begin.size() < static_cast<size_t>(groups)) {
    begin.resize(static_cast<size_t>(groups));
    stopped.resize(static_cast<size_t>(groups));
  }
  // (pointers taken here: inside the parallel region a thread_local name would be the worker thread's own)
  double* loss = loss_store.data();
  double* worst = worst_store.data();
  int64_t* stops = stopped.data();
  const double root_n = std::sqrt(static_cast<double>(N));
  bool is_first = first != first;
  int64_t done = 0;
  auto run_phase = [&](const Phase& phase) {
#pragma omp parallel for schedule(static) if (tasks > 1 && batch * nn >= 4096)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t g0 = task * kGroupsPerTask;
      phase_fn(A, X, batch, g0, std::min(groups, g0 + kGroupsPerTask), phase, stride, loss, worst, stops);
    }
  };
  for (;;) {  // one round
    const int64_t until = std::min(kRound, steps - done);
    const bool round_safe = safe && done == 0;
    if (!round_safe) {
      if (start.size() < static_cast<size_t>(batch * nn)) start.resize(static_cast<size_t>(batch * nn));
      std::memcpy(start.data(), X, sizeof(T) * batch * nn);
    }
    std::fill(begin.begin(), begin.begin() + groups, 0);
    int64_t from = 0, reach = 0;
    double final_loss = 0.0;
    int64_t taken = -1;  // the round's steps once it stops
    bool stop_run = false;
    for (;;) {
      std::atomic<int64_t> furthest{from};
      run_phase({begin.data(), until, tol, round_safe && from == 0, &furthest});  // phase 1
      reach = from;
      for (int64_t g = 0; g < groups; ++g) reach = std::max(reach, stops[g]);
      for (int64_t g = 0; g < groups; ++g) begin[g] = stops[g] < reach ? stops[g] : -1;
      if (reach > from) run_phase({begin.data(), reach, 0.0, false, &furthest});  // phase 2
      for (int64_t s = from; s < reach; ++s) {  // step s of the round, its loss and the residual after it
        double step_loss = 0.0, top = 0.0;
        bool nan = false;
        for (int64_t g = 0; g < groups; ++g) {
          step_loss += loss[g * stride + s];
          const double value = worst[g * stride + s + 1];
          nan |= value != value;
          top = value > top ? value : top;
        }
        const double residual = nan ? NAN : std::sqrt(top) / root_n;
        losses.push_back(step_loss);
        residuals.push_back(residual);
        const bool diverged = small::diverged(step_loss, first, blow_up, is_first);
        if (is_first) first = step_loss, is_first = false;
        if (diverged || (tol > 0.0 && residual <= tol)) {
          taken = s + 1;
          stop_run = true;
          break;
        }
      }
      if (taken < 0 && reach == until) taken = until;
      if (taken >= 0) break;
      from = reach;  // some group no longer passes at `reach`: every group goes on from there
      std::fill(begin.begin(), begin.begin() + groups, from);
    }
    for (int64_t g = 0; g < groups; ++g) final_loss += loss[g * stride + taken];
    if (taken < reach) {  // stopped short of where the groups stand: again from the round's first iterate
      if (!round_safe) std::memcpy(X, start.data(), sizeof(T) * batch * nn);
      std::fill(begin.begin(), begin.begin() + groups, 0);
      std::atomic<int64_t> ignored{0};  // (tol 0: no group waits for another)
      run_phase({begin.data(), taken, 0.0, round_safe, &ignored});
    }
    done += taken;
    if (stop_run || done >= steps || taken == 0) return final_loss;
  }
}

template <typename T, int N>
double run(const T* A, T* X, int64_t batch, int64_t steps, double tol, double first, double blow_up, bool safe,
           std::vector<double>& losses, std::vector<double>& residuals) {
#ifdef GDLA_RUN_X86_DISPATCH
  const int bytes = simd_bytes();
  if (bytes == 64) return run_rounds<T, N, 64>(A, X, batch, steps, tol, first, blow_up, safe, losses, residuals);
  if (bytes == 32) return run_rounds<T, N, 32>(A, X, batch, steps, tol, first, blow_up, safe, losses, residuals);
#endif
  return run_rounds<T, N, 16>(A, X, batch, steps, tol, first, blow_up, safe, losses, residuals);
}

at::Tensor newton_schulz_run_cpu(const at::Tensor& A, at::Tensor& X, int64_t steps, double tol, double first_loss,
                                 double blow_up, bool safe_start) {
  const char* op = "small_inverse_newton_schulz_run";
  const int64_t n = check_unrolled_square(A, op);
  check_like(X, "X", A, "A", op);
  check_shape(X, "X", A.sizes(), "to match A", op);
  TORCH_CHECK_VALUE(A.is_contiguous() && X.is_contiguous(), op, ": A and X must be contiguous (X is updated in place)");
  TORCH_CHECK_VALUE(steps >= 0, op, ": steps must be an integer >= 0; received ", steps);
  check_finite_number(tol, "tol", op, /*positive=*/false);
  check_blow_up(op, blow_up);
  const int64_t batch = batch_count(A, 2);
  std::vector<double> losses, residuals;
  double final_loss = 0.0;
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_newton_schulz_run_cpu", [&] {
    small::dispatch_unrolled_size(static_cast<int>(n), [&](auto size) {
      final_loss = run<scalar_t, decltype(size)::value>(A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), batch, steps,
                                                        tol, first_loss, blow_up, safe_start, losses,
                                                        residuals);
    });
  });
  const int64_t taken = static_cast<int64_t>(losses.size());
  at::Tensor out = at::empty({2 * taken + 1}, A.options().dtype(at::kDouble).device(at::kCPU));
  double* data = out.data_ptr<double>();
  std::copy(losses.begin(), losses.end(), data);
  std::copy(residuals.begin(), residuals.end(), data + taken);
  data[2 * taken] = final_loss;
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CPU, m) { m.impl("small_inverse_newton_schulz_run", &newton_schulz_run_cpu); }

}  // namespace gdla
