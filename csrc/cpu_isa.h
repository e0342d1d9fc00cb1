// Run-time choice of an instruction set for the CPU kernels: the default build stays portable
// (x86-64 baseline), and hot loops are compiled a second time for AVX2 with
// __attribute__((target("arch=x86-64-v3"))), picked here when the CPU has it. The AVX2 build may
// fuse a multiply and an add into one FMA (GCC contracts by default), so it agrees with the
// portable build to rounding, not bitwise; a machine always picks the same build, so its runs
// are bit-reproducible (and a whole run equals the same kernel stepped one step a call).
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define GDLA_RUN_X86_DISPATCH 1
#define GDLA_TARGET_AVX2 __attribute__((target("arch=x86-64-v3")))

namespace gdla {

inline bool has_avx2() {
  static const bool supported = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return supported;
}

}  // namespace gdla
#endif
