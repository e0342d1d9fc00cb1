// Device-independent drivers of the fused loss-and-gradient ops (inverse MSE, SVD loss).
//
// A driver checks its arguments, runs the matrix products through ATen (cuBLAS on CUDA, the CPU
// BLAS on CPU) and leaves the elementwise work to a ``Prims`` policy with two fused kernels:
//
//   Prims::residual_(P, target, store, store_scale, grad_scale, loss_scale, loss_acc)
//       R = P - target (target undefined: the identity of each trailing square block);
//       loss_acc += loss_scale * sum(R^2) when loss_acc is defined;
//       P <- store_scale * grad_scale * R when store is true (grad_scale: optional 0-dim tensor).
//   Prims::svd_combine(UG, W, U, s, d) -> (gU, gs)
//       gU = UG + W * d (UG undefined: zero), gs_j = 2 s_j sum_i U_ij W_ij, per batch entry.
//   Prims::inverse_mse_small(A, M, side, store_scale, grad_scale, loss_scale, loss_acc, gM, gA)
//       square problems with n <= 8, one per thread in registers (small_inverse_math.h):
//       loss_acc += loss_scale sum((P - I)^2), and the gradients gM, gA (undefined: skipped)
//       from R = store_scale grad_scale (P - I). No BLAS call: for batches of tiny problems the
//       batched products cost more than the arithmetic.
//
// csrc/cpu_losses.cpp instantiates the drivers with the CPU kernels, csrc/cuda/register_cuda.cu
// with the CUDA ones, so both devices share the argument checks and the product schedule.
// Everything runs on 3-D views (batch, rows, cols); an unbatched input is a batch of one.
#pragma once

#include "checks.h"
#include "small_limits.h"

#include <ATen/DeviceGuard.h>
#include <ATen/ops/baddbmm.h>
#include <ATen/ops/bmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>

#include <cmath>
#include <tuple>

