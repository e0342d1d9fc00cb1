// Newton-Schulz on a group of tiny problems side by side, one problem per SIMD lane (CPU only).
//
// A 4x4 problem is too small to vectorise on its own (its loops are 4 long), so the CPU kernel
// solves as many problems at once as a vector register holds: every matrix entry is a vector
// whose lanes belong to different problems. The lanes are GCC/Clang vector-extension types of
// ``Bytes`` bytes; cpu_small_inverse.cpp instantiates 16 (SSE2, any x86-64 or ARM), 32 (AVX2)
// and 64 (AVX-512) and picks one at run time. Each lane keeps its own stop rule: a lane that
// has stopped keeps its X while the others go on. A float32 lane that passes is confirmed in
// double once no lane runs any more (one widened check per group, not one per lane); a lane
// that fails it resumes. No torch headers here.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

#include "small_safe_start.h"  // GDLA_LAMBDA_INLINE, small::safe_start_norms

#if defined(__GNUC__)
#define GDLA_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define GDLA_ALWAYS_INLINE inline
#endif

namespace gdla {
namespace lanes {

template <typename T, int Bytes>
struct Vec;

// V: one matrix entry of every problem in the group; M: the matching integer (mask) vector.
#define GDLA_DEFINE_VEC(T, I, BYTES)                              \
  template <>                                                     \
  struct Vec<T, BYTES> {                                          \
    typedef T V __attribute__((vector_size(BYTES)));              \
    typedef I M __attribute__((vector_size(BYTES)));              \
    static constexpr int kLanes = BYTES / static_cast<int>(sizeof(T)); \
  };
GDLA_DEFINE_VEC(float, int32_t, 16)
GDLA_DEFINE_VEC(float, int32_t, 32)
GDLA_DEFINE_VEC(float, int32_t, 64)
GDLA_DEFINE_VEC(double, int64_t, 16)
GDLA_DEFINE_VEC(double, int64_t, 32)
GDLA_DEFINE_VEC(double, int64_t, 64)
GDLA_DEFINE_VEC(double, int64_t, 128)  // float32 AVX-512 lanes widened to double
#undef GDLA_DEFINE_VEC

template <int L, typename M>
GDLA_ALWAYS_INLINE bool any_lane(const M& mask) {
  bool any = false;
  for (int w = 0; w < L; ++w) any |= mask[w] != 0;
  return any;
}

// Sets the lanes of ``exceeds`` whose ||A X - I||_F^2, evaluated in double, is above ``limit``
// (float32 lanes widened to double vectors of twice the width).
template <int Bytes, int N>
GDLA_ALWAYS_INLINE void residual_exceeds_double(const typename Vec<float, Bytes>::V (&a)[N][N],
                                                const typename Vec<float, Bytes>::V (&x)[N][N], double limit,
                                                typename Vec<float, Bytes>::M& exceeds) {
  typedef double VD __attribute__((vector_size(2 * Bytes)));
  typedef int64_t MD __attribute__((vector_size(2 * Bytes)));
  VD ad[N][N], xd[N][N];
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) {
      ad[i][j] = __builtin_convertvector(a[i][j], VD);
      xd[i][j] = __builtin_convertvector(x[i][j], VD);
    }
  }
  VD r2 = VD{};
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) {
      VD acc = VD{} - (i == j ? 1.0 : 0.0);
      for (int l = 0; l < N; ++l) acc += ad[i][l] * xd[l][j];
      r2 += acc * acc;
    }
  }
  const MD above = r2 > limit;
  exceeds |= __builtin_convertvector(above, typename Vec<float, Bytes>::M);
}

// One round of transpose_tile: rows a (index bit U clear) and b (the same index with bit U set) swap their
// off-diagonal (U x U) blocks: a takes the first U entries of every 2U from both, b the last U.
template <int L, int U, typename V, std::size_t... I>
GDLA_ALWAYS_INLINE void swap_blocks(V& a, V& b, std::index_sequence<I...>) {
  const V low = __builtin_shufflevector(a, b, (I / U % 2 == 0 ? static_cast<int>(I) : static_cast<int>(L + I - U))...);
  const V high = __builtin_shufflevector(a, b, (I / U % 2 == 0 ? static_cast<int>(I + U) : static_cast<int>(L + I))...);
  a = low;
  b = high;
}

// Transposes an L x L tile held as L vectors (row w: L entries of problem w; after: row e holds entry e of every
// problem, lane w problem w) in registers: round U (1, 2, 4, ...) swaps bit U of the row and column indices, log2(L)
// rounds of shuffles in all.
template <int L, int U = 1, typename V>
GDLA_ALWAYS_INLINE void transpose_tile(V (&rows)[L]) {
  if constexpr (U < L) {
    for (int i = 0; i < L; ++i) {
      if ((i & U) == 0) swap_blocks<L, U>(rows[i], rows[i | U], std::make_index_sequence<L>{});
    }
    transpose_tile<L, 2 * U>(rows);
  }
}

