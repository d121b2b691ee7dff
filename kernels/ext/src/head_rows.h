// Internal to the fused tail: the per-row feature cache and the up-sampling input expanded to
// full resolution, shared by forward and backward.
#pragma once

#include <cstdint>
#include <vector>

#include "head_cpu.h"
#include "vec.h"

namespace gigamlx {

// Row stride of a [channels][stride] feature row: element X of a channel sits at 1 + X, with
// zeros at 0 and W + 1 (the head's padding) and beyond, so 64-column blocks may read past W.
inline int feature_stride(int width) { return round_up(width, 64) + 64; }

// The last `slots` (at least 3) consecutive rows ([channels][feature_stride]), filled on demand
// and reused by the next output rows, so each row is computed once per pass.
class RowRing {
 public:
  RowRing(int channels, int width, int slots = 3)
      : stride_(feature_stride(width)), plane_(channels * stride_), tags_(slots, -1) {
    data_.assign(static_cast<size_t>(slots) * plane_, 0.0f);
  }
  template <class Fill>
  const float* get(int n, int y, Fill&& fill) {
    const int slots = static_cast<int>(tags_.size());
    long key = static_cast<long>(n) * (1L << 24) + (y + 1);
    int slot = (y + slots) % slots;
    if (tags_[slot] != key) {
      fill(data_.data() + static_cast<size_t>(slot) * plane_);
      tags_[slot] = key;
    }
    return data_.data() + static_cast<size_t>(slot) * plane_;
  }
  int stride() const { return stride_; }

 private:
  int stride_, plane_;
  std::vector<float> data_;
  std::vector<long> tags_;
};

// Coarse rows of h2 repeated s times along the row, channel-planar: row[ci][X] = h2[X / s][ci]
// for X < W, zero up to round_up(W, 64). Two slots: consecutive coarse rows alternate.
class Expanded {
 public:
  explicit Expanded(const HeadDims& d) : d_(d), width_(round_up(d.W(), 64)) {
    data_.assign(2 * static_cast<size_t>(d.c_in) * width_, 0.0f);
  }
  const float* get(const float* h2, int n, int i) {
    const long key = static_cast<long>(n) * (1L << 24) + i;
    const int slot = i & 1;
    float* dst = data_.data() + static_cast<size_t>(slot) * d_.c_in * width_;
    if (tag_[slot] != key) {
      const float* row = h2 + (static_cast<long>(n) * d_.h + i) * d_.w * d_.c_in;
      int j = 0;
      if (d_.s == 4 && d_.c_in == 4) j = expand_4x4(row, dst);
      for (; j < d_.w; ++j)
        for (int ci = 0; ci < d_.c_in; ++ci)
          for (int kx = 0; kx < d_.s; ++kx) dst[ci * width_ + j * d_.s + kx] = row[j * d_.c_in + ci];
      tag_[slot] = key;
    }
    return dst;
  }
  int width() const { return width_; }

 private:
  // GigaUNet's up1 (stride 4, 4 channels): the 16 floats of 4 coarse columns are one vector,
  // and each channel's expanded 16 columns one shuffle of it. Returns the columns done.
  int expand_4x4(const float* row, float* dst) const {
    int j = 0;
    for (; j + 4 <= d_.w; j += 4) {
      const Vec v = load(row + j * 4);
      store(dst + j * 4, spread_channel<0>(v));
      store(dst + width_ + j * 4, spread_channel<1>(v));
      store(dst + 2 * width_ + j * 4, spread_channel<2>(v));
      store(dst + 3 * width_ + j * 4, spread_channel<3>(v));
    }
    return j;
  }
  // Lanes C, 4 + C, 8 + C, 12 + C of v, each repeated four times.
  template <int C>
  static Vec spread_channel(const Vec& v) {
#if defined(__clang__)
    return __builtin_shufflevector(v, v, C, C, C, C, 4 + C, 4 + C, 4 + C, 4 + C, 8 + C, 8 + C,
                                   8 + C, 8 + C, 12 + C, 12 + C, 12 + C, 12 + C);
#else
    using Index = int32_t __attribute__((vector_size(64)));
    return __builtin_shuffle(v, Index{C, C, C, C, 4 + C, 4 + C, 4 + C, 4 + C, 8 + C, 8 + C,
                                      8 + C, 8 + C, 12 + C, 12 + C, 12 + C, 12 + C});
#endif
  }
  HeadDims d_;
  int width_;
  std::vector<float> data_;
  long tag_[2] = {-1, -1};
};

// Up-sampling weights of kernel row ky as lane patterns: pattern[(c * c_in + ci) * 16 + l] =
// w_up[c, ky, (x0 + l) % s, ci] for a block starting at column x0.
void up_pattern(const HeadArgs& a, int ky, int x0, float* pattern);

// Row y of the head's input features: relu(up(h2)) zeroed outside keep, then x; zero for
// rows outside the window (the head's padding). dst: [c_f][feature_stride(W)].
void fill_features(const HeadArgs& a, int n, int y, Expanded& h2e, float* dst);

// z_row = the logits of one full row from its feature rows y - 1, y, y + 1 (rows[0..2]).
void forward_row(const HeadArgs& a, const float* rows[3], float b_head, float* z_row);

// Two rows y, y + 1 from feature rows y - 1 .. y + 2 (rows[0..3]): each the same bits as
// forward_row gives it.
void forward_rows_2(const HeadArgs& a, const float* rows[4], float b_head, float* z_top,
                    float* z_bottom);

}  // namespace gigamlx
