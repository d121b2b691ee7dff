// The fused loss tail: one pass over the crop per call, rows split over the cores. Per-row
// sums are double (they are finished in float64 on the host anyway).
#include "loss.h"

#include <cmath>
#include <cstring>

#include "fastmath.h"

namespace gigamlx {
namespace {

struct Crop {
  int H, W, h, w;  // window and crop sizes
};

Crop crop_of(const mx::array& z, const mx::array& g, const LossParams& p) {
  require(z.ndim() == 4 && z.shape(0) == 1 && z.shape(3) == 1, "z must be (1, H, W, 1)");
  require(g.ndim() == 2, "g must be (h, w)");
  Crop c{z.shape(1), z.shape(2), g.shape(0), g.shape(1)};
  require(p.cy >= 0 && p.cx >= 0 && p.cy + c.h <= c.H && p.cx + c.w <= c.W,
          "the crop must lie inside the window");
  return c;
}

// One crop row: surrogate value (returned) and the six statistics into stats[0..5]. The loop
// vectorizes (fastmath.h); sums are double per lane.
double loss_row(const float* z, const float* g, int w, const LossParams& p, double* stats) {
  double value = 0.0, s0 = 0.0, s1 = 0.0, s2 = 0.0, s3 = 0.0, s4 = 0.0, s5 = 0.0;
#pragma omp simd reduction(+ : value, s0, s1, s2, s3, s4, s5)
  for (int X = 0; X < w; ++X) {
    float prob, softplus;
    sigmoid_softplus(z[X], prob, softplus);
    const float gg = g[X], hard = z[X] > 0.0f ? 1.0f : 0.0f;
    const float bce = std::max(z[X], 0.0f) - z[X] * gg + softplus;
    value += (p.a * gg + p.b) * prob + p.c * bce;
    s0 += prob * gg, s1 += prob, s2 += gg, s3 += bce, s4 += hard * gg, s5 += hard;
  }
  const double s[6] = {s0, s1, s2, s3, s4, s5};
  std::memcpy(stats, s, sizeof(s));
  return value;
}

// One row of d z on the crop: scale * (d loss / d p * p (1 - p) + c (p - g)).
void loss_grad_row(const float* z, const float* g, int w, const LossParams& p, float scale,
                   float* dz) {
#pragma omp simd
  for (int X = 0; X < w; ++X) {
    const float e = exp_nonpositive(-std::fabs(z[X]));
    const float prob = z[X] >= 0.0f ? 1.0f / (1.0f + e) : e / (1.0f + e);
    const float dp = p.a * g[X] + p.b;
    dz[X] = scale * (dp * prob * (1.0f - prob) + p.c * (prob - g[X]));
  }
}

}  // namespace

std::vector<mx::array> tile_loss(const mx::array& z, const mx::array& g, LossParams params) {
  auto s = cpu_stream();
  std::vector<mx::array> in = {as_dense(z, s), as_dense(g, s)};
  const Crop c = crop_of(in[0], in[1], params);
  return mx::array::make_arrays({{}, {6, c.h}}, {mx::float32, mx::float32},
                                std::make_shared<TileLoss>(s, params), in);
}

void TileLoss::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const Crop c = crop_of(in[0], in[1], params_);
  float* value = allocate(out[0]);
  float* rows = allocate(out[1]);
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  for (auto& o : out) encoder.set_output_array(o);
  encoder.dispatch([z = in[0].data<float>(), g = in[1].data<float>(), c, p = params_, value,
                    rows]() {
    const int workers = worker_count(c.h);
    std::vector<double> partial(workers, 0.0), stats(6 * static_cast<size_t>(c.h));
    parallel_rows(c.h, workers, [&](int begin, int end, int t) {
      for (int y = begin; y < end; ++y) {
        const float* z_row = z + static_cast<long>(y + p.cy) * c.W + p.cx;
        partial[t] += loss_row(z_row, g + static_cast<long>(y) * c.w, c.w, p, &stats[6 * y]);
      }
    });
    double total = 0.0;
    for (double v : partial) total += v;
    *value = static_cast<float>(total);
    for (int y = 0; y < c.h; ++y)
      for (int k = 0; k < 6; ++k) rows[k * c.h + y] = static_cast<float>(stats[6 * y + k]);
  });
}

std::vector<mx::array> TileLoss::vjp(
    const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums, const std::vector<mx::array>&) {
  for (int arg : argnums) require(arg == 0, "no gradient with respect to the targets");
  auto s = stream();
  // cotangents[1] (for the rows) is ignored: the statistics are not differentiated
  std::vector<mx::array> in = {primals[0], primals[1], as_dense(cotangents[0], s)};
  return {mx::array(primals[0].shape(), mx::float32, std::make_shared<TileLossVJP>(s, params_),
                    std::move(in))};
}

void TileLossVJP::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const Crop c = crop_of(in[0], in[1], params_);
  float* dz = allocate(out[0]);
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  encoder.set_output_array(out[0]);
  encoder.dispatch([z = in[0].data<float>(), g = in[1].data<float>(),
                    d_value = in[2].data<float>(), c, p = params_, dz]() {
    const float scale = *d_value;
    parallel_rows(c.H, worker_count(c.H), [&](int begin, int end, int) {
      for (int y = begin; y < end; ++y) {
        float* d_row = dz + static_cast<long>(y) * c.W;
        std::memset(d_row, 0, sizeof(float) * c.W);
        if (y < p.cy || y >= p.cy + c.h) continue;
        const float* z_row = z + static_cast<long>(y) * c.W + p.cx;
        const float* g_row = g + static_cast<long>(y - p.cy) * c.w;
        loss_grad_row(z_row, g_row, c.w, p, scale, d_row + p.cx);
      }
    });
  });
}

}  // namespace gigamlx
