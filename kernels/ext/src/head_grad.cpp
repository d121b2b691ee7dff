// Backward of the fused tail, parallel over coarse rows (each worker owns whole rows of d h2)
// with per-worker weight sums: float along a row, double across rows and workers. Inner loops
// run 16 columns at a time over zero-padded rows (head_rows.h).
#include <algorithm>

#include "common.h"
#include "fastmath.h"
#include "head_cpu.h"
#include "head_rows.h"
#include "loss_rows.h"

namespace gigamlx {
namespace {

constexpr int kMaxFeatures = 16;  // head input channels the block loops support

struct Worker {
  // four feature rows: a cotangent row computed from the logits (head_loss_backward) reads
  // the feature rows around it, one past those the backward reads
  explicit Worker(const HeadDims& d)
      : feats(d.c_f(), d.W(), 4), dz(1, d.W()), h2e(d), width(round_up(d.W(), 64)),
        z_row(static_cast<size_t>(d.W())),
        du(static_cast<size_t>(d.c_up) * width, 0.0f),
        dh2e(static_cast<size_t>(d.c_in) * width, 0.0f),
        pattern(static_cast<size_t>(d.c_up) * d.c_in * kLanes),
        w_up(d.c_up * d.s * d.s * d.c_in), b_up(d.c_up), w_head(9 * d.c_f()) {}
  RowRing feats, dz;
  Expanded h2e;
  int width;
  std::vector<float> z_row;  // one row of logits (head_loss_backward)
  std::vector<float> du;    // [c_up][width]: cotangent of the up-sampled pre-activations; 0 past W
  std::vector<float> dh2e;  // [c_in][width]: d h2 of one coarse row, expanded like h2e
  std::vector<float> pattern;  // up_pattern of the current kernel row
  std::vector<double> w_up, b_up, w_head;
  double b_head = 0.0;
  void clear_sums() {
    for (auto* v : {&w_up, &b_up, &w_head}) std::fill(v->begin(), v->end(), 0.0);
    b_head = 0.0;
  }
};

// d w_head of full row y for CF feature channels known at compile time (GigaUNet's head: 6):
// the 3 x CF sums of one kernel row stay in registers and share each load of g. Each sum runs
// over the columns in the same order as the generic loop, so the bits are the same.
template <int CF>
void head_weight_sums_fixed(const HeadArgs& a, const float* f[3], const float* g_mid,
                            Worker& wk) {
  const int W = a.d.W(), stride = feature_stride(W);
  for (int dy = 0; dy < 3; ++dy) {
    Vec acc[3][CF] = {};
    for (int x0 = 0; x0 < W; x0 += kLanes) {
      const Vec g = load(g_mid + x0);
#pragma GCC unroll 3
      for (int dx = 0; dx < 3; ++dx)
#pragma GCC unroll 16
        for (int ch = 0; ch < CF; ++ch) acc[dx][ch] += g * load(f[dy] + ch * stride + dx + x0);
    }
    for (int dx = 0; dx < 3; ++dx)
      for (int ch = 0; ch < CF; ++ch) wk.w_head[(dy * 3 + dx) * CF + ch] += lane_sum(acc[dx][ch]);
  }
}

// d w_head and d b_head of full row y: g rows (cotangent of z) times the feature rows.
void head_weight_sums(const HeadArgs& a, const float* f[3], const float* g_mid, Worker& wk) {
  const int W = a.d.W(), c_f = a.d.c_f(), stride = feature_stride(W);
  if (c_f == 6) {
    head_weight_sums_fixed<6>(a, f, g_mid, wk);
  } else {
    for (int dy = 0; dy < 3; ++dy)
      for (int dx = 0; dx < 3; ++dx) {
        Vec acc[kMaxFeatures] = {};
        for (int x0 = 0; x0 < W; x0 += kLanes) {
          const Vec g = load(g_mid + x0);
          for (int ch = 0; ch < c_f; ++ch) acc[ch] += g * load(f[dy] + ch * stride + dx + x0);
        }
        for (int ch = 0; ch < c_f; ++ch)
          wk.w_head[(dy * 3 + dx) * c_f + ch] += lane_sum(acc[ch]);
      }
  }
  Vec bias = {};
  for (int x0 = 0; x0 < W; x0 += kLanes) bias += load(g_mid + x0);
  wk.b_head += lane_sum(bias);
}

// du[c] = (conv3x3^T g)[c] where the feature is > 0 (the ReLU/zeroing mask), and d b_up.
void up_cotangent(const HeadArgs& a, const float* f_mid, const float* g[3], Worker& wk) {
  const int W = a.d.W(), c_f = a.d.c_f(), stride = feature_stride(W);
  for (int c = 0; c < a.d.c_up; ++c) {
    float* du = wk.du.data() + static_cast<size_t>(c) * wk.width;
    const float* feat = f_mid + c * stride + 1;
    Vec bias = {};
    for (int x0 = 0; x0 < W; x0 += kLanes) {
      Vec acc = {};
      for (int dy = 0; dy < 3; ++dy)
        for (int dx = 0; dx < 3; ++dx)
          acc += a.w_head[(dy * 3 + dx) * c_f + c] * load(g[2 - dy] + 2 - dx + x0);
      const Vec masked = select(load(feat + x0) > splat(0.0f), acc, splat(0.0f));
      bias += masked;
      store(du + x0, masked);
    }
    wk.b_up[c] += lane_sum(bias);
  }
}

// Up-sampling part for full row y = i * s + ky with CU x CI channels (s divides 16): d w_up
// sums, and d h2 summed into the expanded row dh2e.
template <int CU, int CI>
void up_part_blocked(const HeadArgs& a, const float* h2e, int ky, Worker& wk) {
  const HeadDims& d = a.d;
  const int W = d.W(), width = wk.width;
  up_pattern(a, ky, 0, wk.pattern.data());
  Vec pat[CU][CI], acc[CU][CI] = {};
  for (int c = 0; c < CU; ++c)
    for (int ci = 0; ci < CI; ++ci) pat[c][ci] = load(&wk.pattern[(c * CI + ci) * kLanes]);
  for (int x0 = 0; x0 < W; x0 += kLanes) {
    Vec du[CU];
    for (int c = 0; c < CU; ++c) du[c] = load(&wk.du[c * width + x0]);
    for (int ci = 0; ci < CI; ++ci) {
      const Vec h = load(h2e + ci * width + x0);
      float* dst = &wk.dh2e[ci * width + x0];
      Vec t = load(dst);
      for (int c = 0; c < CU; ++c) {
        acc[c][ci] += du[c] * h;
        t += du[c] * pat[c][ci];
      }
      store(dst, t);
    }
  }
  for (int c = 0; c < CU; ++c)
    for (int ci = 0; ci < CI; ++ci)
      for (int l = 0; l < kLanes; ++l)
        wk.w_up[((c * d.s + ky) * d.s + l % d.s) * d.c_in + ci] += acc[c][ci][l];
}

// Any channel counts and strides: the same sums column by column.
void up_part_generic(const HeadArgs& a, const float* h2e, int ky, Worker& wk) {
  const HeadDims& d = a.d;
  for (int X = 0; X < d.W(); ++X) {
    const int kx = X % d.s;
    for (int c = 0; c < d.c_up; ++c) {
      const float g = wk.du[c * wk.width + X];
      const float* wp = a.w_up + ((c * d.s + ky) * d.s + kx) * d.c_in;
      for (int ci = 0; ci < d.c_in; ++ci) {
        wk.w_up[((c * d.s + ky) * d.s + kx) * d.c_in + ci] += g * h2e[ci * wk.width + X];
        wk.dh2e[ci * wk.width + X] += g * wp[ci];
      }
    }
  }
}

// d h2 of one coarse row from its expanded sums; clears them for the next row.
void fold_expanded(const HeadDims& d, Worker& wk, float* d_h2_row) {
  for (int j = 0; j < d.w; ++j)
    for (int ci = 0; ci < d.c_in; ++ci) {
      float* src = &wk.dh2e[ci * wk.width + j * d.s];
      float sum = 0.0f;
      for (int kx = 0; kx < d.s; ++kx) sum += src[kx];
      d_h2_row[j * d.c_in + ci] = sum;
    }
  std::fill(wk.dh2e.begin(), wk.dh2e.end(), 0.0f);
}

// g_row(wk, n, yy, dst) writes the cotangent of z row yy (zero outside the window) to dst[1..W],
// zeros around it (dst holds feature_stride(W) floats). Rows outside [g_lo, g_hi) are known to
// be zero: a full row y whose three cotangent rows are all outside adds only zeros to every
// sum, so it is skipped (the sums are the same).
template <class GRow>
void backward_rows(const HeadArgs& a, GRow& g_row, int g_lo, int g_hi, float* d_h2, int begin,
                   int end, Worker& wk) {
  const HeadDims& d = a.d;
  const bool blocked = d.c_up == 3 && d.c_in == 4 && kLanes % d.s == 0;
  for (int b = begin; b < end; ++b) {
    const int n = b / d.h, i = b % d.h;
    for (int ky = 0; ky < d.s; ++ky) {
      const int y = i * d.s + ky;
      if (y + 1 < g_lo || y - 1 >= g_hi) continue;
      const float *f[3], *g[3];
      for (int k = 0; k < 3; ++k) {
        const int yy = y + k - 1;
        f[k] = wk.feats.get(n, yy, [&](float* dst) { fill_features(a, n, yy, wk.h2e, dst); });
        g[k] = wk.dz.get(n, yy, [&](float* dst) { g_row(wk, n, yy, dst); });
      }
      head_weight_sums(a, f, g[1] + 1, wk);
      up_cotangent(a, f[1], g, wk);
      const float* h2e = wk.h2e.get(a.h2, n, i);
      if (blocked) {
        up_part_blocked<3, 4>(a, h2e, ky, wk);
      } else {
        up_part_generic(a, h2e, ky, wk);
      }
    }
    fold_expanded(d, wk, d_h2 + static_cast<long>(b) * d.w * d.c_in);
  }
}

// The backward over all coarse rows, with the cotangent rows from g_row (zero outside rows
// [g_lo, g_hi)).
template <class GRow>
void backward_with(const HeadArgs& a, GRow&& g_row, int g_lo, int g_hi, HeadGrads& g) {
  require(a.d.c_f() <= kMaxFeatures, "the head sees at most 16 channels");
  const int total = a.d.n * a.d.h;
  constexpr int kRowsPerChunk = 8;  // coarse rows a thread claims at a time
  // per chunk: d w_up, d b_up, d w_head, d b_head, summed in chunk order below
  std::vector<std::vector<double>> parts((total + kRowsPerChunk - 1) / kRowsPerChunk);
  auto make = [&] { return Worker(a.d); };
  parallel_chunks(total, kRowsPerChunk, make, [&](Worker& wk, int begin, int end, int chunk) {
    wk.clear_sums();
    backward_rows(a, g_row, g_lo, g_hi, g.d_h2, begin, end, wk);
    auto& part = parts[chunk];
    part = wk.w_up;
    part.insert(part.end(), wk.b_up.begin(), wk.b_up.end());
    part.insert(part.end(), wk.w_head.begin(), wk.w_head.end());
    part.push_back(wk.b_head);
  });
  const std::vector<double> sums = sum_chunks(parts);
  auto at = sums.begin();
  const size_t n_w_up = static_cast<size_t>(a.d.c_up) * a.d.s * a.d.s * a.d.c_in;
  g.d_w_up.assign(at, at + n_w_up);
  g.d_b_up.assign(at + n_w_up, at + n_w_up + a.d.c_up);
  g.d_w_head.assign(at + n_w_up + a.d.c_up, sums.end() - 1);
  g.d_b_head = sums.back();
}

template <class G>
void loss_backward(const HeadArgs& a, float b_head, const G* target, const LossParams& p,
                   int crop_h, int crop_w, float scale, HeadGrads& g) {
  require(a.d.n == 1, "the head's loss takes one window");
  const int W = a.d.W();
  auto g_row = [&](Worker& wk, int n, int yy, float* dst) {
    std::fill(dst, dst + feature_stride(W), 0.0f);
    if (yy < p.cy || yy >= p.cy + crop_h) return;  // d z is zero off the crop
    const float* f[3];
    for (int k = 0; k < 3; ++k) {
      const int row = yy + k - 1;
      f[k] = wk.feats.get(n, row, [&](float* out) { fill_features(a, n, row, wk.h2e, out); });
    }
    forward_row(a, f, b_head, wk.z_row.data());
    const G* g_row_target = target + static_cast<long>(yy - p.cy) * crop_w;
    loss_grad_row(wk.z_row.data() + p.cx, g_row_target, crop_w, p, scale, dst + 1 + p.cx);
  };
  backward_with(a, g_row, p.cy, p.cy + crop_h, g);
}

}  // namespace

void head_backward(const HeadArgs& a, const float* dz, HeadGrads& g) {
  const int H = a.d.H(), W = a.d.W();
  auto g_row = [&](Worker&, int n, int yy, float* dst) {
    std::fill(dst, dst + feature_stride(W), 0.0f);
    if (yy >= 0 && yy < H) std::copy_n(dz + (static_cast<long>(n) * H + yy) * W, W, dst + 1);
  };
  backward_with(a, g_row, 0, H, g);
}

void head_loss_backward(const HeadArgs& a, float b_head, const uint8_t* target,
                        const LossParams& p, int crop_h, int crop_w, float scale, HeadGrads& g) {
  loss_backward(a, b_head, target, p, crop_h, crop_w, scale, g);
}

void head_loss_backward(const HeadArgs& a, float b_head, const float* target,
                        const LossParams& p, int crop_h, int crop_w, float scale, HeadGrads& g) {
  loss_backward(a, b_head, target, p, crop_h, crop_w, scale, g);
}

}  // namespace gigamlx
