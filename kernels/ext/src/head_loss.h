// The fused tail and the loss on its owned crop as one op: the logits are computed row by row
// and never written out, forward (the loss) and backward (the tail's gradients) alike.
#pragma once

#include "head.h"
#include "loss.h"

namespace gigamlx {

// tile_loss(head_logits(h2, x, w_up, b_up, w_head, b_head), g): the same [value, rows] with
// the same bits. head_inputs are head_logits's six inputs; tile_loss builds this op when its
// logits come straight from head_logits (loss.cpp).
std::vector<mx::array> head_loss(const std::vector<mx::array>& head_inputs,
                                 const HeadParams& head, const mx::array& g, LossParams loss);

// Inputs (h2, x, w_up, b_up, w_head, b_head, g) -> [value (), rows (6, h)].
class HeadLoss : public mx::Primitive {
 public:
  HeadLoss(mx::Stream stream, HeadParams head, LossParams loss)
      : mx::Primitive(stream), head_(head), loss_(loss) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused HeadLoss: no GPU implementation");
  }
  std::vector<mx::array> vjp(
      const std::vector<mx::array>& primals, const std::vector<mx::array>& cotangents,
      const std::vector<int>& argnums, const std::vector<mx::array>& outputs) override;
  const char* name() const override { return "GigamlxHeadLoss"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const HeadLoss&>(other);
    return head_ == o.head_ && loss_ == o.loss_;
  }

 private:
  HeadParams head_;
  LossParams loss_;
};

// Inputs (h2, x, w_up, b_up, w_head, b_head, g, d value) ->
// (d h2, d w_up, d b_up, d w_head, d b_head).
class HeadLossVJP : public mx::Primitive {
 public:
  HeadLossVJP(mx::Stream stream, HeadParams head, LossParams loss)
      : mx::Primitive(stream), head_(head), loss_(loss) {}
  void eval_cpu(const std::vector<mx::array>& inputs, std::vector<mx::array>& outputs) override;
  void eval_gpu(const std::vector<mx::array>&, std::vector<mx::array>&) override {
    throw std::runtime_error("gigamlx_fused HeadLossVJP: no GPU implementation");
  }
  const char* name() const override { return "GigamlxHeadLossVJP"; }
  bool is_equivalent(const mx::Primitive& other) const override {
    const auto& o = static_cast<const HeadLossVJP&>(other);
    return head_ == o.head_ && loss_ == o.loss_;
  }

 private:
  HeadParams head_;
  LossParams loss_;
};

}  // namespace gigamlx
