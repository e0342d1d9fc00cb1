// Launchers of the gdla CUDA kernels: plain pointers, sizes and a stream in, a cudaError_t out.
//
// The kernels (elementwise.cu, small_inverse.cu) include no torch headers, so they compile in
// seconds; register_cuda.cu holds the torch side (tensors, checks, the current stream) and checks
// every returned error with C10_CUDA_CHECK. All pointers are to contiguous device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace gdla {
namespace cuda {

constexpr int kThreads = 256;

// Blocks (and partial sums) the residual kernel uses for ``total`` elements.
int residual_blocks(int64_t total);

// R = P - target (target null: the identity of each rows x cols block); P <- scale R when store,
// scale = store_scale (times *grad_scale when grad_scale is not null); when loss_acc is not null,
// *loss_acc += loss_scale sum(R^2), reduced through ``partials`` (residual_blocks(total) doubles)
// in a fixed order, so the loss is deterministic.
template <typename T>
cudaError_t launch_residual(T* P, const T* target, int64_t total, int64_t rows, int64_t cols, bool store,
                            double store_scale, const T* grad_scale, double loss_scale, double* partials, int blocks,
                            double* loss_acc, cudaStream_t stream);

// Row blocks (and partial column sums per batch entry) svd_combine uses for m rows.
int svd_row_blocks(int64_t m);

// gU = (has_base ? gU : 0) + W d[col];  gs = 2 s sum_rows(U W), per batch entry; U, W, gU: (B, m, k),
// s, d, gs: (B, k); partials: B * svd_row_blocks(m) * k doubles.
template <typename T>
cudaError_t launch_svd_combine(T* gU, bool has_base, const T* W, const T* U, const T* s, const T* d, T* gs,
                               double* partials, int64_t batch, int64_t m, int64_t k, cudaStream_t stream);

// out = init + omega U.
template <typename T>
cudaError_t launch_masked_hadamard(const T* init, const T* omega, const T* U, T* out, int64_t total,
                                   cudaStream_t stream);

// buf <- momentum buf + omega G; U <- U - lr buf   (buf null: U <- U - lr omega G).
template <typename T>
cudaError_t launch_masked_update(T* U, const T* omega, const T* G, T* buf, int64_t total, double lr, double momentum,
                                 cudaStream_t stream);

// One step of seed 000's momentum on every problem's inverse MSE (n <= 8, one thread a problem):
// X and buf updated in place, losses[b] = mean((P_b - I)^2) at the iterate before the step.
template <typename T>
cudaError_t launch_momentum_step(const T* A, T* X, T* buf, int n, int side, double lr, double momentum, bool started,
                                 double* losses, int64_t batch, cudaStream_t stream);

// One Adam step (small::AdamRule, step number t, rate lr) on every problem's inverse MSE (n <= 16,
// one thread a problem): X, M, V updated in place, losses[b] = mean((P_b - I)^2) before the step.
template <typename T>
cudaError_t launch_adam_step(const T* A, T* X, T* M, T* V, int n, int side, double beta1, double beta2, double eps,
                             double lr, int64_t t, double* losses, int64_t batch, cudaStream_t stream);

// small::svd_sgd_run on one thread (one small matrix); lrs and losses (steps doubles) on the device,
// *done = the steps taken.
template <typename T>
cudaError_t launch_svd_sgd_run(const T* M, int m, int n, int k, double weight_u, double weight_v, double momentum,
                               double dampening, bool nesterov, T* U, T* s, T* V, T* bu, T* bs, T* bv,
                               const double* lrs, int64_t steps, bool started, bool sign_fix, double first,
                               double blow_up, double* losses, int64_t* done, cudaStream_t stream);

// small::masked_sgd_run on one thread (one small system), as launch_svd_sgd_run.
template <typename T>
cudaError_t launch_masked_sgd_run(const T* init, const T* omega, const T* X, const T* Y, int n, int p, int hops,
                                  int activation, bool mse, double momentum, double dampening, bool nesterov, T* U,
                                  T* buf, const double* lrs, int64_t steps, bool started, double first,
                                  double blow_up, double* losses, int64_t* done, cudaStream_t stream);

// One thread per n x n problem (n <= 16); X0 null: the scaled transpose of A.
template <typename T>
cudaError_t launch_newton_schulz(const T* A, const T* X0, T* X, int64_t* steps, int64_t batch, int n, int max_steps,
                                 double tol, cudaStream_t stream);

// Inverse MSE of square n x n problems (n <= 8), one thread each: sums[b] = sum((P - I)^2) and,
// when not null, gM / gA from R = store_scale (*grad_scale) (P - I); side 0 right, 1 left, 2 both.
template <typename T>
cudaError_t launch_inverse_mse_small(const T* A, const T* M, int side, int n, double store_scale, const T* grad_scale,
                                     T* gM, T* gA, double* sums, int64_t batch, cudaStream_t stream);

// ||P(X) - I||_F of each square n x n problem (n <= 16), one thread each, in double; side 0 right, 1 left.
template <typename T>
cudaError_t launch_residuals(const T* A, const T* X, T* out, int64_t batch, int n, int side, cudaStream_t stream);

template <typename T>
cudaError_t launch_heavy_ball(const T* A, const T* X0, T* X, int64_t batch, int n, double lr, double momentum,
                              int steps, cudaStream_t stream);

}  // namespace cuda
}  // namespace gdla
