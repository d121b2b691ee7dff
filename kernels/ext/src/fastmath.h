// Branch-free float32 exp and log1p for the per-pixel loss, written so that a plain loop over
// pixels vectorizes (libm's expf/log1pf are scalar calls). Cephes-style minimax polynomials,
// about 1-2 ulp over the ranges used here.
#pragma once

#include <bit>
#include <cmath>
#include <cstdint>

namespace gigamlx {

// exp(x) for x <= 0 (the loss only needs exp(-|z|)); x below -87 gives exp(-87) ~ 1.6e-38,
// which is below float32's resolution of everything it is added to.
inline float exp_nonpositive(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float n = std::floor(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;  // ln 2 split in two for an exact reduction
  r = r + n * 2.12194440e-4f;
  const float r2 = r * r;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float e = p * r2 + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;  // 2^n, n >= -126: normal
  return e * std::bit_cast<float>(bits);
}

// log(u) for u in [1, 2].
inline float log_1_to_2(float u) {
  const bool high = u > 1.41421356f;
  const float m = high ? 0.5f * u : u;  // m in [0.707, 1.414]
  const float k = high ? 1.0f : 0.0f;
  const float x = m - 1.0f, z = x * x;
  float p = 7.0376836292e-2f;
  p = p * x - 1.1514610310e-1f;
  p = p * x + 1.1676998740e-1f;
  p = p * x - 1.2420140846e-1f;
  p = p * x + 1.4249322787e-1f;
  p = p * x - 1.6668057665e-1f;
  p = p * x + 2.0000714765e-1f;
  p = p * x - 2.4999993993e-1f;
  p = p * x + 3.3333331174e-1f;
  float y = p * x * z - k * 2.12194440e-4f - 0.5f * z;
  return x + y + k * 0.693359375f;
}

// log1p(e) for e in [0, 1]: log(1 + e) corrected for the rounding of 1 + e (Goldberg's trick).
inline float log1p_unit(float e) {
  const float u = 1.0f + e, d = u - 1.0f;
  const float ratio = d == 0.0f ? 1.0f : e / d;
  return d == 0.0f ? e : log_1_to_2(u) * ratio;
}

// Stable sigmoid p and softplus log1p(exp(-|z|)) of a logit from one exp.
inline void sigmoid_softplus(float z, float& p, float& softplus) {
  const float e = exp_nonpositive(-std::fabs(z));
  const float inv = 1.0f / (1.0f + e);
  p = z >= 0.0f ? inv : e * inv;
  softplus = log1p_unit(e);
}

}  // namespace gigamlx
