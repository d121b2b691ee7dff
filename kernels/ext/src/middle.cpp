// MLX plumbing of the fused middle: the op, its two primitives' CPU evaluation and the vjp.
#include "middle.h"

#include <string>
#include <tuple>

namespace gigamlx {
namespace {

constexpr int kParams = 8;  // down2, down3, up3, up2: weight and bias each

// Sizes of the middle's tensors, from (h1, the eight parameters), validated.
struct MiddleDims {
  int n, h1, w1, c1;  // down1's output, the op's input
  int c2, k2, h2, w2;  // down2
  int c3, k3, h3, w3;  // down3
  int c4, t3;          // up3 (kernel == stride t3): back to down2's size
  int c5, t2;          // up2 (kernel == stride t2): back to h1's size
  size_t px(int h, int w) const { return static_cast<size_t>(n) * h * w; }
};

int conv_out(int in, int k, int s, int p) { return (in + 2 * p - k) / s + 1; }

// A strided conv's (output channels, kernel, output rows, output cols) on an input of
// h x w x c_in with (stride, pad) = sp, validated; `name` in the errors.
std::tuple<int, int, int, int> down_dims(const mx::array& weight, int h, int w, int c_in,
                                         const std::array<int, 2>& sp, const std::string& name) {
  const int c_out = weight.shape(0), k = weight.shape(1);
  require(weight.shape(2) == k && weight.shape(3) == c_in,
          name + "'s weight must be (C_out, k, k, C_in)");
  require(sp[0] > 0 && k % sp[0] == 0 && sp[1] >= 0,
          name + "'s kernel must be a multiple of its stride");
  return {c_out, k, conv_out(h, k, sp[0], sp[1]), conv_out(w, k, sp[0], sp[1])};
}

MiddleDims dims_of(const std::vector<mx::array>& in, const MiddleParams& p) {
  require(in.size() >= 1 + kParams, "the middle takes h1 and eight parameters");
  for (int i : {0, 1, 3, 5, 7})
    require(in[i].ndim() == 4, "h1 and the weights must be 4-d (channels-last)");
  const auto &h1 = in[0], &wu3 = in[5], &wu2 = in[7];
  MiddleDims d{};
  d.n = h1.shape(0), d.h1 = h1.shape(1), d.w1 = h1.shape(2), d.c1 = h1.shape(3);
  std::tie(d.c2, d.k2, d.h2, d.w2) = down_dims(in[1], d.h1, d.w1, d.c1, p.down2, "down2");
  std::tie(d.c3, d.k3, d.h3, d.w3) = down_dims(in[3], d.h2, d.w2, d.c2, p.down3, "down3");
  require(d.h2 >= 1 && d.w2 >= 1 && d.h3 >= 1 && d.w3 >= 1, "h1 too small for the middle");
  d.c4 = wu3.shape(0), d.t3 = wu3.shape(1);
  require(wu3.shape(2) == d.t3 && wu3.shape(3) == d.c3, "up3's weight must be (C_4, t, t, C_3)");
  require(d.h3 * d.t3 == d.h2 && d.w3 * d.t3 == d.w2, "up3's output must match down2's");
  d.c5 = wu2.shape(0), d.t2 = wu2.shape(1);
  require(wu2.shape(2) == d.t2 && wu2.shape(3) == d.c4 + d.c2,
          "up2's weight must be (C_up2, t, t, C_4 + C_2)");
  require(d.h2 * d.t2 == d.h1 && d.w2 * d.t2 == d.w1, "up2's output must match h1");
  const int biases[] = {d.c2, d.c3, d.c4, d.c5};
  for (int i = 0; i < 4; ++i)
    require(in[2 + 2 * i].size() == static_cast<size_t>(biases[i]),
            "each bias must have one entry per output channel");
  return d;
}

std::vector<mx::Shape> shapes_of(const MiddleDims& d) {
  return {{d.n, d.h1, d.w1, d.c5 + d.c1}, {d.n, d.h2, d.w2, d.c2}, {d.n, d.h3, d.w3, d.c3},
          {d.n, d.h2, d.w2, d.c4}};
}

std::vector<const float*> pointers(const std::vector<mx::array>& in) {
  std::vector<const float*> p;
  for (const auto& a : in) p.push_back(a.data<float>());
  return p;
}

float* writable(const float* p) { return const_cast<float*>(p); }  // Act views read only

// [a, b] along channels, dense.
std::vector<float> join(const Act& a, const Act& b) {
  const int c = a.c + b.c;
  std::vector<float> out(static_cast<size_t>(a.n) * a.h * a.w * c);
  for (size_t px = 0; px < static_cast<size_t>(a.n) * a.h * a.w; ++px) {
    std::memcpy(out.data() + px * c, a.data + px * a.pixel, sizeof(float) * a.c);
    std::memcpy(out.data() + px * c + a.c, b.data + px * b.pixel, sizeof(float) * b.c);
  }
  return out;
}

struct Activations {
  Act h1, a2, a3, a4;
};

Activations activations(const MiddleDims& d, const float* h1, const float* a2, const float* a3,
                        const float* a4) {
  return {dense(writable(h1), d.n, d.h1, d.w1, d.c1), dense(writable(a2), d.n, d.h2, d.w2, d.c2),
          dense(writable(a3), d.n, d.h3, d.w3, d.c3), dense(writable(a4), d.n, d.h2, d.w2, d.c4)};
}

// in: h1 and the parameters; out: the op's four outputs.
void forward(const MiddleDims& d, const MiddleParams& p, const std::vector<const float*>& in,
             float* const* out) {
  const Activations t = activations(d, in[0], out[1], out[2], out[3]);
  conv_forward(t.h1, in[1], in[2], d.k2, p.down2[0], p.down2[1], p.keep[0], t.a2);
  conv_forward(t.a2, in[3], in[4], d.k3, p.down3[0], p.down3[1], p.keep[1], t.a3);
  conv_transpose_forward(t.a3, in[5], in[6], d.t3, p.keep[2], t.a4);
  std::vector<float> joined = join(t.a4, t.a2);
  const int c = d.c5 + d.c1;
  const Act y{out[0], d.n, d.h1, d.w1, d.c5, c};
  conv_transpose_forward(dense(joined.data(), d.n, d.h2, d.w2, d.c4 + d.c2), in[7], in[8], d.t2,
                         p.keep[3], y, &t.h1);
}

// in: h1, the parameters, the four outputs and the cotangent of the first; out: d h1 and
// the parameters' gradients (each in double, as `grads`).
void backward(const MiddleDims& d, const MiddleParams& p, const std::vector<const float*>& in,
              float* d_h1, std::vector<std::vector<double>>& grads) {
  const Activations t = activations(d, in[0], in[10], in[11], in[12]);
  const int c = d.c5 + d.c1, c_join = d.c4 + d.c2;
  std::vector<float> joined = join(t.a4, t.a2), d_joined(joined.size());
  const Act y{writable(in[9]), d.n, d.h1, d.w1, d.c5, c};
  const Act dy{writable(in[13]), d.n, d.h1, d.w1, d.c5, c};
  conv_transpose_backward(dense(joined.data(), d.n, d.h2, d.w2, c_join), in[7], d.t2, y, dy,
                          dense(d_joined.data(), d.n, d.h2, d.w2, c_join), grads[6].data(),
                          grads[7].data());
  std::vector<float> d_a3(d.px(d.h3, d.w3) * d.c3), d_a2(d.px(d.h2, d.w2) * d.c2);
  const Act d_a4{d_joined.data(), d.n, d.h2, d.w2, d.c4, c_join};
  conv_transpose_backward(t.a3, in[5], d.t3, t.a4, d_a4, dense(d_a3.data(), d.n, d.h3, d.w3, d.c3),
                          grads[4].data(), grads[5].data());
  // down2's output also went up2's way, and h1 is also the output's last channels
  const Act d_a2_skip{d_joined.data() + d.c4, d.n, d.h2, d.w2, d.c2, c_join};
  const Act d_h1_skip{writable(in[13]) + d.c5, d.n, d.h1, d.w1, d.c1, c};
  conv_backward(t.a2, in[3], d.k3, p.down3[0], p.down3[1], t.a3,
                dense(d_a3.data(), d.n, d.h3, d.w3, d.c3),
                dense(d_a2.data(), d.n, d.h2, d.w2, d.c2), grads[2].data(), grads[3].data(),
                &d_a2_skip);
  conv_backward(t.h1, in[1], d.k2, p.down2[0], p.down2[1], t.a2,
                dense(d_a2.data(), d.n, d.h2, d.w2, d.c2), dense(d_h1, d.n, d.h1, d.w1, d.c1),
                grads[0].data(), grads[1].data(), &d_h1_skip);
}

}  // namespace

mx::array middle(const std::vector<mx::array>& h1_and_params, MiddleParams params) {
  auto s = cpu_stream();
  require(h1_and_params.size() == 1 + kParams, "the middle takes h1 and eight parameters");
  std::vector<mx::array> in;
  for (const auto& a : h1_and_params) in.push_back(as_dense(a, s));
  const MiddleDims d = dims_of(in, params);
  const auto shapes = shapes_of(d);
  return mx::array::make_arrays(shapes, std::vector<mx::Dtype>(shapes.size(), mx::float32),
                                std::make_shared<Middle>(s, params), std::move(in))[0];
}

std::vector<mx::Shape> Middle::output_shapes(const std::vector<mx::array>& in) {
  return shapes_of(dims_of(in, p_));
}

void Middle::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  std::array<float*, 4> dst{};
  for (size_t k = 0; k < out.size(); ++k) dst[k] = allocate(out[k]);
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  for (auto& o : out) encoder.set_output_array(o);
  encoder.dispatch([d = dims_of(in, p_), p = p_, src = pointers(in), dst]() {
    forward(d, p, src, dst.data());
  });
}