namespace gdla {

// ---------------------------------------------------------------------------------------------
// inverse MSE: loss = sum over the batch of mean((P - I)^2), P = A@M, M@A or (A@M + M@A)/2
// ---------------------------------------------------------------------------------------------

struct InverseArgs {
  Side side;
  at::Tensor A3;  // shape: (B, m, n)
  at::Tensor M3;  // shape: (B, n, m)
};

inline InverseArgs check_inverse_args(const at::Tensor& A, const at::Tensor& M, c10::string_view side_name,
                                      const char* op) {
  const Side side = parse_side(side_name, op);
  check_matrix(A, op, "A");
  check_float(M, op, "M");
  check_like(M, "M", A, "A", op);
  const int64_t m = A.size(-2), n = A.size(-1);
  check_shape(M, "M", with_tail(batch_dims(A, 2), {n, m}), "to match A of shape " + shape_str(A.sizes()), op);
  TORCH_CHECK_VALUE(side != Side::Both || m == n, op, ": side='both' needs a square A (A@M and M@A have ",
                    "different shapes otherwise); received A of shape ", shape_str(A.sizes()));
  const int64_t batch = batch_count(A, 2);
  return {side, A.reshape({batch, m, n}), M.reshape({batch, n, m})};
}

// The side switch of the drivers, written once: X Y ('right'), Y X ('left'), or for 'both'
// beta X Y + alpha Y X (the second product accumulated into the first).
inline at::Tensor side_bmm(Side side, const at::Tensor& X, const at::Tensor& Y, double beta = 1.0,
                           double alpha = 1.0) {
  switch (side) {
    case Side::Right:
      return at::bmm(X, Y);
    case Side::Left:
      return at::bmm(Y, X);
    default: {
      at::Tensor P = at::bmm(X, Y);
      return P.baddbmm_(Y, X, beta, alpha);
    }
  }
}

// The product compared with the identity, in a fresh contiguous buffer of shape (B, k, k).
inline at::Tensor inverse_product(const InverseArgs& args) {
  return side_bmm(args.side, args.A3, args.M3, /*beta=*/0.5, /*alpha=*/0.5).contiguous();
}

// d loss / d P = c (P - I) with c = 2/k^2; for 'both' the 1/2 of the product folds in: c = 1/k^2.
inline double inverse_store_scale(Side side, int64_t k) {
  return (side == Side::Both ? 1.0 : 2.0) / static_cast<double>(k * k);
}

// Gradient w.r.t. M from the scaled residual R: right A^T R, left R A^T, both A^T R + R A^T.
inline at::Tensor inverse_grad_M(const InverseArgs& args, const at::Tensor& R) {
  return side_bmm(args.side, args.A3.transpose(1, 2), R);
}

// Gradient w.r.t. A from the scaled residual R: right R M^T, left M^T R, both R M^T + M^T R.
inline at::Tensor inverse_grad_A(const InverseArgs& args, const at::Tensor& R) {
  return side_bmm(args.side, R, args.M3.transpose(1, 2));
}

// Square problems up to the unrolled size take the register-resident path.
inline bool small_inverse_path(const InverseArgs& args) {
  return args.A3.size(1) == args.A3.size(2) && args.A3.size(1) <= small::kMaxUnrolledN;
}

inline at::Tensor loss_accumulator(const at::Tensor& like) {
  return at::zeros({}, like.options().dtype(at::kDouble));
}

template <class Prims>
at::Tensor inverse_mse_impl(const at::Tensor& A, const at::Tensor& M, c10::string_view side) {
  const InverseArgs args = check_inverse_args(A, M, side, "inverse_mse");
  const c10::OptionalDeviceGuard guard(at::device_of(A));
  at::Tensor acc = loss_accumulator(A);
  if (small_inverse_path(args)) {
    const double k = static_cast<double>(args.A3.size(1));
    Prims::inverse_mse_small(args.A3.contiguous(), args.M3.contiguous(), args.side, 0.0, at::Tensor(), 1.0 / (k * k),
                             acc, at::Tensor(), at::Tensor());
    return acc.to(A.scalar_type());
  }
  at::Tensor P = inverse_product(args);
  const int64_t k = P.size(-1);
  Prims::residual_(P, at::Tensor(), /*store=*/false, 0.0, at::Tensor(), 1.0 / static_cast<double>(k * k), acc);
  return acc.to(A.scalar_type());
}

template <class Prims>
std::tuple<at::Tensor, at::Tensor> inverse_mse_and_grad_impl(const at::Tensor& A, const at::Tensor& M,
                                                              c10::string_view side) {
  const InverseArgs args = check_inverse_args(A, M, side, "inverse_mse_and_grad");
  const c10::OptionalDeviceGuard guard(at::device_of(A));
  at::Tensor acc = loss_accumulator(A);
  if (small_inverse_path(args)) {
    const int64_t k = args.A3.size(1);
    at::Tensor grad_M = at::empty(args.M3.sizes(), M.options());
    Prims::inverse_mse_small(args.A3.contiguous(), args.M3.contiguous(), args.side,
                             inverse_store_scale(args.side, k), at::Tensor(), 1.0 / static_cast<double>(k * k), acc,
                             grad_M, at::Tensor());
    return {acc.to(A.scalar_type()), grad_M.view(M.sizes())};
  }
  at::Tensor P = inverse_product(args);
  const int64_t k = P.size(-1);
  // One pass: P - I, its squared sum, and the scaled residual left in P for the gradient product.
  Prims::residual_(P, at::Tensor(), /*store=*/true, inverse_store_scale(args.side, k), at::Tensor(),
                   1.0 / static_cast<double>(k * k), acc);
  return {acc.to(A.scalar_type()), inverse_grad_M(args, P).view(M.sizes())};
}

// Backward of inverse_mse: (grad_A, grad_M) scaled by the incoming 0-dim gradient; grad_A is an
// empty (0,) tensor when need_grad_A is false, which saves one product.
template <class Prims>
std::tuple<at::Tensor, at::Tensor> inverse_mse_backward_impl(const at::Tensor& grad, const at::Tensor& A,
                                                              const at::Tensor& M, c10::string_view side,
                                                              bool need_grad_A) {
  const char* op = "inverse_mse_backward";
  const InverseArgs args = check_inverse_args(A, M, side, op);
  check_like(grad, "grad", A, "A", op);
  TORCH_CHECK_VALUE(grad.dim() == 0, op, ": grad must be a 0-dim tensor (the loss is a scalar); received shape ",
                    shape_str(grad.sizes()));
  const c10::OptionalDeviceGuard guard(at::device_of(A));
  if (small_inverse_path(args)) {
    const int64_t k = args.A3.size(1);
    at::Tensor grad_M = at::empty(args.M3.sizes(), M.options());
    at::Tensor grad_A = need_grad_A ? at::empty(args.A3.sizes(), A.options()) : at::Tensor();
    Prims::inverse_mse_small(args.A3.contiguous(), args.M3.contiguous(), args.side,
                             inverse_store_scale(args.side, k), grad, 0.0, at::Tensor(), grad_M, grad_A);
    return {need_grad_A ? grad_A.view(A.sizes()) : at::empty({0}, A.options()), grad_M.view(M.sizes())};
  }
  at::Tensor P = inverse_product(args);
  const int64_t k = P.size(-1);
  Prims::residual_(P, at::Tensor(), /*store=*/true, inverse_store_scale(args.side, k), grad, 0.0, at::Tensor());
  at::Tensor grad_A = need_grad_A ? inverse_grad_A(args, P).view(A.sizes()) : at::empty({0}, A.options());
  return {grad_A, inverse_grad_M(args, P).view(M.sizes())};
}

// ---------------------------------------------------------------------------------------------
// SVD loss: mse(U diag(s^2) V^T, M) + weight_u mse(U^T U, I_k) + weight_v mse(V^T V, I_k)
// ---------------------------------------------------------------------------------------------

struct SvdArgs {
  at::Tensor M3;  // shape: (B, m, n)
  at::Tensor U3;  // shape: (B, m, k)
  at::Tensor s2;  // shape: (B, k)
  at::Tensor V3;  // shape: (B, n, k)
};

inline void check_weight(double weight, const char* name, const char* op) {
  TORCH_CHECK_VALUE(std::isfinite(weight) && weight >= 0.0, op, ": ", name,
                    " must be a finite number >= 0; received ", weight);
}

inline SvdArgs check_svd_args(const at::Tensor& M, const at::Tensor& U, const at::Tensor& s, const at::Tensor& V,
                              double weight_u, double weight_v, const char* op) {
  check_matrix(M, op, "M");
  check_matrix(U, op, "U");
  check_like(U, "U", M, "M", op);
  check_like(s, "s", M, "M", op);
  check_like(V, "V", M, "M", op);
  const auto batch = batch_dims(M, 2);
  const int64_t m = M.size(-2), n = M.size(-1), k = U.size(-1);
  const std::string of_M = "to match M of shape " + shape_str(M.sizes());
  check_shape(U, "U", with_tail(batch, {m, k}), of_M, op);
  check_shape(s, "s", with_tail(batch, {k}), "to match U of shape " + shape_str(U.sizes()), op);
  check_shape(V, "V", with_tail(batch, {n, k}), of_M + " and U of shape " + shape_str(U.sizes()), op);
  check_weight(weight_u, "weight_u", op);
  check_weight(weight_v, "weight_v", op);
  const int64_t B = batch_count(M, 2);
  return {M.reshape({B, m, n}), U.reshape({B, m, k}), s.reshape({B, k}), V.reshape({B, n, k})};
}

// Adds weight * mse(X^T X, I) to acc; with store, returns the Gram residual scaled by
// 4 weight / k^2, so that X @ result is the gradient of that term w.r.t. X.
template <class Prims>
at::Tensor svd_gram_term(const at::Tensor& X3, double weight, bool store, at::Tensor& acc) {
  at::Tensor G = at::bmm(X3.transpose(1, 2), X3).contiguous();
  const double kk = static_cast<double>(G.size(-1) * G.size(-1));
  Prims::residual_(G, at::Tensor(), store, 4.0 * weight / kk, at::Tensor(), weight / kk, acc);
  return G;
}

template <class Prims>
at::Tensor svd_loss_impl(const at::Tensor& M, const at::Tensor& U, const at::Tensor& s, const at::Tensor& V,
                         double weight_u, double weight_v) {
  const SvdArgs a = check_svd_args(M, U, s, V, weight_u, weight_v, "svd_loss");
  const c10::OptionalDeviceGuard guard(at::device_of(M));
  const at::Tensor d = at::mul(a.s2, a.s2);
  at::Tensor P = at::bmm(at::mul(a.U3, d.unsqueeze(1)), a.V3.transpose(1, 2)).contiguous();
  at::Tensor acc = loss_accumulator(M);
  const double mn = static_cast<double>(P.size(-2) * P.size(-1));
  Prims::residual_(P, a.M3.contiguous(), /*store=*/false, 0.0, at::Tensor(), 1.0 / mn, acc);
  if (weight_u > 0.0) svd_gram_term<Prims>(a.U3, weight_u, /*store=*/false, acc);
  if (weight_v > 0.0) svd_gram_term<Prims>(a.V3, weight_v, /*store=*/false, acc);
  return acc.to(M.scalar_type());
}

template <class Prims>
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> svd_loss_and_grad_impl(
    const at::Tensor& M, const at::Tensor& U, const at::Tensor& s, const at::Tensor& V, double weight_u,
    double weight_v) {
  const SvdArgs a = check_svd_args(M, U, s, V, weight_u, weight_v, "svd_loss_and_grad");
  const c10::OptionalDeviceGuard guard(at::device_of(M));
  const at::Tensor d = at::mul(a.s2, a.s2);             // shape: (B, k)
  const at::Tensor X = at::mul(a.U3, d.unsqueeze(1));   // U diag(d), shape: (B, m, k)
  at::Tensor R = at::bmm(X, a.V3.transpose(1, 2)).contiguous();  // shape: (B, m, n)
  at::Tensor acc = loss_accumulator(M);
  const double mn = static_cast<double>(R.size(-2) * R.size(-1));
  // R <- (2/mn)(U diag(d) V^T - M): the gradient of the fit term w.r.t. the product.
  Prims::residual_(R, a.M3.contiguous(), /*store=*/true, 2.0 / mn, at::Tensor(), 1.0 / mn, acc);
  const at::Tensor W = at::bmm(R, a.V3);                 // R V, shape: (B, m, k)
  at::Tensor gV = at::bmm(R.transpose(1, 2), X);         // R^T U diag(d), shape: (B, n, k)
  at::Tensor UG;                                         // U (U^T U - I) 4 w_u / k^2
  if (weight_u > 0.0) UG = at::bmm(a.U3, svd_gram_term<Prims>(a.U3, weight_u, /*store=*/true, acc));
  if (weight_v > 0.0) gV.baddbmm_(a.V3, svd_gram_term<Prims>(a.V3, weight_v, /*store=*/true, acc));
  auto [gU, gs] = Prims::svd_combine(UG, W, a.U3.contiguous(), a.s2.contiguous(), d);
  return {acc.to(M.scalar_type()), gU.view(U.sizes()), gs.view(s.sizes()), gV.view(V.sizes())};
}

}  // namespace gdla
