// Row kernels of the fused tail on raw float pointers (no MLX types): forward logits and the
// backward pass, both parallel over rows and recomputing the up-sampled features per row.
#pragma once

#include <array>
#include <vector>

#include "common.h"

namespace gigamlx {

struct HeadDims {
  int n, h, w;   // batch and the coarse (h2) grid
  int c_in, s;   // h2 channels and the up-sampling stride (== kernel)
  int c_up, c_x; // up-sampled channels and input channels; the head sees c_up + c_x
  int H() const { return h * s; }
  int W() const { return w * s; }
  int c_f() const { return c_up + c_x; }
};

struct HeadArgs {
  HeadDims d;
  std::array<int, 4> keep;  // y0, x0, y1, x1 at full resolution (window-local)
  const float* h2;          // (n, h, w, c_in)
  Image x;                  // (n, H, W, c_x)
  const float* w_up;        // (c_up, s, s, c_in)
  const float* b_up;        // (c_up)
  const float* w_head;      // (1, 3, 3, c_f)
};

struct HeadGrads {
  float* d_h2;                 // (n, h, w, c_in), written in full
  std::vector<double> d_w_up;  // (c_up, s, s, c_in)
  std::vector<double> d_b_up;  // (c_up)
  std::vector<double> d_w_head;  // (3, 3, c_f)
  double d_b_head = 0.0;
};

// z (n, H, W): z = b_head + conv3x3(concat(relu(up(h2)) zeroed outside keep, x)).
void head_forward(const HeadArgs& a, float b_head, float* z);

// All gradients of sum(dz * z); dz (n, H, W). Weight sums are float per row, double across.
void head_backward(const HeadArgs& a, const float* dz, HeadGrads& g);

struct LossParams;  // loss.h: the owned crop's offset and the surrogate's coefficients

// The loss of loss.h on the owned crop (crop_h x crop_w at p.cy, p.cx; target (crop_h,
// crop_w)) of one window's logits, computed row by row without writing them out: values[i]
// and stats[6 i .. 6 i + 5] of crop row i, the same bits as tile_loss on head_forward's z.
void head_loss_rows(const HeadArgs& a, float b_head, const uint8_t* target, const LossParams& p,
                    int crop_h, int crop_w, double* values, double* stats);
void head_loss_rows(const HeadArgs& a, float b_head, const float* target, const LossParams& p,
                    int crop_h, int crop_w, double* values, double* stats);

// head_backward of the loss's d z (scaled by `scale`), each row of it computed from the
// logits when the backward reaches it: the same bits as head_backward on tile_loss's vjp.
void head_loss_backward(const HeadArgs& a, float b_head, const uint8_t* target,
                        const LossParams& p, int crop_h, int crop_w, float scale, HeadGrads& g);
void head_loss_backward(const HeadArgs& a, float b_head, const float* target,
                        const LossParams& p, int crop_h, int crop_w, float scale, HeadGrads& g);

}  // namespace gigamlx
