// Internal to the fused first layer: the per-row phase-plane cache and the vector type
// shared by forward and backward.
#pragma once

#include <algorithm>
#include <cstring>
#include <vector>

#include "down1_cpu.h"
#include "vec.h"

namespace gigamlx {

// Blocks of kBlock output columns held as kVecs vectors.
constexpr int kVecs = 4, kBlock = kLanes * kVecs;

// The phase planes of the last `slots` (>= k) input rows a worker saw, filled on demand:
// consecutive output rows share k - s of their k input rows.
class PlaneRing {
 public:
  explicit PlaneRing(const Down1Dims& d, int slots = 0)
      : d_(d), slots_(std::max(slots, d.k)), size_(d.s * d.c_in * d.plane()), tags_(slots_, -1) {
    data_.assign(static_cast<size_t>(slots_) * size_, 0.0f);
  }
  // Planes of input row y (-pad <= y < h) of image n.
  const float* get(const Image& x, int n, int y) {
    const long key = static_cast<long>(n) * (1L << 24) + y + d_.p;
    const int slot = (y + d_.p) % slots_;
    float* dst = data_.data() + static_cast<size_t>(slot) * size_;
    if (tags_[slot] != key) {
      fill(x, y, (static_cast<long>(n) * d_.h + y) * d_.w * d_.c_in, dst);
      tags_[slot] = key;
    }
    return dst;
  }

 private:
  // input row y (at `row`, its first element) as phase planes; columns outside [0, w), and
  // rows and columns outside a standardised input's keep box, stay zero
  void fill(const Image& x, int y, long row, float* dst) {
    const int M = d_.plane(), c_in = d_.c_in, step = d_.s * c_in;
    if (!x.norm.row_inside(y)) {
      std::fill(dst, dst + size_, 0.0f);
      return;
    }
    const int col_lo = x.norm.col_lo(), col_hi = x.norm.col_hi(d_.w);
    // uint8 with the arithmetic as products, the GigaUNet shape: each channel's bytes first (3
    // apart), then each phase's 4 apart, both vectorised, converted on the way into the plane
    const bool staged = x.u8 && x.by_products && c_in == 3 && d_.s == 4;
    const int padded = d_.s * M;
    if (staged) {
      lines_.resize(static_cast<size_t>(c_in) * padded);
      const auto* src = static_cast<const uint8_t*>(x.data) + row;
      for (int c = 0; c < c_in; ++c) {
        uint8_t* line = lines_.data() + static_cast<size_t>(c) * padded + d_.p;
        for (int col = col_lo; col < col_hi; ++col) line[col] = src[col * 3 + c];
      }
    }
    for (int ph = 0; ph < d_.s; ++ph) {
      // plane columns m whose input column s*m + ph - pad lies in [col_lo, col_hi)
      const int first = col_lo - ph + d_.p;  // s * m_lo at least
      const int m_lo = std::min(M, std::max(0, first <= 0 ? 0 : (first + d_.s - 1) / d_.s));
      const int last = col_hi - 1 - ph + d_.p;  // s * m_hi - s at most
      const int m_hi = std::max(m_lo, last < 0 ? 0 : std::min(M, last / d_.s + 1));
      for (int c = 0; c < c_in; ++c) {
        float* plane = dst + (ph * c_in + c) * M;
        std::fill(plane, plane + m_lo, 0.0f);  // only the columns no input reaches
        if (m_hi > m_lo && staged) {
          const uint8_t* line = lines_.data() + static_cast<size_t>(c) * padded + ph;
          x.bytes_by_products<4>(line + d_.s * m_lo, c, m_hi - m_lo, plane + m_lo);
        } else if (m_hi > m_lo) {
          x.gather_looked_up(row + (ph - d_.p) * c_in + c + m_lo * step, step, m_hi - m_lo,
                             plane + m_lo);
        }
        std::fill(plane + m_hi, plane + M, 0.0f);
      }
    }
  }
  Down1Dims d_;
  int slots_;
  size_t size_;
  std::vector<long> tags_;
  std::vector<float> data_;
  std::vector<uint8_t> lines_;  // fill's scratch: each channel's bytes of one row, padded
};

}  // namespace gigamlx
