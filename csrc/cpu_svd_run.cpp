// CPU kernel of svd_sgd_run: torch.optim.SGD (momentum, dampening, nesterov) on the seed
// notebook's penalised SVD loss of one small matrix (m, n <= 16), many steps per call with a rate
// per step, the svd problem's sign fix after every step, returning each step's loss. gdla.solve's
// fused path calls it once for a whole run and with one step for a step-by-step run (the same bits).
#include "cpu_isa.h"
#include "op_args.h"
#include "small_svd_math.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

namespace gdla {
namespace {

at::Tensor svd_sgd_run_cpu(const at::Tensor& M, at::Tensor& U, at::Tensor& s, at::Tensor& V, at::Tensor& buf_u,
                           at::Tensor& buf_s, at::Tensor& buf_v, const at::Tensor& lrs, double weight_u,
                           double weight_v, double momentum, double dampening, bool nesterov, bool started,
                           bool sign_fix, double first_loss, double blow_up) {
  check_svd_run_args(M, U, s, V, buf_u, buf_s, buf_v, lrs, weight_u, weight_v, momentum, dampening, blow_up);
  const int64_t steps = lrs.numel();
  at::Tensor losses = at::empty({steps}, M.options().dtype(at::kDouble));
  const at::Tensor rates = lrs.contiguous();
  int64_t done = 0;
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "gdla_svd_sgd_run_cpu", [&] {
    using T = scalar_t;
    const small::SvdPenalty<T> problem{M.data_ptr<T>(), static_cast<int>(M.size(0)), static_cast<int>(M.size(1)),
                                       static_cast<int>(U.size(1)), static_cast<T>(weight_u),
                                       static_cast<T>(weight_v)};
    const small::SgdRule<T> rule{static_cast<T>(momentum), static_cast<T>(dampening), nesterov};
    done = call_best([&]() GDLA_LAMBDA_INLINE {
      return small::svd_sgd_run(problem, rule, U.data_ptr<T>(), s.data_ptr<T>(), V.data_ptr<T>(),
                                buf_u.data_ptr<T>(), buf_s.data_ptr<T>(), buf_v.data_ptr<T>(), rates.data_ptr<double>(),
                                steps, started, sign_fix, first_loss, blow_up, losses.data_ptr<double>());
    });
  });
  return losses.narrow(0, 0, done);
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CPU, m) {
  m.impl("svd_sgd_run", &svd_sgd_run_cpu);
}

}  // namespace gdla