std::vector<mx::array> Middle::vjp(
    const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
    const std::vector<int>& argnums, const std::vector<mx::array>& outputs) {
  // only the first output is the op's value: the others are kept for this backward
  auto s = stream();
  std::vector<mx::array> in(primals.begin(), primals.end());
  in.insert(in.end(), outputs.begin(), outputs.end());
  in.push_back(as_dense(cotangents[0], s));
  std::vector<mx::Shape> shapes;
  for (const auto& a : primals) shapes.push_back(a.shape());
  auto grads = mx::array::make_arrays(shapes, std::vector<mx::Dtype>(shapes.size(), mx::float32),
                                      std::make_shared<MiddleVJP>(s, p_), in);
  std::vector<mx::array> result;
  for (int arg : argnums) result.push_back(grads[arg]);
  return result;
}

void MiddleVJP::eval_cpu(const std::vector<mx::array>& in, std::vector<mx::array>& out) {
  std::vector<float*> dst;
  for (auto& o : out) dst.push_back(allocate(o));
  auto& encoder = mx::cpu::get_command_encoder(stream());
  for (const auto& a : in) encoder.set_input_array(a);
  for (auto& o : out) encoder.set_output_array(o);
  std::vector<size_t> sizes;
  for (size_t k = 1; k < out.size(); ++k) sizes.push_back(out[k].size());
  encoder.dispatch([d = dims_of(in, p_), p = p_, src = pointers(in), dst, sizes]() {
    std::vector<std::vector<double>> grads;
    for (size_t size : sizes) grads.emplace_back(size, 0.0);
    backward(d, p, src, dst[0], grads);
    for (size_t k = 0; k < grads.size(); ++k)
      for (size_t e = 0; e < grads[k].size(); ++e) dst[k + 1][e] = static_cast<float>(grads[k][e]);
  });
}

}  // namespace gigamlx
