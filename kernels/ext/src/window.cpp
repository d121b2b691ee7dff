// The D4 turn and colour lookup of a training window (window.h). Runs on the prefetch thread,
// one core, while the kernels compute: it replaces numpy's index build, gather, turned copy
// and unpack (five passes over the window, ~16 s per 16000x64000 pass) with one.
#include "window.h"

#include <algorithm>
#include <bit>
#include <cstring>
#include <vector>

namespace gigamlx {

namespace {

// Where output pixel (i, j) reads from, as source = origin + i * step_i + j * step_j (an
// affine map of the eight turns), in (row, col) of the source.
struct Walk {
  int64_t origin_y, origin_x, iy, ix, jy, jx;
};

Walk walk_of(int64_t rows, int64_t cols, bool flip, int rot90) {
  // np.rot90(m, k): k=1 out[i, j] = m[j, W-1-i]; k=2 m[H-1-i, W-1-j]; k=3 m[H-1-j, i]
  // (m is the flipped source: m[y, x] = src[y, cols-1-x]).
  Walk w{};
  switch (quarter_turns(rot90)) {
    case 0: w = {0, 0, 1, 0, 0, 1}; break;
    case 1: w = {0, cols - 1, 0, -1, 1, 0}; break;
    case 2: w = {rows - 1, cols - 1, -1, 0, 0, -1}; break;
    default: w = {rows - 1, 0, 0, 1, -1, 0}; break;
  }
  if (flip) {  // x -> cols - 1 - x
    w.origin_x = cols - 1 - w.origin_x;
    w.ix = -w.ix;
    w.jx = -w.jx;
  }
  return w;
}

// v * gain clamped to 0..255 and rounded half to even, as numpy's rint then clip (clamping
// first gives the same: both bounds are integers). Adding and taking away 2^23 rounds a float
// in [0, 2^23) in the default rounding mode, half to even, in two instructions: std::nearbyint
// stays a libm call here (it may not raise "inexact"), which tripled a 16000x64000 read pass.
inline uint8_t lit(uint8_t v, float gain) {
  const float clamped = std::min(255.0f, std::max(0.0f, static_cast<float>(v) * gain));
  return static_cast<uint8_t>((clamped + 8388608.0f) - 8388608.0f);
}

template <bool kTable, int kChannels>
void copy_block(const PixelView& src, const uint32_t* table, const Walk& w, int64_t out_cols,
                int64_t i0, int64_t i1, int64_t j0, int64_t j1, uint8_t* out) {
  const int64_t step_i = w.iy * src.row_stride + w.ix * src.col_stride;
  const int64_t step_j = w.jy * src.row_stride + w.jx * src.col_stride;
  const int64_t cs = src.channel_stride;
  const uint8_t* origin =
      src.data + w.origin_y * src.row_stride + w.origin_x * src.col_stride;
  // Without a table, a row the turn leaves in order (no quarter turn, no mirror, packed
  // pixels: the mask, an image without colour jitter) is one memcpy, and mirrored a reversed
  // copy, instead of a byte at a time through the runtime steps.
  const bool packed = !kTable && (kChannels == 1 || cs == 1) && w.jy == 0;
  if (packed && (step_j == kChannels || (kChannels == 1 && step_j == -1))) {
    for (int64_t i = i0; i < i1; ++i) {
      const uint8_t* p = origin + i * step_i + j0 * step_j;
      uint8_t* q = out + (i * out_cols + j0) * kChannels;
      if (step_j > 0) std::memcpy(q, p, (j1 - j0) * kChannels);
      else std::reverse_copy(p - (j1 - j0 - 1), p + 1, q);
    }
    return;
  }
  // A looked-up colour is a word (R, G, B, 0): stored as one, its fourth byte overwritten by
  // the next pixel's, but for a row's last pixel, where it would reach past the block.
  if constexpr (kTable) {
    for (int64_t i = i0; i < i1; ++i) {
      const uint8_t* p = origin + i * step_i + j0 * step_j;
      uint8_t* q = out + (i * out_cols + j0) * kChannels;
      for (int64_t j = j0; j < j1; ++j, p += step_j, q += kChannels) {
        const uint32_t index = (uint32_t(p[0]) << 16) | (uint32_t(p[cs]) << 8) | p[2 * cs];
        if (j + 1 < j1) std::memcpy(q, table + index, 4);  // sizes known: one move each
        else std::memcpy(q, table + index, 3);
      }
    }
    return;
  }
  for (int64_t i = i0; i < i1; ++i) {
    const uint8_t* p = origin + i * step_i + j0 * step_j;
    uint8_t* q = out + (i * out_cols + j0) * kChannels;
    for (int64_t j = j0; j < j1; ++j, p += step_j, q += kChannels) {
      for (int c = 0; c < kChannels; ++c) q[c] = p[c * cs];
    }
  }
}

// x[r] holds bytes c = 0..7 of row r of an 8 x 8 block (byte c at bits 8c): afterwards x[c]
// holds column c. Three rounds swap the off-diagonal 4 x 4, 2 x 2 and 1 x 1 blocks.
inline void transpose_8x8(uint64_t (&x)[8]) {
  for (int r : {0, 1, 2, 3}) {
    const uint64_t t = ((x[r] >> 32) ^ x[r + 4]) & 0x00000000FFFFFFFFull;
    x[r] ^= t << 32;
    x[r + 4] ^= t;
  }
  for (int r : {0, 1, 4, 5}) {
    const uint64_t t = ((x[r] >> 16) ^ x[r + 2]) & 0x0000FFFF0000FFFFull;
    x[r] ^= t << 16;
    x[r + 2] ^= t;
  }
  for (int r : {0, 2, 4, 6}) {
    const uint64_t t = ((x[r] >> 8) ^ x[r + 1]) & 0x00FF00FF00FF00FFull;
    x[r] ^= t << 8;
    x[r + 1] ^= t;
  }
}

// Whether quarter_bytes can turn `src`: one byte a pixel along contiguous rows, on a
// little-endian CPU (x86-64, arm64).
bool bytes_by_eight(const PixelView& src, const Walk& w) {
  return std::endian::native == std::endian::little && src.channels == 1 && w.jy != 0 &&
         (src.col_stride == 1 || src.col_stride == -1);
}

// A mask's quarter turn (bytes_by_eight), 8 x 8 pixels at a time: 8 bytes of each of eight
// source rows, transposed in registers, are 8 bytes of each of eight output rows, where the
// pixel loop moved one byte per load and store. Rows and columns left over go pixel by pixel.
void quarter_bytes(const PixelView& src, const Walk& w, int64_t out_cols, int64_t i0,
                   int64_t i1, int64_t j0, int64_t j1, uint8_t* out) {
  const int64_t step_i = w.ix * src.col_stride;  // +-1: a quarter turn has iy == 0
  const int64_t step_j = w.jy * src.row_stride + w.jx * src.col_stride;
  const uint8_t* origin =
      src.data + w.origin_y * src.row_stride + w.origin_x * src.col_stride;
  const int64_t i8 = i0 + (i1 - i0) / 8 * 8, j8 = j0 + (j1 - j0) / 8 * 8;
  for (int64_t i = i0; i < i8; i += 8) {
    // output rows i..i+7 read source columns (i..i+7) * step_i: the lowest address first
    const int64_t first = step_i > 0 ? i * step_i : (i + 7) * step_i;
    for (int64_t j = j0; j < j8; j += 8) {
      uint64_t x[8];  // x[b] byte a: source row j + b, the column of output row i + a
      for (int b = 0; b < 8; ++b) {
        std::memcpy(&x[b], origin + (j + b) * step_j + first, 8);
        if (step_i < 0) x[b] = __builtin_bswap64(x[b]);
      }
      transpose_8x8(x);  // x[a] byte b: output pixel (i + a, j + b)
      for (int a = 0; a < 8; ++a) std::memcpy(out + (i + a) * out_cols + j, &x[a], 8);
    }
  }
  if (j8 < j1) copy_block<false, 1>(src, nullptr, w, out_cols, i0, i8, j8, j1, out);
  if (i8 < i1) copy_block<false, 1>(src, nullptr, w, out_cols, i8, i1, j0, j1, out);
}

// The gains over a block just written (still in cache), as a second loop: inside the gather
// loop the float work stalled the table's cache misses (0.33 -> 1.2 s per 4032^2 window).
// gain_x3 holds gain_x repeated per channel, so each row is one flat loop the compiler
// vectorises; gain_y[i] * gain_x[j] is still the float32 product numpy forms.
void light_block(const float* gain_y, const float* gain_x3, int64_t out_cols, int64_t i0,
                 int64_t i1, int64_t j0, int64_t j1, uint8_t* out) {
  for (int64_t i = i0; i < i1; ++i) {
    uint8_t* q = out + (i * out_cols + j0) * 3;
    const float* g = gain_x3 + j0 * 3;
    const float row = gain_y[i];
    for (int64_t k = 0; k < (j1 - j0) * 3; ++k) q[k] = lit(q[k], row * g[k]);
  }
}

template <bool kTable, bool kGains, int kChannels>
void copy_all(const PixelView& src, const uint32_t* table, const Gains* gains, const Walk& w,
              int64_t out_rows, int64_t out_cols, uint8_t* out) {
  std::vector<float> gain_x3;
  if constexpr (kGains) {
    gain_x3.resize(out_cols * 3);
    for (int64_t k = 0; k < out_cols * 3; ++k) gain_x3[k] = gains->x[k / 3];
  }
  // Quarter turns read the source down its columns, a source row (and page) per output pixel,
  // in blocks that keep both sides in cache: tall narrow ones (few source rows, a long
  // stretch of each) beat square ones by a third (docs/experiments.md).
  const bool quarter = w.jy != 0;
  const bool by_eight = bytes_by_eight(src, w);
  const int64_t block_rows = quarter ? 256 : 64, block_cols = quarter ? 32 : out_cols;
  for (int64_t i0 = 0; i0 < out_rows; i0 += block_rows) {
    for (int64_t j0 = 0; j0 < out_cols; j0 += block_cols) {
      const int64_t i1 = std::min(out_rows, i0 + block_rows);
      const int64_t j1 = std::min(out_cols, j0 + block_cols);
      if (!kTable && kChannels == 1 && by_eight) {
        quarter_bytes(src, w, out_cols, i0, i1, j0, j1, out);
      } else {
        copy_block<kTable, kChannels>(src, table, w, out_cols, i0, i1, j0, j1, out);
      }
      if constexpr (kGains) light_block(gains->y, gain_x3.data(), out_cols, i0, i1, j0, j1, out);
    }
  }
}

}  // namespace

void turn_window(const PixelView& src, const uint32_t* table, const Gains* gains, bool flip,
                 int rot90, uint8_t* out) {
  const Walk w = walk_of(src.rows, src.cols, flip, rot90);
  const bool quarter = quarter_turns(rot90) % 2 == 1;
  const int64_t out_rows = quarter ? src.cols : src.rows;
  const int64_t out_cols = quarter ? src.rows : src.cols;
  if (table != nullptr && gains != nullptr) {
    copy_all<true, true, 3>(src, table, gains, w, out_rows, out_cols, out);
  } else if (table != nullptr) {
    copy_all<true, false, 3>(src, table, gains, w, out_rows, out_cols, out);
  } else if (src.channels == 3 && gains != nullptr) {
    copy_all<false, true, 3>(src, table, gains, w, out_rows, out_cols, out);
  } else if (src.channels == 3) {
    copy_all<false, false, 3>(src, table, gains, w, out_rows, out_cols, out);
  } else {
    copy_all<false, false, 1>(src, table, gains, w, out_rows, out_cols, out);
  }
}

}  // namespace gigamlx
