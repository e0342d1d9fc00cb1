// The safe start of Newton-Schulz, X0 = A^T / (||A||_1 ||A||_inf), for which ||I - A X0||_2 < 1
// whenever A is invertible (||A||_2^2 <= ||A||_1 ||A||_inf): the one C++ home of the rule, used by
// the per-problem solver (small_inverse_math.h, CPU and CUDA) and by the CPU's SIMD-lane solver
// (cpu_lanes.h). gdla.MatrixInverse.safe_start is its Python twin.
//
// Where the product of the norms and its reciprocal are normal numbers, X0 = A^T (1 / (||A||_1
// ||A||_inf)) as it stands (the bits the kernels always gave there). Elsewhere (float32 matrices of
// size 1e19, whose product overflows, or 1e-19, whose reciprocal does) the factor is applied as
// 1 / (m1 m2) times two powers of two, the norms being m1 2^e1 and m2 2^e2 with m in [1/2, 1): the
// product is never formed, so nothing overflows or underflows before X0 itself would. A zero matrix
// (no inverse) gets a zero start, on which the iteration stays, never converging: the solvers
// report it as any singular member.
#pragma once

#include <limits>

#include "small_matrix.h"

namespace gdla {
namespace small {

// X0 = ((a * mantissa) * first) * second, entry by entry.
template <typename T>
struct SafeStartScale {
  T mantissa;  // 1 / (m1 m2), in (1, 4]
  T first;     // 2^-min(e1, e2) (the larger power first: no intermediate underflows where X0 does not)
  T second;    // 2^-max(e1, e2)
};

// fits = whether 1 / (norm1 norm_inf) may be formed as it stands: the product and its reciprocal
// are normal numbers. V: T (fits a bool), or a vector of T (fits a lane mask; written through a
// reference, as a vector returned by value would change the ABI).
template <typename T, typename V, typename Mask>
GDLA_HD void product_fits(const V& product, Mask& fits) {
  constexpr T kMin = std::numeric_limits<T>::min();  // the smallest normal number, a power of two
  fits = (product >= kMin) & (product <= T(1) / kMin);
}

// The scale of the safe start from the two norms (>= 0; any other value, NaN or inf, gives a zero
// scale, so a non-finite A gives a non-finite start, as 1 / (norm1 norm_inf) did). Norms below
// 2^-max_exponent (all-subnormal matrices) get a smaller factor, from which it still converges.
template <typename T>
GDLA_HD SafeStartScale<T> safe_start_scale(T norm1, T norm_inf) {
  const T product = norm1 * norm_inf;
  bool fits;
  product_fits<T>(product, fits);
  if (fits) return {T(1) / product, T(1), T(1)};
  const bool finite = norm1 - norm1 == T(0) && norm_inf - norm_inf == T(0);  // neither NaN nor inf
  const bool usable = finite && norm1 > T(0) && norm_inf > T(0);
  if (!usable) return {T(0), T(1), T(1)};  // a zero matrix: a zero start
  int e1 = 0, e2 = 0;
  const T m1 = frexp(norm1, &e1), m2 = frexp(norm_inf, &e2);
  constexpr int kLowest = 1 - std::numeric_limits<T>::max_exponent;  // 2^-kLowest is finite
  const int low = e1 < e2 ? e1 : e2, high = e1 < e2 ? e2 : e1;
  return {T(1) / (m1 * m2), ldexp(T(1), -(low > kLowest ? low : kLowest)), ldexp(T(1), -high)};
}

// ||A||_1 (largest column sum) and ||A||_inf (largest row sum) of an n x n matrix, entry(i, j)
// reading A[i, j] by reference (a vector returned by value from a lambda would change the ABI).
// V is a scalar, or a vector of one entry per problem (cpu_lanes.h): the same additions in the
// same order either way.
template <typename V, int N, bool kFixed, typename Entry>
GDLA_HD void safe_start_norms(const Entry& entry, int n, V& norm1, V& norm_inf) {
  norm1 = V{};
  norm_inf = V{};
  GDLA_UNROLL
  for (int i = 0; i < N; ++i) {
    if (i >= n) break;
    V row = V{}, col = V{};
    GDLA_UNROLL
    for (int j = 0; j < N; ++j) {
      if (j >= n) break;
      const V in_row = entry(i, j), in_col = entry(j, i);
      row += in_row < V{} ? -in_row : in_row;
      col += in_col < V{} ? -in_col : in_col;
    }
    norm_inf = row > norm_inf ? row : norm_inf;
    norm1 = col > norm1 ? col : norm1;
  }
}

// x = the safe start of a (n x n, row stride N).
template <typename T, int N, bool kFixed>
GDLA_HD void safe_start(const T* a, T* x, int n) {
  T norm1, norm_inf;
  const auto entry = [a](int i, int j) GDLA_LAMBDA_INLINE -> const T& { return a[i * N + j]; };
  safe_start_norms<T, N, kFixed>(entry, n, norm1, norm_inf);
  const SafeStartScale<T> s = safe_start_scale(norm1, norm_inf);
  each_entry<N, kFixed>(n, [&](int i, int j) GDLA_LAMBDA_INLINE {
    x[i * N + j] = ((a[j * N + i] * s.mantissa) * s.first) * s.second;
  });
}

}  // namespace small
}  // namespace gdla
