// LLaVA's multimodal projector (Liu et al. 2023, "Visual Instruction Tuning"; v1.5 "Improved
// Baselines"): linear = Linear(C, d); mlp2x_gelu = Linear(C, d) - GELU - Linear(d, d);
// identity. Parameter names follow LLaVA's checkpoints: mm_projector.weight (linear),
// mm_projector.0.* / mm_projector.2.* (mlp2x_gelu). nn.Linear's default init.
#pragma once

#include <torch/torch.h>

#include <string>

#include "model/layers.h"

namespace vadapt::connectors {

class ProjectorImpl : public torch::nn::Module {
 public:
  // standardize: the input features are z-scored per channel with fixed statistics
  // (feature_mean / feature_std, frozen parameters set by set_feature_stats and saved with the
  // projector), so that weak directions of the frozen features learn as fast as strong ones.
  ProjectorImpl(std::string type, int64_t vision_hidden, int64_t llm_hidden, uint64_t seed = 0, bool standardize = false);
  torch::Tensor forward(const torch::Tensor& features);  // (B, N, C) -> (B, N, d)
  void set_feature_stats(const torch::Tensor& mean, const torch::Tensor& std);
  const std::string& type() const { return type_; }
  // Parameter count of a projector type from the two widths alone (no weights).
  static int64_t parameter_count(const std::string& type, int64_t vision_hidden, int64_t llm_hidden);

 private:
  std::string type_;
  model::Projection fc1{nullptr}, fc2{nullptr};
  torch::Tensor mean_, std_;  // (C,) when standardizing
};
TORCH_MODULE(Projector);

}  // namespace vadapt::connectors
