// Float32 exp and log1p on 16-lane vectors for the per-pixel loss (libm's expf/log1pf are
// scalar calls and GCC does not vectorize them without -ffast-math). Cephes-style minimax
// polynomials, about 1-2 ulp over the ranges used here; branch-free, lane-wise selects.
#pragma once

#include <cstdint>

#include "vec.h"

namespace gigamlx {

using IVec = int32_t __attribute__((vector_size(64)));

inline Vec select(IVec mask, Vec a, Vec b) {
  return reinterpret_cast<Vec>((reinterpret_cast<IVec>(a) & mask) |
                               (reinterpret_cast<IVec>(b) & ~mask));
}

inline Vec vabs(Vec x) { return reinterpret_cast<Vec>(reinterpret_cast<IVec>(x) & 0x7fffffff); }

inline Vec vmax(Vec a, Vec b) { return select(a > b, a, b); }

// Round to nearest (|x| < 2^22): adding and removing 1.5 * 2^23 drops the fraction bits.
inline Vec vround(Vec x) {
  const Vec magic = splat(12582912.0f);
  return (x + magic) - magic;
}

// exp(x) for x <= 0 (the loss only needs exp(-|z|)); x below -87 gives exp(-87) ~ 1.6e-38,
// which is below float32's resolution of everything it is added to.
inline Vec vexp_nonpositive(Vec x) {
  x = vmax(x, splat(-87.0f));
  const Vec n = vround(x * 1.44269504088896341f);
  Vec r = x - n * 0.693359375f;  // ln 2 split in two for an exact reduction
  r = r + n * 2.12194440e-4f;
  Vec p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const Vec e = p * (r * r) + r + 1.0f;
  const IVec bits = (__builtin_convertvector(n, IVec) + 127) << 23;  // 2^n, n >= -126
  return e * reinterpret_cast<Vec>(bits);
}

// log(u) for u in [1, 2].
inline Vec vlog_1_to_2(Vec u) {
  const IVec high = u > 1.41421356f;
  const Vec m = select(high, 0.5f * u, u);  // m in [0.707, 1.414]
  const Vec k = select(high, splat(1.0f), splat(0.0f));
  const Vec x = m - 1.0f, z = x * x;
  Vec p = splat(7.0376836292e-2f);
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  const Vec y = p * x * z - k * 2.12194440e-4f - 0.5f * z;
  return x + y + k * 0.693359375f;
}

// log1p(e) for e in [0, 1]: log(1 + e) corrected for the rounding of 1 + e (Goldberg's trick).
inline Vec vlog1p_unit(Vec e) {
  const Vec u = 1.0f + e, d = u - 1.0f;
  const IVec exact = d == 0.0f;
  const Vec ratio = e / select(exact, splat(1.0f), d);
  return select(exact, e, vlog_1_to_2(u) * ratio);
}

// Stable sigmoid p of a logit z, and e = exp(-|z|).
inline Vec vsigmoid(Vec z, Vec& e) {
  e = vexp_nonpositive(-vabs(z));
  const Vec inv = 1.0f / (1.0f + e);
  return select(z >= 0.0f, inv, e * inv);
}

}  // namespace gigamlx
