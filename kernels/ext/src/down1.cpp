// MLX plumbing of the fused first layer: the op, its two primitives' CPU evaluation and the vjp.
#include "down1.h"

#include "down1_cpu.h"

namespace gigamlx {
namespace {

// Dimensions from (x, weight, ...), validated.
Down1Dims dims_of(const std::vector<mx::array>& in, const Down1Params& p) {
  const auto &x = in[0], &w = in[1];
  require(x.ndim() == 4 && w.ndim() == 4, "x and weight must be 4-d (channels-last)");
  Down1Dims d{x.shape(0), x.shape(1), x.shape(2), x.shape(3), w.shape(0), w.shape(1), p.stride,
              p.pad};
  require(w.shape(2) == d.k && w.shape(3) == d.c_in, "weight must be (C_out, k, k, C_in)");
  require(d.s > 0 && d.k % d.s == 0 && d.p >= 0, "kernel must be a multiple of the stride");
  require(d.out_h() >= 1 && d.out_w() >= 1, "input too small for the kernel");
  return d;
}

Down1Args args_of(const std::vector<mx::array>& in, const Down1Params& p) {
  return Down1Args{dims_of(in, p), p.keep, image_of(in[0], p.norm), in[1].data<float>()};
}

void write_doubles(float* dst, const std::vector<double>& values) {
  for (size_t k = 0; k < values.size(); ++k) dst[k] = static_cast<float>(values[k]);
}

}  // namespace

mx::array down1(const mx::array& x, const mx::array& weight, const mx::array& bias,
                Down1Params params) {
  auto s = cpu_stream();
  std::vector<mx::array> in = {as_dense_image(x, s), as_dense(weight, s), as_dense(bias, s)};
  const Down1Dims d = dims_of(in, params);
  require(bias.size() == static_cast<size_t>(d.c_out), "bias must have C_out entries");
  return mx::array({d.n, d.out_h(), d.out_w(), d.c_out}, mx::float32,
                   std::make_shared<Down1>(s, params), std::move(in));
}

std::vector<mx::Shape> Down1::output_shapes(const std::vector<mx::array>& in) {
  const Down1Dims d = dims_of(in, p_);
  return {{d.n, d.out_h(), d.out_w(), d.c_out}};
}

void Down1::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  float* y = allocate(out[0]);
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  encoder.set_output_array(out[0]);
  encoder.dispatch([args = args_of(in, p_), b = in[2].data<float>(), y]() {
    down1_forward(args, b, y);
  });
}

std::vector<mx::array> Down1::vjp(
    const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums, const std::vector<mx::array>& outputs) {
  for (int arg : argnums) {
    // the input image x (argument 0) is data: the first layer never needs its gradient
    require(arg != 0, "no gradient with respect to x (the input image) is implemented");
  }
  auto s = stream();
  const auto& p = primals;
  std::vector<mx::array> in = {p[0], p[1], outputs[0], as_dense(cotangents[0], s)};
  auto grads = mx::array::make_arrays({p[1].shape(), p[2].shape()}, {mx::float32, mx::float32},
                                      std::make_shared<Down1VJP>(s, p_), in);
  std::vector<mx::array> result;
  for (int arg : argnums) result.push_back(grads[arg - 1]);
  return result;
}

void Down1VJP::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  for (auto& o : out) encoder.set_output_array(o);
  float* d_weight = allocate(out[0]);
  float* d_bias = allocate(out[1]);
  encoder.dispatch([args = args_of(in, p_), y = in[2].data<float>(), dy = in[3].data<float>(),
                    d_weight, d_bias]() {
    std::vector<double> w, b;
    down1_backward(args, y, dy, w, b);
    write_doubles(d_weight, w);
    write_doubles(d_bias, b);
  });
}

}  // namespace gigamlx
