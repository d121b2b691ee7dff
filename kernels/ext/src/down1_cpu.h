// Row kernels of the fused first layer on raw float pointers (no MLX types).
#pragma once

#include <array>
#include <vector>

#include "common.h"

namespace gigamlx {

struct Down1Dims {
  int n, h, w, c_in;  // input
  int c_out, k;       // weight (c_out, k, k, c_in)
  int s, p;           // stride (divides k) and pad
  int out_h() const { return (h + 2 * p - k) / s + 1; }
  int out_w() const { return (w + 2 * p - k) / s + 1; }
  int taps() const { return k / s; }               // kernel taps per axis in stride blocks
  // columns of one phase plane: out_w() + taps() - 1, rounded up so that blocks of 64
  // output columns may read past the end (the extra columns are zero)
  int plane() const { return (out_w() + 63) / 64 * 64 + taps() - 1; }
};

struct Down1Args {
  Down1Dims d;
  std::array<int, 4> keep;  // y0, x0, y1, x1 at the output's resolution
  Image x;                  // (n, h, w, c_in)
  const float* weight;      // (c_out, k, k, c_in)
};

// out (n, Ho, Wo, c_out) = relu(conv(x) + bias), zeroed outside keep.
void down1_forward(const Down1Args& a, const float* bias, float* out);

// d weight (c_out, k, k, c_in) and d bias (c_out) of sum(d_out * out), given out for the mask.
// Float along an output row, double across rows and workers.
void down1_backward(const Down1Args& a, const float* out, const float* d_out,
                    std::vector<double>& d_weight, std::vector<double>& d_bias);

}  // namespace gigamlx
