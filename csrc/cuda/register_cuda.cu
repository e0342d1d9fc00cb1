// The CUDA side of the gdla ops: the fused-loss drivers instantiated with the CUDA elementwise
// kernels (products go through ATen, i.e. cuBLAS), the masked and small-inverse ops, and their
// registration for the CUDA dispatch key. Every kernel runs on the current CUDA stream of the
// inputs' device, and every launch is checked.
#include "../fused_losses.h"
#include "../op_args.h"
#include "launch.h"

#include <ATen/Dispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/sum.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace gdla {
namespace {

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

struct CudaPrims {
  static void inverse_mse_small(const at::Tensor& A, const at::Tensor& M, Side side, double store_scale,
                                const at::Tensor& grad_scale, double loss_scale, const at::Tensor& loss_acc,
                                const at::Tensor& gM, const at::Tensor& gA) {
    const int64_t batch = A.size(0);
    at::Tensor sums = at::empty({batch}, A.options().dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_inverse_mse_small_cuda", [&] {
      C10_CUDA_CHECK(cuda::launch_inverse_mse_small<scalar_t>(
          A.data_ptr<scalar_t>(), M.data_ptr<scalar_t>(), static_cast<int>(side), static_cast<int>(A.size(1)),
          store_scale, data_or_null<scalar_t>(grad_scale), data_or_null<scalar_t>(gM), data_or_null<scalar_t>(gA),
          sums.data_ptr<double>(), batch, current_stream()));
    });
    if (loss_acc.defined()) {
      at::Tensor acc = loss_acc;
      acc.add_(at::sum(sums), loss_scale);
    }
  }

  static void residual_(at::Tensor& P, const at::Tensor& target, bool store, double store_scale,
                        const at::Tensor& grad_scale, double loss_scale, const at::Tensor& loss_acc) {
    const int64_t total = P.numel();
    const int blocks = cuda::residual_blocks(total);
    const at::Tensor partials =
        loss_acc.defined() ? at::empty({blocks}, P.options().dtype(at::kDouble)) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(P.scalar_type(), "gdla_residual_cuda", [&] {
      C10_CUDA_CHECK(cuda::launch_residual<scalar_t>(
          P.data_ptr<scalar_t>(), data_or_null<scalar_t>(target), total, P.size(1), P.size(2), store, store_scale,
          data_or_null<scalar_t>(grad_scale), loss_scale, data_or_null<double>(partials), blocks,
          data_or_null<double>(loss_acc), current_stream()));
    });
  }

  static std::tuple<at::Tensor, at::Tensor> svd_combine(const at::Tensor& UG, const at::Tensor& W,
                                                        const at::Tensor& U, const at::Tensor& s,
                                                        const at::Tensor& d) {
    const int64_t batch = U.size(0), m = U.size(1), k = U.size(2);
    at::Tensor gU = UG.defined() ? UG.contiguous() : at::empty(W.sizes(), W.options());
    at::Tensor gs = at::empty({batch, k}, U.options());
    const at::Tensor partials = at::empty({batch * cuda::svd_row_blocks(m) * k}, U.options().dtype(at::kDouble));
    const at::Tensor Wc = W.contiguous(), dc = d.contiguous();
    AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "gdla_svd_combine_cuda", [&] {
      C10_CUDA_CHECK(cuda::launch_svd_combine<scalar_t>(
          gU.data_ptr<scalar_t>(), UG.defined(), Wc.data_ptr<scalar_t>(), U.data_ptr<scalar_t>(),
          s.data_ptr<scalar_t>(), dc.data_ptr<scalar_t>(), gs.data_ptr<scalar_t>(), partials.data_ptr<double>(),
          batch, m, k, current_stream()));
    });
    return {gU, gs};
  }
};

at::Tensor masked_hadamard_cuda(const at::Tensor& init, const at::Tensor& omega, const at::Tensor& U) {
  check_masked_hadamard_args(init, omega, U);
  const c10::OptionalDeviceGuard guard(at::device_of(U));
  at::Tensor out = at::empty(U.sizes(), U.options());
  const at::Tensor ic = init.contiguous(), oc = omega.contiguous(), uc = U.contiguous();
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "gdla_masked_hadamard_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_masked_hadamard<scalar_t>(ic.data_ptr<scalar_t>(), oc.data_ptr<scalar_t>(),
                                                          uc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(),
                                                          U.numel(), current_stream()));
  });
  return out;
}

