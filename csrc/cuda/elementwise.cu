// Fused elementwise CUDA kernels: the residual pass of the fused losses (subtract, square-sum,
// scale in one read and one write), the SVD gradient combination, and the masked ops.
#include "launch.h"

#include <algorithm>

namespace gdla {
namespace cuda {
namespace {

constexpr int kMaxReduceBlocks = 1024;
constexpr int kSvdCols = 32;  // columns per block of svd_combine (one warp across a row)
constexpr int kSvdRows = 8;   // row lanes per block
constexpr int kMaxSvdRowBlocks = 32;

// Sum of ``value`` over the block; valid in thread 0. Fixed order, so results are reproducible.
__device__ double block_sum(double value) {
  __shared__ double warp_sums[32];
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  const int warps = (blockDim.x + 31) >> 5;
  value = threadIdx.x < warps ? warp_sums[threadIdx.x] : 0.0;
  if (warp == 0) {
    for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  return value;
}

template <typename T>
__global__ void residual_kernel(T* P, const T* target, int64_t total, int64_t rows, int64_t cols, bool store,
                                T store_scale, const T* grad_scale, double* partials) {
  const T scale = grad_scale != nullptr ? store_scale * *grad_scale : store_scale;
  const int64_t block_elems = rows * cols;
  double sum = 0.0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    T r = P[i];
    if (target != nullptr) {
      r -= target[i];
    } else {
      const int64_t e = i % block_elems;
      if (e / cols == e % cols) r -= T(1);
    }
    sum += static_cast<double>(r) * static_cast<double>(r);
    if (store) P[i] = scale * r;
  }
  if (partials != nullptr) {
    sum = block_sum(sum);
    if (threadIdx.x == 0) partials[blockIdx.x] = sum;
  }
}

__global__ void finish_sum_kernel(const double* partials, int count, double scale, double* acc) {
  double sum = 0.0;
  for (int i = threadIdx.x; i < count; i += blockDim.x) sum += partials[i];
  sum = block_sum(sum);
  if (threadIdx.x == 0) *acc += scale * sum;
}

// Block (kSvdCols x kSvdRows) covers kSvdCols columns of one row block of one batch entry.
template <typename T>
__global__ void svd_combine_kernel(T* gU, bool has_base, const T* W, const T* U, const T* d, double* partials,
                                   int64_t m, int64_t k, int row_blocks, int col_blocks) {
  int64_t id = blockIdx.x;
  const int cb = static_cast<int>(id % col_blocks);
  id /= col_blocks;
  const int rb = static_cast<int>(id % row_blocks);
  const int64_t b = id / row_blocks;
  const int64_t j = static_cast<int64_t>(cb) * kSvdCols + threadIdx.x;
  const int64_t rows_per_block = (m + row_blocks - 1) / row_blocks;
  const int64_t row_begin = rb * rows_per_block;
  const int64_t row_end = row_begin + rows_per_block < m ? row_begin + rows_per_block : m;
  double sum = 0.0;
  if (j < k) {
    const T dj = d[b * k + j];
    for (int64_t i = row_begin + threadIdx.y; i < row_end; i += blockDim.y) {
      const int64_t idx = (b * m + i) * k + j;
      const T w = W[idx];
      gU[idx] = (has_base ? gU[idx] : T(0)) + w * dj;
      sum += static_cast<double>(U[idx]) * static_cast<double>(w);
    }
  }
  __shared__ double column_sums[kSvdRows][kSvdCols + 1];
  column_sums[threadIdx.y][threadIdx.x] = sum;
  __syncthreads();
  if (threadIdx.y == 0 && j < k) {
    double total = 0.0;
    for (int y = 0; y < kSvdRows; ++y) total += column_sums[y][threadIdx.x];
    partials[(b * row_blocks + rb) * k + j] = total;
  }
}

template <typename T>
__global__ void svd_gs_kernel(const double* partials, const T* s, T* gs, int64_t batch, int64_t k, int row_blocks) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= batch * k) return;
  const int64_t b = idx / k, j = idx % k;
  double total = 0.0;
  for (int rb = 0; rb < row_blocks; ++rb) total += partials[(b * row_blocks + rb) * k + j];
  gs[idx] = static_cast<T>(2.0 * static_cast<double>(s[idx]) * total);
}

template <typename T>
__global__ void masked_hadamard_kernel(const T* init, const T* omega, const T* U, T* out, int64_t total) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    out[i] = init[i] + omega[i] * U[i];
  }
}

