// The fused middle of GigaUNet: every layer between down1 and up1 (two strided convs down, two
// conv-transposes up, each with bias, ReLU and zeroing outside the image, and the skip joins)
// as one op, forward and backward. Its output is up1's input: the last up-sampling joined with
// down1's output.
#pragma once

#include <array>

#include "common.h"
#include "middle_cpu.h"
#include "mlx/primitives.h"

namespace gigamlx {

// The two strided convs' (stride, pad) (kernels from the weights) and the box kept at each
// layer's resolution: down2, down3, up3, up2.
struct MiddleParams {
  std::array<int, 2> down2, down3;
  std::array<Keep, 4> keep;
  bool operator==(const MiddleParams&) const = default;
};

// (N, H, W, C_up2 + C_1) from h1 (N, H, W, C_1), down2's weight (C_2, k, k, C_1) and bias,
// down3's (C_3, k', k', C_2), up3's (C_4, t, t, C_3) and up2's (C_up2, t', t', C_4 + C_2):
// [up2's output, h1] along channels. Differentiable in everything.
mx::array middle(const std::vector<mx::array>& h1_and_params, MiddleParams params);

// Inputs h1 and the eight parameters -> (the joined output, down2's, down3's and up3's
// outputs): the vjp reads the last three; only the first is the op's value.
class Middle : public mx::Primitive {
 public:
  Middle(mx::Stream stream, MiddleParams p) : mx::Primitive(stream), p_(p) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused Middle: no GPU implementation");
  }
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "GigamlxMiddle"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return p_ == static_cast<const Middle&>(other).p_;
  }

 private:
  MiddleParams p_;
};

// Inputs (h1, the eight parameters, the four outputs, d output) -> (d h1, d parameters).
class MiddleVJP : public mx::Primitive {
 public:
  MiddleVJP(mx::Stream stream, MiddleParams p) : mx::Primitive(stream), p_(p) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused MiddleVJP: no GPU implementation");
  }
  const char* name() const override { return "GigamlxMiddleVJP"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return p_ == static_cast<const MiddleVJP&>(other).p_;
  }

 private:
  MiddleParams p_;
};

}  // namespace gigamlx