// A strided U (or buf) is updated through a contiguous copy that is written back.
void masked_update_cuda(at::Tensor& U, const at::Tensor& omega, const at::Tensor& G, double lr, double momentum,
                        const std::optional<at::Tensor>& buf) {
  check_masked_update_args(U, omega, G, lr, momentum, buf);
  const c10::OptionalDeviceGuard guard(at::device_of(U));
  at::Tensor uc = U.contiguous();
  at::Tensor bc = buf.has_value() ? buf->contiguous() : at::Tensor();
  const at::Tensor oc = omega.contiguous(), gc = G.contiguous();
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "gdla_masked_update_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_masked_update<scalar_t>(uc.data_ptr<scalar_t>(), oc.data_ptr<scalar_t>(),
                                                        gc.data_ptr<scalar_t>(), data_or_null<scalar_t>(bc),
                                                        U.numel(), lr, momentum, current_stream()));
  });
  if (!uc.is_same(U)) U.copy_(uc);
  if (bc.defined() && !bc.is_same(*buf)) buf->copy_(bc);
}

std::tuple<at::Tensor, at::Tensor> newton_schulz_cuda(const at::Tensor& A, const std::optional<at::Tensor>& X0,
                                                      int64_t max_steps, double tol) {
  const int n = check_newton_schulz_args(A, X0, max_steps, tol);
  const c10::OptionalDeviceGuard guard(at::device_of(A));
  const at::Tensor ac = A.contiguous();
  const at::Tensor x0c = X0.has_value() ? X0->contiguous() : at::Tensor();
  at::Tensor X = at::empty(A.sizes(), A.options());
  at::Tensor steps = at::empty(batch_dims(A, 2), A.options().dtype(at::kLong));
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_newton_schulz_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_newton_schulz<scalar_t>(ac.data_ptr<scalar_t>(), data_or_null<scalar_t>(x0c),
                                                        X.data_ptr<scalar_t>(), steps.data_ptr<int64_t>(),
                                                        batch_count(A, 2), n, static_cast<int>(max_steps), tol,
                                                        current_stream()));
  });
  return {X, steps};
}

at::Tensor residuals_cuda(const at::Tensor& A, const at::Tensor& X, c10::string_view side) {
  const int n = check_small_residuals_args(A, X);
  const int code = momentum_run_side(side, "small_inverse_residuals", /*both=*/false);
  const c10::OptionalDeviceGuard guard(at::device_of(A));
  const at::Tensor ac = A.contiguous(), xc = X.contiguous();
  at::Tensor out = at::empty(batch_dims(A, 2), A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_small_inverse_residuals_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_residuals<scalar_t>(ac.data_ptr<scalar_t>(), xc.data_ptr<scalar_t>(),
                                                    out.data_ptr<scalar_t>(), batch_count(A, 2), n, code,
                                                    current_stream()));
  });
  return out;
}

at::Tensor heavy_ball_cuda(const at::Tensor& A, const at::Tensor& X0, double lr, double momentum, int64_t steps) {
  const int n = check_heavy_ball_args(A, X0, lr, momentum, steps);
  const c10::OptionalDeviceGuard guard(at::device_of(A));
  const at::Tensor ac = A.contiguous(), x0c = X0.contiguous();
  at::Tensor X = at::empty(A.sizes(), A.options());
  AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_heavy_ball_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_heavy_ball<scalar_t>(ac.data_ptr<scalar_t>(), x0c.data_ptr<scalar_t>(),
                                                     X.data_ptr<scalar_t>(), batch_count(A, 2), n, lr, momentum,
                                                     static_cast<int>(steps), current_stream()));
  });
  return X;
}

