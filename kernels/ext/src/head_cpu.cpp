// Row kernels of the fused tail. Features are held per row in planar layout [c_f][W + 2]
// (one zero column each side = the head's padding), so every inner loop is a contiguous,
// vectorizable pass over a row that stays in L1/L2.
#include <algorithm>

#include "common.h"
#include "head_cpu.h"
#include "head_rows.h"

namespace gigamlx {

void fill_features(const HeadArgs& a, int n, int y, float* dst) {
  const HeadDims& d = a.d;
  const int W = d.W(), stride = W + 2;
  std::fill(dst, dst + d.c_f() * stride, 0.0f);
  if (y < 0 || y >= d.H()) return;
  const int i = y / d.s, ky = y % d.s;
  const bool row_in = y >= a.keep[0] && y < a.keep[2];
  const int x_lo = std::max(0, a.keep[1]), x_hi = std::min(W, a.keep[3]);
  for (int j = 0; row_in && j < d.w; ++j) {
    const float* hp = a.h2 + ((static_cast<long>(n) * d.h + i) * d.w + j) * d.c_in;
    for (int kx = 0; kx < d.s; ++kx) {
      const int X = j * d.s + kx;
      if (X < x_lo || X >= x_hi) continue;
      for (int c = 0; c < d.c_up; ++c) {
        const float* wp = a.w_up + ((c * d.s + ky) * d.s + kx) * d.c_in;
        float u = a.b_up[c];
        for (int ci = 0; ci < d.c_in; ++ci) u += hp[ci] * wp[ci];
        dst[c * stride + X + 1] = std::max(u, 0.0f);
      }
    }
  }
  const float* xp = a.x + (static_cast<long>(n) * d.H() + y) * W * d.c_x;
  for (int cx = 0; cx < d.c_x; ++cx) {
    float* out = dst + (d.c_up + cx) * stride + 1;
    for (int X = 0; X < W; ++X) out[X] = xp[X * d.c_x + cx];
  }
}

namespace {

// z_row[X] = b + sum over (dy, dx, ch) of w_head * feature[y + dy - 1][ch][X + dx - 1].
void forward_row(const HeadArgs& a, const float* rows[3], float b_head, float* z_row) {
  const int W = a.d.W(), c_f = a.d.c_f(), stride = W + 2;
  std::fill(z_row, z_row + W, b_head);
  for (int dy = 0; dy < 3; ++dy) {
    for (int dx = 0; dx < 3; ++dx) {
      for (int ch = 0; ch < c_f; ++ch) {
        const float wv = a.w_head[(dy * 3 + dx) * c_f + ch];
        const float* src = rows[dy] + ch * stride + dx;
#pragma omp simd
        for (int X = 0; X < W; ++X) z_row[X] += wv * src[X];
      }
    }
  }
}

}  // namespace

void head_forward(const HeadArgs& a, float b_head, float* z) {
  const int H = a.d.H(), W = a.d.W(), total = a.d.n * H;
  parallel_rows(total, worker_count(total), [&](int begin, int end, int) {
    RowRing ring(a.d.c_f(), W);
    for (int r = begin; r < end; ++r) {
      const int n = r / H, y = r % H;
      const float* rows[3];
      for (int dy = 0; dy < 3; ++dy) {
        const int yy = y + dy - 1;
        rows[dy] = ring.get(n, yy, [&](float* dst) { fill_features(a, n, yy, dst); });
      }
      forward_row(a, rows, b_head, z + static_cast<long>(r) * W);
    }
  });
}

}  // namespace gigamlx
