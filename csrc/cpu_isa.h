// Run-time choice of an instruction set for the CPU kernels: the default build stays portable
// (x86-64 baseline), and hot loops are compiled a second time for AVX2 with
// __attribute__((target("arch=x86-64-v3"))) (and the lane kernels a third time for AVX-512,
// "arch=x86-64-v4"), picked here when the CPU has it. The AVX2 build may
// fuse a multiply and an add into one FMA (GCC contracts by default), so it agrees with the
// portable build to rounding, not bitwise; a machine always picks the same build, so its runs
// are bit-reproducible (and a whole run equals the same kernel stepped one step a call).
#pragma once

#include <algorithm>
#include <cstdlib>

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

namespace gdla {

#ifdef GDLA_RUN_X86_DISPATCH
template <typename F>
GDLA_TARGET_AVX2 auto call_avx2(const F& f) {
  return f();
}
#endif

// f() from the AVX2 build where the CPU has it, else from the portable one. f must be an
// always_inline lambda (GDLA_LAMBDA_INLINE), so its body is compiled into each build.
template <typename F>
auto call_best(const F& f) {
#ifdef GDLA_RUN_X86_DISPATCH
  if (has_avx2()) return call_avx2(f);
#endif
  return f();
}

// Widest SIMD vector (bytes) the lane kernels may use on this CPU: 64 (AVX-512), 32 (AVX2) or 16
// (the x86-64 baseline, or any other CPU). GDLA_CPU_SIMD_BYTES=16|32 caps it (to test each path).
inline int simd_bytes() {
  int widest = 16;
#ifdef GDLA_RUN_X86_DISPATCH
  static const int supported = [] {
    __builtin_cpu_init();
    const bool v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    const bool v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
                    __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    return v4 ? 64 : (v3 ? 32 : 16);
  }();
  widest = supported;
#endif
  if (const char* cap = std::getenv("GDLA_CPU_SIMD_BYTES")) {
    const int limit = std::atoi(cap);
    if (limit >= 16) widest = std::min(widest, limit >= 64 ? 64 : (limit >= 32 ? 32 : 16));
  }
  return widest;
}

}  // namespace gdla
