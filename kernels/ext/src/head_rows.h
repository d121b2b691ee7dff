// Internal to the fused tail: the per-row feature cache shared by forward and backward.
#pragma once

#include <vector>

#include "head_cpu.h"

namespace gigamlx {

// Three consecutive rows ([channels][W + 2], zero column each side), filled on demand and
// reused by the next output row, so each row is computed once per pass.
class RowRing {
 public:
  RowRing(int channels, int width) : stride_(width + 2), plane_(channels * stride_) {
    data_.assign(3 * plane_, 0.0f);
  }
  template <class Fill>
  const float* get(int n, int y, Fill&& fill) {
    long key = static_cast<long>(n) * (1L << 24) + (y + 1);
    int slot = (y + 3) % 3;
    if (tag_[slot] != key) {
      fill(data_.data() + slot * plane_);
      tag_[slot] = key;
    }
    return data_.data() + slot * plane_;
  }

 private:
  int stride_, plane_;
  std::vector<float> data_;
  long tag_[3] = {-1, -1, -1};
};

// Row y of the head's input features: relu(up(h2)) zeroed outside keep, then x; zero for
// rows outside the window (the head's padding). dst: [c_f][W + 2].
void fill_features(const HeadArgs& a, int n, int y, float* dst);

}  // namespace gigamlx
