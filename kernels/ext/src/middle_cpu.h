// Row loops of GigaUNet's middle (the coarse layers between down1 and up1) on raw float
// pointers: strided convs (kernel a multiple of the stride, any pad) and conv-transposes
// (kernel == stride, no pad), each followed by bias, ReLU and zeroing outside a kept box;
// forward and backward. The tensors are small (a quarter of the window's rows and columns at
// most), so the point is one pass over each instead of MLX's pads, block copies and joins.
#pragma once

#include <array>
#include <vector>

#include "common.h"

namespace gigamlx {

// Rows/cols [y0, y1) x [x0, x1) of an activation that lie inside the padded image.
using Keep = std::array<int, 4>;

// A channels-last activation (n, h, w, c) whose pixels are `pixel` floats apart: c when it is
// dense, more when it is the first channels of a wider tensor (a join).
struct Act {
  float* data;
  int n, h, w, c, pixel;
  float* at(int b, int y, int x) const {
    return data + ((static_cast<long>(b) * h + y) * w + x) * pixel;
  }
};

inline Act dense(float* data, int n, int h, int w, int c) { return Act{data, n, h, w, c, c}; }

// y = relu(conv(x, w) + b) inside keep, 0 outside; w (y.c, k, k, x.c), stride s, pad p; the
// output size is y's.
void conv_forward(const Act& x, const float* w, const float* b, int k, int s, int p,
                  const Keep& keep, const Act& y);

// Backward of conv_forward given its output y and the cotangent dy: dx is overwritten (no
// gradient is written where dx.data is null) with x's gradient, plus `add` where given (the
// gradient x got along another path); dw (y.c, k, k, x.c) and db (y.c) are added to. Float
// along a row, double across rows.
void conv_backward(const Act& x, const float* w, int k, int s, int p, const Act& y,
                   const Act& dy, const Act& dx, double* dw, double* db,
                   const Act* add = nullptr);

// y = relu(conv_transpose(x, w) + b) inside keep, 0 outside; w (y.c, s, s, x.c), kernel ==
// stride s, so y is (n, h * s, w * s, y.c). With `skip`, y's pixels are wider than y.c and
// their last channels are skip's: the join [y, skip] is written in the same pass.
void conv_transpose_forward(const Act& x, const float* w, const float* b, int s,
                            const Keep& keep, const Act& y, const Act* skip = nullptr);

// Backward of conv_transpose_forward, as conv_backward.
void conv_transpose_backward(const Act& x, const float* w, int s, const Act& y, const Act& dy,
                             const Act& dx, double* dw, double* db);

}  // namespace gigamlx
