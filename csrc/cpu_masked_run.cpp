// CPU kernel of masked_sgd_run: torch.optim.SGD (momentum, dampening, nesterov) on the seed
// notebook's masked operator S = Init + Omega * U of one small system (n <= 16, hops <= 4), many
// steps per call with a rate per step, returning each step's loss. gdla.solve's fused path calls it
// once for a whole run and with one step for a step-by-step run (the same bits).
#include "cpu_isa.h"
#include "op_args.h"
#include "small_masked_math.h"
#include "small_rules.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace gdla {
namespace {

at::Tensor masked_sgd_run_cpu(const at::Tensor& init, const at::Tensor& omega, const at::Tensor& X,
                              const at::Tensor& Y, at::Tensor& U, at::Tensor& buf, const at::Tensor& lrs, int64_t hops,
                              c10::string_view activation, c10::string_view loss, double momentum, double dampening,
                              bool nesterov, bool started, double first_loss, double blow_up) {
  const MaskedRunCodes codes =
      check_masked_run_args(init, omega, X, Y, U, buf, lrs, hops, activation, loss, momentum, dampening, blow_up);
  const int64_t steps = lrs.numel();
  at::Tensor losses = at::empty({steps}, U.options().dtype(at::kDouble));
  const at::Tensor rates = lrs.contiguous();
  int64_t done = 0;
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "gdla_masked_sgd_run_cpu", [&] {
    using T = scalar_t;
    const small::MaskedHops<T> problem{init.data_ptr<T>(), omega.data_ptr<T>(), X.data_ptr<T>(), Y.data_ptr<T>(),
                                       static_cast<int>(U.size(0)), static_cast<int>(X.size(1)),
                                       static_cast<int>(hops), codes.activation, codes.mse};
    const small::SgdRule<T> rule{static_cast<T>(momentum), static_cast<T>(dampening), nesterov};
    done = call_best([&]() GDLA_LAMBDA_INLINE {
      return small::masked_sgd_run(problem, rule, U.data_ptr<T>(), buf.data_ptr<T>(), rates.data_ptr<double>(),
                                   steps, started, first_loss, blow_up, losses.data_ptr<double>());
    });
  });
  return losses.narrow(0, 0, done);
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CPU, m) {
  m.impl("masked_sgd_run", &masked_sgd_run_cpu);
}

}  // namespace gdla
