// The fused first layer of GigaUNet: strided conv (kernel a multiple of the stride) + bias +
// ReLU + zeroing outside the image, on the input image (which never needs a gradient).
#pragma once

#include <array>

#include "common.h"
#include "mlx/primitives.h"

namespace gigamlx {

// Geometry of the conv: stride and pad, and the output box (y0, x0, y1, x1) kept (outside it
// the activations are zeroed), at the output's resolution; the input's standardisation.
struct Down1Params {
  int stride, pad;
  std::array<int, 4> keep;
  InputNorm norm{};
  bool operator==(const Down1Params&) const = default;
};

// (N, Ho, Wo, C_out) from x (N, H, W, C_in), weight (C_out, k, k, C_in), bias (C_out).
mx::array down1(const mx::array& x, const mx::array& weight, const mx::array& bias,
                Down1Params params);

class Down1 : public mx::Primitive {
 public:
  Down1(mx::Stream stream, Down1Params p) : mx::Primitive(stream), p_(p) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused Down1: no GPU implementation");
  }
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  std::vector<mx::Shape> output_shapes(const std::vector<mx::array>& inputs) override;
  const char* name() const override { return "GigamlxDown1"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return p_ == static_cast<const Down1&>(other).p_;
  }

 private:
  Down1Params p_;
};

// Inputs (x, weight, out, d out) -> (d weight, d bias); the ReLU/zeroing mask is out > 0.
class Down1VJP : public mx::Primitive {
 public:
  Down1VJP(mx::Stream stream, Down1Params p) : mx::Primitive(stream), p_(p) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused Down1VJP: no GPU implementation");
  }
  const char* name() const override { return "GigamlxDown1VJP"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return p_ == static_cast<const Down1VJP&>(other).p_;
  }

 private:
  Down1Params p_;
};

}  // namespace gigamlx