template <typename T>
__global__ void masked_update_kernel(T* U, const T* omega, const T* G, T* buf, int64_t total, T lr, T momentum) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const T step = omega[i] * G[i];
    if (buf != nullptr) {
      const T velocity = momentum * buf[i] + step;
      buf[i] = velocity;
      U[i] -= lr * velocity;
    } else {
      U[i] -= lr * step;
    }
  }
}

// Grid of a grid-stride elementwise kernel: enough blocks to fill the device, no more.
int elementwise_blocks(int64_t total) {
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, 65536)));
}

}  // namespace

int residual_blocks(int64_t total) {
  const int64_t wanted = (total + kThreads - 1) / kThreads;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, kMaxReduceBlocks)));
}

template <typename T>
cudaError_t launch_residual(T* P, const T* target, int64_t total, int64_t rows, int64_t cols, bool store,
                            double store_scale, const T* grad_scale, double loss_scale, double* partials, int blocks,
                            double* loss_acc, cudaStream_t stream) {
  residual_kernel<T><<<blocks, kThreads, 0, stream>>>(P, target, total, rows, cols, store,
                                                      static_cast<T>(store_scale), grad_scale,
                                                      loss_acc != nullptr ? partials : nullptr);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess || loss_acc == nullptr) return status;
  finish_sum_kernel<<<1, kThreads, 0, stream>>>(partials, blocks, loss_scale, loss_acc);
  return cudaGetLastError();
}

int svd_row_blocks(int64_t m) {
  const int64_t wanted = (m + 63) / 64;
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(wanted, kMaxSvdRowBlocks)));
}

template <typename T>
cudaError_t launch_svd_combine(T* gU, bool has_base, const T* W, const T* U, const T* s, const T* d, T* gs,
                               double* partials, int64_t batch, int64_t m, int64_t k, cudaStream_t stream) {
  const int row_blocks = svd_row_blocks(m);
  const int col_blocks = static_cast<int>((k + kSvdCols - 1) / kSvdCols);
  const int64_t blocks = batch * row_blocks * col_blocks;
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  svd_combine_kernel<T><<<static_cast<unsigned>(blocks), dim3(kSvdCols, kSvdRows), 0, stream>>>(
      gU, has_base, W, U, d, partials, m, k, row_blocks, col_blocks);
  cudaError_t status = cudaGetLastError();
  if (status != cudaSuccess) return status;
  const int64_t outputs = batch * k;
  svd_gs_kernel<T><<<static_cast<unsigned>((outputs + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
      partials, s, gs, batch, k, row_blocks);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_masked_hadamard(const T* init, const T* omega, const T* U, T* out, int64_t total,
                                   cudaStream_t stream) {
  if (total == 0) return cudaSuccess;
  masked_hadamard_kernel<T><<<elementwise_blocks(total), kThreads, 0, stream>>>(init, omega, U, out, total);
  return cudaGetLastError();
}

template <typename T>
cudaError_t launch_masked_update(T* U, const T* omega, const T* G, T* buf, int64_t total, double lr, double momentum,
                                 cudaStream_t stream) {
  if (total == 0) return cudaSuccess;
  masked_update_kernel<T><<<elementwise_blocks(total), kThreads, 0, stream>>>(
      U, omega, G, buf, total, static_cast<T>(lr), static_cast<T>(momentum));
  return cudaGetLastError();
}

#define GDLA_INSTANTIATE(T)                                                                                    \
  template cudaError_t launch_residual<T>(T*, const T*, int64_t, int64_t, int64_t, bool, double, const T*,     \
                                          double, double*, int, double*, cudaStream_t);                        \
  template cudaError_t launch_svd_combine<T>(T*, bool, const T*, const T*, const T*, const T*, T*, double*,    \
                                             int64_t, int64_t, int64_t, cudaStream_t);                         \
  template cudaError_t launch_masked_hadamard<T>(const T*, const T*, const T*, T*, int64_t, cudaStream_t);     \
  template cudaError_t launch_masked_update<T>(T*, const T*, const T*, T*, int64_t, double, double, cudaStream_t);
GDLA_INSTANTIATE(float)
GDLA_INSTANTIATE(double)
#undef GDLA_INSTANTIATE

}  // namespace cuda
}  // namespace gdla
