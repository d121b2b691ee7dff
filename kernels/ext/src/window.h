// Training windows on the CPU: the D4 turn and the colour table of a region, in one pass.
#pragma once

#include <cstdint>

namespace gigamlx {

// A (rows, cols, channels) uint8 array anywhere in memory; strides in bytes, any sign.
struct PixelView {
  const uint8_t* data;
  int64_t rows, cols, channels;
  int64_t row_stride, col_stride, channel_stride;
};

// rot90 as 0..3 counter-clockwise quarter turns (numpy's np.rot90 takes any integer).
inline int quarter_turns(int rot90) { return ((rot90 % 4) + 4) % 4; }

// out = rot90(fliplr?(src), rot90) as contiguous (rows', cols', channels) uint8, each pixel's
// colour looked up in `table` on the way when it is not null: table[R << 16 | G << 8 | B]
// holds the new colour as bytes R, G, B, 0 (channels must be 3). The turn is numpy's: flip
// left-right first, then np.rot90(., rot90) counter-clockwise on axes (0, 1). With gains
// (channels 3), output pixel (i, j) is then scaled by gain_y[i] * gain_x[j] (float32), rounded
// half to even and clamped to 0..255: train/augment.py's `apply_gains`, bit for bit.
struct Gains {
  const float* y;  // out rows entries
  const float* x;  // out cols entries
};
void turn_window(const PixelView& src, const uint32_t* table, const Gains* gains, bool flip,
                 int rot90, uint8_t* out);

}  // namespace gigamlx