// A whole run as one kernel launch a step: launch(step, member) writes every problem's loss of that
// step to ``member``; their sum (in a fixed order, by ATen) is checked on the host for divergence,
// as the CPU kernels do inside their loops. With stop_loss >= 0 (one problem, small::run_loop's
// test) ``state`` is saved before each launch after the first, and put back when the launch found
// the iterate it started from at or below stop_loss; the loss at the final iterate comes last.
// Returns the losses (and that final loss), on A's device.
template <typename Launch>
at::Tensor stepped_run(const at::Tensor& A, int64_t batch, int64_t steps, double first_loss, double blow_up,
                       double stop_loss, const std::vector<at::Tensor>& state, Launch&& launch) {
  const bool test = stop_loss >= 0.0;
  at::Tensor member = at::empty({batch}, A.options().dtype(at::kDouble));
  std::vector<double> losses;
  bool is_first = std::isnan(first_loss), stopped = false;
  double first = first_loss;
  // one launch that leaves the state as it found it: the loss at the current iterate
  const auto look = [&](int64_t step) {
    std::vector<at::Tensor> saved;
    for (const at::Tensor& tensor : state) saved.push_back(tensor.clone());
    launch(step, member.data_ptr<double>());
    const double loss = at::sum(member).item<double>();
    for (size_t i = 0; i < state.size(); ++i) state[i].copy_(saved[i]);
    return loss;
  };
  for (int64_t step = 0; step < steps && !stopped; ++step) {
    if (test && step > 0) {
      const double next = look(step);
      if (next <= stop_loss) {
        losses.push_back(next);
        stopped = true;
        break;
      }
    }
    launch(step, member.data_ptr<double>());
    const double loss = at::sum(member).item<double>();
    losses.push_back(loss);
    if (small::diverged(loss, first, blow_up, is_first)) {
      if (test) losses.push_back(NAN);
      stopped = true;
    }
    if (is_first) first = loss, is_first = false;
  }
  if (test && !stopped) losses.push_back(look(steps));
  at::Tensor out = at::empty({static_cast<int64_t>(losses.size())}, at::TensorOptions().dtype(at::kDouble));
  std::copy(losses.begin(), losses.end(), out.data_ptr<double>());
  return out.to(A.device());
}

at::Tensor inverse_momentum_run_cuda(const at::Tensor& A, at::Tensor& X, at::Tensor& buf, c10::string_view side,
                                     double lr, double momentum, int64_t steps, bool started, double first_loss,
                                     double blow_up, double stop_loss) {
  const int n = check_momentum_run_args(A, X, buf, lr, momentum, steps, blow_up);
  const int code = momentum_run_side(side);
  const c10::OptionalDeviceGuard guard(at::device_of(A));
  const int64_t batch = batch_count(A, 2);
  check_stop_loss("inverse_momentum_run", stop_loss, batch);
  return stepped_run(A, batch, steps, first_loss, blow_up, stop_loss, {X, buf}, [&](int64_t step, double* member) {
    AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_inverse_momentum_run_cuda", [&] {
      C10_CUDA_CHECK(cuda::launch_momentum_step<scalar_t>(A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(),
                                                          buf.data_ptr<scalar_t>(), n, code, lr, momentum,
                                                          started || step > 0, member, batch, current_stream()));
    });
  });
}

at::Tensor inverse_adam_run_cuda(const at::Tensor& A, at::Tensor& X, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                                 c10::string_view side, const at::Tensor& lrs, double beta1, double beta2, double eps,
                                 int64_t step0, double first_loss, double blow_up, double stop_loss) {
  const int n = check_adam_run_args(A, X, exp_avg, exp_avg_sq, lrs, beta1, beta2, eps, step0, blow_up);
  const int code = momentum_run_side(side, "inverse_adam_run");
  const c10::OptionalDeviceGuard guard(at::device_of(A));
  const at::Tensor rates = lrs.contiguous();
  const int64_t steps = lrs.numel(), batch = batch_count(A, 2);
  check_stop_loss("inverse_adam_run", stop_loss, batch);
  return stepped_run(A, batch, steps, first_loss, blow_up, stop_loss, {X, exp_avg, exp_avg_sq},
                     [&](int64_t step, double* member) {
    // the final look (step == steps) is undone: any rate serves it
    const double lr = step < steps ? rates.data_ptr<double>()[step] : 0.0;
    AT_DISPATCH_FLOATING_TYPES(A.scalar_type(), "gdla_inverse_adam_run_cuda", [&] {
      C10_CUDA_CHECK(cuda::launch_adam_step<scalar_t>(
          A.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), exp_avg.data_ptr<scalar_t>(),
          exp_avg_sq.data_ptr<scalar_t>(), n, code, beta1, beta2, eps, lr, step0 + step + 1, member, batch,
          current_stream()));
    });
  });
}

// The device buffers of a whole run on one thread: its rates, each step's loss, the steps taken.
struct OneThreadRun {
  int64_t steps;
  at::Tensor rates, losses, done;

  OneThreadRun(const at::Tensor& lrs, const at::Tensor& like)
      : steps(lrs.numel()),
        rates(lrs.to(like.device()).contiguous()),
        losses(at::empty({steps}, like.options().dtype(at::kDouble))),
        done(at::zeros({1}, like.options().dtype(at::kLong))) {}

