// The fused loss tail: one pass over the crop per call, rows split over the cores. Per-row
// sums are double (they are finished in float64 on the host anyway).
#include "loss.h"

#include "head_loss.h"

#include <cmath>
#include <cstring>

#include "fastmath.h"
#include "loss_rows.h"

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
  write_loss_rows(values, stats, c.h, value, rows);
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

}  // namespace

mx::array as_dense_target(const mx::array& g, const mx::Stream& s) {
  return g.dtype() == mx::uint8 ? mx::contiguous(g, false, s) : as_dense(g, s);
}

std::vector<mx::array> tile_loss(const mx::array& z, const mx::array& g, LossParams params) {
  // logits straight from the fused tail, not yet computed: one op computes them row by row
  // for the loss and never writes them out (the same bits; head_loss.h)
  if (z.has_primitive() && !z.is_available()) {
    if (const auto* head = dynamic_cast<const HeadLogits*>(&z.primitive())) {
      return head_loss(z.inputs(), head->params(), g, params);
    }
  }
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
