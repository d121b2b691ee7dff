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

// 16 targets as floats: float32 as they are, uint8 (0 or 1, a quarter of the bytes) converted.
inline Vec load_target(const float* g) { return load(g); }
inline Vec load_target(const uint8_t* g) {
  using Bytes = uint8_t __attribute__((vector_size(kLanes)));
  Bytes b;
  std::memcpy(&b, g, sizeof(Bytes));
  return __builtin_convertvector(b, Vec);
}

// z and g of columns [x0, x0 + 16) of a row of w, zero-padded past w (pad z: any value).
template <class G>
void load_block(const float* z, const G* g, int x0, int w, Vec& zv, Vec& gv, Vec& valid) {
  float zt[kLanes] = {}, gt[kLanes] = {}, vt[kLanes] = {};
  const int n = std::min(kLanes, w - x0);
  for (int l = 0; l < n; ++l) zt[l] = z[x0 + l], gt[l] = static_cast<float>(g[x0 + l]), vt[l] = 1.0f;
  zv = load(zt), gv = load(gt), valid = load(vt);
}

// One crop row: surrogate value (returned) and the six statistics into stats[0..5]; float per
// lane along the row, double across lanes.
template <class G>
double loss_row(const float* z, const G* g, int w, const LossParams& p, double* stats) {
  Vec value = {}, s[6] = {};
  for (int x0 = 0; x0 < w; x0 += kLanes) {
    Vec zv, gv, valid = splat(1.0f);
    if (x0 + kLanes <= w) {
      zv = load(z + x0), gv = load_target(g + x0);
    } else {
      load_block(z, g, x0, w, zv, gv, valid);
    }
    Vec e;
    const Vec prob = vsigmoid(zv, e) * valid;
    const Vec hard = select(zv > 0.0f, valid, splat(0.0f));
    const Vec bce = (vmax(zv, splat(0.0f)) - zv * gv + vlog1p_unit(e)) * valid;
    value += (p.a * gv + p.b) * prob + p.c * bce;
    s[0] += prob * gv, s[1] += prob, s[2] += gv, s[3] += bce, s[4] += hard * gv, s[5] += hard;
  }
  for (int k = 0; k < 6; ++k) stats[k] = lane_sum_double(s[k]);
  return lane_sum_double(value);
}

// One row of d z on the crop: scale * (d loss / d p * p (1 - p) + c (p - g)).
template <class G>
void loss_grad_row(const float* z, const G* g, int w, const LossParams& p, float scale,
                   float* dz) {
  for (int x0 = 0; x0 < w; x0 += kLanes) {
    Vec zv, gv, valid;
    if (x0 + kLanes <= w) {
      zv = load(z + x0), gv = load_target(g + x0);
    } else {
      load_block(z, g, x0, w, zv, gv, valid);
    }
    Vec e;
    const Vec prob = vsigmoid(zv, e);
    const Vec d = scale * ((p.a * gv + p.b) * prob * (1.0f - prob) + p.c * (prob - gv));
    float lanes[kLanes];
    store(lanes, d);
    std::copy_n(lanes, std::min(kLanes, w - x0), dz + x0);
  }
}

// The surrogate value and the per-row statistics of the crop (TileLoss), one crop row each.
template <class G>
void loss_rows(const float* z, const G* g, const Crop& c, const LossParams& p, float* value,
               float* rows) {
  std::vector<double> values(c.h), stats(6 * static_cast<size_t>(c.h));
  parallel_chunks(c.h, 64, [] { return 0; }, [&](int, int begin, int end, int) {
    for (int y = begin; y < end; ++y) {
      const float* z_row = z + static_cast<long>(y + p.cy) * c.W + p.cx;
      values[y] = loss_row(z_row, g + static_cast<long>(y) * c.w, c.w, p, &stats[6 * y]);
    }
  });
  double total = 0.0;
  for (double v : values) total += v;  // row order: independent of timing
  *value = static_cast<float>(total);
  for (int y = 0; y < c.h; ++y)
    for (int k = 0; k < 6; ++k) rows[k * c.h + y] = static_cast<float>(stats[6 * y + k]);
}

// d z over the whole window (TileLossVJP): zero off the crop.
template <class G>
void loss_grad(const float* z, const G* g, const Crop& c, const LossParams& p, float scale,
               float* dz) {
  parallel_chunks(c.H, 64, [] { return 0; }, [&](int, int begin, int end, int) {
    for (int y = begin; y < end; ++y) {
      float* d_row = dz + static_cast<long>(y) * c.W;
      std::memset(d_row, 0, sizeof(float) * c.W);
      if (y < p.cy || y >= p.cy + c.h) continue;
      const float* z_row = z + static_cast<long>(y) * c.W + p.cx;
      const G* g_row = g + static_cast<long>(y - p.cy) * c.w;
      loss_grad_row(z_row, g_row, c.w, p, scale, d_row + p.cx);
    }
  });
}

// The targets: float32, or uint8 (0 or 1; read as float, the same values), row-contiguous.
mx::array as_dense_target(const mx::array& g, const mx::Stream& s) {
  return g.dtype() == mx::uint8 ? mx::contiguous(g, false, s) : as_dense(g, s);
}

}  // namespace

std::vector<mx::array> tile_loss(const mx::array& z, const mx::array& g, LossParams params) {
  auto s = cpu_stream();
  std::vector<mx::array> in = {as_dense(z, s), as_dense_target(g, s)};
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
  const float* z = in[0].data<float>();
  if (in[1].dtype() == mx::uint8) {
    encoder.dispatch([z, g = in[1].data<uint8_t>(), c, p = params_, value, rows]() {
      loss_rows(z, g, c, p, value, rows);
    });
  } else {
    encoder.dispatch([z, g = in[1].data<float>(), c, p = params_, value, rows]() {
      loss_rows(z, g, c, p, value, rows);
    });
  }
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
  const float* z = in[0].data<float>();
  const float* d_value = in[2].data<float>();
  if (in[1].dtype() == mx::uint8) {
    encoder.dispatch([z, g = in[1].data<uint8_t>(), d_value, c, p = params_, dz]() {
      loss_grad(z, g, c, p, *d_value, dz);
    });
  } else {
    encoder.dispatch([z, g = in[1].data<float>(), d_value, c, p = params_, dz]() {
      loss_grad(z, g, c, p, *d_value, dz);
    });
  }
}

}  // namespace gigamlx
