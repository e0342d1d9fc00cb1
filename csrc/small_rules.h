// The torch.optim update rules the whole-run kernels apply to one problem's entries (Adam, SGD),
// written in the order torch's single-tensor paths round them. No torch headers here.
#pragma once

#include "small_matrix.h"

namespace gdla {
namespace small {

// torch.optim.Adam's update (no weight decay, no amsgrad) on one problem's entries, written as
// torch's single-tensor path orders it: m <- m + (1 - beta1)(g - m); v <- v beta2 + (1 - beta2) g g;
// x <- x - (lr / (1 - beta1^t)) m / (sqrt(v) / sqrt(1 - beta2^t) + eps), t the 1-based step count.
template <typename T>
struct AdamRule {
  double beta1, beta2;
  T eps;

  GDLA_HD void apply(T* __restrict x, T* __restrict m, T* __restrict v, const T* __restrict g, T scale, int count,
                     double lr, int64_t t) const {
    const double bias1 = 1.0 - pow(beta1, static_cast<double>(t));
    const double bias2 = 1.0 - pow(beta2, static_cast<double>(t));
    const T step_size = static_cast<T>(lr / bias1), root2 = static_cast<T>(sqrt(bias2));
    const T w1 = static_cast<T>(1.0 - beta1), b2 = static_cast<T>(beta2), w2 = static_cast<T>(1.0 - beta2);
    for (int i = 0; i < count; ++i) {
      const T grad = scale * g[i];
      m[i] = m[i] + w1 * (grad - m[i]);
      v[i] = v[i] * b2 + w2 * grad * grad;
      const T denom = sqrt(v[i]) / root2 + eps;
      x[i] = x[i] - step_size * (m[i] / denom);
    }
  }
};

// torch.optim.SGD's update (no weight decay): with momentum, buf <- g on a run's first step, else
// buf <- momentum buf + (1 - dampening) g, and the direction is buf (g + momentum buf with
// nesterov); x <- x - lr direction.
template <typename T>
struct SgdRule {
  T momentum, dampening;
  bool nesterov;

  GDLA_HD void apply(T* x, T* buf, const T* g, int count, T lr, bool started) const {
    for (int i = 0; i < count; ++i) {
      T direction = g[i];
      if (momentum != T(0)) {
        buf[i] = started ? momentum * buf[i] + (T(1) - dampening) * g[i] : g[i];
        direction = nesterov ? g[i] + momentum * buf[i] : buf[i];
      }
      x[i] = x[i] - lr * direction;
    }
  }
};

}  // namespace small
}  // namespace gdla