// The start of tile k of a problem's N * N entries in tiles of L (the last one ends at the last entry, overlapping
// the one before where L does not divide N * N).
template <int N, int L>
constexpr int tile_start(int k) {
  return (k + 1) * L <= N * N ? k * L : N * N - L;
}

// Loads a full group (L problems, N * N >= L) stored row-major one after the other: L entries of each problem at a
// time, transposed in registers.
template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void load_full_group(const T* P, typename Vec<T, Bytes>::V (&v)[N][N]) {
  using V = typename Vec<T, Bytes>::V;
  constexpr int L = Vec<T, Bytes>::kLanes;
  for (int k = 0; k * L < N * N; ++k) {
    const int start = tile_start<N, L>(k);
    V rows[L];
    for (int w = 0; w < L; ++w) __builtin_memcpy(&rows[w], P + w * N * N + start, sizeof(V));
    transpose_tile<L>(rows);
    for (int e = 0; e < L; ++e) v[(start + e) / N][(start + e) % N] = rows[e];
  }
}

// Loads a group of problems [0, count) stored row-major one after the other: a from A, x from X (the identity
// where X is null); padding lanes hold the identity in both.
template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void load_group(const T* A, const T* X, int count, typename Vec<T, Bytes>::V (&a)[N][N],
                                   typename Vec<T, Bytes>::V (&x)[N][N]) {
  constexpr int L = Vec<T, Bytes>::kLanes;
  if constexpr (N * N >= L) {
    if (count == L) {  // every group but the last
      load_full_group<T, N, Bytes>(A, a);
      if (X != nullptr) {
        load_full_group<T, N, Bytes>(X, x);
      } else {
        for (int i = 0; i < N; ++i) {
          for (int j = 0; j < N; ++j) x[i][j] = typename Vec<T, Bytes>::V{} + T(i == j);
        }
      }
      return;
    }
  }
  // through a staging buffer, each problem's entries read in memory order (cheaper than inserting lane by lane)
  alignas(64) T staged_a[N * N][L], staged_x[N * N][L];
  for (int w = 0; w < L; ++w) {
    const bool real = w < count;
    for (int e = 0; e < N * N; ++e) {
      const T one = T(e / N == e % N);
      staged_a[e][w] = real ? A[w * N * N + e] : one;
      staged_x[e][w] = real && X != nullptr ? X[w * N * N + e] : one;
    }
  }
  for (int e = 0; e < N * N; ++e) {
    __builtin_memcpy(&a[e / N][e % N], staged_a[e], sizeof(staged_a[e]));
    __builtin_memcpy(&x[e / N][e % N], staged_x[e], sizeof(staged_x[e]));
  }
}

// Stores problems [0, count) of a group's x into X, row-major one after the other.
template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void store_group(const typename Vec<T, Bytes>::V (&x)[N][N], int count, T* X) {
  using V = typename Vec<T, Bytes>::V;
  constexpr int L = Vec<T, Bytes>::kLanes;
  if constexpr (N * N >= L) {
    if (count == L) {  // load_full_group's way back (an overlapping last tile writes the same values twice)
      for (int k = 0; k * L < N * N; ++k) {
        const int start = tile_start<N, L>(k);
        V rows[L];
        for (int e = 0; e < L; ++e) rows[e] = x[(start + e) / N][(start + e) % N];
        transpose_tile<L>(rows);
        for (int w = 0; w < L; ++w) __builtin_memcpy(X + w * N * N + start, &rows[w], sizeof(V));
      }
      return;
    }
  }
  alignas(64) T staged[N * N][L];
  for (int e = 0; e < N * N; ++e) __builtin_memcpy(staged[e], &x[e / N][e % N], sizeof(staged[e]));
  for (int w = 0; w < count; ++w) {
    for (int e = 0; e < N * N; ++e) X[w * N * N + e] = staged[e][w];
  }
}

// x = the safe start of every lane's a (small_safe_start.h; lane by lane where a factor does not fit as it stands).
template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void safe_start_group(const typename Vec<T, Bytes>::V (&a)[N][N],
                                         typename Vec<T, Bytes>::V (&x)[N][N]) {
  using V = typename Vec<T, Bytes>::V;
  constexpr int L = Vec<T, Bytes>::kLanes;
  V norm1, norm_inf, mantissa, first, second;
  small::safe_start_norms<V, N, true>([&a](int i, int j) GDLA_LAMBDA_INLINE -> const V& { return a[i][j]; }, N, norm1,
                                      norm_inf);
  const V product = norm1 * norm_inf;
  typename Vec<T, Bytes>::M fits;
  small::product_fits<T>(product, fits);
  if (!any_lane<L>(~fits)) {  // every lane's factor as it stands
    mantissa = T(1) / product, first = V{} + T(1), second = first;
  } else {  // lane by lane
    for (int w = 0; w < L; ++w) {
      const small::SafeStartScale<T> s = small::safe_start_scale(norm1[w], norm_inf[w]);
      mantissa[w] = s.mantissa, first[w] = s.first, second[w] = s.second;
    }
  }
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) x[i][j] = ((a[j][i] * mantissa) * first) * second;
  }
}

