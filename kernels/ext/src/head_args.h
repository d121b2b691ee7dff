// Internal to the fused tail's MLX plumbing (head.cpp, head_loss.cpp): its inputs as raw
// pointers, and double sums written out as float32.
#pragma once

#include <vector>

#include "head.h"
#include "head_cpu.h"

namespace gigamlx {

// The dimensions of (h2, x, w_up, b_up, w_head, ...), checked (evaluated or not).
HeadDims head_dims(const std::vector<mx::array>& in);

// (h2, x, w_up, b_up, w_head, ...) evaluated, checked and as the row kernels take them.
HeadArgs head_args(const std::vector<mx::array>& in, const HeadParams& p);

// The tail's gradient outputs (d h2, d w_up, d b_up, d w_head, d b_head) of a vjp primitive,
// allocated; `write` puts the double weight sums in once the backward has run (d h2 it writes
// itself).
struct GradOutputs {
  float* d_h2;
  float* w_up;
  float* b_up;
  float* w_head;
  float* b_head;
  void write(const HeadGrads& g) const;
};
GradOutputs allocate_grads(std::vector<mx::array>& out);

}  // namespace gigamlx
