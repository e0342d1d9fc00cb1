// Argument checks of the masked-Hadamard and small-inverse ops, shared by CPU and CUDA.
#pragma once

#include <algorithm>
#include <tuple>
#include <vector>

#include "checks.h"
#include "small_limits.h"
#include "small_run_loop.h"  // small::diverged, for the CUDA stepped runs

#include <optional>
#include <string>

#include <cmath>

namespace gdla {

// The whole-run kernels' divergence factor (small::diverged): a number > 0.
inline void check_blow_up(const char* op, double blow_up) {
  TORCH_CHECK_VALUE(blow_up > 0.0, op, ": blow_up must be > 0; received ", blow_up);
}

inline void check_finite_number(double value, const char* name, const char* op, bool positive) {
  TORCH_CHECK_VALUE(std::isfinite(value) && (positive ? value > 0.0 : value >= 0.0), op, ": ", name,
                    " must be a finite number ", (positive ? "> 0" : ">= 0"), "; received ", value);
}

// ``t`` must be a tensor like ``U``: same dtype, device and shape.
inline void check_same_as_U(const at::Tensor& t, const char* name, const at::Tensor& U, const char* op) {
  check_like(t, name, U, "U", op);
  check_shape(t, name, U.sizes(), "to match U", op);
}

inline void check_masked_hadamard_args(const at::Tensor& init, const at::Tensor& omega, const at::Tensor& U) {
  const char* op = "masked_hadamard";
  check_float(U, op, "U");
  check_same_as_U(init, "init", U, op);
  check_same_as_U(omega, "omega", U, op);
}

inline void check_masked_update_args(const at::Tensor& U, const at::Tensor& omega, const at::Tensor& G, double lr,
                                     double momentum, const std::optional<at::Tensor>& buf) {
  const char* op = "masked_update_";
  check_float(U, op, "U");
  check_same_as_U(omega, "omega", U, op);
  check_same_as_U(G, "G", U, op);
  check_finite_number(lr, "lr", op, /*positive=*/false);
  check_finite_number(momentum, "momentum", op, /*positive=*/false);
  if (buf.has_value()) {
    check_same_as_U(*buf, "buf", U, op);
  } else {
    TORCH_CHECK_VALUE(momentum == 0.0, op, ": momentum=", momentum,
                      " needs buf, a tensor like U that holds the velocity; received buf=None");
  }
}

// A: (..., n, n) with 1 <= n <= 16. Returns n.
inline int check_small_batch(const at::Tensor& A, const char* op) {
  check_matrix(A, op, "A");
  const int64_t n = A.size(-1);
  TORCH_CHECK_VALUE(A.size(-2) == n && n <= small::kMaxN, op, ": A must hold square n x n matrices with n <= ",
                    small::kMaxN, " (each problem is solved in registers); received shape ", shape_str(A.sizes()));
  return static_cast<int>(n);
}

inline int check_newton_schulz_args(const at::Tensor& A, const std::optional<at::Tensor>& X0, int64_t max_steps,
                                    double tol) {
  const char* op = "small_inverse_newton_schulz";
  const int n = check_small_batch(A, op);
  if (X0.has_value()) {
    check_like(*X0, "X0", A, "A", op);
    check_shape(*X0, "X0", A.sizes(), "to match A", op);
  }
  TORCH_CHECK_VALUE(max_steps >= 0 && max_steps <= INT32_MAX, op,
                    ": max_steps must be an integer in [0, 2^31); received ", max_steps);
  check_finite_number(tol, "tol", op, /*positive=*/false);
  return n;
}

inline int check_small_residuals_args(const at::Tensor& A, const at::Tensor& X) {
  const char* op = "small_inverse_residuals";
  const int n = check_small_batch(A, op);
  check_like(X, "X", A, "A", op);
  check_shape(X, "X", A.sizes(), "to match A", op);
  return n;
}

inline int check_heavy_ball_args(const at::Tensor& A, const at::Tensor& X0, double lr, double momentum,
                                 int64_t steps) {
  const char* op = "small_inverse_momentum";
  const int n = check_small_batch(A, op);
  check_like(X0, "X0", A, "A", op);
  check_shape(X0, "X0", A.sizes(), "to match A", op);
  check_finite_number(lr, "lr", op, /*positive=*/true);
  TORCH_CHECK_VALUE(std::isfinite(momentum) && momentum >= 0.0 && momentum < 1.0, op,
                    ": momentum must be a number in [0, 1); received ", momentum);
  TORCH_CHECK_VALUE(steps >= 0 && steps <= INT32_MAX, op, ": steps must be an integer in [0, 2^31); received ",
                    steps);
  return n;
}

// inverse_momentum_run: A square n x n with n <= 8 (a problem in registers); X, buf like A and
// contiguous (updated in place). Returns n.
// A whole-run kernel's A: square n x n matrices with n <= kMaxUnrolledN (a problem in registers). Returns n.
inline int check_unrolled_square(const at::Tensor& A, const char* op) {
  check_matrix(A, op, "A");
  const int64_t n = A.size(-1);
  TORCH_CHECK_VALUE(A.size(-2) == n && n >= 1 && n <= small::kMaxUnrolledN, op,
                    ": A must hold square n x n matrices with n <= ", small::kMaxUnrolledN, "; received shape ",
                    shape_str(A.sizes()));
  return static_cast<int>(n);
}

inline int check_momentum_run_args(const at::Tensor& A, const at::Tensor& X, const at::Tensor& buf, double lr,
                                   double momentum, int64_t steps, double blow_up) {
  const char* op = "inverse_momentum_run";
  const int n = check_unrolled_square(A, op);
  check_like(X, "X", A, "A", op);
  check_shape(X, "X", A.sizes(), "to match A", op);
  check_like(buf, "buf", A, "A", op);
  check_shape(buf, "buf", A.sizes(), "to match A", op);
  TORCH_CHECK_VALUE(A.is_contiguous() && X.is_contiguous() && buf.is_contiguous(), op,
                    ": A, X and buf must be contiguous (X and buf are updated in place)");
  TORCH_CHECK_VALUE(std::isfinite(lr) && lr > 0.0, op, ": lr must be a finite number > 0; received ", lr);
  TORCH_CHECK_VALUE(std::isfinite(momentum) && momentum >= 0.0 && momentum < 1.0, op,
                    ": momentum must be a number in [0, 1); received ", momentum);
  TORCH_CHECK_VALUE(steps >= 0, op, ": steps must be an integer >= 0; received ", steps);
  check_blow_up(op, blow_up);
  return static_cast<int>(n);
}

// The whole-run kernels' stop_loss: negative (no test) or a number >= 0 for one problem. Returns
// the extra slot the losses then take (the loss at the final iterate): 0 or 1.
inline int64_t check_stop_loss(const char* op, double stop_loss, int64_t batch) {
  TORCH_CHECK_VALUE(!std::isnan(stop_loss), op, ": stop_loss must be a number (negative: no test); received nan");
  if (stop_loss < 0.0) return 0;
  TORCH_CHECK_VALUE(batch == 1, op, ": stop_loss tests one problem's loss, so A must hold one matrix; received a "
                    "batch of ", batch);
  return 1;
}

// The whole-run kernels' rates: a 1-D float64 CPU tensor, one learning rate per step.
inline void check_run_rates(const char* op, const at::Tensor& lrs) {
  TORCH_CHECK_VALUE(lrs.dim() == 1 && lrs.scalar_type() == at::kDouble && lrs.device().is_cpu(), op,
                    ": lrs must be a 1-D float64 CPU tensor (one rate per step); received ", lrs.scalar_type(), " ",
                    shape_str(lrs.sizes()), " on ", lrs.device());
}

// SGD's momentum and dampening (small::SgdRule, small_rules.h), each in [0, 1).
inline void check_sgd_rule(const char* op, double momentum, double dampening) {
  TORCH_CHECK_VALUE(momentum >= 0.0 && momentum < 1.0 && dampening >= 0.0 && dampening < 1.0, op,
                    ": momentum and dampening must be in [0, 1); received ", momentum, ", ", dampening);
}

// inverse_adam_run: A square n x n with n <= 16; X and the two moments like A and contiguous
// (updated in place); lrs a 1-D float64 CPU tensor of positive finite rates, one per step. Returns n.
inline int check_adam_run_args(const at::Tensor& A, const at::Tensor& X, const at::Tensor& exp_avg,
                               const at::Tensor& exp_avg_sq, const at::Tensor& lrs, double beta1, double beta2,
                               double eps, int64_t step0, double blow_up) {
  const char* op = "inverse_adam_run";
  check_matrix(A, op, "A");
  const int64_t n = A.size(-1);
  TORCH_CHECK_VALUE(A.size(-2) == n && n >= 1 && n <= small::kMaxN, op, ": A must hold square n x n matrices with n <= ",
                    small::kMaxN, "; received shape ", shape_str(A.sizes()));
  for (const auto& [tensor, name] : {std::pair<const at::Tensor&, const char*>{X, "X"}, {exp_avg, "exp_avg"},
                                     {exp_avg_sq, "exp_avg_sq"}}) {
    check_like(tensor, name, A, "A", op);
    check_shape(tensor, name, A.sizes(), "to match A", op);
    TORCH_CHECK_VALUE(tensor.is_contiguous(), op, ": ", name, " must be contiguous (it is updated in place)");
  }
  TORCH_CHECK_VALUE(A.is_contiguous(), op, ": A must be contiguous");
  check_run_rates(op, lrs);
  TORCH_CHECK_VALUE(std::isfinite(beta1) && beta1 >= 0.0 && beta1 < 1.0, op, ": beta1 must be in [0, 1); received ",
                    beta1);
  TORCH_CHECK_VALUE(std::isfinite(beta2) && beta2 >= 0.0 && beta2 < 1.0, op, ": beta2 must be in [0, 1); received ",
                    beta2);
  TORCH_CHECK_VALUE(std::isfinite(eps) && eps > 0.0, op, ": eps must be a finite number > 0; received ", eps);
  TORCH_CHECK_VALUE(step0 >= 0, op, ": step0 must be an integer >= 0; received ", step0);
  check_blow_up(op, blow_up);
  return static_cast<int>(n);
}

// svd_sgd_run: M (m x n, m, n <= 16), U (m x k), s (k), V (n x k) with 1 <= k <= min(m, n), the
// buffers like their parameters, all contiguous and alike; lrs as for inverse_adam_run.
inline void check_svd_run_args(const at::Tensor& M, const at::Tensor& U, const at::Tensor& s, const at::Tensor& V,
                               const at::Tensor& buf_u, const at::Tensor& buf_s, const at::Tensor& buf_v,
                               const at::Tensor& lrs, double weight_u, double weight_v, double momentum,
                               double dampening, double blow_up) {
  const char* op = "svd_sgd_run";
  TORCH_CHECK_VALUE(M.dim() == 2 && M.size(0) >= 1 && M.size(1) >= 1 && M.size(0) <= small::kMaxN &&
                        M.size(1) <= small::kMaxN,
                    op, ": M must be one m x n matrix with m, n <= ", small::kMaxN, "; received shape ",
                    shape_str(M.sizes()));
  check_matrix(M, op, "M");
  const int64_t k = U.dim() == 2 ? U.size(1) : 0;
  TORCH_CHECK_VALUE(k >= 1 && k <= std::min(M.size(0), M.size(1)), op,
                    ": U must have shape (m, k) with 1 <= k <= min(m, n); received ", shape_str(U.sizes()));
  const std::vector<int64_t> shape_u = {M.size(0), k}, shape_s = {k}, shape_v = {M.size(1), k};
  for (const auto& [tensor, name, shape] :
       {std::tuple<const at::Tensor&, const char*, const std::vector<int64_t>&>{U, "U", shape_u},
        {s, "s", shape_s}, {V, "V", shape_v}, {buf_u, "buf_u", shape_u}, {buf_s, "buf_s", shape_s},
        {buf_v, "buf_v", shape_v}}) {
    check_like(tensor, name, M, "M", op);
    check_shape(tensor, name, shape, "to match M and U", op);
    TORCH_CHECK_VALUE(tensor.is_contiguous(), op, ": ", name, " must be contiguous (it is updated in place)");
  }
  TORCH_CHECK_VALUE(M.is_contiguous(), op, ": M must be contiguous");
  check_run_rates(op, lrs);
  TORCH_CHECK_VALUE(weight_u >= 0.0 && weight_v >= 0.0, op, ": weight_u and weight_v must be >= 0; received ",
                    weight_u, ", ", weight_v);
  check_sgd_rule(op, momentum, dampening);
  check_blow_up(op, blow_up);
}

// masked_sgd_run: one system, init and omega (n x n, n <= 16), X and Y (n x p, p <= 32), U and buf
// like init, all contiguous and alike; hops in 1..4; lrs as for inverse_adam_run.
struct MaskedRunCodes {
  int activation;  // 0 identity, 1 relu, 2 tanh, 3 sigmoid, 4 cube
  bool mse;
};

inline MaskedRunCodes check_masked_run_args(const at::Tensor& init, const at::Tensor& omega, const at::Tensor& X,
                                            const at::Tensor& Y, const at::Tensor& U, const at::Tensor& buf,
                                            const at::Tensor& lrs, int64_t hops, c10::string_view activation,
                                            c10::string_view loss, double momentum, double dampening,
                                            double blow_up) {
  const char* op = "masked_sgd_run";
  TORCH_CHECK_VALUE(U.dim() == 2 && U.size(0) == U.size(1) && U.size(0) >= 1 && U.size(0) <= small::kMaxN, op,
                    ": U must be one square n x n matrix with n <= ", small::kMaxN, "; received shape ",
                    shape_str(U.sizes()));
  check_matrix(U, op, "U");
  const int64_t n = U.size(0);
  TORCH_CHECK_VALUE(X.dim() == 2 && X.size(0) == n && X.size(1) >= 1 && X.size(1) <= small::kMaxColumns, op,
                    ": X must have shape (n, p) with p <= ", small::kMaxColumns, "; received ", shape_str(X.sizes()));
  const std::vector<int64_t> square = {n, n}, data = {n, X.size(1)};
  for (const auto& [tensor, name, shape] : {std::tuple<const at::Tensor&, const char*, const std::vector<int64_t>&>{
                                                init, "init", square},
                                            {omega, "omega", square}, {X, "X", data}, {Y, "Y", data},
                                            {buf, "buf", square}}) {
    check_like(tensor, name, U, "U", op);
    check_shape(tensor, name, shape, "to match U and X", op);
    TORCH_CHECK_VALUE(tensor.is_contiguous(), op, ": ", name, " must be contiguous");
  }
  TORCH_CHECK_VALUE(U.is_contiguous(), op, ": U must be contiguous (it is updated in place)");
  check_run_rates(op, lrs);
  TORCH_CHECK_VALUE(hops >= 1 && hops <= small::kMaxHops, op, ": hops must be in 1..", small::kMaxHops,
                    "; received ", hops);
  check_sgd_rule(op, momentum, dampening);
  check_blow_up(op, blow_up);
  MaskedRunCodes codes{-1, false};
  const char* names[] = {"identity", "relu", "tanh", "sigmoid", "cube"};
  for (int i = 0; i < 5; ++i)
    if (activation == names[i]) codes.activation = i;
  TORCH_CHECK_VALUE(codes.activation >= 0, op,
                    ": activation must be 'identity', 'relu', 'tanh', 'sigmoid' or 'cube'; received '",
                    std::string(activation), "'");
  TORCH_CHECK_VALUE(loss == "frobenius" || loss == "mse", op, ": loss must be 'frobenius' or 'mse'; received '",
                    std::string(loss), "'");
  codes.mse = loss == "mse";
  return codes;
}

// The side code (0 right, 1 left, 2 both) of the per-problem kernels, as parse_side reads it.
inline int momentum_run_side(c10::string_view side, const char* op = "inverse_momentum_run", bool both = true) {
  const char* expected = both ? "'right', 'left' or 'both'" : "'right', 'left' (for 'both', the larger of the two)";
  return static_cast<int>(parse_side(side, op, expected, both));
}

}  // namespace gdla
