// Internal to the fused loss: one row of the loss on the owned crop and of its gradient,
// shared by the loss on a window's logits (loss.cpp) and the head that never writes its
// logits out (head_loss.cpp), so both give the same bits.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastmath.h"
#include "loss.h"
#include "vec.h"

namespace gigamlx {

// 16 targets as floats: float32 as they are, uint8 (0 or 1, a quarter of the bytes) converted.
inline Vec load_target(const float* g) { return load(g); }
inline Vec load_target(const uint8_t* g) {
  using Bytes = uint8_t __attribute__((vector_size(kLanes)));
  Bytes b;
  std::memcpy(&b, g, sizeof(Bytes));
  return __builtin_convertvector(b, Vec);
}

// z and g of columns [x0, x0 + 16) of a row of w, zero-padded past w (pad z: any value).
template <class G>
inline void load_block(const float* z, const G* g, int x0, int w, Vec& zv, Vec& gv, Vec& valid) {
  float zt[kLanes] = {}, gt[kLanes] = {}, vt[kLanes] = {};
  const int n = std::min(kLanes, w - x0);
  for (int l = 0; l < n; ++l) zt[l] = z[x0 + l], gt[l] = static_cast<float>(g[x0 + l]), vt[l] = 1.0f;
  zv = load(zt), gv = load(gt), valid = load(vt);
}

// One crop row: surrogate value (returned) and the six statistics into stats[0..5]; float per
// lane along the row, double across lanes.
template <class G>
inline double loss_row(const float* z, const G* g, int w, const LossParams& p, double* stats) {
  Vec value = {}, s[6] = {};
  for (int x0 = 0; x0 < w; x0 += kLanes) {
    Vec zv, gv, valid = splat(1.0f);
    if (x0 + kLanes <= w) {
      zv = load(z + x0), gv = load_target(g + x0);
    } else {
      load_block(z, g, x0, w, zv, gv, valid);
    }
    Vec e;
    const Vec prob = vsigmoid(zv, e) * valid;
    const Vec hard = select(zv > 0.0f, valid, splat(0.0f));
    const Vec bce = (vmax(zv, splat(0.0f)) - zv * gv + vlog1p_unit(e)) * valid;
    value += (p.a * gv + p.b) * prob + p.c * bce;
    s[0] += prob * gv, s[1] += prob, s[2] += gv, s[3] += bce, s[4] += hard * gv, s[5] += hard;
  }
  for (int k = 0; k < 6; ++k) stats[k] = lane_sum_double(s[k]);
  return lane_sum_double(value);
}

// One row of d z on the crop: scale * (d loss / d p * p (1 - p) + c (p - g)).
template <class G>
inline void loss_grad_row(const float* z, const G* g, int w, const LossParams& p, float scale,
                   float* dz) {
  for (int x0 = 0; x0 < w; x0 += kLanes) {
    Vec zv, gv, valid;
    if (x0 + kLanes <= w) {
      zv = load(z + x0), gv = load_target(g + x0);
    } else {
      load_block(z, g, x0, w, zv, gv, valid);
    }
    Vec e;
    const Vec prob = vsigmoid(zv, e);
    const Vec d = scale * ((p.a * gv + p.b) * prob * (1.0f - prob) + p.c * (prob - gv));
    float lanes[kLanes];
    store(lanes, d);
    std::copy_n(lanes, std::min(kLanes, w - x0), dz + x0);
  }
}

// The op's outputs from the per-row results of an h-row crop: value = the rows' values summed
// in row order (independent of which thread ran which row), rows (6, h) = the statistics.
inline void write_loss_rows(const std::vector<double>& values, const std::vector<double>& stats,
                            int h, float* value, float* rows) {
  double total = 0.0;
  for (double v : values) total += v;
  *value = static_cast<float>(total);
  for (int y = 0; y < h; ++y)
    for (int k = 0; k < 6; ++k) rows[k * h + y] = static_cast<float>(stats[6 * y + k]);
}

}  // namespace gigamlx
