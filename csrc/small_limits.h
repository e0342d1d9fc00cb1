// The kernels' size limits and dtypes: the one home of these facts. registration.cpp exports
// kLimits and kDtypes as the op gdla::limits, which gdla/limits.py reads for Python (the wrappers'
// checks, the fused-path gates of the plugins). No torch headers here: the CUDA kernels include it.
#pragma once

namespace gdla {
namespace small {

// Largest n the batched tiny-problem kernels accept (a problem in local storage: 16 x 16 arrays).
constexpr int kMaxN = 16;
// Largest n with a fully unrolled, register-resident specialisation (the whole-run momentum
// kernel, the small path of the fused inverse-MSE loss).
constexpr int kMaxUnrolledN = 8;
// masked_sgd_run: the most columns of X, and the most hops.
constexpr int kMaxColumns = 32;
constexpr int kMaxHops = 4;

struct Limit {
  const char* name;  // the Python constant's name (gdla.limits)
  int value;
};

constexpr Limit kLimits[] = {
    {"SMALL_MAX_N", kMaxN},
    {"RUN_MAX_N", kMaxUnrolledN},
    {"RUN_MAX_COLUMNS", kMaxColumns},
    {"RUN_MAX_HOPS", kMaxHops},
};

// The dtypes every kernel is instantiated for (AT_DISPATCH_FLOATING_TYPES: float and double),
// named as torch names them (torch.float32, torch.float64).
constexpr const char* kDtypes[] = {"float32", "float64"};

}  // namespace small
}  // namespace gdla
