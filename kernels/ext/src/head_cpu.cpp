// Row kernels of the fused tail. Features are held per row in planar layout (head_rows.h), so
// every inner loop is a contiguous, vectorizable pass over a row that stays in L1/L2.
#include <algorithm>

#include "common.h"
#include "head_cpu.h"
#include "fastmath.h"
#include "head_rows.h"
#include "loss_rows.h"

namespace gigamlx {

void up_pattern(const HeadArgs& a, int ky, int x0, float* pattern) {
  const HeadDims& d = a.d;
  for (int c = 0; c < d.c_up; ++c)
    for (int ci = 0; ci < d.c_in; ++ci)
      for (int l = 0; l < kLanes; ++l) {
        const int kx = (x0 + l) % d.s;
        pattern[(c * d.c_in + ci) * kLanes + l] = a.w_up[((c * d.s + ky) * d.s + kx) * d.c_in + ci];
      }
}

namespace {

// dst[X + 1] = relu(b + sum over ci of h2e[ci][X] * w_up[c, ky, X % s, ci]) for X < W, 16
// columns at a time (writes up to round_up(W, 16): the caller zeroes past the keep box).
// pattern: up_pattern(a, ky, 0), refilled per block when s does not divide the lane count.
void up_row(const HeadArgs& a, int c, int ky, const float* h2e, int h2e_width,
            std::vector<float>& pattern, float* dst) {
  const HeadDims& d = a.d;
  const bool periodic = kLanes % d.s == 0;  // then one pattern serves every block
  for (int x0 = 0; x0 < d.W(); x0 += kLanes) {
    if (!periodic) up_pattern(a, ky, x0, pattern.data());
    Vec u = splat(a.b_up[c]);
    for (int ci = 0; ci < d.c_in; ++ci)
      u += load(&pattern[(c * d.c_in + ci) * kLanes]) * load(h2e + ci * h2e_width + x0);
    store(dst + 1 + x0, vmax(u, splat(0.0f)));  // the row is padded past round_up(W, 64)
  }
}

// up_row for all CU output channels of CI input channels at once (GigaUNet's up1: 3 x 4, s
// divides 16): one load of each h2e channel per block serves every output, whose sums are
// independent chains held in registers with their weight patterns. Same sums, same order.
template <int CU, int CI>
void up_rows_blocked(const HeadArgs& a, int ky, const float* h2e, int h2e_width,
                     std::vector<float>& pattern, float* dst, int stride) {
  up_pattern(a, ky, 0, pattern.data());
  Vec pat[CU][CI], bias[CU];
  for (int c = 0; c < CU; ++c) {
    bias[c] = splat(a.b_up[c]);
    for (int ci = 0; ci < CI; ++ci) pat[c][ci] = load(&pattern[(c * CI + ci) * kLanes]);
  }
  for (int x0 = 0; x0 < a.d.W(); x0 += kLanes) {
    Vec h[CI];
    for (int ci = 0; ci < CI; ++ci) h[ci] = load(h2e + ci * h2e_width + x0);
    for (int c = 0; c < CU; ++c) {
      Vec u = bias[c];
      for (int ci = 0; ci < CI; ++ci) u += pat[c][ci] * h[ci];
      store(dst + c * stride + 1 + x0, vmax(u, splat(0.0f)));
    }
  }
}

}  // namespace

void fill_features(const HeadArgs& a, int n, int y, Expanded& h2e, float* dst) {
  const HeadDims& d = a.d;
  const int W = d.W(), stride = feature_stride(W);
  if (y < 0 || y >= d.H()) {
    std::fill(dst, dst + d.c_f() * stride, 0.0f);
    return;
  }
  // each channel row: zero but where it is written below (only the x_lo..x_hi columns)
  const auto zero_outside = [&](float* out, int lo, int hi) {
    if (lo >= hi) lo = hi = 0;
    std::fill(out, out + 1 + lo, 0.0f);
    std::fill(out + 1 + hi, out + stride, 0.0f);
  };
  const bool row_in = y >= a.keep[0] && y < a.keep[2];
  const int x_lo = std::max(0, a.keep[1]), x_hi = std::min(W, a.keep[3]);
  if (row_in && x_lo < x_hi) {
    const float* coarse = h2e.get(a.h2, n, y / d.s);
    thread_local std::vector<float> pattern;
    pattern.resize(static_cast<size_t>(d.c_up) * d.c_in * kLanes);
    if (d.c_up == 3 && d.c_in == 4 && kLanes % d.s == 0) {
      up_rows_blocked<3, 4>(a, y % d.s, coarse, h2e.width(), pattern, dst, stride);
    } else {
      for (int c = 0; c < d.c_up; ++c) {
        up_pattern(a, y % d.s, 0, pattern.data());
        up_row(a, c, y % d.s, coarse, h2e.width(), pattern, dst + c * stride);
      }
    }
    for (int c = 0; c < d.c_up; ++c) zero_outside(dst + c * stride, x_lo, x_hi);
  } else {
    std::fill(dst, dst + d.c_up * stride, 0.0f);
  }
  // x joins as it is, or standardised and zero outside its keep box (the columns there stay 0)
  const int xc_lo = a.x.norm.col_lo(), xc_hi = a.x.norm.col_hi(W);
  const bool x_in = a.x.norm.row_inside(y) && xc_lo < xc_hi;
  const long row = (static_cast<long>(n) * d.H() + y) * W * d.c_x;
  for (int cx = 0; cx < d.c_x; ++cx) {
    zero_outside(dst + (d.c_up + cx) * stride, xc_lo, x_in ? xc_hi : xc_lo);
  }
  if (x_in) {
    a.x.gather_channels(row + xc_lo * d.c_x, xc_hi - xc_lo, dst + d.c_up * stride + 1 + xc_lo,
                        stride);
  }
}

namespace {
constexpr int kHeadVecs = 4, kHeadBlock = kHeadVecs * kLanes;
}  // namespace

// z_row[X] = b + sum over (dy, dx, ch) of w_head * feature[y + dy - 1][ch][X + dx - 1], 64
// columns at a time with their sums in registers.
void forward_row(const HeadArgs& a, const float* rows[3], float b_head, float* z_row) {
  const int W = a.d.W(), c_f = a.d.c_f(), stride = feature_stride(W);
  for (int x0 = 0; x0 < W; x0 += kHeadBlock) {
    Vec acc[kHeadVecs];
    for (auto& v : acc) v = splat(b_head);
    for (int dy = 0; dy < 3; ++dy)
      for (int dx = 0; dx < 3; ++dx)
        for (int ch = 0; ch < c_f; ++ch) {
          const float wv = a.w_head[(dy * 3 + dx) * c_f + ch];
          const float* src = rows[dy] + ch * stride + dx + x0;
#pragma GCC unroll 4
          for (int v = 0; v < kHeadVecs; ++v) acc[v] += wv * load(src + v * kLanes);
        }
    float lanes[kHeadBlock];
    std::memcpy(lanes, acc, sizeof(lanes));
    std::copy_n(lanes, std::min(kHeadBlock, W - x0), z_row + x0);
  }
}

// Output rows y and y + 1 from feature rows y - 1 .. y + 2 (rows[0..3]): each load of a
// feature block serves both rows it reaches. Each output's sum runs over (dy, dx, ch) in
// forward_row's order, so the bits are the same.
void forward_rows_2(const HeadArgs& a, const float* rows[4], float b_head, float* z_top,
                    float* z_bottom) {
  const int W = a.d.W(), c_f = a.d.c_f(), stride = feature_stride(W);
  for (int x0 = 0; x0 < W; x0 += kHeadBlock) {
    Vec top[kHeadVecs], bottom[kHeadVecs];
    for (int v = 0; v < kHeadVecs; ++v) top[v] = bottom[v] = splat(b_head);
#pragma GCC unroll 4
    for (int r = 0; r < 4; ++r)
      for (int dx = 0; dx < 3; ++dx)
        for (int ch = 0; ch < c_f; ++ch) {
          const float* src = rows[r] + ch * stride + dx + x0;
          Vec x[kHeadVecs];
          for (int v = 0; v < kHeadVecs; ++v) x[v] = load(src + v * kLanes);
          if (r < 3) {
            const float wv = a.w_head[(r * 3 + dx) * c_f + ch];
            for (int v = 0; v < kHeadVecs; ++v) top[v] += wv * x[v];
          }
          if (r > 0) {
            const float wv = a.w_head[((r - 1) * 3 + dx) * c_f + ch];
            for (int v = 0; v < kHeadVecs; ++v) bottom[v] += wv * x[v];
          }
        }
    const int n = std::min(kHeadBlock, W - x0);
    float lanes[kHeadBlock];
    std::memcpy(lanes, top, sizeof(lanes));
    std::copy_n(lanes, n, z_top + x0);
    std::memcpy(lanes, bottom, sizeof(lanes));
    std::copy_n(lanes, n, z_bottom + x0);
  }
}

void head_forward(const HeadArgs& a, float b_head, float* z) {
  const int H = a.d.H(), W = a.d.W(), total = a.d.n * H;
  struct Scratch {
    RowRing ring;
    Expanded h2e;
  };
  auto make = [&] { return Scratch{RowRing(a.d.c_f(), W, 4), Expanded(a.d)}; };
  parallel_chunks(total, 32, make, [&](Scratch& st, int begin, int end, int) {
    RowRing& ring = st.ring;
    Expanded& h2e = st.h2e;
    for (int r = begin; r < end;) {
      const int n = r / H, y = r % H, count = (r + 1 < end && y + 1 < H) ? 2 : 1;
      const float* rows[4];
      for (int k = 0; k < count + 2; ++k) {
        const int yy = y + k - 1;
        rows[k] = ring.get(n, yy, [&](float* dst) { fill_features(a, n, yy, h2e, dst); });
      }
      float* z_row = z + static_cast<long>(r) * W;
      if (count == 2) {
        forward_rows_2(a, rows, b_head, z_row, z_row + W);
      } else {
        forward_row(a, rows, b_head, z_row);
      }
      r += count;
    }
  });
}

namespace {

template <class G>
void loss_rows_of(const HeadArgs& a, float b_head, const G* target, const LossParams& p,
                  int crop_h, int crop_w, double* values, double* stats) {
  require(a.d.n == 1, "the head's loss takes one window");
  const int W = a.d.W();
  struct Scratch {
    RowRing ring;
    Expanded h2e;
    std::vector<float> z;  // two rows of logits
  };
  auto make = [&] {
    return Scratch{RowRing(a.d.c_f(), W, 4), Expanded(a.d), std::vector<float>(2 * W)};
  };
  // only the crop's rows: the loss never reads the others
  parallel_chunks(crop_h, 32, make, [&](Scratch& st, int begin, int end, int) {
    for (int i = begin; i < end;) {
      const int y = p.cy + i, count = i + 1 < end ? 2 : 1;
      const float* rows[4];
      for (int k = 0; k < count + 2; ++k) {
        const int yy = y + k - 1;
        rows[k] = st.ring.get(0, yy, [&](float* dst) { fill_features(a, 0, yy, st.h2e, dst); });
      }
      float* z = st.z.data();
      if (count == 2) {
        forward_rows_2(a, rows, b_head, z, z + W);
      } else {
        forward_row(a, rows, b_head, z);
      }
      for (int k = 0; k < count; ++k) {
        const long row = i + k;
        values[row] = loss_row(z + k * W + p.cx, target + row * crop_w, crop_w, p,
                               stats + 6 * row);
      }
      i += count;
    }
  });
}

}  // namespace

void head_loss_rows(const HeadArgs& a, float b_head, const uint8_t* target, const LossParams& p,
                    int crop_h, int crop_w, double* values, double* stats) {
  loss_rows_of(a, b_head, target, p, crop_h, crop_w, values, stats);
}

void head_loss_rows(const HeadArgs& a, float b_head, const float* target, const LossParams& p,
                    int crop_h, int crop_w, double* values, double* stats) {
  loss_rows_of(a, b_head, target, p, crop_h, crop_w, values, stats);
}

}  // namespace gigamlx
