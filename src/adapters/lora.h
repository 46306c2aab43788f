// LoRA (Hu et al. 2021, arXiv 2106.09685) on the projection-output seam:
//   y = base(x) + (alpha / r) * B(A(dropout(x)))      (alpha / sqrt(r) with rsLoRA)
// A: (r, in) Kaiming-uniform (a = sqrt(5), as PEFT / nn.Linear), B: (out, r) zeros, so the
// adapted model equals the base model at step 0. Parameters lora_A.weight / lora_B.weight
// match PEFT's names.
#pragma once

#include <torch/torch.h>

#include "model/layers.h"
#include "model/seams.h"

namespace vadapt::adapters {

struct LoraOptions {
  int64_t r = 8;
  double alpha = 16;
  double dropout = 0.0;
  bool rslora = false;  // rank-stabilised scaling alpha / sqrt(r) (PEFT's use_rslora)
};

class LoraImpl : public torch::nn::Module, public model::ProjectionAdapter {
 public:
  LoraImpl(int64_t in, int64_t out, const LoraOptions& o, const torch::TensorOptions& opts);
  torch::Tensor apply(const torch::Tensor& x, torch::Tensor y) override;
  // (out, in) weight delta: scaling * B @ A.
  torch::Tensor delta() const;
  double scaling() const { return scaling_; }

  torch::Tensor A, B;

 private:
  double scaling_, dropout_;
};
TORCH_MODULE(Lora);

}  // namespace vadapt::adapters
