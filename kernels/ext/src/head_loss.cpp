// MLX plumbing of the fused tail with its loss: the op, its two primitives' CPU evaluation and
// the vjp. The row kernels are head_loss_rows and head_loss_backward (head_cpu.h).
#include "head_loss.h"

#include "head_args.h"
#include "loss_rows.h"

namespace gigamlx {
namespace {

constexpr int kHeadInputs = 6;  // h2, x, w_up, b_up, w_head, b_head

struct CropSize {
  int h, w;
};

// The target's (crop's) size, checked against the window of the logits.
CropSize crop_of(const std::vector<mx::array>& in, const LossParams& p) {
  const HeadDims d = head_dims(in);
  const mx::array& g = in[kHeadInputs];
  require(d.n == 1, "the head's loss takes one window (batch 1)");
  require(g.ndim() == 2, "g must be (h, w)");
  const CropSize c{g.shape(0), g.shape(1)};
  require(p.cy >= 0 && p.cx >= 0 && p.cy + c.h <= d.H() && p.cx + c.w <= d.W(),
          "the crop must lie inside the window");
  return c;
}

// The targets' bytes: uint8 or float32 (head_loss_rows and head_loss_backward take either).
const void* target_of(const mx::array& g) {
  return g.dtype() == mx::uint8 ? static_cast<const void*>(g.data<uint8_t>())
                                : static_cast<const void*>(g.data<float>());
}

}  // namespace

std::vector<mx::array> head_loss(const std::vector<mx::array>& head_inputs,
                                 const HeadParams& head, const mx::array& g, LossParams loss) {
  auto s = cpu_stream();
  std::vector<mx::array> in = head_inputs;  // already dense: head_logits made them so
  in.push_back(as_dense_target(g, s));
  const CropSize c = crop_of(in, loss);
  return mx::array::make_arrays({{}, {6, c.h}}, {mx::float32, mx::float32},
                                std::make_shared<HeadLoss>(s, head, loss), in);
}

void HeadLoss::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const CropSize c = crop_of(in, loss_);
  float* value = allocate(out[0]);
  float* rows = allocate(out[1]);
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  for (auto& o : out) encoder.set_output_array(o);
  const mx::array& g = in[kHeadInputs];
  encoder.dispatch([args = head_args(in, head_), b = in[5].data<float>(),
                    u8 = g.dtype() == mx::uint8, target = target_of(g), c, p = loss_, value,
                    rows]() {
    std::vector<double> values(c.h), stats(6 * static_cast<size_t>(c.h));
    if (u8) {
      head_loss_rows(args, *b, static_cast<const uint8_t*>(target), p, c.h, c.w,
                     values.data(), stats.data());
    } else {
      head_loss_rows(args, *b, static_cast<const float*>(target), p, c.h, c.w, values.data(),
                     stats.data());
    }
    write_loss_rows(values, stats, c.h, value, rows);  // as tile_loss finishes them
  });
}

std::vector<mx::array> HeadLoss::vjp(
    const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums, const std::vector<mx::array>&) {
  auto s = stream();
  const auto& p = primals;
  // cotangents[1] (for the rows) is ignored: the statistics are not differentiated
  std::vector<mx::array> in = p;
  in.push_back(as_dense(cotangents[0], s));
  auto grads = mx::array::make_arrays(
      {p[0].shape(), p[2].shape(), p[3].shape(), p[4].shape(), p[5].shape()},
      {mx::float32, mx::float32, mx::float32, mx::float32, mx::float32},
      std::make_shared<HeadLossVJP>(s, head_, loss_), in);
  std::vector<mx::array> result;
  for (int arg : argnums) {
    // x (argument 1) is the image and g (6) the targets: data, never differentiated
    require(arg != 1 && arg != kHeadInputs, "no gradient with respect to the image or targets");
    result.push_back(grads[arg == 0 ? 0 : arg - 1]);
  }
  return result;
}

void HeadLossVJP::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const CropSize c = crop_of(in, loss_);
  const GradOutputs dst = allocate_grads(out);
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  for (auto& o : out) encoder.set_output_array(o);
  const mx::array& g = in[kHeadInputs];
  encoder.dispatch([args = head_args(in, head_), b = in[5].data<float>(),
                    d_value = in[kHeadInputs + 1].data<float>(), u8 = g.dtype() == mx::uint8,
                    target = target_of(g), c, p = loss_, dst]() {
    HeadGrads grads{dst.d_h2};
    if (u8) {
      head_loss_backward(args, *b, static_cast<const uint8_t*>(target), p, c.h, c.w, *d_value,
                         grads);
    } else {
      head_loss_backward(args, *b, static_cast<const float*>(target), p, c.h, c.w, *d_value,
                         grads);
    }
    dst.write(grads);
  });
}

}  // namespace gigamlx
