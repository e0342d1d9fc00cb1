// Batched tiny-problem CUDA kernels: one thread per n x n problem, in registers
// (small_inverse_math.h, the same per-problem code as the CPU): the Newton-Schulz and heavy-ball
// inverse solvers, each iterated until its own stop, the residual norms, and the small path of the
// inverse-MSE loss.
#include "../small_dispatch.h"
#include "../small_inverse_math.h"
#include "../small_momentum_math.h"
#include "launch.h"

namespace gdla {
namespace cuda {
namespace {

constexpr int kProblemThreads = 128;

template <typename T, int N, bool kFixed>
__global__ void newton_schulz_kernel(const T* A, const T* X0, T* X, int64_t* steps, int64_t batch, int n,
                                     int max_steps, double tol) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const int64_t offset = b * n * n;
  steps[b] = small::newton_schulz<T, N, kFixed>(A + offset, X0 != nullptr ? X0 + offset : nullptr, X + offset, n,
                                                max_steps, tol);
}

template <typename T, int N, bool kFixed>
__global__ void heavy_ball_kernel(const T* A, const T* X0, T* X, int64_t batch, int n, T lr, T momentum, int steps) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const int64_t offset = b * n * n;
  small::heavy_ball<T, N, kFixed>(A + offset, X0 + offset, X + offset, n, lr, momentum, steps);
}

template <typename T, int N, bool kFixed>
__global__ void residuals_kernel(const T* A, const T* X, T* out, int64_t batch, int n, int side) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const int64_t offset = b * n * n;
  T a[N * N], x[N * N];
  small::load<T, N, kFixed>(A + offset, a, n);
  small::load<T, N, kFixed>(X + offset, x, n);
  out[b] = static_cast<T>(sqrt(small::residual_squared_double<T, N, kFixed>(a, x, n, side)));
}

template <typename T, int N>
__global__ void inverse_mse_small_kernel(const T* A, const T* M, int side, T store_scale, const T* grad_scale, T* gM,
                                         T* gA, double* sums, int64_t batch) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  const T scale = grad_scale != nullptr ? store_scale * *grad_scale : store_scale;
  const int64_t offset = b * N * N;
  sums[b] = small::inverse_mse_small<T, N>(A + offset, M + offset, side, scale,
                                           gM != nullptr ? gM + offset : nullptr, gA != nullptr ? gA + offset : nullptr);
}

template <typename T, int N>
__global__ void momentum_step_kernel(const T* A, T* X, T* buf, int side, T lr, T momentum, bool started,
                                     double* losses, int64_t batch) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  constexpr int nn = N * N;
  small::MomentumProblem<T, N> problem;
  problem.init(A + b * nn, side);
  T x[nn], v[nn];
  for (int i = 0; i < nn; ++i) x[i] = X[b * nn + i], v[i] = buf[b * nn + i];
  losses[b] = problem.step(x, v, lr, momentum, started) / static_cast<double>(nn);
  for (int i = 0; i < nn; ++i) X[b * nn + i] = x[i], buf[b * nn + i] = v[i];
}

unsigned problem_blocks(int64_t batch) {
  return static_cast<unsigned>((batch + kProblemThreads - 1) / kProblemThreads);
}

}  // namespace

template <typename T>
cudaError_t launch_newton_schulz(const T* A, const T* X0, T* X, int64_t* steps, int64_t batch, int n, int max_steps,
                                 double tol, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  small::dispatch_size(n, [&](auto size, auto fixed) {
    newton_schulz_kernel<T, decltype(size)::value, decltype(fixed)::value>
        <<<problem_blocks(batch), kProblemThreads, 0, stream>>>(A, X0, X, steps, batch, n, max_steps, tol);
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_residuals(const T* A, const T* X, T* out, int64_t batch, int n, int side, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  small::dispatch_size(n, [&](auto size, auto fixed) {
    residuals_kernel<T, decltype(size)::value, decltype(fixed)::value>
        <<<problem_blocks(batch), kProblemThreads, 0, stream>>>(A, X, out, batch, n, side);
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_heavy_ball(const T* A, const T* X0, T* X, int64_t batch, int n, double lr, double momentum,
                              int steps, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  small::dispatch_size(n, [&](auto size, auto fixed) {
    heavy_ball_kernel<T, decltype(size)::value, decltype(fixed)::value>
        <<<problem_blocks(batch), kProblemThreads, 0, stream>>>(A, X0, X, batch, n, static_cast<T>(lr),
                                                                static_cast<T>(momentum), steps);
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_inverse_mse_small(const T* A, const T* M, int side, int n, double store_scale, const T* grad_scale,
                                     T* gM, T* gA, double* sums, int64_t batch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  small::dispatch_unrolled_size(n, [&](auto size) {
    inverse_mse_small_kernel<T, decltype(size)::value><<<problem_blocks(batch), kProblemThreads, 0, stream>>>(
        A, M, side, static_cast<T>(store_scale), grad_scale, gM, gA, sums, batch);
  });
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_momentum_step(const T* A, T* X, T* buf, int n, int side, double lr, double momentum, bool started,
                                 double* losses, int64_t batch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  small::dispatch_unrolled_size(n, [&](auto size) {
    momentum_step_kernel<T, decltype(size)::value><<<problem_blocks(batch), kProblemThreads, 0, stream>>>(
        A, X, buf, side, static_cast<T>(lr), static_cast<T>(momentum), started, losses, batch);
  });
  return cudaGetLastError();
}

template cudaError_t launch_momentum_step<float>(const float*, float*, float*, int, int, double, double, bool,
                                                 double*, int64_t, cudaStream_t);
template cudaError_t launch_momentum_step<double>(const double*, double*, double*, int, int, double, double, bool,
                                                  double*, int64_t, cudaStream_t);
template cudaError_t launch_inverse_mse_small<float>(const float*, const float*, int, int, double, const float*,
                                                     float*, float*, double*, int64_t, cudaStream_t);
template cudaError_t launch_inverse_mse_small<double>(const double*, const double*, int, int, double, const double*,
                                                      double*, double*, double*, int64_t, cudaStream_t);
template cudaError_t launch_newton_schulz<float>(const float*, const float*, float*, int64_t*, int64_t, int, int,
                                                 double, cudaStream_t);
template cudaError_t launch_newton_schulz<double>(const double*, const double*, double*, int64_t*, int64_t, int, int,
                                                  double, cudaStream_t);
template cudaError_t launch_residuals<float>(const float*, const float*, float*, int64_t, int, int, cudaStream_t);
template cudaError_t launch_residuals<double>(const double*, const double*, double*, int64_t, int, int,
                                              cudaStream_t);
template cudaError_t launch_heavy_ball<float>(const float*, const float*, float*, int64_t, int, double, double, int,
                                              cudaStream_t);
template cudaError_t launch_heavy_ball<double>(const double*, const double*, double*, int64_t, int, double, double,
                                               int, cudaStream_t);

}  // namespace cuda
}  // namespace gdla
