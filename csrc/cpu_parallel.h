// OpenMP helpers of the CPU kernels.
//
// The kernels use OpenMP directly (the extension is built with -fopenmp and shares torch's
// libgomp, so torch.set_num_threads applies to them too). Small inputs stay on one thread:
// forking a team costs microseconds, more than a 4x4 problem takes.
#pragma once

#include <cstdint>

namespace gdla {

// Elements below which a loop runs on the calling thread.
constexpr int64_t kParallelGrain = 32768;

// Reductions sum fixed-size chunks and then the chunk sums in order, so a loss does not depend
// on the number of threads.
constexpr int64_t kReductionChunk = 8192;

}  // namespace gdla