  // The losses of the steps taken.
  at::Tensor taken() const { return losses.narrow(0, 0, done.item<int64_t>()); }
};

at::Tensor svd_sgd_run_cuda(const at::Tensor& M, at::Tensor& U, at::Tensor& s, at::Tensor& V, at::Tensor& buf_u,
                            at::Tensor& buf_s, at::Tensor& buf_v, const at::Tensor& lrs, double weight_u,
                            double weight_v, double momentum, double dampening, bool nesterov, bool started,
                            bool sign_fix, double first_loss, double blow_up) {
  check_svd_run_args(M, U, s, V, buf_u, buf_s, buf_v, lrs, weight_u, weight_v, momentum, dampening, blow_up);
  const c10::OptionalDeviceGuard guard(at::device_of(M));
  const OneThreadRun run(lrs, M);
  AT_DISPATCH_FLOATING_TYPES(M.scalar_type(), "gdla_svd_sgd_run_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_svd_sgd_run<scalar_t>(
        M.data_ptr<scalar_t>(), static_cast<int>(M.size(0)), static_cast<int>(M.size(1)),
        static_cast<int>(U.size(1)), weight_u, weight_v, momentum, dampening, nesterov, U.data_ptr<scalar_t>(),
        s.data_ptr<scalar_t>(), V.data_ptr<scalar_t>(), buf_u.data_ptr<scalar_t>(), buf_s.data_ptr<scalar_t>(),
        buf_v.data_ptr<scalar_t>(), run.rates.data_ptr<double>(), run.steps, started, sign_fix, first_loss, blow_up,
        run.losses.data_ptr<double>(), run.done.data_ptr<int64_t>(), current_stream()));
  });
  return run.taken();
}

at::Tensor masked_sgd_run_cuda(const at::Tensor& init, const at::Tensor& omega, const at::Tensor& X,
                               const at::Tensor& Y, at::Tensor& U, at::Tensor& buf, const at::Tensor& lrs,
                               int64_t hops, c10::string_view activation, c10::string_view loss, double momentum,
                               double dampening, bool nesterov, bool started, double first_loss, double blow_up) {
  const MaskedRunCodes codes =
      check_masked_run_args(init, omega, X, Y, U, buf, lrs, hops, activation, loss, momentum, dampening, blow_up);
  const c10::OptionalDeviceGuard guard(at::device_of(U));
  const OneThreadRun run(lrs, U);
  AT_DISPATCH_FLOATING_TYPES(U.scalar_type(), "gdla_masked_sgd_run_cuda", [&] {
    C10_CUDA_CHECK(cuda::launch_masked_sgd_run<scalar_t>(
        init.data_ptr<scalar_t>(), omega.data_ptr<scalar_t>(), X.data_ptr<scalar_t>(), Y.data_ptr<scalar_t>(),
        static_cast<int>(U.size(0)), static_cast<int>(X.size(1)), static_cast<int>(hops), codes.activation,
        codes.mse, momentum, dampening, nesterov, U.data_ptr<scalar_t>(), buf.data_ptr<scalar_t>(),
        run.rates.data_ptr<double>(), run.steps, started, first_loss, blow_up, run.losses.data_ptr<double>(),
        run.done.data_ptr<int64_t>(), current_stream()));
  });
  return run.taken();
}

}  // namespace

TORCH_LIBRARY_IMPL(gdla, CUDA, m) {
  m.impl("masked_sgd_run", &masked_sgd_run_cuda);
  m.impl("svd_sgd_run", &svd_sgd_run_cuda);
  m.impl("inverse_adam_run", &inverse_adam_run_cuda);
  m.impl("inverse_momentum_run", &inverse_momentum_run_cuda);
  m.impl("inverse_mse", &inverse_mse_impl<CudaPrims>);
  m.impl("inverse_mse_and_grad", &inverse_mse_and_grad_impl<CudaPrims>);
  m.impl("inverse_mse_backward", &inverse_mse_backward_impl<CudaPrims>);
  m.impl("svd_loss", &svd_loss_impl<CudaPrims>);
  m.impl("svd_loss_and_grad", &svd_loss_and_grad_impl<CudaPrims>);
  m.impl("masked_hadamard", &masked_hadamard_cuda);
  m.impl("masked_update_", &masked_update_cuda);
  m.impl("small_inverse_newton_schulz", &newton_schulz_cuda);
  m.impl("small_inverse_residuals", &residuals_cuda);
  m.impl("small_inverse_momentum", &heavy_ball_cuda);
}

}  // namespace gdla
