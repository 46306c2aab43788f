// A two-layer bottleneck MLP, Linear(in, hidden) - act - Linear(hidden, out), named like an
// nn.Sequential ("0.*", "2.*"). LLaMA-Adapter V1's visual projection of the concatenated
// multi-scale global features (paper: "a simple MLP"); LaVIN's visual neck (SiLU, xavier init).
#pragma once

#include <torch/torch.h>

#include <string>

#include "model/layers.h"

namespace vadapt::connectors {

class BottleneckMlpImpl : public torch::nn::Module {
 public:
  // act: gelu | silu; init: default (nn.Linear's) | xavier (xavier-uniform weights, zero biases).
  BottleneckMlpImpl(int64_t in, int64_t hidden, int64_t out, std::string act, const std::string& init, uint64_t seed);
  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., out)
  static int64_t parameter_count(int64_t in, int64_t hidden, int64_t out) { return in * hidden + hidden + hidden * out + out; }

 private:
  model::Projection fc1{nullptr}, fc2{nullptr};
  std::string act_;
};
TORCH_MODULE(BottleneckMlp);

}  // namespace vadapt::connectors