// t = A X and r2 = ||A X - I||_F^2 of every lane, in T.
template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void product_residual(const typename Vec<T, Bytes>::V (&a)[N][N],
                                         const typename Vec<T, Bytes>::V (&x)[N][N],
                                         typename Vec<T, Bytes>::V (&t)[N][N], typename Vec<T, Bytes>::V& r2) {
  r2 = typename Vec<T, Bytes>::V{};
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) {
      typename Vec<T, Bytes>::V acc = a[i][0] * x[0][j];
      for (int l = 1; l < N; ++l) acc += a[i][l] * x[l][j];
      t[i][j] = acc;
      const typename Vec<T, Bytes>::V r = i == j ? acc - T(1) : acc;
      r2 += r * r;
    }
  }
}

// Solves problems [0, count) of a group (count <= kLanes) stored row-major one after the other:
// the same iteration and stop rule as small::newton_schulz. Padding lanes hold the identity,
// which stops at once.
template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void newton_schulz_group(const T* A, const T* X0, T* X, int64_t* steps, int count,
                                            int max_steps, double tol) {
  using V = typename Vec<T, Bytes>::V;
  using M = typename Vec<T, Bytes>::M;
  constexpr int L = Vec<T, Bytes>::kLanes;
  V a[N][N], x[N][N], t[N][N];
  load_group<T, N, Bytes>(A, X0, count, a, x);
  if (X0 == nullptr) safe_start_group<T, N, Bytes>(a, x);  // the safe start (small_safe_start.h)
  const T threshold = static_cast<T>(tol * tol * N);
  M running = M{} - 1;  // -1: the lane is still iterating
  M pending = M{};      // -1: passed in float32, waiting for the double-precision check
  M taken = M{};
  for (;;) {
    V r2;  // ||A X - I||_F^2 per lane
    product_residual<T, N, Bytes>(a, x, t, r2);
    const M below_max = taken < max_steps;
    if constexpr (sizeof(T) < sizeof(double)) {
      // A float32 lane that passes waits, frozen, for a confirmation in double (see
      // small::newton_schulz), done for all waiting lanes at once when no lane runs any more.
      pending |= running & (r2 <= threshold);
    }
    running = running & (r2 > threshold) & (r2 < T(1e30)) & below_max;
    if (!any_lane<L>(running)) {
      if constexpr (sizeof(T) < sizeof(double)) {
        if (!any_lane<L>(pending)) break;
        M fails = M{};
        residual_exceeds_double<Bytes, N>(a, x, tol * tol * N, fails);
        running = pending & fails & below_max;  // t is still A X of these lanes: they were frozen
        pending = M{};
        if (!any_lane<L>(running)) break;
      } else {
        break;
      }
    }
    taken -= running;
    // X <- X (2I - A X) = 2X - X t, row by row (a row's update needs only that row of X).
    for (int i = 0; i < N; ++i) {
      V u[N];
      for (int j = 0; j < N; ++j) {
        V acc = x[i][0] * t[0][j];
        for (int l = 1; l < N; ++l) acc += x[i][l] * t[l][j];
        u[j] = acc;
      }
      for (int j = 0; j < N; ++j) x[i][j] = running != 0 ? x[i][j] + x[i][j] - u[j] : x[i][j];
    }
  }
  for (int w = 0; w < count; ++w) {
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) X[(w * N + i) * N + j] = x[i][j][w];
    }
    steps[w] = taken[w];
  }
}

