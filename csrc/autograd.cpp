// Autograd of masked_hadamard in C++: S = init + omega * U, dS/dinit = 1, dS/domega = U,
// dS/dU = omega. Registered as the op's Autograd kernel, so a call costs a dispatcher hop instead
// of the Python torch.library autograd layer (about 35 us a call, more than the arithmetic below
// n ~ 1000). The forward redispatches below autograd to the device kernel (CPU or CUDA); fake
// kernels and torch.compile see the op as before.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

namespace gdla {
namespace {

class MaskedHadamard : public torch::autograd::Function<MaskedHadamard> {
 public:
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, const at::Tensor& init, const at::Tensor& omega,
                            const at::Tensor& U) {
    ctx->save_for_backward({omega, U});  // omega for dU, U for domega
    at::AutoDispatchBelowADInplaceOrView guard;
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("gdla::masked_hadamard", "")
                               .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&)>();
    return op.call(init, omega, U);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor& grad = grads[0];
    return {ctx->needs_input_grad(0) ? grad : at::Tensor(),
            ctx->needs_input_grad(1) ? grad.mul(saved[1]) : at::Tensor(),
            ctx->needs_input_grad(2) ? grad.mul(saved[0]) : at::Tensor()};
  }
};

at::Tensor masked_hadamard_autograd(const at::Tensor& init, const at::Tensor& omega, const at::Tensor& U) {
  return MaskedHadamard::apply(init, omega, U);
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, Autograd, m) {
  m.impl("masked_hadamard", &masked_hadamard_autograd);
}

}  // namespace gdla
