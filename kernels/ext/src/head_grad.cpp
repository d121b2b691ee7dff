// Backward of the fused tail, parallel over coarse rows (each worker owns whole rows of d h2)
// with per-worker weight sums: float along a row, double across rows and workers.
#include <algorithm>

#include "common.h"
#include "head_cpu.h"
#include "head_rows.h"

namespace gigamlx {
namespace {

struct Worker {
  Worker(const HeadDims& d)
      : feats(d.c_f(), d.W()), dz(1, d.W()), du(d.c_up * d.W()),
        w_up(d.c_up * d.s * d.s * d.c_in), b_up(d.c_up), w_head(9 * d.c_f()),
        w_up_row(d.c_up * d.s * d.c_in) {}
  RowRing feats, dz;
  std::vector<float> du;  // [c_up][W]: cotangent of the up-sampled pre-activations, one row
  std::vector<double> w_up, b_up, w_head;
  double b_head = 0.0;
  std::vector<float> w_up_row;  // [c_up][s (kx)][c_in]: one row's d w_up before the double add
};

float dot(const float* a, const float* b, int n) {
  float s = 0.0f;
#pragma omp simd reduction(+ : s)
  for (int k = 0; k < n; ++k) s += a[k] * b[k];
  return s;
}

// Head weight/bias sums and du (N.B. the ReLU/zeroing mask is feature > 0) for full row y.
void head_part(const HeadArgs& a, const float* f[3], const float* g[3], Worker& wk) {
  const int W = a.d.W(), c_f = a.d.c_f(), stride = W + 2;
  const float* g_mid = g[1] + 1;
  for (int dy = 0; dy < 3; ++dy)
    for (int dx = 0; dx < 3; ++dx)
      for (int ch = 0; ch < c_f; ++ch)
        wk.w_head[(dy * 3 + dx) * c_f + ch] += dot(g_mid, f[dy] + ch * stride + dx, W);
  float bias = 0.0f;
#pragma omp simd reduction(+ : bias)
  for (int X = 0; X < W; ++X) bias += g_mid[X];
  wk.b_head += bias;
  for (int c = 0; c < a.d.c_up; ++c) {
    float* du = wk.du.data() + c * W;
    std::fill(du, du + W, 0.0f);
    for (int dy = 0; dy < 3; ++dy)
      for (int dx = 0; dx < 3; ++dx) {
        const float wv = a.w_head[(dy * 3 + dx) * c_f + c];
        const float* src = g[2 - dy] + 2 - dx;
#pragma omp simd
        for (int X = 0; X < W; ++X) du[X] += wv * src[X];
      }
    const float* feat = f[1] + c * stride + 1;
    float bias_up = 0.0f;
#pragma omp simd reduction(+ : bias_up)
    for (int X = 0; X < W; ++X) {
      du[X] = feat[X] > 0.0f ? du[X] : 0.0f;
      bias_up += du[X];
    }
    wk.b_up[c] += bias_up;
  }
}

// Up-sampling part for full row y = i * s + ky: d w_up sums and this row's share of d h2.
void up_part(const HeadArgs& a, int n, int i, int ky, float* d_h2_row, Worker& wk) {
  const HeadDims& d = a.d;
  const int W = d.W();
  std::fill(wk.w_up_row.begin(), wk.w_up_row.end(), 0.0f);
  const float* h2_row = a.h2 + (static_cast<long>(n) * d.h + i) * d.w * d.c_in;
  for (int j = 0; j < d.w; ++j) {
    const float* hp = h2_row + j * d.c_in;
    float* dh = d_h2_row + j * d.c_in;
    for (int kx = 0; kx < d.s; ++kx)
      for (int c = 0; c < d.c_up; ++c) {
        const float g = wk.du[c * W + j * d.s + kx];
        if (g == 0.0f) continue;  // most of the ReLU's zeros: skip the 2 * c_in MACs
        const float* wp = a.w_up + ((c * d.s + ky) * d.s + kx) * d.c_in;
        float* acc = wk.w_up_row.data() + (c * d.s + kx) * d.c_in;
        for (int ci = 0; ci < d.c_in; ++ci) {
          acc[ci] += g * hp[ci];
          dh[ci] += g * wp[ci];
        }
      }
  }
  for (int c = 0; c < d.c_up; ++c)
    for (int kx = 0; kx < d.s; ++kx)
      for (int ci = 0; ci < d.c_in; ++ci)
        wk.w_up[((c * d.s + ky) * d.s + kx) * d.c_in + ci] +=
            wk.w_up_row[(c * d.s + kx) * d.c_in + ci];
}

void backward_rows(const HeadArgs& a, const float* dz, float* d_h2, int begin, int end,
                   Worker& wk) {
  const HeadDims& d = a.d;
  const int H = d.H(), W = d.W();
  for (int b = begin; b < end; ++b) {
    const int n = b / d.h, i = b % d.h;
    float* d_h2_row = d_h2 + static_cast<long>(b) * d.w * d.c_in;
    std::fill(d_h2_row, d_h2_row + d.w * d.c_in, 0.0f);
    for (int ky = 0; ky < d.s; ++ky) {
      const int y = i * d.s + ky;
      const float *f[3], *g[3];
      for (int k = 0; k < 3; ++k) {
        const int yy = y + k - 1;
        f[k] = wk.feats.get(n, yy, [&](float* dst) { fill_features(a, n, yy, dst); });
        g[k] = wk.dz.get(n, yy, [&](float* dst) {
          std::fill(dst, dst + W + 2, 0.0f);
          if (yy >= 0 && yy < H) std::copy_n(dz + (static_cast<long>(n) * H + yy) * W, W, dst + 1);
        });
      }
      head_part(a, f, g, wk);
      up_part(a, n, i, ky, d_h2_row, wk);
    }
  }
}

void add_into(std::vector<double>& total, const std::vector<double>& part) {
  for (size_t k = 0; k < part.size(); ++k) total[k] += part[k];
}

}  // namespace

void head_backward(const HeadArgs& a, const float* dz, HeadGrads& g) {
  const int total = a.d.n * a.d.h, workers = worker_count(total);
  std::vector<Worker> locals;
  locals.reserve(workers);
  for (int t = 0; t < workers; ++t) locals.emplace_back(a.d);
  parallel_rows(total, workers, [&](int begin, int end, int t) {
    backward_rows(a, dz, g.d_h2, begin, end, locals[t]);
  });
  g.d_w_up.assign(locals[0].w_up.size(), 0.0);
  g.d_b_up.assign(locals[0].b_up.size(), 0.0);
  g.d_w_head.assign(locals[0].w_head.size(), 0.0);
  g.d_b_head = 0.0;
  for (const Worker& wk : locals) {  // fixed order: results do not depend on timing
    add_into(g.d_w_up, wk.w_up);
    add_into(g.d_b_up, wk.b_up);
    add_into(g.d_w_head, wk.w_head);
    g.d_b_head += wk.b_head;
  }
}

}  // namespace gigamlx
