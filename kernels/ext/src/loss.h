// Fused per-pixel tail of a training step on the owned crop of a window's logits: sigmoid,
// the surrogate loss sum((a*g + b) * p) + c * sum(bce(z, g)), and the per-row statistics.
#pragma once

#include <array>

#include "common.h"
#include "mlx/primitives.h"

namespace gigamlx {

struct LossParams {
  int cy, cx;     // offset of the owned crop inside the window
  float a, b, c;  // surrogate coefficients
  bool operator==(const LossParams&) const = default;
};

// z (1, H, W, 1) window logits, g (h, w) targets on the crop at (cy, cx), float32 or uint8 ->
// [value () = surrogate, rows (6, h) = per-row sums of p*g, p, g, bce, hard*g, hard].
// Only `value` is differentiable (rows are statistics); its gradient is zero off the crop.
std::vector<mx::array> tile_loss(const mx::array& z, const mx::array& g, LossParams params);

// The targets: float32, or uint8 (0 or 1; read as float, the same values), row-contiguous.
mx::array as_dense_target(const mx::array& g, const mx::Stream& s);

class TileLoss : public mx::Primitive {
 public:
  TileLoss(mx::Stream stream, LossParams params) : mx::Primitive(stream), params_(params) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused TileLoss: no GPU implementation");
  }
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  const char* name() const override { return "GigamlxTileLoss"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return params_ == static_cast<const TileLoss&>(other).params_;
  }

 private:
  LossParams params_;
};

// Inputs (z, g, d value) -> d z (1, H, W, 1).
class TileLossVJP : public mx::Primitive {
 public:
  TileLossVJP(mx::Stream stream, LossParams params) : mx::Primitive(stream), params_(params) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused TileLossVJP: no GPU implementation");
  }
  const char* name() const override { return "GigamlxTileLossVJP"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    return params_ == static_cast<const TileLossVJP&>(other).params_;
  }

 private:
  LossParams params_;
};

}  // namespace gigamlx
