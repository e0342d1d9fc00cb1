// The schemas of every gdla op, and the Python module gdla._C whose import loads them.
//
// Kernels register per device elsewhere (cpu_*.cpp for CPU, cuda/register_cuda.cu for CUDA);
// fake (meta) kernels and autograd formulas are registered from Python in gdla/ops.py.
// There is no pybind11 here: the module is empty and only exists so that ``import gdla._C``
// loads this shared library, whose static initialisers run the TORCH_LIBRARY registrations.
// That keeps the library within Python's limited API (one abi3 binary for every Python >= 3.10).
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <torch/csrc/autograd/autograd_not_implemented_fallback.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "small_limits.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace gdla {
namespace {

// Threads an OpenMP region of this library would use now; -1 if it was built without OpenMP.
int64_t openmp_max_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return -1;
#endif
}

// The kernels' limits (small_limits.h): their names and values, and the dtypes they take.
std::tuple<std::vector<std::string>, std::vector<int64_t>, std::vector<std::string>> limits() {
  std::vector<std::string> names, dtypes;
  std::vector<int64_t> values;
  for (const small::Limit& limit : small::kLimits) {
    names.emplace_back(limit.name);
    values.push_back(limit.value);
  }
  for (const char* dtype : small::kDtypes) dtypes.emplace_back(dtype);
  return {names, values, dtypes};
}

}  // namespace

TORCH_LIBRARY(gdla, m) {
  const std::vector<at::Tag> tags = {at::Tag::pt2_compliant_tag};
  // Inverse MSE: sum over the batch of mean((P - I)^2), P = A@M ('right'), M@A ('left') or their mean ('both').
  m.def("inverse_mse(Tensor A, Tensor M, str side='right') -> Tensor", tags);
  m.def("inverse_mse_and_grad(Tensor A, Tensor M, str side='right') -> (Tensor, Tensor)", tags);
  m.def("inverse_mse_backward(Tensor grad, Tensor A, Tensor M, str side, bool need_grad_A) -> (Tensor, Tensor)",
        tags);
  // Masked Hadamard: S = init + omega * U, and the fused masked (momentum) update.
  m.def("masked_hadamard(Tensor init, Tensor omega, Tensor U) -> Tensor", tags);
  m.def("masked_update_(Tensor(a!) U, Tensor omega, Tensor G, float lr, float momentum=0.0, Tensor(b!)? buf=None) -> ()",
        tags);
  // SVD loss: mse(U diag(s^2) V^T, M) + weight_u mse(U^T U, I) + weight_v mse(V^T V, I).
  m.def("svd_loss(Tensor M, Tensor U, Tensor s, Tensor V, float weight_u, float weight_v) -> Tensor", tags);
  m.def(
      "svd_loss_and_grad(Tensor M, Tensor U, Tensor s, Tensor V, float weight_u, float weight_v) "
      "-> (Tensor, Tensor, Tensor, Tensor)",
      tags);
  // ||P(X) - I||_F of each tiny square problem (P = A X 'right', X A 'left'), accumulated in double.
  m.def("small_inverse_residuals(Tensor A, Tensor X, str side) -> Tensor", tags);
  // Batches of tiny inverses, each problem iterated in registers until its own stop.
  m.def("small_inverse_newton_schulz(Tensor A, Tensor? X0, int max_steps, float tol) -> (Tensor, Tensor)", tags);
  m.def("small_inverse_momentum(Tensor A, Tensor X0, float lr, float momentum, int steps) -> Tensor", tags);
  // Newton-Schulz as gdla.solve runs it, many steps per call, the batch in lockstep: X updated in place; returns each
  // step's loss, the worst residual after each step, then the loss at the final X (float64).
  m.def(
      "small_inverse_newton_schulz_run(Tensor A, Tensor(a!) X, int steps, float tol, float first_loss, float blow_up, "
      "bool safe_start) -> Tensor",
      tags);
  // Seed 000's momentum on the inverse MSE, many steps per call: X, buf updated in place; returns each step's loss.
  m.def(
      "inverse_momentum_run(Tensor A, Tensor(a!) X, Tensor(b!) buf, str side, float lr, float momentum, int steps, "
      "bool started, float first_loss, float blow_up, float stop_loss=-1.) -> Tensor",
      tags);
  // torch.optim.Adam on the inverse MSE, one learning rate per step: X and the moments updated in place.
  m.def(
      "inverse_adam_run(Tensor A, Tensor(a!) X, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, str side, Tensor lrs, "
      "float beta1, float beta2, float eps, int step0, float first_loss, float blow_up, float stop_loss=-1.) -> Tensor",
      tags);
  // torch.optim.SGD on the penalised SVD loss of one small matrix, one rate per step, the sign fix after each.
  m.def(
      "svd_sgd_run(Tensor M, Tensor(a!) U, Tensor(b!) s, Tensor(c!) V, Tensor(d!) buf_u, Tensor(e!) buf_s, "
      "Tensor(f!) buf_v, Tensor lrs, float weight_u, float weight_v, float momentum, float dampening, bool nesterov, "
      "bool started, bool sign_fix, float first_loss, float blow_up) -> Tensor",
      tags);
  // torch.optim.SGD on the masked operator S = Init + Omega * U of one small system, one rate per step.
  m.def(
      "masked_sgd_run(Tensor init, Tensor omega, Tensor X, Tensor Y, Tensor(a!) U, Tensor(b!) buf, Tensor lrs, "
      "int hops, str activation, str loss, float momentum, float dampening, bool nesterov, bool started, "
      "float first_loss, float blow_up) -> Tensor",
      tags);
  m.def("openmp_max_threads() -> int", &openmp_max_threads);
  // The size limits (names, values) and dtypes of the kernels, read by gdla/limits.py.
  m.def("limits() -> (str[], int[], str[])", &limits);
}

// The ops that return gradients themselves (or are not differentiable) get torch's
// "not implemented" autograd kernel: backpropagating through them raises instead of silently
// giving no gradient, and masked_update_ refuses to change a leaf that requires grad in grad
// mode. (The version-counter bumps of the ops that write are done by their Python wrappers in
// gdla/ops.py and gdla/ops_small.py: this fallback bumps only mutable *returns*.) inverse_mse, masked_hadamard and svd_loss get real formulas from
// gdla/ops.py instead.
TORCH_LIBRARY_IMPL(gdla, Autograd, m) {
  for (const char* op : {"inverse_mse_and_grad", "inverse_mse_backward", "masked_update_", "svd_loss_and_grad",
                         "small_inverse_newton_schulz", "small_inverse_newton_schulz_run",
                         "small_inverse_momentum", "small_inverse_residuals",
                         "inverse_momentum_run", "inverse_adam_run", "svd_sgd_run", "masked_sgd_run"}) {
    m.impl(op, torch::autograd::autogradNotImplementedFallback());
  }
}

}  // namespace gdla

extern "C" {
PyObject* PyInit__C(void) {
  static PyModuleDef module = {
      PyModuleDef_HEAD_INIT,
      "gdla._C",
      "Registers the gdla custom ops (torch.ops.gdla.*); use them through gdla.ops.",
      -1,
      nullptr,
  };
  return PyModule_Create(&module);
}
}
