// CPU kernels of the fused loss-and-gradient ops: the two elementwise primitives of
// fused_losses.h and the registration of inverse_mse*, svd_loss* for the CPU dispatch key.
#include "cpu_parallel.h"
#include "fused_losses.h"
#include "small_dispatch.h"
#include "small_inverse_math.h"

#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

namespace gdla {
namespace {

// One chunk of the residual pass: R = P - T, returns sum(R^2), optionally stores scale * R in P.
template <typename T, bool kTarget, bool kStore>
double residual_chunk(T* P, const T* target, int64_t begin, int64_t end, T scale) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = begin; i < end; ++i) {
    const T r = kTarget ? P[i] - target[i] : P[i];
    sum += static_cast<double>(r) * static_cast<double>(r);
    if (kStore) P[i] = scale * r;
  }
  return sum;
}

template <typename T, bool kTarget, bool kStore>
double residual_pass(T* P, const T* target, int64_t total, T scale) {
  const int64_t chunks = (total + kReductionChunk - 1) / kReductionChunk;
  std::vector<double> partial(static_cast<size_t>(chunks));
#pragma omp parallel for schedule(static) if (total >= kParallelGrain)
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t begin = c * kReductionChunk;
    partial[c] = residual_chunk<T, kTarget, kStore>(P, target, begin, std::min(total, begin + kReductionChunk), scale);
  }
  double sum = 0.0;
  for (double value : partial) sum += value;
  return sum;
}

template <typename T>
void residual_cpu(at::Tensor& P, const at::Tensor& target, bool store, double store_scale,
                  const at::Tensor& grad_scale, double loss_scale, const at::Tensor& loss_acc) {
  T* p = P.data_ptr<T>();
  const int64_t total = P.numel();
  if (!target.defined()) {
    // Subtracting the identity first keeps the main loop branch-free (and vectorised).
    const int64_t batch = P.size(0), rows = P.size(1), cols = P.size(2);
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t i = 0; i < std::min(rows, cols); ++i) p[(b * rows + i) * cols + i] -= T(1);
    }
  }
  const double g = grad_scale.defined() ? grad_scale.item<double>() : 1.0;
  const T scale = static_cast<T>(store_scale * g);
  const T* t = target.defined() ? target.data_ptr<T>() : nullptr;
  double sum;
  if (t != nullptr) {
    sum = store ? residual_pass<T, true, true>(p, t, total, scale) : residual_pass<T, true, false>(p, t, total, scale);
  } else {
    sum = store ? residual_pass<T, false, true>(p, t, total, scale) : residual_pass<T, false, false>(p, t, total, scale);
  }
  if (loss_acc.defined()) *loss_acc.data_ptr<double>() += loss_scale * sum;
}

template <typename T>
void svd_combine_cpu(T* gU, bool has_base, const T* W, const T* U, const T* s, const T* d, T* gs, int64_t batch,
                     int64_t m, int64_t k) {
  // Row blocks of ~kReductionChunk elements; the column sums of each block are kept apart and
  // added in order afterwards (deterministic for any thread count).
  const int64_t rows_per_block = std::max<int64_t>(1, kReductionChunk / k);
  const int64_t blocks = (m + rows_per_block - 1) / rows_per_block;
  std::vector<double> partial(static_cast<size_t>(batch * blocks * k), 0.0);
#pragma omp parallel for schedule(static) if (batch * m * k >= kParallelGrain)
  for (int64_t job = 0; job < batch * blocks; ++job) {
    const int64_t b = job / blocks, block = job % blocks;
    const int64_t row_end = std::min(m, (block + 1) * rows_per_block);
    double* sums = partial.data() + job * k;
    const T* db = d + b * k;
    for (int64_t i = block * rows_per_block; i < row_end; ++i) {
      const int64_t row = (b * m + i) * k;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) {
        const T w = W[row + j];
        gU[row + j] = (has_base ? gU[row + j] : T(0)) + w * db[j];
        sums[j] += static_cast<double>(U[row + j]) * static_cast<double>(w);
      }
    }
  }
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t j = 0; j < k; ++j) {
      double total = 0.0;
      for (int64_t block = 0; block < blocks; ++block) total += partial[(b * blocks + block) * k + j];
      gs[b * k + j] = static_cast<T>(2.0 * static_cast<double>(s[b * k + j]) * total);
    }
  }
}

