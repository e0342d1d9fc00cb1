// The stop rule of a batched whole-run kernel: a batch runs a chunk of steps without looking,
// then reads the chunk's losses; after a step that diverged it restores the chunk's start and
// runs exactly up to that step, so the state and the losses are those of stopping there (the
// same bits as a step-by-step run).
#pragma once

#include "small_run_loop.h"

#include <algorithm>
#include <cstdint>
#include <vector>

namespace gdla {

// ``state``: the arrays the run updates in place (each ``entries`` long), saved at every chunk's
// start. ``run(done, count, out)``: advances every problem ``count`` steps from step ``done`` of
// this call and writes each step's total loss to out[0..count). Returns the steps taken.
template <typename T, typename Run>
int64_t run_in_chunks(std::vector<T*> state, int64_t entries, int64_t steps, int64_t chunk_size, double first,
                      double blow_up, double* losses, Run&& run) {
  bool is_first = first != first;  // NaN: this call's first step sets it
  std::vector<T> saved(state.size() * static_cast<size_t>(entries));
  int64_t done = 0;
  while (done < steps) {
    const int64_t chunk = std::min(chunk_size, steps - done);
    for (size_t a = 0; a < state.size(); ++a) std::copy(state[a], state[a] + entries, saved.begin() + a * entries);
    run(done, chunk, losses + done);
    int64_t stop = -1;
    for (int64_t s = 0; s < chunk; ++s) {
      const double loss = losses[done + s];
      if (small::diverged(loss, first, blow_up, is_first)) {
        stop = s;
        break;
      }
      if (is_first) first = loss, is_first = false;
    }
    if (stop >= 0) {
      if (stop + 1 < chunk) {  // the run went on past the diverging step: replay up to it
        for (size_t a = 0; a < state.size(); ++a) {
          std::copy(saved.begin() + a * entries, saved.begin() + (a + 1) * entries, state[a]);
        }
        run(done, stop + 1, losses + done);
      }
      return done + stop + 1;
    }
    done += chunk;
  }
  return done;
}

}  // namespace gdla
