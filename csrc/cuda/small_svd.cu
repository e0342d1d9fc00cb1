// CUDA kernels of svd_sgd_run and masked_sgd_run: one thread runs the whole loop of
// small::svd_sgd_run / small::masked_sgd_run (one small system; a run is sequential by nature),
// writing each step's loss and the steps taken.
#include "launch.h"
#include "small_masked_math.h"
#include "small_rules.h"
#include "small_svd_math.h"

namespace gdla {
namespace cuda {
namespace {

template <typename T>
__global__ void svd_sgd_run_kernel(small::SvdPenalty<T> problem, small::SgdRule<T> rule, T* U, T* s, T* V, T* bu,
                                   T* bs, T* bv, const double* lrs, int64_t steps, bool started, bool sign_fix,
                                   double first, double blow_up, double* losses, int64_t* done) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  *done = small::svd_sgd_run(problem, rule, U, s, V, bu, bs, bv, lrs, steps, started, sign_fix, first, blow_up,
                             losses);
}

template <typename T>
__global__ void masked_sgd_run_kernel(small::MaskedHops<T> problem, small::SgdRule<T> rule, T* U, T* buf,
                                      const double* lrs, int64_t steps, bool started, double first, double blow_up,
                                      double* losses, int64_t* done) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  *done = small::masked_sgd_run(problem, rule, U, buf, lrs, steps, started, first, blow_up, losses);
}

}  // namespace

template <typename T>
cudaError_t launch_masked_sgd_run(const T* init, const T* omega, const T* X, const T* Y, int n, int p, int hops,
                                  int activation, bool mse, double momentum, double dampening, bool nesterov, T* U,
                                  T* buf, const double* lrs, int64_t steps, bool started, double first,
                                  double blow_up, double* losses, int64_t* done, cudaStream_t stream) {
  const small::MaskedHops<T> problem{init, omega, X, Y, n, p, hops, activation, mse};
  const small::SgdRule<T> rule{static_cast<T>(momentum), static_cast<T>(dampening), nesterov};
  masked_sgd_run_kernel<T><<<1, 1, 0, stream>>>(problem, rule, U, buf, lrs, steps, started, first, blow_up, losses,
                                                done);
  return cudaGetLastError();
}

template cudaError_t launch_masked_sgd_run<float>(const float*, const float*, const float*, const float*, int, int,
                                                  int, int, bool, double, double, bool, float*, float*,
                                                  const double*, int64_t, bool, double, double, double*, int64_t*,
                                                  cudaStream_t);
template cudaError_t launch_masked_sgd_run<double>(const double*, const double*, const double*, const double*, int,
                                                   int, int, int, bool, double, double, bool, double*, double*,
                                                   const double*, int64_t, bool, double, double, double*, int64_t*,
                                                   cudaStream_t);

template <typename T>
cudaError_t launch_svd_sgd_run(const T* M, int m, int n, int k, double weight_u, double weight_v, double momentum,
                               double dampening, bool nesterov, T* U, T* s, T* V, T* bu, T* bs, T* bv,
                               const double* lrs, int64_t steps, bool started, bool sign_fix, double first,
                               double blow_up, double* losses, int64_t* done, cudaStream_t stream) {
  const small::SvdPenalty<T> problem{M, m, n, k, static_cast<T>(weight_u), static_cast<T>(weight_v)};
  const small::SgdRule<T> rule{static_cast<T>(momentum), static_cast<T>(dampening), nesterov};
  svd_sgd_run_kernel<T><<<1, 1, 0, stream>>>(problem, rule, U, s, V, bu, bs, bv, lrs, steps, started, sign_fix,
                                             first, blow_up, losses, done);
  return cudaGetLastError();
}

template cudaError_t launch_svd_sgd_run<float>(const float*, int, int, int, double, double, double, double, bool,
                                               float*, float*, float*, float*, float*, float*, const double*, int64_t,
                                               bool, bool, double, double, double*, int64_t*, cudaStream_t);
template cudaError_t launch_svd_sgd_run<double>(const double*, int, int, int, double, double, double, double, bool,
                                                double*, double*, double*, double*, double*, double*, const double*,
                                                int64_t, bool, bool, double, double, double*, int64_t*,
                                                cudaStream_t);

}  // namespace cuda
}  // namespace gdla
