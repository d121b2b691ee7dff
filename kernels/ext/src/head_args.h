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

void write_doubles(float* dst, const std::vector<double>& values);

}  // namespace gigamlx
