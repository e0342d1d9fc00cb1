// CPU kernels of the masked-Hadamard ops of the sparse (matrix-completion) problem:
//   masked_hadamard:  S = init + omega * U
//   masked_update_:   buf <- momentum buf + omega * G;  U <- U - lr buf   (or U <- U - lr omega * G)
#include "cpu_parallel.h"
#include "op_args.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace gdla {
namespace {

template <typename T>
void masked_hadamard_kernel(const T* init, const T* omega, const T* U, T* out, int64_t total) {
#pragma omp parallel for simd schedule(static) if (total >= kParallelGrain)
  for (int64_t k = 0; k < total; ++k) out[k] = init[k] + omega[k] * U[k];
}

template <typename T>
void masked_update_kernel(T* U, const T* omega, const T* G, T* buf, int64_t total, T lr, T momentum) {
  if (buf != nullptr) {
#pragma omp parallel for simd schedule(static) if (total >= kParallelGrain)
    for (int64_t k = 0; k < total; ++k) {
      const T velocity = momentum * buf[k] + omega[k] * G[k];
      buf[k] = velocity;
      U[k] -= lr * velocity;
    }
  } else {
#pragma omp parallel for simd schedule(static) if (total >= kParallelGrain)
    for (int64_t k = 0; k < total; ++k) U[k] -= lr * (omega[k] * G[k]);
  }
}

at::Tensor masked_hadamard_cpu(const at::Tensor& init, const at::Tensor& omega, const at::Tensor& U) {
  check_masked_hadamard_args(init, omega, U);
  at::Tensor out = at::empty(U.sizes(), U.options());
  const at::Tensor ic = init.contiguous(), oc = omega.contiguous(), uc = U.contiguous();
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "gdla_masked_hadamard_cpu", [&] {
    masked_hadamard_kernel<scalar_t>(ic.data_ptr<scalar_t>(), oc.data_ptr<scalar_t>(), uc.data_ptr<scalar_t>(),
                                     out.data_ptr<scalar_t>(), U.numel());
  });
  return out;
}

// Runs on contiguous buffers; a strided U (or buf) is updated through a copy and written back.
void masked_update_cpu(at::Tensor& U, const at::Tensor& omega, const at::Tensor& G, double lr, double momentum,
                       const std::optional<at::Tensor>& buf) {
  check_masked_update_args(U, omega, G, lr, momentum, buf);
  at::Tensor uc = U.contiguous();
  at::Tensor bc = buf.has_value() ? buf->contiguous() : at::Tensor();
  const at::Tensor oc = omega.contiguous(), gc = G.contiguous();
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "gdla_masked_update_cpu", [&] {
    masked_update_kernel<scalar_t>(uc.data_ptr<scalar_t>(), oc.data_ptr<scalar_t>(), gc.data_ptr<scalar_t>(),
                                   bc.defined() ? bc.data_ptr<scalar_t>() : nullptr, U.numel(),
                                   static_cast<scalar_t>(lr), static_cast<scalar_t>(momentum));
  });
  if (!uc.is_same(U)) U.copy_(uc);
  if (bc.defined() && !bc.is_same(*buf)) buf->copy_(bc);
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CPU, m) {
  m.impl("masked_hadamard", &masked_hadamard_cpu);
  m.impl("masked_update_", &masked_update_cpu);
}

}  // namespace gdla
