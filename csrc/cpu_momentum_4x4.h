// Seed 000's momentum on one 4x4 float32 problem, written for 256-bit vectors (CPU only).
//
// small::MomentumProblem runs the step with 4-wide rows; here a 4x4 float matrix is two 8-float
// vectors (rows 0-1 and rows 2-3), and a product K X with a constant K is eight multiply-adds:
// rows (i, i+1) of K X = sum over l of [K[i,l] x4 | K[i+1,l] x4] * [row l of X | row l of X],
// the coefficient vectors built once per run. The operations and their order are those of
// MomentumProblem::step (every product summed left to right, the loss of a row summed left to
// right in double, then the rows in order), so the two agree bit for bit under the same
// contraction of multiply-adds.
//
// side 1 (X A ~ I) runs as side 0 on the transposes: (X A)^T = A^T X^T, and the gradient and
// the update are entrywise, so the transposed state takes the same steps; only the loss's
// row sums become column sums of the transposed residual.
#pragma once

#include "cpu_isa.h"
#include "cpu_lanes.h"
#include "small_momentum_math.h"
#include "small_run_loop.h"

#include <cmath>
#include <cstdint>

#ifdef GDLA_RUN_X86_DISPATCH
// Everything here is always inlined into the one AVX2 build that calls it (run_4x4_avx2 in
// cpu_momentum_run.cpp), where 8-float vectors are registers; -Wpsabi would warn that the
// baseline ABI passes them differently, which never happens to an inlined function (GCC issues
// that warning at the end of the file, so it stays off for the rest of the including file).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace gdla {
namespace momentum4 {

typedef float v8sf __attribute__((vector_size(32)));
typedef double v4df __attribute__((vector_size(32)));

GDLA_ALWAYS_INLINE v8sf load8(const float* src) {
  v8sf v;
  __builtin_memcpy(&v, src, sizeof(v));
  return v;
}

GDLA_ALWAYS_INLINE void store8(float* dst, v8sf v) { __builtin_memcpy(dst, &v, sizeof(v)); }

// Row Which (0 or 1) of a pair of rows, in both halves.
template <int Which>
GDLA_ALWAYS_INLINE v8sf repeat_row(v8sf pair) {
  if constexpr (Which == 0) {
    return __builtin_shufflevector(pair, pair, 0, 1, 2, 3, 0, 1, 2, 3);
  } else {
    return __builtin_shufflevector(pair, pair, 4, 5, 6, 7, 4, 5, 6, 7);
  }
}

// A constant 4x4 left factor K as coefficient vectors: c[p][l] = [K[2p,l] x4 | K[2p+1,l] x4].
struct Coefficients {
  v8sf c[2][4];

  GDLA_ALWAYS_INLINE void set(const float* k) {
    for (int p = 0; p < 2; ++p) {
      for (int l = 0; l < 4; ++l) {
        const float top = k[(2 * p) * 4 + l], bottom = k[(2 * p + 1) * 4 + l];
        c[p][l] = v8sf{top, top, top, top, bottom, bottom, bottom, bottom};
      }
    }
  }