// Problems below which the per-problem path runs on one thread.
constexpr int64_t kProblemGrain = 256;

template <typename T, int N>
void inverse_mse_small_batch(const T* A, const T* M, int side, T scale, T* gM, T* gA, double* sums, int64_t batch) {
  constexpr int64_t nn = N * N;
#pragma omp parallel for schedule(static) if (batch >= kProblemGrain)
  for (int64_t b = 0; b < batch; ++b) {
    sums[b] = small::inverse_mse_small<T, N>(A + b * nn, M + b * nn, side, scale, gM ? gM + b * nn : nullptr,
                                             gA ? gA + b * nn : nullptr);
  }
}

struct CpuPrims {
  static void inverse_mse_small(const at::Tensor& A, const at::Tensor& M, Side side, double store_scale,
                                const at::Tensor& grad_scale, double loss_scale, const at::Tensor& loss_acc,
                                const at::Tensor& gM, const at::Tensor& gA) {
    const int64_t batch = A.size(0);
    const int n = static_cast<int>(A.size(1));
    const double g = grad_scale.defined() ? grad_scale.item<double>() : 1.0;
    std::vector<double> sums(static_cast<size_t>(batch));
    AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_inverse_mse_small_cpu", [&] {
      small::dispatch_unrolled_size(n, [&](auto size) {
        inverse_mse_small_batch<scalar_t, decltype(size)::value>(
            A.data_ptr<scalar_t>(), M.data_ptr<scalar_t>(), static_cast<int>(side),
            static_cast<scalar_t>(store_scale * g), data_or_null<scalar_t>(gM), data_or_null<scalar_t>(gA),
            sums.data(), batch);
      });
    });
    if (loss_acc.defined()) {
      double total = 0.0;
      for (double value : sums) total += value;  // in order: independent of the thread count
      *loss_acc.data_ptr<double>() += loss_scale * total;
    }
  }


  static void residual_(at::Tensor& P, const at::Tensor& target, bool store, double store_scale,
                        const at::Tensor& grad_scale, double loss_scale, const at::Tensor& loss_acc) {
    AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "gdla_residual_cpu", [&] {
      residual_cpu<scalar_t>(P, target, store, store_scale, grad_scale, loss_scale, loss_acc);
    });
  }

  static std::tuple<at::Tensor, at::Tensor> svd_combine(const at::Tensor& UG, const at::Tensor& W,
                                                        const at::Tensor& U, const at::Tensor& s,
                                                        const at::Tensor& d) {
    const int64_t batch = U.size(0), m = U.size(1), k = U.size(2);
    at::Tensor gU = UG.defined() ? UG.contiguous() : at::empty_like(W, at::MemoryFormat::Contiguous);
    at::Tensor gs = at::empty({batch, k}, U.options());
    const at::Tensor Wc = W.contiguous(), dc = d.contiguous();
    AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "gdla_svd_combine_cpu", [&] {
      svd_combine_cpu<scalar_t>(gU.data_ptr<scalar_t>(), UG.defined(), Wc.data_ptr<scalar_t>(),
                                U.data_ptr<scalar_t>(), s.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(),
                                gs.data_ptr<scalar_t>(), batch, m, k);
    });
    return {gU, gs};
  }
};

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CPU, m) {
  m.impl("inverse_mse", &inverse_mse_impl<CpuPrims>);
  m.impl("inverse_mse_and_grad", &inverse_mse_and_grad_impl<CpuPrims>);
  m.impl("inverse_mse_backward", &inverse_mse_backward_impl<CpuPrims>);
  m.impl("svd_loss", &svd_loss_impl<CpuPrims>);
  m.impl("svd_loss_and_grad", &svd_loss_and_grad_impl<CpuPrims>);
}

}  // namespace gdla
