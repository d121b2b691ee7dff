// The 16-lane float vector shared by the row kernels: GCC/Clang vector types keep block sums in
// registers (plain float arrays get spilled). On CPUs without 512-bit registers the compiler
// splits each Vec into narrower ones.
#pragma once

#include <cstring>

namespace gigamlx {

using Vec = float __attribute__((vector_size(64)));
constexpr int kLanes = 16;

inline Vec load(const float* p) {
  Vec v;
  std::memcpy(&v, p, sizeof(Vec));
  return v;
}

inline void store(float* p, const Vec& v) { std::memcpy(p, &v, sizeof(Vec)); }

inline Vec splat(float x) { return Vec{} + x; }

inline float lane_sum(const Vec& v) {
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

inline double lane_sum_double(const Vec& v) {
  double s = 0.0;
  for (int l = 0; l < kLanes; ++l) s += v[l];
  return s;
}

// n rounded up to a multiple of m.
inline int round_up(int n, int m) { return (n + m - 1) / m * m; }

}  // namespace gigamlx