// Seed 000's momentum on the inverse MSE for a group of problems side by side, one a lane, all
// ``steps`` steps in registers (the same update as small::MomentumProblem::step, lane by lane):
// R = P(X) - I; the step's loss is mean(R^2) at the X it started from; g from the Gram matrix
// H (A^T A right, A A^T left) or A^T R + R A^T (both); buf = started ? momentum buf + g : g;
// X = X - buf lr. ``out[s]`` receives the step's losses summed over the group's lanes in order.
// Padding lanes hold A = I, X = 0 and add nothing to ``out``.
// Loads a momentum group of problems [0, count) stored row-major one after the other: A, X and the buffer B, one
// problem a lane; padding lanes hold A = I, X = 0 and B = 0.
template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void load_momentum_group(const T* A, const T* X, const T* B, int count,
                                            typename Vec<T, Bytes>::V (&a)[N][N], typename Vec<T, Bytes>::V (&x)[N][N],
                                            typename Vec<T, Bytes>::V (&b)[N][N]) {
  using V = typename Vec<T, Bytes>::V;
  constexpr int L = Vec<T, Bytes>::kLanes;
  for (int i = 0; i < N; ++i) {
    for (int j = 0; j < N; ++j) {
      V av, xv, bv;
      for (int w = 0; w < L; ++w) {
        const bool real = w < count;
        av[w] = real ? A[(w * N + i) * N + j] : T(i == j);
        xv[w] = real ? X[(w * N + i) * N + j] : T(0);
        bv[w] = real ? B[(w * N + i) * N + j] : T(0);
      }
      a[i][j] = av;
      x[i][j] = xv;
      b[i][j] = bv;
    }
  }
}

template <typename T, int N, int Bytes>
GDLA_ALWAYS_INLINE void momentum_group(const T* A, T* X, T* B, int count, int side, T lr, T momentum, bool started,
                                       int64_t steps, double* out) {
  using V = typename Vec<T, Bytes>::V;
  using VD = typename Vec<double, Bytes * sizeof(double) / sizeof(T)>::V;
  V a[N][N], at[N][N], h[N][N], x[N][N], b[N][N];
  load_momentum_group<T, N, Bytes>(A, X, B, count, a, x, b);
  for (int i = 0; i < N; ++i)
    for (int j = 0; j < N; ++j) at[i][j] = a[j][i];
  for (int i = 0; i < N; ++i) {  // H = A^T A (right) or A A^T (left), row by row
    for (int j = 0; j < N; ++j) {
      V acc = side == 0 ? at[i][0] * a[0][j] : a[i][0] * at[0][j];
      for (int l = 1; l < N; ++l) acc += side == 0 ? at[i][l] * a[l][j] : a[i][l] * at[l][j];
      h[i][j] = acc;
    }
  }
  const T scale = static_cast<T>((side == 2 ? 1.0 : 2.0) / static_cast<double>(N * N));
  const double inv_count = 1.0 / static_cast<double>(N * N);
  for (int64_t s = 0; s < steps; ++s) {
    V r[N][N], g[N][N];
    for (int i = 0; i < N; ++i) {  // r = P(X) - I
      for (int j = 0; j < N; ++j) {
        V acc = side == 1 ? x[i][0] * a[0][j] : a[i][0] * x[0][j];
        for (int l = 1; l < N; ++l) acc += side == 1 ? x[i][l] * a[l][j] : a[i][l] * x[l][j];
        if (side == 2) {
          V other = x[i][0] * a[0][j];
          for (int l = 1; l < N; ++l) other += x[i][l] * a[l][j];
          acc = T(0.5) * (acc + other);
        }
        r[i][j] = i == j ? acc - T(1) : acc;
      }
    }
    VD sum = VD{};
    for (int i = 0; i < N; ++i) {
      VD row = VD{};
      for (int j = 0; j < N; ++j) {
        const VD value = __builtin_convertvector(r[i][j], VD);
        row += value * value;
      }
      sum += row;
    }
    double total = 0.0;
    for (int w = 0; w < count; ++w) total += sum[w] * inv_count;
    out[s] = total;
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        V acc;
        if (side == 0) {  // A^T A X - A^T
          acc = h[i][0] * x[0][j];
          for (int l = 1; l < N; ++l) acc += h[i][l] * x[l][j];
          acc = acc - at[i][j];
        } else if (side == 1) {  // X A A^T - A^T
          acc = x[i][0] * h[0][j];
          for (int l = 1; l < N; ++l) acc += x[i][l] * h[l][j];
          acc = acc - at[i][j];
        } else {  // A^T R + R A^T
          acc = at[i][0] * r[0][j];
          for (int l = 1; l < N; ++l) acc += at[i][l] * r[l][j];
          V other = r[i][0] * at[0][j];
          for (int l = 1; l < N; ++l) other += r[i][l] * at[l][j];
          acc += other;
        }
        g[i][j] = acc;
      }
    }
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        const V grad = scale * g[i][j];
        b[i][j] = started ? momentum * b[i][j] + grad : grad;
        x[i][j] = x[i][j] - b[i][j] * lr;
      }
    }
    started = true;
  }
  for (int w = 0; w < count; ++w) {
    for (int i = 0; i < N; ++i) {
      for (int j = 0; j < N; ++j) {
        X[(w * N + i) * N + j] = x[i][j][w];
        B[(w * N + i) * N + j] = b[i][j][w];
      }
    }
  }
}

}  // namespace lanes
}  // namespace gdla
