// The loop of one problem's whole run (every whole-run kernel): the divergence test, and the
// per-step pass / update / stop_loss test. No torch headers here.
#pragma once

#include <cmath>
#include <cstdint>

#include "small_matrix.h"

namespace gdla {
namespace small {

// Whether a run stops after a step with this loss: not finite, or blown up over the run's first.
GDLA_HD bool diverged(double loss, double first, double blow_up, bool is_first) {
  if (!(loss - loss == 0.0)) return true;  // NaN or +-inf
  const double floor = first > 1e-30 ? first : 1e-30;
  return !is_first && loss > blow_up * floor;
}

// The loop of one problem's whole run of ``steps`` steps. ``pass()`` evaluates the loss at the
// current iterate (keeping what the update needs); ``update(s)`` then takes step s (0-based, of
// this call) from that pass. losses[s] receives step s's loss (the loss where it started); the run
// stops after a step whose loss diverged. With stop_loss >= 0 (a tolerance on the loss, which a
// caller derives from one on the residual) the run also tests where each step leaves the problem,
// with the pass the next step needs anyway: it stops, that step not taken, once the loss at the
// current iterate is <= stop_loss (never before the call's first step), and losses[done] receives
// the loss at the final iterate (NaN after a diverging step), so ``losses`` holds steps + 1 slots.
// Returns the steps taken.
template <typename Pass, typename Update>
GDLA_HD int64_t run_loop(int64_t steps, double stop_loss, double first, double blow_up, double* losses, Pass&& pass,
                         Update&& update) {
  const bool test = stop_loss >= 0.0;
  bool is_first = first != first;  // NaN: this call's first step sets it
  int64_t done = 0;
  if (steps == 0 && !test) return 0;
  for (;;) {
    const double loss = pass();
    if (test && (done == steps || (done > 0 && loss <= stop_loss))) {
      losses[done] = loss;
      break;
    }
    update(done);
    losses[done++] = loss;
    if (diverged(loss, first, blow_up, is_first)) {
      if (test) losses[done] = NAN;
      break;
    }
    if (is_first) first = loss, is_first = false;
    if (!test && done == steps) break;
  }
  return done;
}

}  // namespace small
}  // namespace gdla