  // Rows (2p, 2p+1) of K X, from the rows of X repeated in both halves (xl[l] = [x_l | x_l]).
  GDLA_ALWAYS_INLINE v8sf times(int p, const v8sf (&xl)[4]) const {
    v8sf acc = c[p][0] * xl[0];
    acc += c[p][1] * xl[1];
    acc += c[p][2] * xl[2];
    acc += c[p][3] * xl[3];
    return acc;
  }
};

GDLA_ALWAYS_INLINE double ordered_sum(v4df v) { return ((v[0] + v[1]) + v[2]) + v[3]; }

// Sum of squares of a 4x4 matrix held as two pairs of rows, in double: per row (RowSums) or per
// column (!RowSums), each summed left to right, then the four sums in order.
template <bool RowSums>
GDLA_ALWAYS_INLINE double squares(v8sf top, v8sf bottom) {
  v4df d[4] = {
      __builtin_convertvector(__builtin_shufflevector(top, top, 0, 1, 2, 3), v4df),
      __builtin_convertvector(__builtin_shufflevector(top, top, 4, 5, 6, 7), v4df),
      __builtin_convertvector(__builtin_shufflevector(bottom, bottom, 0, 1, 2, 3), v4df),
      __builtin_convertvector(__builtin_shufflevector(bottom, bottom, 4, 5, 6, 7), v4df),
  };
  if constexpr (RowSums) {  // transpose, so that d[j] holds column j: lane i then sums row i
    const v4df e0 = __builtin_shufflevector(d[0], d[1], 0, 4, 2, 6), e1 = __builtin_shufflevector(d[0], d[1], 1, 5, 3, 7);
    const v4df e2 = __builtin_shufflevector(d[2], d[3], 0, 4, 2, 6), e3 = __builtin_shufflevector(d[2], d[3], 1, 5, 3, 7);
    d[0] = __builtin_shufflevector(e0, e2, 0, 1, 4, 5);
    d[1] = __builtin_shufflevector(e1, e3, 0, 1, 4, 5);
    d[2] = __builtin_shufflevector(e0, e2, 2, 3, 6, 7);
    d[3] = __builtin_shufflevector(e1, e3, 2, 3, 6, 7);
  }
  v4df sums = d[0] * d[0];
  sums += d[1] * d[1];
  sums += d[2] * d[2];
  sums += d[3] * d[3];
  return ordered_sum(sums);
}

// The whole run of MomentumProblem<float, 4> on sides 0 and 1 (the caller keeps side 2 on the
// generic path); the same arguments and result as run_one in cpu_momentum_run.cpp.
GDLA_ALWAYS_INLINE int64_t run(const float* A, float* X, float* buf, int side, double inv_count, float lr,
                               float momentum, int64_t steps, bool started, double first, double blow_up,
                               double stop_loss, double* losses) {
  float a[16], at[16], h[16], ht[16], x[16], b[16];
  for (int i = 0; i < 16; ++i) a[i] = A[i];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) at[i * 4 + j] = a[j * 4 + i];
  if (side == 0) {
    small::matmul_split<float, 4>(at, a, h);  // A^T A, as MomentumProblem::init
  } else {
    small::matmul_split<float, 4>(a, at, h);  // A A^T
  }
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 4; ++j) ht[i * 4 + j] = h[j * 4 + i];
  const bool flip = side == 1;  // work on X^T, buf^T
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      x[i * 4 + j] = flip ? X[j * 4 + i] : X[i * 4 + j];
      b[i * 4 + j] = flip ? buf[j * 4 + i] : buf[i * 4 + j];
    }
  }
  // side 0: R = A X - I, G = (A^T A) X - A^T; side 1 transposed: R^T = A^T X^T - I, G^T = (A A^T)^T X^T - A
  // The gradient's factor 2/16 = 1/8 is taken into G's coefficients and shift: scaling by a power of
  // two is exact, so (H/8) X - A^T/8 has the bits of (H X - A^T)/8, one multiplication fewer a step.
  const float scale = static_cast<float>(2.0 / 16.0);
  const float* offset = flip ? a : at;
  float scaled_gram[16], scaled_offset[16];
  for (int i = 0; i < 16; ++i) {
    scaled_gram[i] = scale * (flip ? ht : h)[i];
    scaled_offset[i] = scale * offset[i];
  }
  Coefficients residual, gram;
  residual.set(flip ? at : a);
  gram.set(scaled_gram);
  const v8sf shift[2] = {load8(scaled_offset), load8(scaled_offset + 8)};
  const v8sf eye[2] = {v8sf{1, 0, 0, 0, 0, 1, 0, 0}, v8sf{0, 0, 1, 0, 0, 0, 0, 1}};
  v8sf xv[2] = {load8(x), load8(x + 8)}, bv[2] = {load8(b), load8(b + 8)};
  v8sf xl[4], gradient[2];  // the last pass's rows of X (repeated) and products with the Gram matrix
  const int64_t done = small::run_loop(
      steps, stop_loss, first, blow_up, losses,
      [&]() GDLA_LAMBDA_INLINE {
        xl[0] = repeat_row<0>(xv[0]), xl[1] = repeat_row<1>(xv[0]);
        xl[2] = repeat_row<0>(xv[1]), xl[3] = repeat_row<1>(xv[1]);
        const v8sf r0 = residual.times(0, xl) - eye[0], r1 = residual.times(1, xl) - eye[1];
        gradient[0] = gram.times(0, xl) - shift[0], gradient[1] = gram.times(1, xl) - shift[1];
        return (flip ? squares<false>(r0, r1) : squares<true>(r0, r1)) * inv_count;
      },
      [&](int64_t) GDLA_LAMBDA_INLINE {
        for (int p = 0; p < 2; ++p) {
          const v8sf grad = gradient[p];
          bv[p] = started ? momentum * bv[p] + grad : grad;
          xv[p] = xv[p] - bv[p] * lr;
        }
        started = true;
      });
  store8(x, xv[0]), store8(x + 8, xv[1]), store8(b, bv[0]), store8(b + 8, bv[1]);
  for (int i = 0; i < 4; ++i) {
    for (int j = 0; j < 4; ++j) {
      X[i * 4 + j] = flip ? x[j * 4 + i] : x[i * 4 + j];
      buf[i * 4 + j] = flip ? b[j * 4 + i] : b[i * 4 + j];
    }
  }
  return done;
}

}  // namespace momentum4
}  // namespace gdla

#endif  // GDLA_RUN_X86_DISPATCH
