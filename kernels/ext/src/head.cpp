// MLX plumbing of the fused tail: the op, its two primitives' CPU evaluation and the vjp.
#include "head.h"

#include "head_args.h"
#include "head_cpu.h"

namespace gigamlx {
namespace {

// Dimensions from (h2, x, w_up, b_up, w_head), validated.
HeadDims dims_of(const std::vector<mx::array>& in) {
  const auto &h2 = in[0], &x = in[1], &w_up = in[2], &b_up = in[3], &w_head = in[4];
  require(h2.ndim() == 4 && x.ndim() == 4 && w_up.ndim() == 4 && w_head.ndim() == 4,
          "h2, x, w_up and w_head must be 4-d (channels-last)");
  HeadDims d{h2.shape(0), h2.shape(1), h2.shape(2), h2.shape(3), w_up.shape(1),
             w_up.shape(0), x.shape(3)};
  require(w_up.shape(2) == d.s && w_up.shape(3) == d.c_in, "w_up must be (C_up, s, s, C_in)");
  require(b_up.size() == static_cast<size_t>(d.c_up), "b_up must have C_up entries");
  require(x.shape(0) == d.n && x.shape(1) == d.H() && x.shape(2) == d.W(),
          "x must be (N, h*s, w*s, C_x)");
  require(w_head.shape(0) == 1 && w_head.shape(1) == 3 && w_head.shape(2) == 3 &&
              w_head.shape(3) == d.c_f(),
          "w_head must be (1, 3, 3, C_up + C_x)");
  return d;
}

HeadArgs args_of(const std::vector<mx::array>& in, const HeadParams& p) {
  return HeadArgs{dims_of(in),          p.keep,
                  in[0].data<float>(),  image_of(in[1], p.norm),
                  in[2].data<float>(),  in[3].data<float>(),
                  in[4].data<float>()};
}

}  // namespace

HeadDims head_dims(const std::vector<mx::array>& in) { return dims_of(in); }

HeadArgs head_args(const std::vector<mx::array>& in, const HeadParams& p) {
  return args_of(in, p);
}

namespace {

void write_doubles(float* dst, const std::vector<double>& values) {
  for (size_t k = 0; k < values.size(); ++k) dst[k] = static_cast<float>(values[k]);
}

}  // namespace

void GradOutputs::write(const HeadGrads& g) const {
  write_doubles(w_up, g.d_w_up);
  write_doubles(b_up, g.d_b_up);
  write_doubles(w_head, g.d_w_head);
  write_doubles(b_head, {g.d_b_head});
}

GradOutputs allocate_grads(std::vector<mx::array>& out) {
  return GradOutputs{allocate(out[0]), allocate(out[1]), allocate(out[2]), allocate(out[3]),
                     allocate(out[4])};
}

mx::array head_logits(
    const mx::array& h2, const mx::array& x, const mx::array& w_up, const mx::array& b_up,
    const mx::array& w_head, const mx::array& b_head, KeepBox keep, InputNorm norm) {
  auto s = cpu_stream();
  std::vector<mx::array> in = {as_dense(h2, s),    as_dense_image(x, s), as_dense(w_up, s),
                               as_dense(b_up, s),  as_dense(w_head, s), as_dense(b_head, s)};
  const HeadDims d = dims_of(in);
  require(b_head.size() == 1, "b_head must have one entry");
  return mx::array({d.n, d.H(), d.W(), 1}, mx::float32, std::make_shared<HeadLogits>(s, HeadParams{keep, norm}),
                   std::move(in));
}

std::vector<mx::Shape> HeadLogits::output_shapes(const std::vector<mx::array>& in) {
  const HeadDims d = dims_of(in);
  return {{d.n, d.H(), d.W(), 1}};
}

void HeadLogits::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  float* z = allocate(out[0]);
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  encoder.set_output_array(out[0]);
  encoder.dispatch([args = args_of(in, p_), b = in[5].data<float>(), z]() {
    head_forward(args, *b, z);  // read inside the task: the bias may still be computing
  });
}

std::vector<mx::array> HeadLogits::vjp(
    const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums, const std::vector<mx::array>&) {
  auto s = stream();
  const auto& p = primals;
  std::vector<mx::array> in = {p[0], p[1], p[2], p[3], p[4], as_dense(cotangents[0], s)};
  auto grads = mx::array::make_arrays(
      {p[0].shape(), p[2].shape(), p[3].shape(), p[4].shape(), p[5].shape()},
      {mx::float32, mx::float32, mx::float32, mx::float32, mx::float32},
      std::make_shared<HeadLogitsVJP>(s, p_), in);
  std::vector<mx::array> result;
  for (int arg : argnums) {
    // the input image x (argument 1) is data: the tail never needs its gradient
    require(arg != 1, "no gradient with respect to x (the input image) is implemented");
    result.push_back(grads[arg == 0 ? 0 : arg - 1]);
  }
  return result;
}

void HeadLogitsVJP::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  const GradOutputs dst = allocate_grads(out);
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  for (auto& o : out) encoder.set_output_array(o);
  encoder.dispatch([args = args_of(in, p_), dz = in[5].data<float>(), dst]() {
    HeadGrads g{dst.d_h2};
    head_backward(args, dz, g);
    dst.write(g);
  });
}

}  // namespace gigamlx
