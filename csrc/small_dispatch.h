// Host-side dispatch of a runtime size n to the compile-time sizes the per-problem kernels are
// instantiated for: f receives std::integral_constant<int, N> (and, for dispatch_size, whether
// n == N is known at compile time).
#pragma once

#include <type_traits>

#include "small_limits.h"

namespace gdla {
namespace small {

// f(std::integral_constant<int, n>) for n in [N, kLast); any other n gets kLast.
template <int N, int kLast, typename F>
inline void dispatch_from(int n, F&& f) {
  if constexpr (N == kLast) {
    f(std::integral_constant<int, kLast>{});
  } else if (n == N) {
    f(std::integral_constant<int, N>{});
  } else {
    dispatch_from<N + 1, kLast>(n, f);
  }
}

// Every size n <= kMaxN (whole-run kernels with n == N).
template <typename F>
inline void dispatch_exact_size(int n, F&& f) {
  dispatch_from<1, kMaxN>(n, f);
}

// The register-resident sizes n <= kMaxUnrolledN.
template <typename F>
inline void dispatch_unrolled_size(int n, F&& f) {
  dispatch_from<1, kMaxUnrolledN>(n, f);
}

// f(std::integral_constant<int, N>, std::bool_constant<fixed>) for the specialisation that serves
// size n: one per n <= kMaxUnrolledN, one runtime-bounded (N = kMaxN) for the rest.
template <typename F>
inline void dispatch_size(int n, F&& f) {
  if (n >= 1 && n <= kMaxUnrolledN) {
    dispatch_unrolled_size(n, [&](auto size) { f(size, std::true_type{}); });
  } else {
    f(std::integral_constant<int, kMaxN>{}, std::false_type{});
  }
}

}  // namespace small
}  // namespace gdla
