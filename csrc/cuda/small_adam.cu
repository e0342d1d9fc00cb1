// CUDA kernel of inverse_adam_run's steps: one thread per n x n problem (n <= 16), one launch a
// step (register_cuda.cu checks each step's loss on the host). In its own file: its sixteen sizes
// of small::MomentumProblem are the slowest device code to compile, and compile in parallel here.
#include "../small_dispatch.h"
#include "../small_momentum_math.h"
#include "../small_rules.h"
#include "launch.h"

namespace gdla {
namespace cuda {
namespace {

constexpr int kAdamThreads = 128;

template <typename T, int N>
__global__ void adam_step_kernel(const T* A, T* X, T* M, T* V, int side, double beta1, double beta2, T eps, double lr,
                                 int64_t t, double* losses, int64_t batch) {
  const int64_t b = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (b >= batch) return;
  constexpr int nn = N * N;
  small::MomentumProblem<T, N> problem;
  problem.init(A + b * nn, side);
  const small::AdamRule<T> rule{beta1, beta2, eps};
  T g[nn];
  losses[b] = problem.gradient(X + b * nn, g) / static_cast<double>(nn);
  rule.apply(X + b * nn, M + b * nn, V + b * nn, g, problem.scale, nn, lr, t);
}

}  // namespace

template <typename T>
cudaError_t launch_adam_step(const T* A, T* X, T* M, T* V, int n, int side, double beta1, double beta2, double eps,
                             double lr, int64_t t, double* losses, int64_t batch, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  const unsigned blocks = static_cast<unsigned>((batch + kAdamThreads - 1) / kAdamThreads);
  small::dispatch_exact_size(n, [&](auto size) {
    adam_step_kernel<T, decltype(size)::value>
        <<<blocks, kAdamThreads, 0, stream>>>(A, X, M, V, side, beta1, beta2, static_cast<T>(eps), lr, t, losses, batch);
  });
  return cudaGetLastError();
}

template cudaError_t launch_adam_step<float>(const float*, float*, float*, float*, int, int, double, double, double,
                                             double, int64_t, double*, int64_t, cudaStream_t);
template cudaError_t launch_adam_step<double>(const double*, double*, double*, double*, int, int, double, double,
                                              double, double, int64_t, double*, int64_t, cudaStream_t);

}  // namespace cuda
}  // namespace gdla
