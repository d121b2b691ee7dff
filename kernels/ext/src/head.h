// The fused full-resolution tail of GigaUNet: up1 conv-transpose (kernel == stride) + ReLU +
// zeroing outside the image + concat with the input + 3x3 head conv, and its backward.
#pragma once

#include <array>

#include "common.h"
#include "mlx/primitives.h"

namespace gigamlx {

// Window rows/cols [y0, y1) x [x0, x1) at full resolution that lie inside the padded image;
// the up-sampled activations are zeroed outside it (the image itself is already zero there).
using KeepBox = std::array<int, 4>;

// The kept box and the input's standardisation (which zeroes x outside its own box).
struct HeadParams {
  KeepBox keep;
  InputNorm norm{};
  bool operator==(const HeadParams&) const = default;
};

// Logits (N, H, W, 1) from h2 (N, H/s, W/s, C_in), x (N, H, W, C_x), up weight
// (C_up, s, s, C_in), up bias (C_up), head weight (1, 3, 3, C_up + C_x), head bias (1).
mx::array head_logits(
    const mx::array& h2, const mx::array& x, const mx::array& w_up, const mx::array& b_up,
    const mx::array& w_head, const mx::array& b_head, KeepBox keep, InputNorm norm = {});

class HeadLogits : public mx::Primitive {
 public:
  HeadLogits(mx::Stream stream, HeadParams p) : mx::Primitive(stream), p_(p) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused HeadLogits: no GPU implementation");
  }
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "GigamlxHeadLogits"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return p_ == static_cast<const HeadLogits&>(other).p_;
  }
  const HeadParams& params() const { return p_; }

 private:
  HeadParams p_;
};

// Inputs (h2, x, w_up, b_up, w_head, dz) -> (d h2, d w_up, d b_up, d w_head, d b_head).
class HeadLogitsVJP : public mx::Primitive {
 public:
  HeadLogitsVJP(mx::Stream stream, HeadParams p) : mx::Primitive(stream), p_(p) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused HeadLogitsVJP: no GPU implementation");
  }
  const char* name() const override { return "GigamlxHeadLogitsVJP"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return p_ == static_cast<const HeadLogitsVJP&>(other).p_;
  }

 private:
  HeadParams p_;
};

}  // namespace gigamlx
